"""Quantization methods on synthetic layers: each beats round to nearest where it should, GPTQ equals a
straightforward numpy statement of the algorithm, calibration statistics equal numpy."""

import numpy as np
import pytest

from int4onnx.calibrate import ActivationStats
from int4onnx.quant.awq import search_scales
from int4onnx.quant.clip import quantize_clip
from int4onnx.quant.gptq import quantize_gptq
from int4onnx.quant.grid import Grid, dequantize_values, group_params, quantize_values
from int4onnx.quant.rtn import quantize_grid, quantize_rtn

GRIDS = {
    "asym": Grid(4, False),
    "sym": Grid(4, True),
    "nf4": Grid(4, True, "nf4"),
    "asym-int8-scales": Grid(4, False, scale_dtype="int8"),
    "int8": Grid(8, False),
    "asym-float-zp": Grid(4, False, float_zero_points=True),
    "asym-float-zp-int8": Grid(4, False, scale_dtype="int8", float_zero_points=True),
}


def outlier_layer(seed=0, M=512, K=96, N=40, outliers=(3, 50, 77)):
    """Correlated activations (a low-rank mix plus noise, as in real transformers) with a few channels 15x
    larger than the rest, and a weight with a few large entries."""
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((M, K // 4)) @ rng.standard_normal((K // 4, K)) / np.sqrt(K / 4)
         + 0.3 * rng.standard_normal((M, K))).astype(np.float32)
    X[:, list(outliers)] *= 15.0
    W = (rng.standard_normal((K, N)) / np.sqrt(K)).astype(np.float32)
    W[rng.integers(0, K, 6), rng.integers(0, N, 6)] *= 6.0
    return X, W


def output_error(X, W, Wq):
    return float(np.linalg.norm(X @ W - X @ Wq) / np.linalg.norm(X @ W))


@pytest.mark.parametrize("grid", ["asym", "sym", "nf4", "asym-int8-scales"])
def test_each_method_reduces_layer_output_error_against_rtn(grid):
    g = GRIDS[grid]
    X, W = outlier_layer()
    H = X.astype(np.float64).T @ X
    bs = 32
    rtn = output_error(X, W, quantize_grid(W, g, bs).dequantize())
    clip = output_error(X, W, quantize_clip(W, g, bs, channel_weight=(X.astype(np.float64) ** 2).mean(0)).dequantize())
    s, alpha, losses = search_scales([W], np.abs(X).mean(0), H, lambda w: quantize_grid(w, g, bs).dequantize())
    awq = output_error(X / s, W * s[:, None], quantize_grid(W * s[:, None], g, bs).dequantize())
    gptq = output_error(X, W, quantize_gptq(W, H, g, bs, clip=False).dequantize())
    gptq_clip = output_error(X, W, quantize_gptq(W, H, g, bs, clip=True).dequantize())
    gptq_ao = output_error(X, W, quantize_gptq(W, H, g, bs, act_order=True).dequantize())
    assert alpha > 0 and losses[alpha] < losses[0.0]
    for name, err in [("clip", clip), ("awq", awq), ("gptq", gptq), ("gptq+clip", gptq_clip), ("gptq act-order", gptq_ao)]:
        assert err < 0.97 * rtn, (name, err, rtn)
    assert gptq < 0.8 * rtn


def gptq_reference(W, H, grid, bs, damp):
    """Column by column with the explicit inverse Hessian and its rank-1 downdate (the OBS form of GPTQ):
    quantize column k on its group's grid (fixed when the group starts, from the updated weights),
    spread the error over the later columns, remove k from the inverse."""
    K, N = W.shape
    Wt = W.T.astype(np.float64).copy()
    Hinv = np.linalg.inv(H + np.eye(K) * damp * np.mean(np.diag(H)))
    codes = np.zeros((N, K), np.uint8)
    from int4onnx.quant.grid import column_super_scales, to_blocks
    ss, zs = column_super_scales(to_blocks(W, bs), grid)
    for k in range(K):
        if k % bs == 0:
            block = np.zeros((N, 1, bs))
            block[:, 0, : min(bs, K - k)] = Wt[:, k:k + bs]
            p = group_params(block, grid, 1.0, ss, zs)
            s, z = p.scales[:, 0], None if p.zero_points is None else p.zero_points[:, 0]
        codes[:, k] = quantize_values(Wt[:, k], s, z, grid)
        err = (Wt[:, k] - dequantize_values(codes[:, k], s, z, grid)) / Hinv[k, k]
        Wt[:, k + 1:] -= np.outer(err, Hinv[k, k + 1:])
        Hinv = Hinv - np.outer(Hinv[:, k], Hinv[k, :]) / Hinv[k, k]
    return codes


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("K,bs", [(40, 16), (70, 32)])
def test_gptq_matches_straightforward_numpy_reference(grid, K, bs):
    rng = np.random.default_rng(K)
    X = rng.standard_normal((200, K))
    X[:, 2] *= 8
    W = rng.standard_normal((K, 9)).astype(np.float32)
    H = X.T @ X
    q = quantize_gptq(W, H, GRIDS[grid], bs, damp=0.01, lazy_block=32)  # several lazy blocks
    ref = gptq_reference(W, H, GRIDS[grid], bs, 0.01)
    assert (q.codes == ref).mean() > 0.995  # the Cholesky form reorders float operations; a rare tie may flip


def test_gptq_with_identity_hessian_is_rtn():
    W = np.random.default_rng(1).standard_normal((64, 12)).astype(np.float32)
    for g in GRIDS.values():
        q, r = quantize_gptq(W, np.eye(64), g, 32, damp=0.0), quantize_grid(W, g, 32)
        np.testing.assert_array_equal(q.codes, r.codes)
        np.testing.assert_allclose(q.scales, r.scales, rtol=1e-6)


def test_gptq_dead_channels_and_singular_gram():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((8, 48))  # fewer samples than channels: singular Gram
    X[:, 5] = 0.0                      # a dead channel
    W = rng.standard_normal((48, 10)).astype(np.float32)
    q = quantize_gptq(W, X.T @ X, GRIDS["asym"], 16)
    assert np.isfinite(q.dequantize()).all()
    assert output_error(X, W, q.dequantize()) < output_error(X, W, quantize_grid(W, GRIDS["asym"], 16).dequantize())


def test_clip_search_never_worse_than_rtn_per_group():
    W = np.random.default_rng(3).standard_normal((128, 20)).astype(np.float32)
    W[7, 3] = 9.0
    for g in (GRIDS["asym"], GRIDS["sym"], GRIDS["nf4"], GRIDS["asym-float-zp"]):
        c = quantize_clip(W, g, 32).dequantize()
        r = quantize_grid(W, g, 32).dequantize()
        per_group_c = ((c - W) ** 2).reshape(4, 32, 20).sum(1)
        per_group_r = ((r - W) ** 2).reshape(4, 32, 20).sum(1)
        assert (per_group_c <= per_group_r + 1e-7).all() and per_group_c.sum() < per_group_r.sum()


def test_double_quantized_scales_are_int8_times_column_super_scale():
    W = np.random.default_rng(4).standard_normal((256, 16)).astype(np.float32)
    q = quantize_rtn(W, 4, 32, symmetric=False, scale_dtype="int8")
    assert q.scale_codes.dtype == np.int8 and q.scales_scale.shape == (16,)
    np.testing.assert_array_equal(q.scales, q.scale_codes.astype(np.float32) * q.scales_scale[:, None])
    assert np.abs(q.scale_codes).max() == 127
    rel = np.linalg.norm(q.dequantize() - W) / np.linalg.norm(W)
    rel_fp = np.linalg.norm(quantize_rtn(W, 4, 32).dequantize() - W) / np.linalg.norm(W)
    assert rel < 1.05 * rel_fp


def test_activation_statistics_equal_numpy():
    rng = np.random.default_rng(5)
    chunks = [rng.standard_normal((b, 7, 12)).astype(np.float32) * rng.uniform(0.5, 4) for b in (1, 3, 2)]
    chunks[1][0, 0, 4] = 40.0  # grows the histogram range after the first update
    st = ActivationStats(12, gram=True)
    for c in chunks:
        st.update(c)
    X = np.concatenate([c.reshape(-1, 12) for c in chunks]).astype(np.float64)
    assert st.count == X.shape[0]
    np.testing.assert_allclose(st.absmax, np.abs(X).max(0))
    np.testing.assert_allclose(st.min, X.min(0))
    np.testing.assert_allclose(st.max, X.max(0))
    np.testing.assert_allclose(st.mean_abs, np.abs(X).mean(0), rtol=1e-12)
    np.testing.assert_allclose(st.mean_sq, (X * X).mean(0), rtol=1e-12)
    np.testing.assert_allclose(st.gram, X.T @ X, rtol=1e-12)
    width = st.hist_range / len(st.hist)
    for q in (50, 90, 99, 99.9):
        exact = np.percentile(np.abs(X), q, method="inverted_cdf")
        assert exact - 1e-12 <= st.percentile(q) <= exact + width + 1e-12, q
    assert st.hist.sum() == X.size
    d = rng.uniform(0.5, 2.0, 12)
    sc = st.scaled(d)
    np.testing.assert_allclose(sc.gram, (X * d).T @ (X * d), rtol=1e-12)
    np.testing.assert_allclose(sc.mean_sq, ((X * d) ** 2).mean(0), rtol=1e-12)
