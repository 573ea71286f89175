"""Calibrated conversion end to end: calibration data (and its errors), AWQ graph folding, GPTQ through the
pipeline, mixed precision, the LM policy, embedding quantization, and `int4onnx eval`."""

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from click.testing import CliRunner
from modelgen import char_tokenizer, matmul_model, save, tiny_lm

import int4onnx
from int4onnx import calibrate, io
from int4onnx.cli import main
from int4onnx.config import QuantConfig
from int4onnx.errors import CalibrationError
from int4onnx.passes import awq as awq_pass
from int4onnx.passes.awq import AwqPass
from int4onnx.passes.quantize import default_spec
from int4onnx.passes.select import select_matmuls
from int4onnx.pipeline import _calibrate
from int4onnx.runtime import make_session
from int4onnx.tools.evaluate import evaluate

RNG = np.random.default_rng(11)
ALPHABET = "abcdefghijklmnopqrstuvwxyz .,\n"
V = 40


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture()
def chain(tmp_path):
    weights = {"w0": RNG.standard_normal((64, 48)).astype(np.float32), "w1": RNG.standard_normal((48, 24)).astype(np.float32)}
    return weights, save(matmul_model(weights), tmp_path / "chain.onnx")


@pytest.fixture()
def lm(tmp_path):
    return save(tiny_lm(V=V), tmp_path / "lm.onnx")


def lm_feeds_dir(tmp_path, n=6, seq=24, name="cal"):
    d = tmp_path / name
    d.mkdir()
    for i in range(n):
        np.savez(d / f"{i:03d}.npz", input_ids=RNG.integers(0, V, (1, seq), dtype=np.int64))
    return d


# -- calibration statistics through ONNX Runtime ---------------------------------------------------

def test_collected_statistics_equal_numpy(chain, tmp_path):
    weights, path = chain
    model = io.load_model(path)
    plan = select_matmuls(model, QuantConfig())
    xs = [RNG.standard_normal((3, 64)).astype(np.float32) for _ in range(4)]
    stats = calibrate.collect_statistics(model, [t.node.inputs[0] for t in plan.targets], [{"x": x} for x in xs], gram=True)
    X0 = np.concatenate(xs).astype(np.float64)
    X1 = np.concatenate([x @ weights["w0"] for x in xs]).astype(np.float64)
    for name, X in (("x", X0), ("h0", X1)):
        s = stats[name]
        assert s.count == 12
        np.testing.assert_allclose(s.absmax, np.abs(X).max(0), rtol=1e-5)
        np.testing.assert_allclose(s.mean_sq, (X * X).mean(0), rtol=1e-5)
        np.testing.assert_allclose(s.gram, X.T @ X, rtol=1e-4, atol=1e-3)
    assert len(model.graph.outputs) == 1  # the model was left as it was


# -- bad calibration data: one line, exit code 2, no output -------------------------------------

def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("make,needle", [
    (lambda d: _npz(d / "c.npz", y=np.zeros((2, 64), np.float32)), "'y' is not an input of the model (its inputs: x)"),
    (lambda d: _npz(d / "c.npz", x=np.zeros((2, 64), np.int64)), "input 'x' is int64, the model expects float32[?, 64]"),
    (lambda d: _npz(d / "c.npz", x=np.zeros((2, 63), np.float32)), "input 'x' has shape [2, 63], the model expects float32[?, 64]"),
    (lambda d: _npz(d / "c.npz", x=np.zeros((1, 2, 64), np.float32)), "has shape [1, 2, 64]"),
    (lambda d: _npz(d / "c.npz", x=np.zeros((0, 64), np.float32)), "input 'x' is empty"),
    (lambda d: _npz(d / "c.npz"), "the .npz holds no arrays"),
    (lambda d: (d / "bad.npz").write_bytes(b"not a zip") and d / "bad.npz", "cannot read it as .npz"),
    (lambda d: (d / "empty").mkdir() or d / "empty", "the directory holds no .npz files"),
    (lambda d: d / "missing.npz", "no such file or directory"),
])
def test_bad_calibration_data_is_a_clear_error(tmp_path, chain, make, needle):
    _, model = chain
    data = tmp_path / "data"
    data.mkdir()
    cal = make(data)
    before = sorted(p.name for p in tmp_path.iterdir())
    r = invoke("convert", model, "-o", tmp_path / "out.onnx", "--method", "gptq", "--calibration", cal)
    assert r.exit_code == 2, r.output
    assert needle in r.output and r.output.startswith("int4onnx: error:") and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("args,needle", [
    (["--method", "awq"], "--method awq needs calibration data"),
    (["--target-bits", "5"], "--target-bits needs calibration data"),
    (["--calibration-text", "t.txt"], "no tokenizer beside it"),  # none given, none beside the model
    (["--double-quant", "--format", "matmulnbits"], "only supported by the int4onnx format"),
])
def test_calibration_options_errors(tmp_path, chain, args, needle):
    _, model = chain
    r = invoke("convert", model, "-o", tmp_path / "out.onnx", *args)
    assert r.exit_code == 2 and needle in r.output and "Traceback" not in r.output
    assert not (tmp_path / "out.onnx").exists()


def test_text_calibration_errors(tmp_path, chain, lm):
    _, model = chain
    tok = char_tokenizer(tmp_path / "tok.json", ALPHABET)
    text = tmp_path / "t.txt"
    text.write_text("hello world. " * 20)
    r = invoke("convert", model, "-o", tmp_path / "o.onnx", "--method", "gptq", "--calibration-text", text, "--tokenizer", tok)
    assert r.exit_code == 2 and "the model has no integer token-id input" in r.output
    r = invoke("convert", lm, "-o", tmp_path / "o.onnx", "--method", "gptq", "--calibration-text", text, "--tokenizer", tok,
               "--sequence-length", 10000)
    assert r.exit_code == 2 and "fewer than one sample of --sequence-length 10000" in r.output
    r = invoke("convert", lm, "-o", tmp_path / "o.onnx", "--method", "gptq", "--calibration-text", text, "--tokenizer",
               tmp_path / "nope.json")
    assert r.exit_code == 2 and "tokenizer" in r.output and "no such file" in r.output
    assert not (tmp_path / "o.onnx").exists()


# -- AWQ: the float graph is unchanged by the folding ------------------------------------------

def test_awq_folds_scales_exactly(tmp_path, lm, monkeypatch):
    # The folding is under test, not the search: alpha is fixed at 0.5 so that every input is scaled
    # whatever a CPU's rounding makes the search pick (on some CPUs it keeps alpha = 0 for Wout).
    def fixed_alpha(weights, mean_abs, gram, fake_quant, points=0):
        s = np.maximum(np.asarray(mean_abs, np.float64), 1e-8) ** 0.5
        return (s / np.sqrt(s.max() * s.min())).astype(np.float32), 0.5, {0.0: 1.0, 0.5: 0.5}

    monkeypatch.setattr(awq_pass, "search_scales", fixed_alpha)
    model = io.load_model(lm)
    config = QuantConfig(method="awq", calibration=str(lm_feeds_dir(tmp_path)), lm_head="4")
    plan = select_matmuls(model, config)
    _, stats, _ = _calibrate(model, plan.targets, config, None)
    awq = AwqPass(config, plan.targets, stats, lambda t: default_spec(config, t))
    awq(model)
    where = {k[0]: v.input_scale or v.reason for k, v in awq.result.decisions.items()}
    assert where["W1"] == where["W3"] == "folded into gamma (Mul)"
    assert where["W2"] == "folded into the columns of W3 (MatMul)"
    assert where["W4"] == "folded into ln_s (LayerNormalization)"
    assert where["W5"].startswith("input Mul") and where["Wout"].startswith("input Mul")
    ids = RNG.integers(0, V, (2, 16), dtype=np.int64)
    after = make_session(ir.serde.serialize_model(model).SerializeToString()).run(None, {"input_ids": ids})[0]
    before = make_session(lm).run(None, {"input_ids": ids})[0]
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4 * np.abs(before).max())


@pytest.mark.parametrize("method", ["clip", "awq", "gptq", "awq-gptq"])
def test_calibrated_methods_beat_rtn_and_report_before_after(tmp_path, lm, method):
    cal = lm_feeds_dir(tmp_path)
    out, rep = tmp_path / "q.onnx", tmp_path / "r.json"
    r = invoke("convert", lm, "-o", out, "--method", method, "--calibration", cal, "--lm-head", "4", "--report", rep,
               "--group-size", 16)
    assert r.exit_code == 0, r.output
    assert "rtn " in r.output and f"-> {method}" in r.output
    report = json.loads(rep.read_text())
    assert report["calibration"]["samples"] == 6
    for layer in report["layers"]:
        assert {"output_rel_error", "rtn_output_rel_error", "sqnr_db", "rtn_sqnr_db", "output_sqnr_db"} <= set(layer)
    mean = lambda k: np.mean([layer[k] for layer in report["layers"]])  # noqa: E731
    assert mean("output_rel_error") < mean("rtn_output_rel_error")
    # the model output on held-out inputs is closer to fp32 than RTN's
    rtn = tmp_path / "rtn.onnx"
    int4onnx.quantize(lm, rtn, group_size=16, lm_head="4")
    feeds = {"input_ids": RNG.integers(0, V, (4, 24), dtype=np.int64)}
    ref = make_session(lm).run(None, feeds)[0]
    err = lambda p: np.linalg.norm(make_session(str(p)).run(None, feeds)[0] - ref)  # noqa: E731
    assert err(out) < err(rtn)


# -- LM policy, mixed precision, embeddings ------------------------------------------------------

def test_lm_head_policy(tmp_path, lm):
    r8 = int4onnx.quantize(lm, tmp_path / "a.onnx")
    head = [layer for layer in r8.layers if layer["weight"] == "Wout"][0]
    assert head["bits"] == 8 and "lm_head" in head["decision"]
    assert all(layer["bits"] == 4 for layer in r8.layers if layer["weight"] != "Wout")
    rf = int4onnx.quantize(lm, tmp_path / "b.onnx", lm_head="float")
    assert "Wout" not in [layer["weight"] for layer in rf.layers]
    assert any(s["name"] == "lm_head" and "--lm-head float" in s["reason"] for s in rf.skipped)
    r4 = int4onnx.quantize(lm, tmp_path / "c.onnx", lm_head="4")
    assert all(layer["bits"] == 4 for layer in r4.layers)
    # a model without a token embedding has no lm_head
    weights = {"w0": RNG.standard_normal((32, 16)).astype(np.float32)}
    plain = int4onnx.quantize(save(matmul_model(weights), tmp_path / "m.onnx"), tmp_path / "m4.onnx")
    assert plain.layers[0]["bits"] == 4


def test_mixed_precision_target_bits_and_max_error(tmp_path, lm):
    cal = lm_feeds_dir(tmp_path)
    base = int4onnx.quantize(lm, tmp_path / "base.onnx", lm_head="4", group_size=32)
    target = base.bits_per_weight + 0.6
    r = int4onnx.quantize(lm, tmp_path / "mp.onnx", lm_head="4", group_size=32, method="gptq", calibration=str(cal),
                          target_bits=target)
    mp = r.calibration["mixed_precision"]
    assert r.bits_per_weight <= target + 1e-9
    assert mp["estimated_bits_per_weight_all_selected"] <= target + 1e-9
    promoted = [layer for layer in r.layers if layer["bits"] == 8 or layer["block_size"] < 32]
    assert promoted, "some layer should be promoted within the budget"
    for layer in r.layers:  # every layer's measured sensitivities are in the report
        assert {"error_4", "error_8", "error_float"} <= set(layer["sensitivity"])
        assert layer["sensitivity"]["error_8"] < layer["sensitivity"]["error_4"]
    # max error: the estimate meets the bound, and the model's real output error is close to the estimate
    bound = 0.5 * np.sqrt(sum(layer["sensitivity"]["error_4"] ** 2 for layer in r.layers))
    r2 = int4onnx.quantize(lm, tmp_path / "me.onnx", lm_head="4", group_size=32, method="gptq", calibration=str(cal),
                           max_error=bound)
    est = r2.calibration["mixed_precision"]["estimated_output_rel_error"]
    assert est <= bound
    ref, got = [], []
    s_ref, s_got = make_session(lm), make_session(str(tmp_path / "me.onnx"))
    for f in sorted(cal.iterdir())[:4]:
        feed = dict(np.load(f))
        ref.append(s_ref.run(None, feed)[0])
        got.append(s_got.run(None, feed)[0])
    real = np.linalg.norm(np.concatenate(got) - np.concatenate(ref)) / np.linalg.norm(np.concatenate(ref))
    assert 0.5 * est < real < 2.0 * est, (real, est)


@pytest.mark.parametrize("macs, windows, tokens", [(None, 6, 64), (1, 1, 32)])
def test_sensitivity_runs_each_layer_once_on_short_windows(tmp_path, lm, monkeypatch, macs, windows, tokens):
    """Mixed precision runs the model end to end once per layer (not once per option), on calibration
    windows cut to its multiply-add budget (a tiny model: all of them); the other options' errors come
    from the Gram matrices."""
    from int4onnx import precision

    if macs is not None:
        monkeypatch.setattr(precision, "SENSITIVITY_MACS", macs)  # as for a large model: one 32-token window
    cal = lm_feeds_dir(tmp_path, n=6, seq=64)
    runs = []
    real_run = calibrate.ModelRunner.run

    def run(self, feed, names):
        runs.append((tuple(k for k in feed if k != "input_ids"), feed["input_ids"].shape))
        return real_run(self, feed, names)

    monkeypatch.setattr(calibrate.ModelRunner, "run", run)
    r = int4onnx.quantize(lm, tmp_path / "mp.onnx", lm_head="4", group_size=32, method="gptq", calibration=str(cal),
                          target_bits=6.0)
    sens = runs[6:]  # after the 6 calibration runs
    assert all(shape == (windows, tokens) for _, shape in sens)  # the windows as one batch
    layers = {w for w, _ in sens if w}
    assert len(layers) == len(r.layers) + sum(1 for s in r.skipped if "mixed precision" in s["reason"])
    assert len(sens) == 1 + len(layers)  # the float model once, then each layer once
    for layer in r.layers:  # estimates for every option, ordered as their precision
        e = layer["sensitivity"]
        assert e["error_float"] == 0 and e["error_8"] < e["error_4/g16"] < e["error_4"]


@pytest.mark.parametrize("bits", [4, 8])
def test_embedding_quantization_runs_in_onnx_runtime(tmp_path, lm, bits):
    out = tmp_path / "e.onnx"
    r = int4onnx.quantize(lm, out, embedding=str(bits), lm_head="4")
    (e,) = r.embeddings
    assert e["quantized"] and e["bits"] == bits and e["bits_per_weight"] <= bits + 1.25
    proto = onnx.load(str(out))
    assert [n.op_type for n in proto.graph.node if n.domain == "com.microsoft"] == ["GatherBlockQuantized"]
    assert "E" not in {i.name for i in proto.graph.initializer}
    # the gathered rows equal the numpy dequantization of the stored table
    g = [n for n in proto.graph.node if n.op_type == "GatherBlockQuantized"][0]
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    from int4onnx import _native
    block = [a.i for a in g.attribute if a.name == "block_size"][0]
    codes = _native.unpack_weights(inits[g.input[0]].reshape(V, -1, block * bits // 8), 32, V, bits, block)
    zp = _native.unpack_zero_points(inits[g.input[3]], V, 32 // block, bits)
    table = (codes.astype(np.float32) - np.repeat(zp, block, 1)) * np.repeat(inits[g.input[2]], block, 1)
    E = onnx.numpy_helper.to_array([i for i in onnx.load(lm).graph.initializer if i.name == "E"][0])
    assert np.linalg.norm(table - E) / np.linalg.norm(E) < (0.12 if bits == 4 else 0.01)
    m = onnx.load(str(out))
    m.graph.output.append(onnx.helper.make_tensor_value_info(g.output[0], onnx.TensorProto.FLOAT, None))
    ids = RNG.integers(0, V, (2, 7), dtype=np.int64)
    rows = make_session(m.SerializeToString()).run([g.output[0]], {"input_ids": ids})[0]
    np.testing.assert_allclose(rows, table[ids], rtol=1e-6, atol=1e-6)


# -- text calibration with a tokenizer.json, and eval -------------------------------------------

def test_text_calibration_finds_the_tokenizer_beside_the_model(tmp_path, lm):
    """--calibration-text without --tokenizer takes tokenizer.json beside the model: the same statistics,
    hence the same bytes, as with --tokenizer given."""
    char_tokenizer(tmp_path / "tokenizer.json", ALPHABET)
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog.\n" * 30)
    args = ("--method", "gptq", "--calibration-text", text, "--calibration-samples", 3, "--sequence-length", 32)
    r = invoke("convert", lm, "-o", tmp_path / "a.onnx", *args)
    assert r.exit_code == 0, r.output
    r = invoke("convert", lm, "-o", tmp_path / "b.onnx", *args, "--tokenizer", tmp_path / "tokenizer.json")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_text_calibration_and_eval_perplexity(tmp_path, lm):
    tok = char_tokenizer(tmp_path / "tok.json", ALPHABET)
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog.\n" * 30)
    out = tmp_path / "q.onnx"
    r = invoke("convert", lm, "-o", out, "--method", "gptq", "--calibration-text", text, "--tokenizer", tok,
               "--calibration-samples", 5, "--sequence-length", 64, "--lm-head", "4")
    assert r.exit_code == 0, r.output
    assert "calibration: 5 sample(s)" in r.output
    r = invoke("eval", lm, out, "--perplexity", text, "--tokenizer", tok, "--window", 50, "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)["perplexity"]
    ids = [ALPHABET.index(c) for c in text.read_text()]
    for which, path in (("reference", lm), ("candidate", out)):
        nll, n = 0.0, 0
        sess = make_session(str(path))
        for start in range(0, len(ids) - 1, 50):
            chunk = ids[start:start + 51]
            logits = sess.run(None, {"input_ids": np.array([chunk[:-1]])})[0][0].astype(np.float64)
            lp = logits - logits.max(1, keepdims=True)
            lp -= np.log(np.exp(lp).sum(1, keepdims=True))
            nll -= lp[np.arange(len(chunk) - 1), chunk[1:]].sum()
            n += len(chunk) - 1
        assert res["tokens"] == n
        assert res[which] == pytest.approx(np.exp(nll / n), rel=1e-9)


def test_eval_output_metrics_equal_numpy(tmp_path, chain):
    weights, ref = chain
    noisy = {k: v + 0.05 * RNG.standard_normal(v.shape).astype(np.float32) for k, v in weights.items()}
    cand = save(matmul_model(noisy), tmp_path / "cand.onnx")
    data = tmp_path / "data"
    data.mkdir()
    xs = [RNG.standard_normal((5, 64)).astype(np.float32) for _ in range(3)]
    for i, x in enumerate(xs):
        np.savez(data / f"{i}.npz", x=x)
    res = evaluate(ref, cand, calibrate.FeedSource(path=str(data)))
    m = res["outputs"]["y"]
    Y = np.concatenate([x @ weights["w0"] @ weights["w1"] for x in xs]).astype(np.float64)
    C = np.concatenate([x @ noisy["w0"] @ noisy["w1"] for x in xs]).astype(np.float64)
    cos = (Y * C).sum(1) / np.linalg.norm(Y, axis=1) / np.linalg.norm(C, axis=1)
    assert res["samples"] == 3 and m["rows"] == 15
    assert m["cosine_mean"] == pytest.approx(cos.mean(), rel=1e-4)
    assert m["cosine_min"] == pytest.approx(cos.min(), rel=1e-4)
    assert m["rel_error"] == pytest.approx(np.linalg.norm(C - Y) / np.linalg.norm(Y), rel=1e-3)
    assert m["max_abs_error"] == pytest.approx(np.abs(C - Y).max(), rel=1e-3)
    assert m["top1_agreement"] == pytest.approx(np.mean(C.argmax(1) == Y.argmax(1)))
    r = invoke("eval", ref, cand, "--data", data)
    assert r.exit_code == 0 and "cos mean" in r.output and f"{m['cosine_mean']:.5f}" in r.output
    r = invoke("eval", ref, cand)
    assert r.exit_code == 2 and "nothing to evaluate on" in r.output
    with pytest.raises(CalibrationError, match="is int64"):
        np.savez(data / "3.npz", x=np.zeros((2, 64), np.int64))
        evaluate(ref, cand, calibrate.FeedSource(path=str(data)))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("method", ["awq", "gptq"])
def test_gemm_and_float16_models(tmp_path, method, dtype):
    """Gemm with transB and a bias (encoder-style linear layers), float16 weights and activations."""
    from onnx import TensorProto, helper, numpy_helper

    elem = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    X = (RNG.standard_normal((64, 16)) @ RNG.standard_normal((16, 96)) / 4).astype(dtype)
    X[:, 7] *= 10
    B = (RNG.standard_normal((80, 96)) / 10).astype(dtype)
    C = RNG.standard_normal(80).astype(dtype)
    W2 = (RNG.standard_normal((80, 32)) / 9).astype(dtype)
    nodes = [helper.make_node("Gemm", ["x", "B", "C"], ["h"], transB=1, name="g"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "W2"], ["y"], name="mm")]
    from modelgen import make_model
    proto = make_model(nodes, [helper.make_tensor_value_info("x", elem, ["m", 96])],
                       [helper.make_tensor_value_info("y", elem, ["m", 32])],
                       [numpy_helper.from_array(B, "B"), numpy_helper.from_array(C, "C"), numpy_helper.from_array(W2, "W2")])
    src = save(proto, tmp_path / "gemm.onnx")
    cal = tmp_path / "cal.npz"
    np.savez(cal, x=X)
    q, r = tmp_path / "q.onnx", tmp_path / "r.onnx"
    rep = int4onnx.quantize(src, q, method=method, calibration=str(cal), group_size=32)
    int4onnx.quantize(src, r, group_size=32)
    assert rep.nodes_rewritten == 2
    ref = make_session(src).run(None, {"x": X})[0].astype(np.float32)
    err = lambda p: np.linalg.norm(make_session(str(p)).run(None, {"x": X})[0].astype(np.float32) - ref)  # noqa: E731
    assert err(q) < err(r)


def test_awq_and_embeddings_on_a_model_with_external_data(tmp_path, lm):
    """External weights are memory-mapped and released after reading: AWQ's rescaled weights and the
    quantized embedding table must give the same model as from a single-file source."""
    proto = onnx.load(lm)
    ext = tmp_path / "ext" / "lm.onnx"
    ext.parent.mkdir()
    onnx.save_model(proto, ext, save_as_external_data=True, all_tensors_to_one_file=True, location="lm.onnx.data",
                    size_threshold=0)
    cal = lm_feeds_dir(tmp_path)
    outs = []
    for src in (lm, ext):
        out = tmp_path / f"q_{len(outs)}.onnx"
        r = invoke("convert", src, "-o", out, "--method", "awq", "--calibration", cal, "--embedding", "4",
                   "--lm-head", "4", "--group-size", 16)
        assert r.exit_code == 0, r.output
        outs.append(out)
    feeds = {"input_ids": RNG.integers(0, V, (2, 24), dtype=np.int64)}
    a, b = (make_session(str(p)).run(None, feeds)[0] for p in outs)
    np.testing.assert_array_equal(a, b)


# -- Gram matrices at LLM size: on disk, one in memory at a time ----------------------------------

def test_gram_matrices_are_not_all_held_in_memory(tmp_path):
    import tracemalloc

    L, K = 12, 256
    weights = {f"w{i}": (RNG.standard_normal((K, K)) / 16).astype(np.float32) for i in range(L)}
    model = io.load_model(save(matmul_model(weights), tmp_path / "deep.onnx"))
    plan = select_matmuls(model, QuantConfig())
    xs = [RNG.standard_normal((40, K)).astype(np.float32) for _ in range(3)]
    one = 8 * K * K  # bytes of one float64 Gram; all of them would be L times that
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        stats = calibrate.collect_statistics(model, [t.node.inputs[0] for t in plan.targets], [{"x": x} for x in xs],
                                             gram=True)
        held = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.reset_peak()
        read = []
        for t in plan.targets:  # read every Gram, one after another
            g = stats[t.node.inputs[0].name].gram
            read.append((float(np.trace(g)), g[:, 0].copy()))
            del g
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    X = np.concatenate(xs).astype(np.float64)
    for i, (trace, column) in enumerate(read):  # ONNX Runtime computes the activations in float32
        G = X.T @ X
        assert trace == pytest.approx(np.trace(G), rel=1e-5)
        np.testing.assert_allclose(column, G[:, 0], rtol=1e-4, atol=1e-5 * np.abs(G).max())
        X = X @ weights[f"w{i}"].astype(np.float64)
    store = next(iter(stats.values())).store
    assert len(stats) == L and store.reads == L
    assert held < 3 * one, (held, one)  # after collection: statistics only (all Grams: 12 x one), on disk
    assert peak < held + 3 * one, (peak, held, one)  # reading them: one at a time
    directory = store.dir
    assert directory.is_dir()
    calibrate.release(stats)
    assert not directory.exists()


def test_gram_fold_equals_one_product(tmp_path):
    from int4onnx.io import temporaries_next_to

    with temporaries_next_to(tmp_path / "out.onnx"):
        store = calibrate.GramStore(fold_rows=7)  # folds every 7 rows: mid-feed, several times
    xs = [RNG.standard_normal((n, 5)).astype(np.float32) for n in (3, 9, 1, 12)]
    for x in xs:
        store.append("a", x)
        store.append("b", 2 * x)
    X = np.concatenate(xs).astype(np.float64)
    G = X.T @ X  # the store's products are float32 (summed in float64): equal to float32 rounding
    np.testing.assert_allclose(store.gram("a"), G, rtol=1e-6, atol=1e-6 * np.abs(G).max())
    np.testing.assert_allclose(store.gram("b"), 4 * G, rtol=1e-6, atol=4e-6 * np.abs(G).max())
    assert store.dir.parent == tmp_path
    store.close()
    assert not store.dir.exists()


def test_target_bits_below_the_lm_head_floor_fails_before_calibrating(tmp_path, lm, monkeypatch):
    cal = lm_feeds_dir(tmp_path)

    def no_calibration(*args, **kwargs):
        raise AssertionError("calibration ran before the --target-bits check")

    monkeypatch.setattr(calibrate, "collect_statistics", no_calibration)
    four = int4onnx.quantize(lm, tmp_path / "four.onnx", lm_head="4", group_size=32).bits_per_weight
    out = tmp_path / "mp.onnx"
    r = invoke("convert", lm, "-o", out, "--method", "gptq", "--calibration", cal, "--group-size", 32,
               "--target-bits", round(four + 0.01, 3))
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "--lm-head 8" in r.output and "use --lm-head 4" in r.output, r.output
    assert not out.exists()
    # below even 4-bit everywhere: the message says so and names the budget that works
    r = invoke("convert", lm, "-o", out, "--method", "gptq", "--calibration", cal, "--group-size", 32,
               "--target-bits", round(four - 0.2, 3), "--lm-head", "4")
    assert r.exit_code == 2 and "--target-bits" in r.output and f"{four:.3f}" in r.output, r.output
    assert not out.exists()
