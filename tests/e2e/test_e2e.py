"""End to end through ONNX Runtime: converted models against numpy references and each other."""

import numpy as np
import onnx
import pytest
from modelgen import dequant_reference, int8_path_reference, make_model, matmul_model, save
from onnx import TensorProto, helper, numpy_helper
from paths import SHARED

import int4onnx
from int4onnx import _native
from int4onnx.runtime import Tokenizer, make_session, perplexity

RNG = np.random.default_rng(7)


def w(K, N, scale=1.0):
    return (RNG.standard_normal((K, N)) * scale).astype(np.float32)


def convert(tmp_path, proto, name="m", **cfg):
    src = save(proto, tmp_path / f"{name}.onnx")
    dst = tmp_path / f"{name}.{cfg.get('format', 'int4onnx')}.onnx"
    report = int4onnx.quantize(src, dst, **cfg)
    return str(dst), report


def run(path, feeds, **kw):
    sess = make_session(path, **kw)
    return sess.run(None, feeds)[0]


def reference(report_layers_model, x):
    """numpy dequantize-then-matmul through a chain converted with int4onnx (reads back the file)."""
    import onnx_ir as ir

    model = ir.load(report_layers_model)
    h = x.astype(np.float64)
    for node in model.graph:
        a = {k: v.value for k, v in node.attributes.items()}
        ins = {name: node.inputs[i] if i < len(node.inputs) else None for name, i in _native.OP_INPUTS.items()}
        K, N, bits, block = a["K"], a["N"], a["bits"], a["block_size"]
        codes = _native.unpack_weights(ins["B"].const_value.numpy(), K, N, bits, block)
        scales = ins["scales"].const_value.numpy().astype(np.float32)
        if ins["scales"].const_value.dtype == ir.DataType.INT8:  # double-quantized: int8 times a super-scale
            scales = scales * ins["scales_scale"].const_value.numpy()[:, None]
        zp = None
        if ins["zero_points"] is not None and ins["zero_points"].const_value.nbytes:
            zp = _native.unpack_zero_points(ins["zero_points"].const_value.numpy(), N, scales.shape[1], bits)
        h = h @ dequant_reference(codes, scales, zp, K, block, bits, a.get("quant_type", "int"))
        if ins["bias"] is not None and ins["bias"].const_value.nbytes:
            h = h + ins["bias"].const_value.numpy()
    return h


@pytest.mark.parametrize("bits,group,sym,extra", [
    (4, 32, False, {}), (4, 32, True, {}), (4, 16, False, {}), (4, 128, True, {}), (4, -1, False, {}),
    (8, 64, False, {}), (8, 32, True, {}),
    (4, 32, True, {"quant_type": "nf4"}), (4, 64, True, {"quant_type": "nf4", "double_quant": True}),
    (4, 32, False, {"double_quant": True}), (4, 16, True, {"double_quant": True}), (8, 32, False, {"double_quant": True}),
])
def test_int4onnx_equals_numpy_reference_and_stays_near_fp32(tmp_path, bits, group, sym, extra):
    weights = {"w0": w(172, 96, 0.1), "w1": w(96, 61, 0.1)}
    path, report = convert(tmp_path, matmul_model(weights, batch_dims=("b", "s")), bits=bits, group_size=group,
                           symmetric=sym, **extra)
    if extra.get("double_quant"):
        assert all(layer["scale_dtype"] == "int8" for layer in report.layers)
        m = onnx.load(path)
        assert all(len(n.input) == 6 for n in m.graph.node)  # int8 scales and the super-scale input
    assert report.nodes_rewritten == 2
    x = RNG.standard_normal((2, 5, 172)).astype(np.float32)
    y = run(path, {"x": x})
    assert y.shape == (2, 5, 61)
    ref = reference(path, x.reshape(-1, 172)).reshape(2, 5, 61)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    fp32 = x @ weights["w0"] @ weights["w1"]
    rel = np.linalg.norm(y - fp32) / np.linalg.norm(fp32)
    # output error stays within the weights' own quantization error (two layers, errors add up)
    weight_error = sum(layer["rel_error"] for layer in report.layers)
    assert rel < 1.5 * weight_error, (rel, weight_error)
    assert weight_error < (0.25 if bits == 4 else 0.02)
    if extra.get("double_quant"):  # int8 scales cost little accuracy against float scales
        _, plain = convert(tmp_path, matmul_model(weights, batch_dims=("b", "s")), name="plain", bits=bits,
                           group_size=group, symmetric=sym, quant_type=extra.get("quant_type", "int"))
        assert weight_error < 1.1 * sum(layer["rel_error"] for layer in plain.layers)


@pytest.mark.parametrize("K,per_tensor", [(172, True), (1024, False)])
def test_int8_scales_super_scale_per_tensor_for_small_k(tmp_path, K, per_tensor):
    """Small K: one float32 super-scale for the tensor ([1]); large K: one per column ([N])."""
    N = 24
    path, report = convert(tmp_path, matmul_model({"w0": w(K, N, 0.1)}), double_quant=True, group_size=32)
    node = onnx.load(path).graph.node[0]
    inits = {t.name: t for t in onnx.load(path).graph.initializer}
    assert list(inits[node.input[_native.OP_INPUTS["scales_scale"]]].dims) == ([1] if per_tensor else [N])
    x = RNG.standard_normal((3, K)).astype(np.float32)
    np.testing.assert_allclose(run(path, {"x": x}), reference(path, x), rtol=1e-4, atol=1e-4)
    nb = -(-K // 32)
    assert report.layers[0]["bytes"] == N * nb * 16 + N * nb + N * (-(-nb // 2)) + (4 if per_tensor else 4 * N)


def test_int8_compute_matches_int8_reference(tmp_path):
    W = w(256, 40)
    path, _ = convert(tmp_path, matmul_model({"w0": W}), compute="int8", group_size=64)
    x = RNG.standard_normal((3, 256)).astype(np.float32)
    y = run(path, {"x": x})
    q = int4onnx.quant.rtn.quantize_rtn(W, 4, 64, False, scale_dtype=np.float16)  # --scale-dtype auto
    ref8 = int8_path_reference(x, q.codes, q.scales, q.zero_points, 256, 64, 4)
    np.testing.assert_allclose(y, ref8, rtol=1e-5, atol=1e-5)


def test_three_formats_give_the_same_numbers(tmp_path):
    weights = {"w0": w(172, 64, 0.2), "w1": w(64, 30, 0.2)}
    x = RNG.standard_normal((4, 172)).astype(np.float32)
    outs = {}
    for fmt in ("int4onnx", "matmulnbits", "qdq"):
        # matmulnbits defaults to int8 activations; float32 scales, which matmulnbits and qdq store for a float32 model
        path, _ = convert(tmp_path, matmul_model(weights, batch_dims=("b",)), name=fmt, format=fmt, group_size=32,
                          compute="fp32", scale_dtype="float32")
        # ORT fuses QDQ into MatMulNBits with int8 activations unless told otherwise
        outs[fmt] = run(path, {"x": x}, qdq_accuracy_level=0)
    np.testing.assert_allclose(outs["matmulnbits"], outs["int4onnx"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outs["qdq"], outs["int4onnx"], rtol=1e-5, atol=1e-5)


def test_fp16_model(tmp_path):
    W = w(128, 48, 0.1)
    path, _ = convert(tmp_path, matmul_model({"w0": W}, dtype=np.float16))
    x = RNG.standard_normal((3, 128)).astype(np.float16)
    y = run(path, {"x": x})
    assert y.dtype == np.float16
    fp = x.astype(np.float32) @ W
    assert np.linalg.norm(y.astype(np.float32) - fp) / np.linalg.norm(fp) < 0.12


def test_gemm_with_bias_and_rank1_input(tmp_path):
    K, N = 40, 24
    B, C = w(N, K), w(1, N)[0]
    node = helper.make_node("Gemm", ["x", "B", "C"], ["y"], name="g", transB=1, beta=0.5)
    proto = make_model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", K])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", N])],
                       [numpy_helper.from_array(B, "B"), numpy_helper.from_array(C, "C")])
    path, _ = convert(tmp_path, proto, symmetric=True, group_size=16)  # symmetric + bias: no inner input gap
    x = RNG.standard_normal((6, K)).astype(np.float32)
    y = run(path, {"x": x})
    fp = x @ B.T + 0.5 * C
    assert np.linalg.norm(y - fp) / np.linalg.norm(fp) < 0.12
    names = list(onnx.load(path).graph.node[0].input)
    assert "" not in names
    # rank-1 activations through the op itself
    mm = matmul_model({"w0": w(K, N)}, batch_dims=())
    p1, _ = convert(tmp_path, mm, name="rank1")
    v = RNG.standard_normal(K).astype(np.float32)
    assert run(p1, {"x": v}).shape == (N,)


@pytest.mark.parametrize("isa", ["scalar"] + sorted({k.split("_")[0] for k in _native.kernels_available()} - {"scalar"}))
@pytest.mark.parametrize("compute", ["fp32", "int8"])
def test_forced_isa_and_threads_agree(tmp_path, monkeypatch, isa, compute):
    weights = {"w0": w(256, 130, 0.1)}
    path, _ = convert(tmp_path, matmul_model(weights), compute=compute)
    x = RNG.standard_normal((9, 256)).astype(np.float32)
    base = run(path, {"x": x}, threads=1)
    monkeypatch.setenv("INT4ONNX_ISA", isa)
    for threads in (1, 2):
        np.testing.assert_allclose(run(path, {"x": x}, threads=threads), base, rtol=1e-5, atol=1e-5)


def test_op_reports_bad_input_shape_as_an_error(tmp_path):
    node = helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")
    proto = make_model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "k"])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(w(64, 8), "W")])
    path, _ = convert(tmp_path, proto)
    sess = make_session(path)  # the graph does not pin K, so ONNX Runtime lets a wrong K reach the op
    with pytest.raises(Exception, match="last dimension must be K=64"):
        sess.run(None, {"x": np.zeros((2, 63), np.float32)})


def test_op_rejects_inconsistent_attributes(tmp_path):
    path, _ = convert(tmp_path, matmul_model({"w0": w(64, 8)}))
    m = onnx.load(path)
    for a in m.graph.node[0].attribute:
        if a.name == "N":
            a.i = 9
    bad = tmp_path / "bad.onnx"
    onnx.save(m, bad)
    with pytest.raises(Exception, match="B has shape"):
        make_session(str(bad))


def test_forced_unsupported_isa_is_an_error(tmp_path, monkeypatch):
    path, _ = convert(tmp_path, matmul_model({"w0": w(32, 8)}))
    monkeypatch.setenv("INT4ONNX_ISA", "no-such-isa")
    with pytest.raises(Exception, match="INT4ONNX_ISA"):
        make_session(path)


STORIES = SHARED / "models" / "stories260K"


@pytest.fixture(scope="module")
def stories_eval():
    text = (SHARED / "corpora" / "tinystories_Niklas6_sample.txt").read_text()[:40000]
    tok = Tokenizer(STORIES / "tok512.model")
    return tok.encode_document(text)


def test_stories260k_every_weight_matmul_rewritten_and_perplexity_matches_matmulnbits(tmp_path, stories_eval):
    src = str(STORIES / "stories260K.onnx")
    ppl = {}
    for fmt in ("int4onnx", "matmulnbits"):
        dst = tmp_path / f"s.{fmt}.onnx"
        report = int4onnx.quantize(src, dst, format=fmt, group_size=32, symmetric=False)
        assert report.nodes_rewritten == 36
        assert len(report.skipped) == 10 and all("not a constant" in s["reason"] for s in report.skipped)
        ppl[fmt], n = perplexity(make_session(str(dst)), stories_eval)
        assert n == 19288
    fp32, _ = perplexity(make_session(src), stories_eval)
    assert abs(fp32 - 4.2515) < 0.01
    assert abs(ppl["int4onnx"] - ppl["matmulnbits"]) / ppl["matmulnbits"] < 0.02
    assert fp32 < ppl["int4onnx"] < fp32 * 1.3


def test_exports_only_the_registration_symbol():
    import subprocess

    out = subprocess.run(["nm", "-D", "--defined-only", int4onnx.library_path()], capture_output=True, text=True,
                         check=True).stdout
    symbols = sorted(line.split()[-1] for line in out.splitlines() if line.strip())
    assert symbols == ["PyInit__int4onnx_native", "RegisterCustomOps"]


def test_session_config_defaults_and_overrides(tmp_path, capfd):
    """Spinning is off by default; a caller's entry replaces the default, set once (ORT warns on stderr
    when an entry is set twice, which `make demo` and `int4onnx bench` used to show)."""
    path = save(matmul_model({"w0": w(16, 8)}), tmp_path / "m.onnx")
    key = "session.intra_op.allow_spinning"
    assert make_session(path).get_session_options().get_session_config_entry(key) == "0"
    for value in ("0", "1"):
        sess = make_session(path, config={key: value})
        assert sess.get_session_options().get_session_config_entry(key) == value
    assert "already exists" not in capfd.readouterr().err
