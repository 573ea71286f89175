"""Options -> pass pipeline -> atomic save. No click and no ONNX Runtime here."""

from __future__ import annotations

import logging
import os
import time
from typing import Callable

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from int4onnx import _native, io, precision
from int4onnx.config import CALIBRATED_METHODS, QuantConfig
from int4onnx.errors import Int4OnnxError, NothingToQuantizeError, UnsupportedModelError
from int4onnx.passes.awq import AwqPass
from int4onnx.passes.embedding import QuantizeEmbeddingsPass, find_lm_heads
from int4onnx.passes.plan import QuantPlan
from int4onnx.passes.quantize import PlanLayersPass, WeightQuantizer, default_spec
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
        return ir.passes.PassResult(ir.serde.deserialize_model(proto), modified=True)


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
    lm_heads = find_lm_heads(model.graph, plan.targets)
    fixed = precision.apply_lm_policy(plan, config, lm_heads)
    if not plan.targets:
        raise NothingToQuantizeError("nothing left to quantize after --lm-head float")
    feeds = None
    if config.has_calibration:
        feeds = _calibrate(model, plan, config, progress)
    if config.method == "awq":
        model = _run(AwqPass(config, plan, lambda t: plan.specs.get(t.key) or default_spec(config, t)), model)
    if config.mixed_precision:
        plan.calibration["mixed_precision"] = precision.mixed_precision(model, plan, config, feeds, fixed, progress)
        if not plan.targets:
            raise NothingToQuantizeError("mixed precision kept every layer float; raise --max-error or --target-bits")
    plan.quantizer = WeightQuantizer(config, plan, progress)
    steps = ir.passes.Sequential(
        PlanLayersPass(config, plan),
        QuantizeEmbeddingsPass(config, plan),
        RewriteMatMulsPass(config, plan),
        common_passes.RemoveUnusedNodesPass(),
    )
    model = _run(steps, model)
    return model, plan


# Gram matrices are collected for the report's output-error metrics as well when they are this small
GRAM_REPORT_BYTES = 256 * 2**20


def _calibrate(model: ir.Model, plan: QuantPlan, config: QuantConfig, progress) -> list[dict]:
    """Run the model on the calibration data and put the statistics of every MatMul input in plan.stats."""
    from int4onnx import calibrate

    start = time.perf_counter()
    source = calibrate.FeedSource(path=config.calibration, text=config.calibration_text, tokenizer=config.tokenizer,
                                  samples=config.calibration_samples, sequence_length=config.sequence_length,
                                  skip_chars=config.calibration_skip_chars)
    feeds = source.feeds(calibrate.model_inputs(model))
    inputs = {t.node.inputs[0].name: t for t in plan.targets}
    gram_bytes = sum(8 * t.K * t.K for t in inputs.values())
    gram = config.method in CALIBRATED_METHODS or config.mixed_precision or gram_bytes <= GRAM_REPORT_BYTES
    plan.stats = calibrate.collect_statistics(model, [t.node.inputs[0] for t in plan.targets], feeds, gram, progress,
                                              dtypes={name: t.dtype for name, t in inputs.items()})
    plan.calibration.update({"source": source.describe(), "samples": len(feeds), "gram": gram,
                             "statistics_bytes": int(sum(8 * (5 * s.K + (s.K * s.K if s.gram is not None else 0))
                                                         for s in plan.stats.values())),
                             "seconds": round(time.perf_counter() - start, 3)})
    return feeds


def quantize_file(input_path, output_path, config: QuantConfig,
                  progress: Callable[[int, int, str], None] | None = None) -> Report:
    start = time.perf_counter()
    out = io.check_output_path(input_path, output_path)
    model = io.load_model(input_path)
    input_bytes = _file_bytes(input_path)
    model, plan = quantize_model(model, config, progress)
    written = io.save_model_atomic(model, out)
    output_bytes = sum(os.path.getsize(p) for p in written)
    return Report.build(plan, config, input_path, output_path, input_bytes, output_bytes, time.perf_counter() - start)


def _file_bytes(path) -> int:
    """Size of a model file plus the external data files it references."""
    total = os.path.getsize(path)
    folder = os.path.dirname(os.path.abspath(path))
    proto = onnx.load(str(path), load_external_data=False)
    seen = set()
    for t in proto.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location" and entry.value not in seen:
                seen.add(entry.value)
                p = os.path.join(folder, entry.value)
                if os.path.isfile(p):
                    total += os.path.getsize(p)
    return total
