"""The pass pipeline on small models built in code (no ONNX Runtime needed here)."""

import numpy as np
import onnx_ir as ir
import pytest
from modelgen import make_model, matmul_model
from onnx import TensorProto, helper, numpy_helper

from int4onnx import _native
from int4onnx.config import QuantConfig
from int4onnx.errors import ConfigError, NothingToQuantizeError, UnsupportedModelError
from int4onnx.pipeline import quantize_model

RNG = np.random.default_rng(0)
IN = _native.OP_INPUTS  # MatMulInt4 input slots by name


def w(K, N):
    return RNG.standard_normal((K, N)).astype(np.float32)


def run(model_proto, **cfg):
    model = ir.serde.deserialize_model(model_proto)
    return quantize_model(model, QuantConfig(**cfg))


def ops(model):
    return [(n.domain, n.op_type) for n in model.graph]


def test_chain_is_rewritten_and_dead_weights_removed():
    model, done = run(matmul_model({"w0": w(64, 48), "w1": w(48, 33)}))
    assert ops(model) == [(_native.DOMAIN, _native.OP_NAME)] * 2
    assert "w0" not in model.graph.initializers and "w1" not in model.graph.initializers
    assert model.opset_imports[_native.DOMAIN] == 1
    assert done.record.nodes_rewritten == 2 and not done.plan.skipped
    node = list(model.graph)[0]
    attrs = {k: a.value for k, a in node.attributes.items()}
    assert attrs == {"K": 64, "N": 48, "bits": 4, "block_size": 32, "quant_type": "int", "compute": "fp32"}
    assert node.inputs[IN["B"]].const_value.shape == (48, 2, 16)
    assert node.inputs[IN["scales"]].const_value.shape == (48, 2)
    assert node.inputs[IN["zero_points"]].const_value.shape == (48, 1)


def test_graph_output_name_is_kept():
    model, _ = run(matmul_model({"w0": w(32, 8)}))
    assert [o.name for o in model.graph.outputs] == ["y"]
    assert list(model.graph)[0].outputs[0].name == "y"


def test_shared_weight_is_quantized_once():
    W = w(64, 16)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["a"], name="m1"),
             helper.make_node("MatMul", ["x2", "W"], ["b"], name="m2")]
    proto = make_model(nodes, [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["s", 64]) for n in ("x", "x2")],
                       [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("a", "b")],
                       [numpy_helper.from_array(W, "W")])
    model, done = run(proto)
    assert len(done.plan.specs) == 1 and done.record.nodes_rewritten == 2
    n1, n2 = list(model.graph)
    assert n1.inputs[IN["B"]] is n2.inputs[IN["B"]] and n1.inputs[IN["scales"]] is n2.inputs[IN["scales"]]


def test_weight_shared_with_another_op_keeps_the_float_copy():
    W = w(32, 32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["a"], name="m"),
             helper.make_node("Add", ["a", "W"], ["b"], name="add")]
    proto = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [32, 32])],
                       [helper.make_tensor_value_info("b", TensorProto.FLOAT, None)], [numpy_helper.from_array(W, "W")])
    model, _ = run(proto)
    assert "W" in model.graph.initializers


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("bias", ["none", "const", "dynamic"])
def test_gemm(trans_b, bias):
    K, N = 48, 20
    B = w(N, K) if trans_b else w(K, N)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", K])]
    inits = [numpy_helper.from_array(B, "B")]
    gemm_in = ["x", "B"]
    if bias == "const":
        inits.append(numpy_helper.from_array(w(1, N)[0], "C"))
        gemm_in.append("C")
    elif bias == "dynamic":
        inputs.append(helper.make_tensor_value_info("C", TensorProto.FLOAT, ["m", N]))
        gemm_in.append("C")
    node = helper.make_node("Gemm", gemm_in, ["y"], name="g", transB=trans_b, alpha=0.5, beta=2.0)
    proto = make_model([node], inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model, done = run(proto)
    t = done.plan.targets[0]
    assert (t.K, t.N, t.transposed, t.alpha) == (K, N, bool(trans_b), 0.5)
    np.testing.assert_allclose(t.weight_kn(), 0.5 * (B.T if trans_b else B))
    kinds = [n.op_type for n in model.graph]
    if bias == "dynamic":
        assert kinds == [_native.OP_NAME, "Mul", "Add"]
    else:
        assert kinds == [_native.OP_NAME]
        if bias == "const":
            op = list(model.graph)[0]
            np.testing.assert_allclose(op.inputs[IN["bias"]].const_value.numpy(), 2.0 * numpy_helper.to_array(inits[1]),
                                       rtol=1e-6)


def test_reasons_for_skipped_nodes():
    K = 16
    nodes = [
        helper.make_node("MatMul", ["x", "y_in"], ["a"], name="dynamic"),
        helper.make_node("MatMul", ["Wl", "x"], ["b"], name="const_left"),
        helper.make_node("MatMul", ["x", "W3"], ["c"], name="rank3"),
        helper.make_node("MatMul", ["xi", "Wi"], ["d"], name="int_weight"),
        helper.make_node("MatMul", ["x", "Wok"], ["e"], name="ok"),
        helper.make_node("MatMul", ["x", "Wskip"], ["f"], name="skip_me"),
        helper.make_node("MatMul", ["x", "Wnan"], ["g"], name="nan_weight"),
    ]
    W3 = w(K, K * 2).reshape(2, K, K)
    Wnan = w(K, K)
    Wnan[0, 0] = np.nan
    inits = [numpy_helper.from_array(x, n) for n, x in
             [("Wl", w(K, K)), ("W3", W3), ("Wi", np.ones((K, K), np.int32)), ("Wok", w(K, K)),
              ("Wskip", w(K, K)), ("Wnan", Wnan)]]
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [K, K]),
           helper.make_tensor_value_info("y_in", TensorProto.FLOAT, [K, K]),
           helper.make_tensor_value_info("xi", TensorProto.INT32, [K, K])]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT if n != "d" else TensorProto.INT32, None)
            for n in "abcdefg"]
    model, done = run(make_model(nodes, ins, outs, inits), exclude=("skip_.*",))
    reasons = {s.name: s.reason for s in done.plan.skipped}
    assert "not a constant" in reasons["dynamic"]
    assert "left one" in reasons["const_left"]
    assert "rank 3" in reasons["rank3"]
    assert "INT32" in reasons["int_weight"]
    assert "--exclude" in reasons["skip_me"]
    assert "NaN" in reasons["nan_weight"]
    assert [t.node.name for t in done.plan.targets] == ["ok"]


def test_constant_node_weight():
    W = w(32, 8)
    nodes = [helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(W)),
             helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")]
    proto = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [])
    model, done = run(proto)
    assert [n.op_type for n in model.graph] == [_native.OP_NAME]


def test_fp16_model_gets_fp16_scales():
    model, done = run(matmul_model({"w0": w(64, 16)}, dtype=np.float16))
    node = list(model.graph)[0]
    assert node.inputs[IN["scales"]].const_value.dtype == ir.DataType.FLOAT16


def test_nothing_to_quantize_says_what_was_found():
    nodes = [helper.make_node("MatMul", ["x", "z"], ["y"], name="dyn")]
    proto = make_model(nodes, [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4, 4]) for n in "xz"],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [])
    with pytest.raises(NothingToQuantizeError, match="dyn: weight is not a constant"):
        run(proto)


def test_already_quantized_is_refused():
    model, _ = run(matmul_model({"w0": w(32, 8)}))
    with pytest.raises(UnsupportedModelError, match="already quantized"):
        quantize_model(model, QuantConfig())


@pytest.mark.parametrize("fmt", ["matmulnbits", "qdq"])
def test_other_formats(fmt):
    model, _ = run(matmul_model({"w0": w(172, 24)}), format=fmt, group_size=-1)
    kinds = [(n.domain, n.op_type) for n in model.graph]
    if fmt == "matmulnbits":
        assert kinds == [("com.microsoft", "MatMulNBits")]
        node = list(model.graph)[0]
        assert node.attributes["block_size"].value == 256  # per-channel rounded to a power of two
    else:
        assert kinds == [("", "DequantizeLinear"), ("", "MatMul")]
        assert model.opset_imports[""] == 21


@pytest.mark.parametrize("bad", [dict(bits=3), dict(group_size=3), dict(group_size=-5), dict(group_size=0), dict(group_size=-1, bits=2),
                                 dict(group_size=32.0), dict(bits=True),
                                 dict(method="magic"), dict(format="gguf"), dict(compute="fp8"),
                                 dict(quant_type="nf4", symmetric=False), dict(exclude=("(",))])
def test_bad_options(bad):
    with pytest.raises(ConfigError):
        QuantConfig(**bad)


def test_block_size_rules():
    c = QuantConfig(group_size=32)
    assert c.block_size_for(172) == 32 and c.block_size_for(16) == 16
    assert QuantConfig(group_size=-1).block_size_for(172) == 176
    assert QuantConfig(group_size=-1).block_size_for(4096) == 4096
    assert QuantConfig(group_size=256).block_size_for(64) == 64


def test_weights_are_quantized_lazily_once_each(tmp_path):
    from int4onnx.passes import quantize as qmod

    calls = []

    def counting(w_, ctx):
        calls.append(ctx.target.weight.name)
        return qmod.rtn_method(w_, ctx)

    model, done = run(matmul_model({"w0": w(64, 48), "w1": w(48, 33)}))
    done.quantizer.method = counting
    assert done.layers == {}  # nothing quantized until the bytes are needed
    proto = ir.serde.serialize_model(model)
    assert sorted(calls) == ["w0", "w1"]  # codes, scales and zero points of a weight share one run
    assert len(done.layers) == 2 and all(layer.error.rel_error > 0 for layer in done.layers.values())
    assert len(proto.graph.initializer) == 6
