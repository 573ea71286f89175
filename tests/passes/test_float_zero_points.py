"""Real ("float") zero points (--float-zero-points, issue 13): the grid, the methods on it, the stored
inputs of each format, sizes, option errors, and a tied table kept on integer / symmetric codes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from modelgen import matmul_model, save
from onnx import numpy_helper

import int4onnx
from int4onnx import _native
from int4onnx.cli import main
from int4onnx.errors import ConfigError
from int4onnx.quant.clip import quantize_clip
from int4onnx.quant.gptq import quantize_gptq
from int4onnx.quant.grid import Grid, column_super_scales, to_blocks
from int4onnx.quant.rtn import quantize_grid
from int4onnx.runtime import make_session

RNG = np.random.default_rng(21)
REAL = {
    "float32": Grid(4, False, scale_dtype="float32", float_zero_points=True),
    "float16": Grid(4, False, scale_dtype="float16", float_zero_points=True),
    "int8": Grid(4, False, scale_dtype="int8", float_zero_points=True),
}


def q4_1_weight(K=256, N=24, block=32, seed=0):
    """[K, N] weights exactly on a GGUF Q4_1 grid (w = d * q + m, float16 d and m per block of 32 along
    K), every block spanning its whole code range 0..15, most minimums not a multiple of d."""
    rng = np.random.default_rng(seed)
    nb = K // block
    d = rng.uniform(0.01, 0.05, (nb, N)).astype(np.float16).astype(np.float32)
    m = rng.uniform(-0.4, 0.1, (nb, N)).astype(np.float16).astype(np.float32)
    q = rng.integers(0, 16, (K, N))
    q[0::block], q[1::block] = 0, 15
    return (np.repeat(d, block, 0) * q + np.repeat(m, block, 0)).astype(np.float32)


def test_exact_q4_1_blocks_are_reproduced_to_float_rounding():
    """A real zero point -m / d reproduces every Q4_1 block (float32 storage) where an integer zero point
    keeps an offset error of up to d / 2."""
    W = q4_1_weight()
    real = quantize_grid(W, REAL["float32"], 32)
    integer = quantize_grid(W, Grid(4, False), 32)
    assert real.float_zero_points and real.zero_points.dtype == np.float32
    assert np.abs(real.dequantize() - W).max() <= 1e-6 * np.abs(W).max()
    assert np.abs(integer.dequantize() - W).max() > 1e-3  # d / 2 is 0.005 to 0.025 here
    # float16 zero points: the rounding of z (at most 2^-11 relative) times d
    half = quantize_grid(W, REAL["float16"], 32)
    assert np.abs(half.dequantize() - W).max() < 2e-3
    assert half.stored_zero_points().dtype == np.float16


@pytest.mark.parametrize("grid", list(REAL))
def test_grid_against_numpy(grid):
    """scale = (max - min) / 15, z = -min / scale rounded to its stored type, codes round(w / s + z) clamped;
    int8 zero points are codes times a per-column super-scale (the column's largest |z| / 127)."""
    g = REAL[grid]
    K, N = 96, 10
    W = (RNG.standard_normal((K, N)) * 0.1 + RNG.uniform(-0.1, 0.1, (1, N))).astype(np.float32)
    qw = quantize_grid(W, g, 32)
    blocks = to_blocks(W, 32).astype(np.float64)
    lo, hi = blocks.min(-1), blocks.max(-1)
    s = qw.scales.astype(np.float64)
    if grid == "int8":
        np.testing.assert_allclose(qw.scales, qw.scale_codes * qw.scales_scale[:, None], rtol=1e-6)
        z = -lo / s
        zs = np.abs(z).max(axis=1) / 127
        np.testing.assert_allclose(qw.zero_points_scale, zs, rtol=1e-5)
        np.testing.assert_array_equal(qw.zero_point_codes, np.clip(np.rint(z / zs[:, None]), -127, 127))
        np.testing.assert_allclose(qw.zero_points, qw.zero_point_codes * qw.zero_points_scale[:, None], rtol=1e-6)
        assert qw.stored_zero_points().dtype == np.int8
    else:
        np.testing.assert_allclose(s, ((hi - lo) / 15).astype(g.scale_dtype), rtol=1e-6)
        np.testing.assert_allclose(qw.zero_points, (-lo / s).astype(g.scale_dtype), rtol=1e-3)
    zk = np.repeat(qw.zero_points, 32, 1)[:, :K]
    sk = np.repeat(qw.scales, 32, 1)[:, :K]
    expect = np.clip(np.rint(W.T / sk + zk), 0, 15)
    assert np.mean(qw.codes == expect) > 0.999  # float32 vs float64 rounding of exact halves
    np.testing.assert_allclose(qw.dequantize(), ((qw.codes - zk) * sk).T, rtol=1e-6, atol=1e-7)


def test_constant_and_zero_groups():
    """A constant nonzero group keeps a nonzero scale (0 is taken into its range) and its value; an
    all-zero group has scale 0 and dequantizes to 0."""
    W = np.zeros((64, 3), np.float32)
    W[:32, 0] = 0.7
    W[:32, 1] = -0.3
    qw = quantize_grid(W, REAL["float32"], 32)
    np.testing.assert_allclose(qw.dequantize(), W, atol=1e-7)
    assert qw.scales[2, 0] == 0 and qw.scales[0, 0] > 0


@pytest.mark.parametrize("grid", ["float16", "int8"])
def test_methods_use_the_same_grid_and_beat_rtn(grid):
    """clip and GPTQ on the real-zero-point grid: codes on the stored grid (their dequantization is
    (code - z) * s with the stored z), lower output error than RTN, and int8 super-scales fixed up front."""
    from test_methods import outlier_layer, output_error

    g = REAL[grid]
    X, W = outlier_layer()
    H = X.astype(np.float64).T @ X
    rtn = quantize_grid(W, g, 32)
    e_rtn = output_error(X, W, rtn.dequantize())
    for qw in (quantize_clip(W, g, 32, gram=H), quantize_gptq(W, H, g, 32, clip=True)):
        assert qw.float_zero_points
        zk = np.repeat(qw.zero_points, 32, 1)[:, :W.shape[0]]
        sk = np.repeat(qw.scales, 32, 1)[:, :W.shape[0]]
        np.testing.assert_allclose(qw.dequantize(), ((qw.codes - zk) * sk).T, rtol=1e-6, atol=1e-7)
        assert output_error(X, W, qw.dequantize()) < 0.97 * e_rtn
        if grid == "int8":
            ss, zs = column_super_scales(to_blocks(W, 32), g)
            np.testing.assert_array_equal(qw.scales_scale, ss)
            np.testing.assert_array_equal(qw.zero_points_scale, zs)
    # real zero points fit the group better than integer ones at the same storage type
    integer = Grid(4, False, scale_dtype=g.scale_dtype)
    assert e_rtn < output_error(X, W, quantize_grid(W, integer, 32).dequantize())


def _convert(tmp_path, W, name="m", **cfg):
    src = save(matmul_model({"w0": W}), tmp_path / f"{name}.onnx")
    dst = tmp_path / f"{name}.q.onnx"
    return str(dst), int4onnx.quantize(src, dst, float_zero_points=True, **cfg)


def _inits(path):
    proto = onnx.load(path)
    return proto, {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}


@pytest.mark.parametrize("K,double_quant", [(256, False), (160, True), (576, True), (80, False)])
def test_int4onnx_inputs_and_sizes(tmp_path, K, double_quant):
    """The op's inputs: zero_points [N, n_blocks] float16 (the scales' type), or int8 codes with
    zero_points_scale ([N], or [1] below K = 256 like scales_scale then); the report's bytes count them; the
    padding codes past K are the nearest code of z."""
    if double_quant and "zero_points_scale" not in _native.OP_INPUTS:
        pytest.skip("this build of the op has no zero_points_scale input (fmin-native milestone 1)")
    N = 16
    W = (RNG.standard_normal((K, N)) * 0.05 + 0.01).astype(np.float32)
    path, r = _convert(tmp_path, W, double_quant=double_quant)
    proto, inits = _inits(path)
    (node,) = [n for n in proto.graph.node if n.op_type == _native.OP_NAME]
    nb = -(-K // 32)
    zp = inits[node.input[_native.OP_INPUTS["zero_points"]]]
    assert zp.shape == (N, nb) and zp.dtype == (np.int8 if double_quant else np.float16)
    layer = r.layers[0]
    assert layer["float_zero_points"] and "asym-float-zp" in layer.spec.describe()
    if double_quant:
        zss = inits[node.input[6]]  # I4O_IN_ZERO_POINTS_SCALE
        assert zss.dtype == np.float32 and zss.shape == ((N,) if K >= 256 else (1,))
        supers = 2 * 4 * (N if K >= 256 else 1)
        assert layer["bytes"] == N * nb * (16 + 1 + 1) + supers
    else:
        assert len(node.input) <= 6 or not node.input[6]
        assert layer["bytes"] == N * nb * (16 + 2 + 2)
    stored = sum(inits[name].nbytes for name in node.input[1:] if name in inits)
    assert stored == layer["bytes"]
    codes = _native.unpack_weights(inits[node.input[1]], nb * 32, N, 4, 32)
    if K % 32:
        z = zp.astype(np.float32) if not double_quant else zp * inits[node.input[6]][:, None]
        np.testing.assert_array_equal(codes[:, K:], np.repeat(np.clip(np.rint(z[:, -1:]), 0, 15), nb * 32 - K, 1))


def test_int4onnx_runs_and_matches_numpy(tmp_path):
    """Through ONNX Runtime with our op (the native side of real zero points, fmin-native's milestone 1)."""
    if "zero_points_scale" not in _native.OP_INPUTS:
        pytest.skip("this build of the op has no real zero points (fmin-native milestone 1)")
    K, N = 320, 24
    W = q4_1_weight(K, N)
    for dq in (False, True):
        for compute in ("fp32", "int8"):
            path, r = _convert(tmp_path, W, name=f"m{dq}{compute}", double_quant=dq, compute=compute)
            x = RNG.standard_normal((3, K)).astype(np.float32)
            y = make_session(path).run(None, {"x": x})[0]
            qw = quantize_grid(W, r.layers[0].spec.grid, 32)
            ref = x.astype(np.float64) @ qw.dequantize()
            tol = 1e-4 if compute == "fp32" else 2e-2
            np.testing.assert_allclose(y, ref, rtol=tol, atol=tol * np.abs(ref).max())


@pytest.mark.parametrize("compute", ["fp32", "int8"])
def test_matmulnbits_float_zero_points_of_a_type(tmp_path, compute):
    """MatMulNBits takes zero points of the scales' type (w = (q - zp) * scale): float32 [N, n_blocks] for a
    float32 model, and ONNX Runtime's output matches the numpy dequantization."""
    K, N = 256, 24
    W = q4_1_weight(K, N)
    path, r = _convert(tmp_path, W, format="matmulnbits", compute=compute)
    proto, inits = _inits(path)
    (node,) = [n for n in proto.graph.node if n.op_type == "MatMulNBits"]
    zp = inits[node.input[3]]
    assert zp.dtype == np.float32 and zp.shape == (N, K // 32)
    assert r.layers[0]["bytes"] == N * (K // 32) * (16 + 4 + 4)
    x = RNG.standard_normal((3, K)).astype(np.float32)
    y = make_session(path).run(None, {"x": x})[0]
    ref = x.astype(np.float64) @ W  # exact Q4_1 weights: reproduced to float rounding
    tol = 1e-4 if compute == "fp32" else 2e-2  # (ONNX Runtime 1.3x runs float zero points on its float path)
    np.testing.assert_allclose(y, ref, rtol=tol, atol=tol * np.abs(ref).max())


@pytest.mark.parametrize("kw,needle", [
    (dict(symmetric=True), "--float-zero-points is for asymmetric weights"),
    (dict(format="qdq"), "not supported by --format qdq"),
    (dict(quant_type="nf4", symmetric=True), "for asymmetric weights"),
])
def test_bad_options(kw, needle):
    with pytest.raises(ConfigError, match=needle):
        int4onnx.QuantConfig(float_zero_points=True, **kw)


def test_cli_refuses_qdq_in_one_line(tmp_path):
    src = save(matmul_model({"w0": RNG.standard_normal((64, 16)).astype(np.float32)}), tmp_path / "m.onnx")
    out = tmp_path / "q.onnx"
    res = CliRunner().invoke(main, ["convert", src, "-o", str(out), "--format", "qdq", "--float-zero-points"])
    assert res.exit_code == 2 and "DequantizeLinear takes integer zero points" in res.output
    assert "Traceback" not in res.output and not out.exists()


@pytest.mark.parametrize("lm_head_symmetric", [False, True])
def test_tied_table_keeps_gather_readable_codes(tmp_path, lm_head_symmetric):
    """GatherBlockQuantized reads integer zero points only: with --float-zero-points the tied table keeps
    integer zero points, or with --lm-head-symmetric symmetric codes (4.5 bits at group 32 with float16
    scales); the other layers have real zero points; the Gather's rows equal the lm_head's table."""
    from test_tied import V, stored_table, tied_lm

    src, E = tied_lm(tmp_path / "m.onnx")
    out = tmp_path / "q.onnx"
    r = int4onnx.quantize(src, out, lm_head="4", compute="fp32", float_zero_points=True,
                          lm_head_symmetric=lm_head_symmetric)
    by_weight = {layer["weight"]: layer for layer in r.layers}
    assert by_weight["E"]["symmetric"] is lm_head_symmetric
    assert not by_weight["E"].spec.float_zero_points and by_weight["W"].spec.float_zero_points
    (e,) = r.embeddings
    assert e["bits_per_weight"] == (4.5 if lm_head_symmetric else 4.875)
    proto = onnx.load(str(out))
    table, _, _ = stored_table(proto, 64)
    ids = RNG.integers(0, V, (2, 5), dtype=np.int64)
    x = RNG.standard_normal((3, 64)).astype(np.float32)
    if "zero_points_scale" not in _native.OP_INPUTS:  # the body's op needs real zero points to run
        return
    emb = make_session(str(out)).run(["emb"], {"input_ids": ids, "x": x})[0]
    np.testing.assert_array_equal(emb, table.astype(np.float32)[ids])


def test_lm_head_symmetric_without_tied_table(tmp_path):
    """A separate lm_head (not tied) is symmetric with --lm-head-symmetric --lm-head 4; the body is not."""
    from modelgen import tiny_lm

    src = save(tiny_lm(), tmp_path / "lm.onnx")
    r = int4onnx.quantize(src, tmp_path / "q.onnx", lm_head="4", lm_head_symmetric=True)
    heads = [layer for layer in r.layers if "lm_head" in (layer.decision or "")]
    assert heads and all(layer["symmetric"] for layer in heads)
    assert any(not layer["symmetric"] for layer in r.layers)


def test_mixed_precision_counts_real_zero_points(tmp_path):
    """--target-bits with real zero points: the cost model's bytes are the stored bytes (float zero points
    of the scales' size, not packed nibbles), and the budget holds (matmulnbits: float32 scales and zero
    points, 6 bits per weight at group 32)."""
    from modelgen import tiny_lm
    from test_calibration import V, lm_feeds_dir

    lm = save(tiny_lm(V=V), tmp_path / "lm.onnx")
    cal = lm_feeds_dir(tmp_path)
    opts = dict(lm_head="4", group_size=32, format="matmulnbits", compute="fp32", float_zero_points=True)
    base = int4onnx.quantize(lm, tmp_path / "base.onnx", **opts)
    assert all(layer["bytes"] == layer["N"] * -(-layer["K"] // 32) * (16 + 4 + 4) for layer in base.layers)
    target = base.bits_per_weight + 0.6
    r = int4onnx.quantize(lm, tmp_path / "mp.onnx", method="gptq", calibration=str(cal), target_bits=target, **opts)
    assert r.bits_per_weight <= target + 1e-9
    assert any(layer["bits"] == 8 or layer["block_size"] < 32 for layer in r.layers)
    assert all(layer.spec.float_zero_points for layer in r.layers)
