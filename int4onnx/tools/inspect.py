"""Describe a converted model: what is quantized, bits per weight, sizes."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from int4onnx import _native, io
from int4onnx.errors import UnsupportedModelError
from int4onnx.passes.rewrite import MATMULNBITS_INPUTS


def _nbytes(value) -> int:
    return 0 if value is None or value.const_value is None else int(value.const_value.nbytes)


def _named_inputs(node, slots: dict) -> dict:
    """A node's inputs by name (slots: name -> index, an op's schema); None for a slot it leaves out."""
    return {name: node.inputs[i] if i < len(node.inputs) else None for name, i in slots.items()}


def _attrs(node) -> dict:
    return {k: a.value for k, a in node.attributes.items()}


def _layout_attrs(path, node, a: dict) -> dict:
    """K, N, bits, block_size of a MatMulInt4 / MatMulNBits node, checked: a node without them, or with
    values no weight can have, is a damaged model (ONNX Runtime would refuse it too)."""
    for name in ("K", "N", "bits", "block_size"):
        value = a.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise UnsupportedModelError(f"{path}: {node.op_type} node '{node.name}' has no integer attribute '{name}'; "
                                        "the model is damaged: convert the float model again")
    if not _native.check_layout(a["K"], a["N"], a["bits"], a["block_size"]):
        raise UnsupportedModelError(
            f"{path}: {node.op_type} node '{node.name}' has K={a['K']} N={a['N']} bits={a['bits']} "
            f"block_size={a['block_size']}, which no quantized weight has (K, N at least 1, bits 4 or 8, block_size "
            "a multiple of 16); the model is damaged: convert the float model again")
    return a


def describe(path) -> dict:
    model = io.load_model(path)
    layers, float_matmuls = [], []
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        a = _attrs(node)
        if (node.domain, node.op_type) in ((_native.DOMAIN, _native.OP_NAME), ("com.microsoft", "MatMulNBits")):
            a = _layout_attrs(path, node, a)
        if node.domain == _native.DOMAIN and node.op_type == _native.OP_NAME:
            ins = _named_inputs(node, _native.OP_INPUTS)
            zp = ins["zero_points"] if _nbytes(ins["zero_points"]) > 0 else None
            layers.append(dict(node=node.name, format="int4onnx", K=a["K"], N=a["N"], bits=a["bits"],
                               block_size=a["block_size"], symmetric=zp is None,
                               quant_type=a.get("quant_type", "int"), compute=a.get("compute", "fp32"),
                               bytes=_nbytes(ins["B"]) + _nbytes(ins["scales"]) + _nbytes(zp) + _nbytes(ins["scales_scale"])
                               + _nbytes(ins.get("zero_points_scale"))))
        elif node.domain == "com.microsoft" and node.op_type == "MatMulNBits":
            ins = _named_inputs(node, MATMULNBITS_INPUTS)
            layers.append(dict(node=node.name, format="matmulnbits", K=a["K"], N=a["N"], bits=a["bits"],
                               block_size=a["block_size"], symmetric=ins["zero_points"] is None, quant_type="int",
                               compute="int8" if a.get("accuracy_level", 0) == 4 else "fp32",
                               bytes=_nbytes(ins["B"]) + _nbytes(ins["scales"]) + _nbytes(ins["zero_points"])))
        elif node.domain == "" and node.op_type == "DequantizeLinear" and node.inputs[0] is not None \
                and node.inputs[0].const_value is not None \
                and node.inputs[0].const_value.dtype in (ir.DataType.INT4, ir.DataType.UINT4,
                                                        ir.DataType.INT8, ir.DataType.UINT8) \
                and len(node.inputs[0].const_value.shape) == 2:
            x = node.inputs[0].const_value
            K, N = (int(d) for d in x.shape)
            if K == 0 or N == 0:
                continue
            zp = node.inputs[2] if len(node.inputs) > 2 else None
            layers.append(dict(node=node.name, format="qdq", K=K, N=N, bits=x.dtype.bitwidth,
                               block_size=a.get("block_size", K) or K, symmetric=zp is None, quant_type="int",
                               compute="fp32", bytes=_nbytes(node.inputs[0]) + _nbytes(node.inputs[1]) + _nbytes(zp)))
        elif node.op_type in ("MatMul", "Gemm") and node.domain == "":
            w = node.inputs[1] if len(node.inputs) > 1 else None
            if w is not None and w.const_value is not None and w.const_value.dtype in (ir.DataType.FLOAT, ir.DataType.FLOAT16):
                float_matmuls.append(dict(node=node.name, shape=[int(d) for d in w.const_value.shape],
                                          bytes=_nbytes(w)))
    for layer in layers:
        layer["bits_per_weight"] = round(8 * layer["bytes"] / (layer["K"] * layer["N"]), 4)
    weights = sum(layer["K"] * layer["N"] for layer in layers)
    qbytes = sum(layer["bytes"] for layer in layers)
    init_bytes = io.initializer_bytes(model)
    return {
        "path": str(path),
        "file_bytes": io.model_file_bytes(path, model),  # external data files included
        "initializer_bytes": init_bytes,
        "opset_imports": dict(model.opset_imports),
        "quantized_layers": layers,
        "float_matmuls_with_weights": float_matmuls,
        "quantized_weights": weights,
        "quantized_bytes": qbytes,
        "bits_per_weight": round(8 * qbytes / weights, 4) if weights else None,
        "float_weight_bytes_left": int(np.sum([f["bytes"] for f in float_matmuls])) if float_matmuls else 0,
    }
