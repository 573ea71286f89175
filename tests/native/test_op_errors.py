"""Broken MatMulInt4 graphs give an ONNX Runtime error that names the node and the problem; valid
edge cases (zero rows, many batch dimensions, inputs left out) run. The fuzzer (test_op_fuzz.py)
covers the same ground at random; these are the named cases of the issue, with their messages."""

import numpy as np
import pytest
from opcases import run, valid_case

NODE = "MatMulInt4 node 'fuzz_node'"

BROKEN = [
    # A: rank and last dimension against K
    (dict(mutations=[["a_shape", []]]), "A must have rank 1..64"),
    (dict(mutations=[["a_shape", [3, 63]]]), "its last dimension must be K=64"),
    (dict(mutations=[["a_shape", [0, 0]]]), "its last dimension must be K=64"),
    # K or N of 0, negative, huge; other attributes
    (dict(mutations=[["attr", "K", 0]]), "invalid K=0"),
    (dict(mutations=[["attr", "N", 0]]), "invalid K=64 N=0"),
    (dict(mutations=[["attr", "N", -1]]), "invalid K=64 N=-1"),
    (dict(mutations=[["attr", "K", 2**62]]), "invalid K=4611686018427387904"),
    (dict(mutations=[["attr", "N", 2**31]]), "B has shape [16, 2, 16], expected [2147483648, 2, 16]"),
    (dict(mutations=[["attr", "bits", 3]]), "bits=3, expected 4 or 8"),
    (dict(mutations=[["attr", "block_size", 17]]), "block_size=17"),
    (dict(mutations=[["attr", "K", None]]), "required int attribute 'K' is missing or not an int"),
    (dict(mutations=[["attr", "N", 16.0]]), "required int attribute 'N' is missing or not an int"),
    (dict(mutations=[["attr", "quant_type", "int" + "x" * 100]]), "quant_type='intxxxx"),
    (dict(mutations=[["attr", "quant_type", 1]]), "attribute 'quant_type' must be a string"),
    (dict(mutations=[["attr", "compute", "fp64"]]), "compute='fp64'"),
    (dict(quant_type="nf4", sym=True, mutations=[["attr", "bits", 8]]), "nf4 needs bits=4"),
    # B, scales, zero points, bias, scales_scale: shapes and types against the attributes
    (dict(mutations=[["shape", "B", [16, 2, 15]]]), "B has shape [16, 2, 15], expected [16, 2, 16]"),
    (dict(mutations=[["shape", "B", [16, 32]]]), "B has shape [16, 32]"),
    (dict(mutations=[["empty", "B"]]), "B has shape [0]"),
    (dict(mutations=[["dtype", "B", "int8"]]), "tensor(int8)"),
    (dict(mutations=[["shape", "scales", [16, 3]]]), "scales have shape [16, 3], expected [16, 2]"),
    (dict(mutations=[["empty", "scales"]]), "scales have shape [0]"),
    (dict(mutations=[["dtype", "scales", "double"]]), "tensor(double)"),
    (dict(mutations=[["dtype", "scales", "int8"]]), "int8 scales need input 5"),
    (dict(mutations=[["shape", "zero_points", [16, 2]]]), "zero_points must be uint8 [16, 1]"),
    (dict(quant_type="nf4", sym=True, mutations=[["shape", "zero_points", [16, 1]]]), "nf4 weights take no zero points"),
    (dict(bias=True, mutations=[["shape", "bias", [17]]]), "bias must be [N=16]"),
    (dict(bias=True, mutations=[["shape", "bias", [1, 16]]]), "bias must be [N=16]"),
    (dict(int8_scales=True, mutations=[["shape", "scales_scale", [15]]]), "scales_scale must be float32 [N=16]"),
    (dict(int8_scales=True, mutations=[["drop", "scales_scale"]]), "int8 scales need input 5"),
    (dict(mutations=[["shape", "scales_scale", [16]], ["dtype", "scales_scale", "float"]]),
     "scales_scale given but scales are not int8"),
    # real ("float") zero points: [N, n_blocks] of float32 (float A), float16, or int8 with zero_points_scale
    (dict(mutations=[["dtype", "zero_points", "double"]]), "zero_points must be uint8 (integer, packed), or float32, float16 or int8 (real) (got float64)"),
    (dict(a_type="float16", real_zp="float16", mutations=[["dtype", "zero_points", "float"]]), "or float16, float16 or int8 (real) (got float32)"),
    (dict(real_zp="float", mutations=[["shape", "zero_points", [16, 3]]]), "real zero_points (float32) have shape [16, 3], expected [16, 2]"),
    (dict(real_zp="float16", mutations=[["shape", "zero_points", [2, 16]]]), "real zero_points (float16) have shape [2, 16], expected [16, 2]"),
    (dict(real_zp="int8", mutations=[["drop", "zero_points_scale"]]), "int8 zero_points need input 6 (zero_points_scale"),
    (dict(real_zp="int8", mutations=[["shape", "zero_points_scale", [15]]]), "zero_points_scale must be float32 [N=16] or [1]"),
    (dict(real_zp="int8", mutations=[["dtype", "zero_points_scale", "float16"]]), "tensor(float16)"),
    (dict(real_zp="float", mutations=[["shape", "zero_points_scale", [16]], ["dtype", "zero_points_scale", "float"]]),
     "zero_points_scale given but zero_points are not int8"),
    (dict(mutations=[["shape", "zero_points_scale", [16]], ["dtype", "zero_points_scale", "float"]]),
     "zero_points_scale given but zero_points are not int8"),
    (dict(sym=True, mutations=[["shape", "zero_points_scale", [16]], ["dtype", "zero_points_scale", "float"]]),
     "zero_points_scale given but there are no zero_points"),
    (dict(quant_type="nf4", sym=True, mutations=[["shape", "zero_points", [16, 2]], ["dtype", "zero_points", "float"]]),
     "nf4 weights take no zero points"),
    (dict(real_zp="float", weights_as_inputs=True, mutations=[["shape", "zero_points", [16, 1]]]),
     "real zero_points (float32) have shape [16, 1]"),
    # the same checks when the weights arrive at run time instead of as initializers
    (dict(weights_as_inputs=True, mutations=[["shape", "B", [16, 2, 15]]]), "B has shape [16, 2, 15]"),
    (dict(weights_as_inputs=True, mutations=[["shape", "scales", [16, 1]]]), "scales have shape [16, 1]"),
    (dict(weights_as_inputs=True, mutations=[["shape", "B", [2**40, 0, 16]]]), "B has shape [1099511627776, 0, 16]"),
    # required inputs missing, extra inputs or outputs: refused by ONNX Runtime's own checks
    (dict(mutations=[["drop", "B"]]), "fuzz_node"),
    (dict(mutations=[["drop", "scales"]]), "fuzz_node"),
    (dict(mutations=[["extra_input"]]), "fuzz_node"),
    (dict(mutations=[["outputs", 2]]), "fuzz_node"),
]


@pytest.mark.parametrize("kw,message", BROKEN, ids=[m for _, m in BROKEN])
def test_broken_graph_gives_an_error_naming_the_node(kw, message):
    with pytest.raises(Exception) as info:
        run(valid_case(**kw))
    assert type(info.value).__module__.startswith("onnxruntime"), repr(info.value)
    text = str(info.value)
    assert message in text, text
    if "tensor(" not in message and message != "fuzz_node":
        assert NODE in text or "MatMulInt4:" in text, text


@pytest.mark.parametrize("kw,shape", [
    (dict(mutations=[["a_shape", [0, 64]]]), (0, 16)),                   # zero rows
    (dict(mutations=[["a_shape", [2**40, 0, 64]]]), (2**40, 0, 16)),     # a huge dimension next to a zero
    (dict(mutations=[["a_shape", [1, 1, 1, 2, 64]]]), (1, 1, 1, 2, 16)),  # many batch dimensions
    (dict(mutations=[["a_shape", [64]]]), (16,)),                        # rank 1
    (dict(bias=True, mutations=[["drop", "zero_points"]]), (3, 16)),     # optional input left out mid-list
    (dict(weights_as_inputs=True, mutations=[["empty", "zero_points"]]), (3, 16)),  # zero-element = absent
])
def test_edge_shapes_run(kw, shape):
    y = run(valid_case(**kw))
    assert y.shape == shape and np.isfinite(y).all()


@pytest.mark.parametrize("what", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("compute", ["fp32", "int8"])
def test_non_finite_activations_give_non_finite_rows(what, compute):
    case = valid_case(compute=compute, mutations=[["values", "A", what]])
    y = run(case)
    assert y.shape == (3, 16)
    assert not np.isfinite(y[0]).all()  # the first element of A is the special value
