"""Find the MatMul and Gemm nodes whose weight can be quantized; record every other one with a reason."""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from int4onnx.config import QuantConfig
from int4onnx.passes.plan import MatMulTarget, Selection, SkippedNode, release

logger = logging.getLogger(__name__)

FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16)


def _const(value: ir.Value | None):
    if value is None:
        return None
    return ir.convenience.get_const_tensor(value)


def through_shape_ops(value: ir.Value) -> tuple[ir.Value, bool]:
    """The constant a weight is read from through Identity and 2-D Transpose nodes, and whether it is
    transposed on the way (a tied lm_head reads ``Transpose(embedding table)``). The value itself
    (not transposed) when no such constant is found."""
    source, flipped = value, False
    for _ in range(8):
        node = source.producer()
        if node is None or node.domain not in ("", "ai.onnx") or node.op_type not in ("Identity", "Transpose") \
                or not node.inputs or node.inputs[0] is None:
            break
        if node.op_type == "Transpose":
            perm = _attr(node, "perm", None)
            if perm is not None and list(perm) != [1, 0]:
                break
            flipped = not flipped
        source = node.inputs[0]
        tensor = source.const_value
        if tensor is not None and len(tensor.shape) == 2 and source.producer() is None:
            return source, flipped
    return value, False


def _attr(node: ir.Node, name: str, default):
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


def _matmuls(model: ir.Model):
    return [node for node in ir.traversal.RecursiveGraphIterator(model.graph)
            if node.domain in ("", "ai.onnx") and node.op_type in ("MatMul", "Gemm")]


def select_matmuls(model: ir.Model, config: QuantConfig) -> Selection:
    """Run SelectMatMulsPass on `model` (not changed) and return its Selection."""
    step = SelectMatMulsPass(config)
    step(model)
    return step.selection


class SelectMatMulsPass(ir.passes.InPlacePass):
    """Analysis only: ``selection`` (after the run) holds the targets and the skipped nodes with their
    reasons; the model is not changed. Ensures every MatMul/Gemm is one or the other."""

    def __init__(self, config: QuantConfig):
        super().__init__()
        self.config = config
        self.selection = Selection()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph_inputs = set(model.graph.inputs)
        targets, skipped = [], []
        for node in _matmuls(model):
            name = node.name or f"<unnamed {node.op_type}>"
            reason = self._why_not(node, model.graph, graph_inputs)
            if isinstance(reason, MatMulTarget):
                targets.append(reason)
            else:
                logger.info("not quantized: %s %s: %s", node.op_type, name, reason)
                skipped.append(SkippedNode(name, node.op_type, reason))
        self.selection = Selection(tuple(targets), tuple(skipped))
        return ir.passes.PassResult(model, modified=False)

    def ensures(self, model: ir.Model) -> None:
        seen = len(self.selection.targets) + len(self.selection.skipped)
        if seen != len(_matmuls(model)) or not all(s.reason for s in self.selection.skipped):
            raise ir.passes.PostconditionError("every MatMul/Gemm must be a target or skipped with a reason")

    def _why_not(self, node: ir.Node, graph: ir.Graph, graph_inputs) -> MatMulTarget | str:
        if self.config.excluded(node.name or ""):
            return "excluded by --exclude"
        if len(node.inputs) < 2 or node.inputs[0] is None or node.inputs[1] is None:
            return "missing inputs"
        a, b = node.inputs[0], node.inputs[1]
        if b in graph_inputs and b.const_value is not None:
            return f"weight '{b.name}' is also a graph input (an initializer the caller can override)"
        tensor = _const(b)
        flipped = False
        if tensor is None:
            source, flipped = through_shape_ops(b)
            if source is not b:  # e.g. MatMul(x, Transpose(table)): the table is the weight, transposed
                if source in graph_inputs:
                    return f"weight '{source.name}' (read through {b.producer().op_type}) is also a graph input"
                b, tensor = source, source.const_value
        if tensor is None:
            if _const(a) is not None:
                return "the constant operand is the left one (constant @ activations); only activations @ constant is supported"
            return "weight is not a constant (activation x activation MatMul)"
        if tensor.dtype not in FLOAT_TYPES:
            return f"weight dtype {tensor.dtype.name} is not float32/float16"
        if len(tensor.shape) != 2:
            return f"weight has rank {len(tensor.shape)}; only 2-D weights are quantized"
        transposed, alpha, beta, bias = flipped, 1.0, 1.0, None
        if node.op_type == "Gemm":
            if _attr(node, "transA", 0):
                return "Gemm with transA=1 is not supported"
            transposed = bool(_attr(node, "transB", 0)) != flipped
            alpha = float(_attr(node, "alpha", 1.0))
            beta = float(_attr(node, "beta", 1.0))
            bias = node.inputs[2] if len(node.inputs) > 2 else None
        rows, cols = (int(d) for d in tensor.shape)
        K, N = (cols, rows) if transposed else (rows, cols)
        if K == 0 or N == 0:
            return f"weight has shape [{K}, {N}] (K x N): no weights to quantize"
        if a.type is not None and a.type.dtype != tensor.dtype:
            return f"activation dtype {a.type.dtype.name} differs from weight dtype {tensor.dtype.name}"
        finite = bool(np.isfinite(tensor.numpy()).all())
        release(tensor)  # large external weights: do not keep every page resident
        if not finite:
            return "weight contains NaN or infinity"
        return MatMulTarget(node=node, weight=b, K=K, N=N, dtype=tensor.dtype, transposed=transposed,
                            alpha=alpha, bias=bias, beta=beta)
