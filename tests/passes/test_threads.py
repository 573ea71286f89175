"""The calibrated methods' speed-ups (issue 13 item 6): GPTQ by slices of output columns in threads, AWQ's
search by points, calibration statistics beside ONNX Runtime's next run, calibration sessions without
the model's own outputs. Each gives the result of the plain code bit for bit."""

import numpy as np
import pytest
from modelgen import matmul_model, save, tiny_lm

from int4onnx import _threads, calibrate, io
from int4onnx.config import QuantConfig
from int4onnx.passes.select import select_matmuls
from int4onnx.quant import awq
from int4onnx.quant.awq import search_scales
from int4onnx.quant.gptq import quantize_gptq
from int4onnx.quant.grid import Grid
from int4onnx.quant.rtn import quantize_grid

RNG = np.random.default_rng(13)


def _layer(K, N, M=300):
    X = RNG.standard_normal((M, K)) @ RNG.standard_normal((K, K)) / np.sqrt(K) + 0.2 * RNG.standard_normal((M, K))
    X[:, 3] *= 10
    X[:, 7] = 0.0  # a dead channel
    W = (RNG.standard_normal((K, N)) / np.sqrt(K)).astype(np.float32)
    return W, X.T @ X


def _same(a, b):
    for attr in ("codes", "scales", "zero_points", "scale_codes", "scales_scale"):
        x, y = getattr(a, attr), getattr(b, attr)
        assert (x is None) == (y is None), attr
        if x is not None:
            np.testing.assert_array_equal(x, y, err_msg=attr)


@pytest.mark.parametrize("grid,act_order,bs", [
    (Grid(4, False), False, 32), (Grid(4, True), True, 16), (Grid(4, True, "nf4"), False, 64),
    (Grid(4, False, scale_dtype="int8"), False, 32), (Grid(4, False, scale_dtype="int8", tensor_super_scale=True), True, 32),
    (Grid(8, False), False, 16)])
def test_gptq_column_threads_give_the_one_thread_result(grid, act_order, bs):
    W, H = _layer(96, 3 * _threads.MIN_SLICE_COLUMNS + 5)
    one = quantize_gptq(W, H, grid, bs, act_order=act_order, clip=True, threads=1, lazy_block=48)
    for threads in (2, 3):
        _same(one, quantize_gptq(W, H, grid, bs, act_order=act_order, clip=True, threads=threads, lazy_block=48))


def test_column_slices():
    m = _threads.MIN_SLICE_COLUMNS
    assert _threads.column_slices(m - 1, 8) == [slice(0, m - 1)]
    parts = _threads.column_slices(5 * m + 3, 3)
    assert len(parts) == 3 and parts[0].start == 0 and parts[-1].stop == 5 * m + 3
    assert all(a.stop == b.start for a, b in zip(parts, parts[1:], strict=False))
    assert min(p.stop - p.start for p in parts) >= m
    assert len(_threads.column_slices(10 * m, None)) == min(10, _threads.cpu_threads())


def test_awq_search_in_threads_equals_one_thread(monkeypatch):
    W, H = _layer(64, 40)
    W2 = (RNG.standard_normal((64, 24)) / 8).astype(np.float32)
    mean_abs = np.sqrt(np.diag(H) / 300)
    g = Grid(4, False)

    def run():
        return search_scales([W, W2], mean_abs, H, lambda w: quantize_grid(w, g, 32).dequantize())

    monkeypatch.setattr(awq, "cpu_threads", lambda: 1)
    s1, a1, l1 = run()
    monkeypatch.setattr(awq, "cpu_threads", lambda: 4)
    s4, a4, l4 = run()
    assert a1 == a4 and l1 == l4 and len(l1) == awq.DEFAULT_POINTS
    np.testing.assert_array_equal(s1, s4)
    assert a1 > 0  # the outlier channel makes scaling pay: the search did pick a point


@pytest.mark.parametrize("fold_rows", [7, calibrate.GRAM_FOLD_ROWS])
def test_calibration_beside_onnx_runtime_equals_one_after_another(tmp_path, monkeypatch, fold_rows):
    """One CPU: statistics after each run; more: STATISTICS_WORKERS threads share the inputs out while
    ONNX Runtime runs the next sample (Grams folded mid-way or once); BLAS keeps its threads afterwards."""
    weights = {"w0": RNG.standard_normal((64, 48)).astype(np.float32),
               "w1": RNG.standard_normal((48, 24)).astype(np.float32),
               "w2": RNG.standard_normal((24, 40)).astype(np.float32)}
    model = io.load_model(save(matmul_model(weights), tmp_path / "chain.onnx"))
    values = [t.node.inputs[0] for t in select_matmuls(model, QuantConfig()).targets]
    feeds = [{"x": RNG.standard_normal((5, 64)).astype(np.float32)} for _ in range(5)]
    monkeypatch.setattr(calibrate, "GRAM_FOLD_ROWS", fold_rows)
    blas = [i["num_threads"] for i in _threads._controller().info() if i["user_api"] == "blas"]
    got = {}
    for cpus in (1, 2, 4):
        monkeypatch.setattr(calibrate, "cpu_threads", lambda c=cpus: c)
        stats = calibrate.collect_statistics(model, values, feeds, gram=True)
        got[cpus] = {n: (s.count, s.sum_sq.copy(), s.hist.copy(), s.gram.copy()) for n, s in stats.items()}
        calibrate.release(stats)
        assert [i["num_threads"] for i in _threads._controller().info() if i["user_api"] == "blas"] == blas
    assert got[1].keys() == got[2].keys() == got[4].keys() == {"x", "h0", "h1"}
    for name in got[1]:
        for cpus in (2, 4):
            for a, b in zip(got[1][name], got[cpus][name], strict=True):
                np.testing.assert_array_equal(a, b)


def test_sensitivity_beside_onnx_runtime_equals_one_after_another(tmp_path, monkeypatch):
    """The sensitivity pass's Gram errors in a worker thread beside ONNX Runtime's end-to-end run: the same
    estimates, choices and output as computed one after another."""
    import int4onnx
    from int4onnx import precision

    lm = save(tiny_lm(V=40), tmp_path / "lm.onnx")
    cal = tmp_path / "cal"
    cal.mkdir()
    for i in range(4):
        np.savez(cal / f"{i}.npz", input_ids=RNG.integers(0, 40, (1, 24), dtype=np.int64))
    reports = {}
    for cpus in (1, 2):
        monkeypatch.setattr(precision, "cpu_threads", lambda c=cpus: c)
        out = tmp_path / f"mp{cpus}.onnx"
        r = int4onnx.quantize(lm, out, lm_head="4", group_size=32, method="gptq", calibration=str(cal), target_bits=5.0)
        reports[cpus] = ([(layer["bits"], layer["block_size"], layer["sensitivity"]) for layer in r.layers],
                         out.read_bytes())
    assert reports[1][0] and all(s for _, _, s in reports[1][0])
    assert reports[1] == reports[2]


def test_a_calibration_error_in_the_worker_reaches_the_caller(tmp_path, monkeypatch):
    weights = {"w0": RNG.standard_normal((8, 4)).astype(np.float32)}
    model = io.load_model(save(matmul_model(weights), tmp_path / "one.onnx"))
    values = [t.node.inputs[0] for t in select_matmuls(model, QuantConfig()).targets]
    bad = np.full((2, 8), np.nan, np.float32)
    monkeypatch.setattr(calibrate, "cpu_threads", lambda: 2)
    with pytest.raises(calibrate.CalibrationError, match="NaN"):
        calibrate.collect_statistics(model, values, [{"x": np.ones((2, 8), np.float32)}, {"x": bad},
                                                     {"x": np.ones((2, 8), np.float32)}], gram=True)


def test_calibration_session_without_the_model_outputs(tmp_path):
    """only_extra drops the LM's logits (and what only they need: the lm_head) from the session; the
    recorded activations are the same."""
    model = io.load_model(save(tiny_lm(V=40), tmp_path / "lm.onnx"))
    values = [t.node.inputs[0] for t in select_matmuls(model, QuantConfig()).targets]
    names = list(dict.fromkeys(v.name for v in values))
    outputs = [o.name for o in model.graph.outputs]
    feed = {"input_ids": RNG.integers(0, 40, (2, 9), dtype=np.int64)}
    full = calibrate.ModelRunner(model, values)
    slim = calibrate.ModelRunner(model, values, only_extra=True)
    assert [o.name for o in model.graph.outputs] == outputs  # the model is left as it was
    assert {o.name for o in slim.session.get_outputs()} == set(names)
    assert set(outputs) <= {o.name for o in full.session.get_outputs()}
    assert slim.model_outputs == full.model_outputs == outputs
    for a, b in zip(full.run(feed, names), slim.run(feed, names), strict=True):
        np.testing.assert_array_equal(a, b)
    full.close()
    slim.close()


def test_gram_folds_cap_the_pending_bytes_per_input():
    store = calibrate.GramStore()
    try:
        for name, K in (("small", 576), ("mid", 1536), ("wide", 4096), ("widest", 11008)):
            store.add(name, K)
        assert store.fold_at("small") == calibrate.GRAM_FOLD_ROWS  # 38 MB of rows: under the cap
        assert store.fold_at("mid") * 4 * 1536 <= calibrate.GRAM_PENDING_BYTES < (store.fold_at("mid") + 1) * 4 * 1536
        assert store.fold_at("wide") == store.fold_at("widest") == calibrate.GRAM_FOLD_MIN_ROWS
    finally:
        store.close()
