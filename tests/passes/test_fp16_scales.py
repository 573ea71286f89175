"""float16 block scales for float32 models (--scale-dtype): the op, the quantizer, the converter, the CLI."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from modelgen import matmul_model, save
from onnx import numpy_helper
from opcases import build, check_valid, session, valid_case

import int4onnx
from int4onnx import _native
from int4onnx.cli import main
from int4onnx.errors import ConfigError, UnsupportedModelError
from int4onnx.quant.rtn import quantize_rtn
from int4onnx.runtime import make_session

RNG = np.random.default_rng(10)


def _with_float32_scales(model_bytes: bytes) -> bytes:
    """The same model with its float16 scales initializer widened to float32 (the same values)."""
    proto = onnx.load_from_string(model_bytes)
    (node,) = proto.graph.node
    name = node.input[_native.OP_INPUTS["scales"]]
    for i, init in enumerate(proto.graph.initializer):
        if init.name == name:
            a = numpy_helper.to_array(init)
            assert a.dtype == np.float16
            proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(a.astype(np.float32), name))
    return proto.SerializeToString()


@pytest.mark.parametrize("compute", ["fp32", "int8"])
@pytest.mark.parametrize("K,N,bits,block,sym,quant_type,bias", [
    (64, 16, 4, 32, False, "int", False), (300, 37, 4, 64, True, "int", True), (129, 8, 8, 16, False, "int", True),
    (256, 40, 4, 128, True, "nf4", False), (1, 5, 4, 16, True, "int", False)])
def test_op_float16_scales_with_float_a_equal_float32_scales(K, N, bits, block, sym, quant_type, bias, compute):
    """The op widens float16 scales to float32 once at session start: the same values as float32 scales give
    the same output bit for bit, and both match the numpy reference."""
    for weights_as_inputs in (False, True):
        case = valid_case(K=K, N=N, bits=bits, block=block, sym=sym, quant_type=quant_type, bias=bias, compute=compute,
                          scale_type="float16", weights_as_inputs=weights_as_inputs, a_shape=[2, 3, K], seed=K + N)
        check_valid(case)
        model, feeds, _ = build(case)
        y16 = session(model).run(None, feeds)[0]
        if weights_as_inputs:
            feeds = dict(feeds, scales=feeds["scales"].astype(np.float32))
            y32 = session(_retype_input(model, "scales")).run(None, feeds)[0]
        else:
            y32 = session(_with_float32_scales(model)).run(None, feeds)[0]
        assert y16.dtype == np.float32
        np.testing.assert_array_equal(y16, y32)


def _retype_input(model_bytes: bytes, name: str) -> bytes:
    proto = onnx.load_from_string(model_bytes)
    for v in proto.graph.input:
        if v.name == name:
            v.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    return proto.SerializeToString()


def test_op_refuses_float32_scales_with_float16_a():
    case = valid_case(a_type="float16", mutations=[["dtype", "scales", "float"]])
    model, feeds, _ = build(case)
    with pytest.raises(Exception, match="no kernel def matches node inputs for Op: MatMulInt4"):
        session(model).run(None, feeds)


def _convert(tmp_path, weights, name="m", **cfg):
    src = save(matmul_model(weights), tmp_path / f"{name}.onnx")
    dst = tmp_path / f"{name}.q.onnx"
    report = int4onnx.quantize(src, dst, **cfg)
    return str(dst), report


def _scales_of(path):
    proto = onnx.load(path)
    (node,) = [n for n in proto.graph.node if n.op_type == "MatMulInt4"]
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    return inits[node.input[_native.OP_INPUTS["scales"]]], node, inits


@pytest.mark.parametrize("symmetric,method", [(True, "rtn"), (False, "rtn"), (True, "clip"), (False, "clip")])
def test_default_stores_float16_scales_and_codes_against_them(tmp_path, symmetric, method):
    K, N = 256, 48
    W = (RNG.standard_normal((K, N)) * 0.05).astype(np.float32)
    path, report = _convert(tmp_path, {"w0": W}, symmetric=symmetric, method=method)
    scales, node, inits = _scales_of(path)
    assert scales.dtype == np.float16 and report.layers[0]["scale_dtype"] == "float16"
    nb = K // 32
    zp_bytes = 0 if symmetric else N * (-(-nb // 2))
    assert report.layers[0]["bytes"] == N * nb * 16 + N * nb * 2 + zp_bytes
    if symmetric:
        assert report.layers[0]["bits_per_weight"] == 4.5
    codes = _native.unpack_weights(inits[node.input[1]], K, N, 4, 32)
    if method == "rtn":  # codes are those of round to nearest on the rounded scales
        q = quantize_rtn(W, 4, 32, symmetric, scale_dtype=np.float16)
        np.testing.assert_array_equal(codes, q.codes)
        np.testing.assert_array_equal(scales, q.scales.astype(np.float16))
    x = RNG.standard_normal((3, K)).astype(np.float32)
    y = make_session(path).run(None, {"x": x})[0]
    zp = None if symmetric else _native.unpack_zero_points(inits[node.input[3]], N, nb, 4)
    from modelgen import dequant_reference

    ref = x.astype(np.float64) @ dequant_reference(codes, scales.astype(np.float32), zp, K, 32, 4, "int")
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # float32 scales: 5.0 bits per weight (symmetric), and nearly the same error
    path32, r32 = _convert(tmp_path, {"w0": W}, name="m32", symmetric=symmetric, method=method, scale_dtype="float32")
    assert _scales_of(path32)[0].dtype == np.float32 and r32.layers[0]["scale_dtype"] == "float32"
    assert r32.layers[0]["bytes"] - report.layers[0]["bytes"] == N * nb * 2
    e16, e32 = report.layers[0]["rel_error"], r32.layers[0]["rel_error"]
    assert abs(e16 - e32) < 0.01 * e32


def test_other_formats_and_float16_models_keep_the_model_type(tmp_path):
    W = (RNG.standard_normal((64, 16)) * 0.1).astype(np.float32)
    for fmt in ("matmulnbits", "qdq"):
        _, r = _convert(tmp_path, {"w0": W}, name=fmt, format=fmt)
        assert r.layers[0]["scale_dtype"] == "float32"
    src = save(matmul_model({"w0": W.astype(np.float16)}, dtype=np.float16), tmp_path / "h.onnx")
    r = int4onnx.quantize(src, tmp_path / "h.q.onnx", scale_dtype="float32")
    assert r.layers[0]["scale_dtype"] == "float16"  # the op takes scales of A's type (or int8) with float16 A
    _, r = _convert(tmp_path, {"w0": W}, name="dq", double_quant=True)
    assert r.layers[0]["scale_dtype"] == "int8"


@pytest.mark.parametrize("kw,needle", [
    (dict(format="matmulnbits", scale_dtype="float16"), "--scale-dtype float16 is only supported by the int4onnx"),
    (dict(format="qdq", scale_dtype="float16"), "--scale-dtype float16 is only supported by the int4onnx"),
    (dict(double_quant=True, scale_dtype="float16"), "--double-quant stores int8 scales"),
    (dict(scale_dtype="bfloat16"), "scale_dtype must be one of"),
])
def test_bad_options(kw, needle):
    with pytest.raises(ConfigError, match=needle):
        int4onnx.QuantConfig(**kw)


@pytest.mark.parametrize("scale,why", [(1e7, "beyond float16"), (1e-5, "subnormal in float16")])
def test_out_of_range_layer_keeps_float32_scales_under_auto(tmp_path, caplog, scale, why):
    """auto: a layer whose largest scale overflows float16 (or is subnormal there) keeps float32 scales,
    with a warning; the others get float16. Explicit float16: a one-line error, nothing written."""
    W = (RNG.standard_normal((64, 16))).astype(np.float32)
    weights = {"w0": W * 0.1, "w1": (W[:16] * scale).astype(np.float32)}
    with caplog.at_level(logging.WARNING, logger="int4onnx"):
        path, r = _convert(tmp_path, weights, symmetric=True)
    dtypes = {layer["weight"]: layer["scale_dtype"] for layer in r.layers}
    assert dtypes == {"w0": "float16", "w1": "float32"}
    assert any(why in rec.getMessage() and "'w1'" in rec.getMessage() for rec in caplog.records)
    x = RNG.standard_normal((2, 64)).astype(np.float32)
    y = make_session(path).run(None, {"x": x})[0]
    ref = (x @ weights["w0"]) @ weights["w1"]
    assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < 0.2
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(UnsupportedModelError, match=f"w1.*{why}.*--scale-dtype float32"):
        _convert(tmp_path, weights, name="explicit", symmetric=True, scale_dtype="float16")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before + ["explicit.onnx"])  # only the source


def test_tied_table_gets_float16_scales_and_a_cast_for_the_gather(tmp_path):
    from test_tied import V, stored_table, tied_lm

    src, E = tied_lm(tmp_path / "m.onnx")
    out = tmp_path / "q.onnx"
    r = int4onnx.quantize(src, out, lm_head="4", compute="fp32")
    proto = onnx.load(str(out))
    table, _, inits = stored_table(proto, 64)
    (mm,) = [n for n in proto.graph.node if n.op_type == "MatMulInt4" and n.name.startswith("lm_head")]
    assert inits[mm.input[2]].dtype == np.float16
    (g,) = [n for n in proto.graph.node if n.op_type == "GatherBlockQuantized"]
    (cast,) = [n for n in proto.graph.node if n.output[0] == g.input[2]]
    assert cast.op_type == "Cast" and cast.attribute[0].i == onnx.TensorProto.FLOAT
    ids = RNG.integers(0, V, (2, 5), dtype=np.int64)
    x = RNG.standard_normal((3, 64)).astype(np.float32)
    emb = make_session(str(out)).run(["emb"], {"input_ids": ids, "x": x})[0]
    assert emb.dtype == np.float32
    np.testing.assert_array_equal(emb, table.astype(np.float32)[ids])
    # group 32, asymmetric 4-bit: 4 + 16/32 (scales) + 4/32 (zero points) + 8/32 (the Gather's zero points)
    assert r.embeddings[0]["bits_per_weight"] == 4.875


def test_cli(tmp_path):
    src = save(matmul_model({"w0": (RNG.standard_normal((64, 16)) * 0.1).astype(np.float32)}), tmp_path / "m.onnx")
    r = CliRunner().invoke(main, ["convert", src, "-o", str(tmp_path / "a.onnx"), "--scale-dtype", "float32"])
    assert r.exit_code == 0, r.output
    assert _scales_of(str(tmp_path / "a.onnx"))[0].dtype == np.float32
    r = CliRunner().invoke(main, ["convert", src, "-o", str(tmp_path / "b.onnx"), "--format", "qdq",
                                  "--scale-dtype", "float16"])
    assert r.exit_code == 2 and "only supported by the int4onnx format" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "b.onnx").exists()
