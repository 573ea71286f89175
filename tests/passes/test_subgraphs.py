"""MatMuls inside If and Loop bodies are quantized too, whether their weight is an initializer of the
body or of an enclosing graph, and the converted models run in ONNX Runtime."""

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from modelgen import make_model, save
from onnx import TensorProto, helper, numpy_helper

import int4onnx
from int4onnx import _native
from int4onnx.quant.rtn import quantize_rtn
from int4onnx.runtime import make_session

RNG = np.random.default_rng(11)
K, N = 64, 48


def _w():
    return (RNG.standard_normal((K, N)) * 0.1).astype(np.float32)


def _deq(w, fmt, group=32):
    """The weights as converted: float16 scales in the int4onnx format (--scale-dtype auto), float32 otherwise."""
    return quantize_rtn(w, 4, group, False, scale_dtype=np.float16 if fmt == "int4onnx" else np.float32).dequantize()


def if_model(w_outer, w_inner, w_shared):
    """y = If(c, then: x @ w_outer, else: x @ w_inner (body initializer)) + x @ w_shared in both the
    main graph and the then-branch."""
    out = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["b", N])  # noqa: E731
    then_g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w_outer"], ["t0"], name="then_mm"),
         helper.make_node("MatMul", ["x", "w_shared"], ["t1"], name="then_shared_mm"),
         helper.make_node("Add", ["t0", "t1"], ["yt"], name="then_add")], "then", [], [out("yt")])
    else_g = helper.make_graph([helper.make_node("MatMul", ["x", "w_inner"], ["ye"], name="else_mm")], "else", [],
                               [out("ye")], [numpy_helper.from_array(w_inner, "w_inner")])
    nodes = [helper.make_node("If", ["c"], ["yi"], then_branch=then_g, else_branch=else_g, name="if"),
             helper.make_node("MatMul", ["x", "w_shared"], ["ys"], name="main_mm"),
             helper.make_node("Add", ["yi", "ys"], ["y"], name="add")]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", K]),
                              helper.make_tensor_value_info("c", TensorProto.BOOL, [])], [out("y")],
                      [numpy_helper.from_array(w_outer, "w_outer"), numpy_helper.from_array(w_shared, "w_shared")])


def loop_model(w):
    """h = x; repeat 3 times: h = Tanh(h @ w) (w is an outer initializer, K == N)."""
    body = helper.make_graph(
        [helper.make_node("MatMul", ["h_in", "w"], ["m"], name="body_mm"),
         helper.make_node("Tanh", ["m"], ["h_out"], name="body_tanh"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body_cond")],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("h_in", TensorProto.FLOAT, ["b", K])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["b", K])])
    nodes = [helper.make_node("Loop", ["trips", "", "x"], ["y"], body=body, name="loop")]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", K])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", K])],
                      [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(3, np.int64), "trips")])


def _ops(path):
    return [(n.domain, n.op_type, n.graph is not None and n.graph.name) for n in
            ir.traversal.RecursiveGraphIterator(ir.load(str(path)).graph)]


@pytest.mark.parametrize("fmt", ["int4onnx", "matmulnbits", "qdq"])
def test_if_branches_are_quantized(tmp_path, fmt):
    w_outer, w_inner, w_shared = _w(), _w(), _w()
    src = save(if_model(w_outer, w_inner, w_shared), tmp_path / "if.onnx")
    dst = tmp_path / "if.q.onnx"
    report = int4onnx.quantize(src, dst, format=fmt, compute="fp32")  # matmulnbits defaults to int8 activations
    assert report.nodes_rewritten == 4 and not report.skipped
    assert len(report.layers) == 3  # w_shared is quantized once for its two users
    ops = _ops(dst)
    assert not [o for o in ops if o[1] == "MatMul" and fmt != "qdq"]
    onnx.checker.check_model(onnx.load(str(dst)))
    # the float weights are gone, wherever they lived
    names = {i.name for i in onnx.load(str(dst)).graph.initializer}
    assert not names & {"w_outer", "w_shared"}
    assert "w_inner" not in {i.name for n in onnx.load(str(dst)).graph.node for a in n.attribute
                             for i in a.g.initializer}
    sess = make_session(str(dst), qdq_accuracy_level=0)  # no int8 activations in the qdq fusion
    x = RNG.standard_normal((3, K)).astype(np.float32)
    for c in (True, False):
        y = sess.run(None, {"x": x, "c": np.array(c)})[0]
        branch = x @ _deq(w_outer, fmt) + x @ _deq(w_shared, fmt) if c else x @ _deq(w_inner, fmt)
        ref = branch + x @ _deq(w_shared, fmt)
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("fmt", ["int4onnx", "qdq"])
def test_loop_body_is_quantized(tmp_path, fmt):
    w = (RNG.standard_normal((K, K)) * 0.2).astype(np.float32)
    src = save(loop_model(w), tmp_path / "loop.onnx")
    dst = tmp_path / "loop.q.onnx"
    report = int4onnx.quantize(src, dst, format=fmt)
    assert report.nodes_rewritten == 1 and report.layers[0]["nodes"] == ["body_mm"]
    body_ops = [o for o in _ops(dst) if o[2] == "body"]
    want = (_native.DOMAIN, _native.OP_NAME) if fmt == "int4onnx" else ("", "DequantizeLinear")
    assert want in [o[:2] for o in body_ops]
    x = RNG.standard_normal((2, K)).astype(np.float32)
    y = make_session(str(dst), qdq_accuracy_level=0).run(None, {"x": x})[0]
    h, wq = x.astype(np.float64), _deq(w, fmt)
    for _ in range(3):
        h = np.tanh(h @ wq)
    np.testing.assert_allclose(y, h, rtol=1e-4, atol=1e-4)
