"""Options -> pass pipeline -> atomic save. No click and no ONNX Runtime here."""

from __future__ import annotations

import logging
import os
import time
from typing import Callable

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from int4onnx import _native, io
from int4onnx.config import QuantConfig
from int4onnx.errors import Int4OnnxError, NothingToQuantizeError, UnsupportedModelError
from int4onnx.passes.plan import QuantPlan
from int4onnx.passes.quantize import PlanLayersPass, WeightQuantizer
from int4onnx.passes.rewrite import RewriteMatMulsPass
from int4onnx.passes.select import SelectMatMulsPass
from int4onnx.report import Report

logger = logging.getLogger(__name__)

QDQ_MIN_OPSET = 21  # int4 DequantizeLinear with block_size


class UpgradeOpsetPass(ir.passes.FunctionalPass):
    """Convert the default-domain opset to `target` with ONNX's version converter (for --format qdq)."""

    def __init__(self, target: int):
        super().__init__()
        self.target = target

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        current = model.opset_imports.get("", 1)
        if current >= self.target:
            return ir.passes.PassResult(model.clone(), modified=False)
        try:
            proto = onnx.version_converter.convert_version(ir.serde.serialize_model(model), self.target)
        except Exception as exc:
            raise UnsupportedModelError(
                f"the model uses opset {current}; the qdq format needs opset {self.target} and ONNX's version "
                f"converter failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
                "Use --format int4onnx or --format matmulnbits, which work with any opset"
            ) from exc
        upgraded = ir.serde.deserialize_model(proto)
        # external data stays where it was: the serialised model only kept its relative locations
        base_dirs = {t.base_dir for g in model.graphs() for v in g.initializers.values()
                     if isinstance(t := v.const_value, ir.ExternalTensor)}
        if base_dirs:
            ir.external_data.set_base_dir(upgraded.graph, base_dirs.pop())
        return ir.passes.PassResult(upgraded, modified=True)


def _already_quantized(model: ir.Model) -> str | None:
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.domain == _native.DOMAIN and node.op_type == _native.OP_NAME:
            return f"{_native.DOMAIN}::{_native.OP_NAME}"
        if node.domain == "com.microsoft" and node.op_type == "MatMulNBits":
            return "com.microsoft::MatMulNBits"
    return None


def _run(pass_, model: ir.Model) -> ir.Model:
    """Run one pass, surfacing our own errors instead of the pass framework's wrappers."""
    try:
        return pass_(model).model
    except Exception as exc:
        cause = exc
        while cause is not None:
            if isinstance(cause, Int4OnnxError):
                raise cause from None
            cause = cause.__cause__
        raise


def quantize_model(model: ir.Model, config: QuantConfig,
                   progress: Callable[[int, int, str], None] | None = None) -> tuple[ir.Model, QuantPlan]:
    """Rewrite an in-memory model; returns it and the plan (what was done).

    The new initializers are lazy: each weight is quantized when its bytes are first read (normally
    while the model is saved), and ``plan.layers`` fills up then. ``plan.quantizer.quantize_all()``
    forces them all.
    """
    done = _already_quantized(model)
    if done:
        raise UnsupportedModelError(f"the model is already quantized (it contains {done} nodes)")
    if config.format == "qdq" and model.opset_imports.get("", 1) < QDQ_MIN_OPSET:
        model = _run(UpgradeOpsetPass(QDQ_MIN_OPSET), model)
    plan = QuantPlan()
    model = _run(SelectMatMulsPass(config, plan), model)
    if not plan.targets:
        found = len(plan.skipped)
        detail = "; ".join(f"{s.name}: {s.reason}" for s in plan.skipped[:5])
        more = f" (and {found - 5} more)" if found > 5 else ""
        raise NothingToQuantizeError(
            "no MatMul/Gemm with a constant float weight to quantize"
            + (f"; found {found} MatMul/Gemm node(s): {detail}{more}" if found else "; the model has no MatMul or Gemm nodes")
        )
    plan.quantizer = WeightQuantizer(config, plan, progress)
    steps = ir.passes.Sequential(
        PlanLayersPass(config, plan),
        RewriteMatMulsPass(config, plan),
        common_passes.RemoveUnusedNodesPass(),
    )
    model = _run(steps, model)
    return model, plan


def quantize_file(input_path, output_path, config: QuantConfig,
                  progress: Callable[[int, int, str], None] | None = None) -> Report:
    start = time.perf_counter()
    io.check_output_path(input_path, output_path)
    model = io.load_model(input_path)
    out = io.check_output_path(input_path, output_path, model)  # now also against its data files
    input_bytes = io.model_file_bytes(input_path, model)
    model, plan = quantize_model(model, config, progress)
    written = io.save_model_atomic(model, out)
    output_bytes = sum(os.path.getsize(p) for p in written)
    return Report.build(plan, config, input_path, output_path, input_bytes, output_bytes, time.perf_counter() - start)

