"""Options -> analysis (a frozen QuantPlan) -> rewrite passes -> atomic save. No click and no ONNX Runtime here.

The order of the steps lives here only (quantize_model): selection, LM and tied-table policy,
calibration, AWQ, mixed precision each return their part of the plan; the plan is assembled from
them and the rewrite passes read it."""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import pathlib
import time
from typing import Callable

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from int4onnx import _native, io, precision
from int4onnx.config import AWQ_METHODS, CALIBRATED_METHODS, QuantConfig
from int4onnx.errors import Int4OnnxError, NothingToQuantizeError, UnsupportedModelError
from int4onnx.passes.awq import AwqPass
from int4onnx.passes.embedding import QuantizeEmbeddingsPass, apply_tied_policy, find_lm_heads, find_tied
from int4onnx.passes.opset import QDQ_MIN_OPSET, UpgradeOpsetPass
from int4onnx.passes.plan import CalibrationInfo, MatMulTarget, QuantPlan
from int4onnx.passes.quantize import WeightQuantizer, default_spec
from int4onnx.passes.results import Growth, RewriteRecord
from int4onnx.passes.rewrite import RewriteMatMulsPass, check_growth
from int4onnx.passes.select import SelectMatMulsPass
from int4onnx.report import Report

logger = logging.getLogger(__name__)

_LOW_BIT = (ir.DataType.INT4, ir.DataType.UINT4, ir.DataType.INT8, ir.DataType.UINT8)
# integer matrix products of other quantizers: a model made of these has nothing left for us
_INTEGER_MATMULS = {("", "MatMulInteger"), ("", "QLinearMatMul"), ("com.microsoft", "QGemm"),
                    ("com.microsoft", "DynamicQuantizeMatMul"), ("com.microsoft", "MatMulIntegerToFloat")}


def _already_quantized(model: ir.Model) -> str | None:
    """What in the model shows that its MatMul weights are already low-bit (None if nothing)."""
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.domain == _native.DOMAIN and node.op_type == _native.OP_NAME:
            return f"{_native.DOMAIN}::{_native.OP_NAME} nodes"
        if node.domain == "com.microsoft" and node.op_type == "MatMulNBits":
            return "com.microsoft::MatMulNBits nodes"
        if node.domain in ("", "ai.onnx") and node.op_type == "DequantizeLinear" and node.inputs \
                and node.inputs[0] is not None:
            const = ir.convenience.get_const_tensor(node.inputs[0])
            feeds_weight = any(user.op_type in ("MatMul", "Gemm") and index == 1
                               for user, index in node.outputs[0].uses())
            if const is not None and const.dtype in _LOW_BIT and (feeds_weight or const.dtype.bitwidth == 4):
                return (f"{const.dtype.name.lower()} DequantizeLinear weights such as '{node.inputs[0].name}', "
                        "as written by --format qdq")
    return None


def _what_is_there(model: ir.Model) -> str:
    """A short account of a model's nodes, for the "nothing to quantize" message."""
    ops = collections.Counter((n.domain or "", n.op_type) for n in ir.traversal.RecursiveGraphIterator(model.graph))
    integer = {k: n for k, n in ops.items() if k in _INTEGER_MATMULS}
    if integer:
        listed = ", ".join(f"{n} {op}" for (_, op), n in integer.items())
        return f"the model has no float MatMul or Gemm nodes; its {listed} node(s) are already integer (quantized)"
    if not ops:
        return "the model has no nodes"
    top = ", ".join(f"{n} {op}" for (_, op), n in ops.most_common(5))
    return f"the model has no MatMul or Gemm nodes (it has {top}{', ...' if len(ops) > 5 else ''})"


def _check_versions(model: ir.Model) -> None:
    """An IR version or default-domain opset newer than this onnx release knows: the model cannot be
    checked (or upgraded for qdq), and ONNX Runtime refuses unreleased versions, so the output would
    not run."""
    upgrade = "upgrade onnx (pip install -U onnx), or re-export the model with"
    if model.ir_version > onnx.IR_VERSION:
        raise UnsupportedModelError(
            f"the model has IR version {model.ir_version}, newer than the newest this installation's onnx "
            f"{onnx.__version__} knows ({onnx.IR_VERSION}); {upgrade} IR version {onnx.IR_VERSION} or older")
    version = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    known = onnx.defs.onnx_opset_version()
    if version is not None and version > known:
        raise UnsupportedModelError(
            f"the model imports ONNX opset {version}, newer than the newest this installation's onnx "
            f"{onnx.__version__} knows ({known}); {upgrade} opset {known} or older")


def _initializers_as_constants(model: ir.Model) -> None:
    """IR versions before 4 list every initializer as a graph input too; ONNX Runtime treats them as
    constants. Make that explicit (IR version 4, initializers no longer inputs) so weights can be
    quantized and the old float ones dropped."""
    if model.ir_version >= 4:
        return
    graph = model.graph
    keep = [v for v in graph.inputs if v.name not in graph.initializers]
    graph.inputs.clear()
    graph.inputs.extend(keep)
    model.ir_version = 4


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


@dataclasses.dataclass
class Conversion:
    """What quantize_model returns beside the model: the frozen plan, the quantizer (whose ``results``
    fill up as the saver reads the lazy weights) and the rewrite's record."""

    plan: QuantPlan
    quantizer: WeightQuantizer
    record: RewriteRecord

    @property
    def layers(self) -> dict:
        """The LayerResults recorded so far, by weight key."""
        return self.quantizer.results.layers


def quantize_model(model: ir.Model, config: QuantConfig,
                   progress: Callable[[int, int, str], None] | None = None,
                   path=None) -> tuple[ir.Model, Conversion]:
    """Rewrite an in-memory model; returns it and the Conversion (plan, quantizer, rewrite record).
    `path`: the model's file, whose folder may hold config.json / genai_config.json (the context
    length of a causal LM).

    The new initializers are lazy: each weight is quantized when its bytes are first read (normally
    while the model is saved), and ``conversion.layers`` fills up then. ``conversion.quantizer.quantize_all()``
    forces them all.
    """
    done = _already_quantized(model)
    if done:
        raise UnsupportedModelError(f"the model is already quantized (it contains {done}); "
                                    "convert the original float model instead")
    _check_versions(model)
    _initializers_as_constants(model)
    if config.format == "qdq" and model.opset_imports.get("", 1) < QDQ_MIN_OPSET:
        model = _run(UpgradeOpsetPass(QDQ_MIN_OPSET), model)
    model, plan = analyse(model, config, progress, path)
    quantizer = WeightQuantizer(config, plan, progress)
    record = RewriteRecord()
    steps = ir.passes.Sequential(
        RewriteMatMulsPass(config, plan, quantizer, record),
        QuantizeEmbeddingsPass(config, plan, record),  # after the rewrite: tied tables read its initializers
        common_passes.RemoveUnusedNodesPass(),
    )
    model = _run(steps, model)
    check_growth(plan, record)
    return model, Conversion(plan, quantizer, record)


def analyse(model: ir.Model, config: QuantConfig, progress=None, path=None) -> tuple[ir.Model, QuantPlan]:
    """The analysis phase: returns the model (AWQ's scaling applied, nothing else changed) and the plan."""
    select = SelectMatMulsPass(config)
    model = _run(select, model)
    selection = select.selection
    if not selection.targets:
        found = len(selection.skipped)
        detail = "; ".join(f"{s.name}: {s.reason}" for s in selection.skipped[:5])
        more = f" (and {found - 5} more)" if found > 5 else ""
        raise NothingToQuantizeError(
            "no MatMul/Gemm with a constant float weight to quantize"
            + (f"; found {found} MatMul/Gemm node(s): {detail}{more}" if found else f"; {_what_is_there(model)}")
        )
    lm_heads = find_lm_heads(model.graph, list(selection.targets))
    tied = find_tied(model.graph, selection.targets)  # before the LM policy may drop targets
    if path is not None:
        _keep_context_length(model, path)
    lm_policy = precision.apply_lm_policy(config, lm_heads)
    selection = selection.drop(lm_policy.floats)
    tied_policy = apply_tied_policy(selection, config, model.graph, tied, lm_heads)
    selection = selection.drop(tied_policy.floats)
    choices = lm_policy.then(tied_policy)
    fixed = set(lm_policy.fixed | tied_policy.fixed)
    precision.check_target_bits(selection, config, fixed)  # before the costly calibration and sensitivity pass
    if not selection.targets:
        raise NothingToQuantizeError("nothing left to quantize after --lm-head float")

    def spec(t: MatMulTarget):
        return default_spec(config, t)

    feeds, stats, calibration, awq = None, {}, None, None
    if config.has_calibration:
        calibration, stats, feeds = _calibrate(model, selection.targets, config, progress, path)
    if config.method in AWQ_METHODS:
        step = AwqPass(config, selection.targets, stats, lambda t: choices.specs.get(t.key) or spec(t))
        model = _run(step, model)
        awq = step.result
    plan = QuantPlan.assemble(config.method, selection, choices, spec, stats, calibration, awq)
    if config.mixed_precision:  # reads the plan without mixed precision; the plan with its choices replaces it
        mixed, summary = precision.mixed_precision(model, plan, config, feeds, fixed, progress)
        calibration = dataclasses.replace(calibration, mixed_precision=summary)
        plan = QuantPlan.assemble(config.method, selection, choices.then(mixed), spec, stats, calibration, awq)
        if not plan.targets:
            raise NothingToQuantizeError("mixed precision kept every layer float; raise --max-error or --target-bits")
    return model, plan


def _keep_context_length(model: ir.Model, path) -> None:
    """A causal LM whose context length comes from its folder (config.json, genai_config.json) or a fixed
    dimension keeps it in the output's metadata (`context_length`), wherever the output is written."""
    from int4onnx.lm import LMInterface

    lm = LMInterface.from_model(model, path)
    if lm.is_lm and lm.context_length is not None and "context_length" not in model.metadata_props:
        model.metadata_props["context_length"] = str(lm.context_length)


# Gram matrices are collected for the report's output-error metrics as well when they are this small
GRAM_REPORT_BYTES = 256 * 2**20


def _feed_source(config: QuantConfig):
    from int4onnx import calibrate

    return calibrate.FeedSource(path=config.calibration, text=config.calibration_text, tokenizer=config.tokenizer,
                                samples=config.calibration_samples, sequence_length=config.sequence_length,
                                skip_chars=config.calibration_skip_chars)


def _calibrate(model: ir.Model, targets, config: QuantConfig, progress,
               path=None) -> tuple[CalibrationInfo, dict, list[dict]]:
    """Run the model on the calibration data: what it ran on, the statistics of every target's input (by
    value name), and the feeds."""
    from int4onnx import calibrate
    from int4onnx.lm import LMInterface

    start = time.perf_counter()
    source = _feed_source(config)
    lm = LMInterface.from_model(model, path)
    feeds = source.feeds(calibrate.model_inputs(model), lm)
    inputs = {t.node.inputs[0].name: t for t in targets}
    gram_bytes = sum(8 * t.K * t.K for t in inputs.values())
    gram = config.method in CALIBRATED_METHODS or config.mixed_precision or gram_bytes <= GRAM_REPORT_BYTES
    stats = calibrate.collect_statistics(model, [t.node.inputs[0] for t in targets], feeds, gram, progress,
                                         dtypes={name: t.dtype for name, t in inputs.items()}, lm=lm)
    info = CalibrationInfo(source=source.describe(), samples=len(feeds), gram=gram,
                           statistics_bytes=int(sum(8 * (5 * s.K + (s.K * s.K if s.has_gram else 0))
                                                    for s in stats.values())),
                           seconds=round(time.perf_counter() - start, 3))
    return info, stats, feeds


def _release_statistics(plan: QuantPlan) -> None:
    if plan.stats:
        from int4onnx import calibrate

        calibrate.release(plan.stats)


def files_read(input_path, model: ir.Model | None, config: QuantConfig) -> list[tuple[str, pathlib.Path]]:
    """(what, path) of every file a conversion reads: the model, its external data, calibration data."""
    files = [("the input model", pathlib.Path(input_path))] if input_path is not None else []
    if model is not None:
        files += [("the input model's external data", p) for p in sorted(io.external_data_files(model))]
    if config.has_calibration:
        files += _feed_source(config).files_read()
    return files


def quantize_file(input_path, output_path, config: QuantConfig,
                  progress: Callable[[int, int, str], None] | None = None, also_writes=()) -> Report:
    """Convert a model and write it atomically to `output_path`. `input_path` is a model file, or an
    ir.Model held in memory (not changed).

    also_writes: (what, path) pairs of other files the caller will write (the CLI's --report); they
    are checked like the output: no file the run reads, nor the output, may be overwritten."""
    start = time.perf_counter()
    in_memory = isinstance(input_path, ir.Model)
    out = io.check_output_path(output_path)
    outputs = [("output", out), ("the output's data file", io.data_path(out)), *also_writes]
    io.check_overwrites(outputs, files_read(None if in_memory else input_path, None, config))
    if in_memory:
        io.check_tensors(input_path, "the model")
        model, input_path = input_path.clone(), "<in-memory model>"
        input_bytes = io.initializer_bytes(model)
    else:
        model = io.load_model(input_path)
        input_bytes = io.model_file_bytes(input_path, model)
    io.check_overwrites(outputs, files_read(None if in_memory else input_path, model, config))  # + external data
    with io.temporaries_next_to(out):  # calibration's copy of the model too
        model, done = quantize_model(model, config, progress, None if in_memory else input_path)
        written = io.save_model_atomic(model, out)
        _release_statistics(done.plan)  # the Gram matrices spilled next to the output
    output_bytes = sum(os.path.getsize(p) for p in written)
    if output_bytes > input_bytes:
        grown = done.record.grown
        why = "the output is larger than the input" + (f" (see {', '.join(g.tensor for g in grown)})"
                                                        if grown else "")
        grown.append(Growth(tensor="(the whole model)", float_bytes=int(input_bytes), stored_bytes=int(output_bytes),
                            reason=why))
        logger.warning("%s: %d -> %d bytes", why, input_bytes, output_bytes)
    return Report.build(done, config, input_path, output_path, input_bytes, output_bytes, time.perf_counter() - start)


def quantize_in_memory(model: ir.Model, config: QuantConfig,
                       progress: Callable[[int, int, str], None] | None = None) -> ir.Model:
    """Convert a model held in memory (the caller's object is not changed) and return the converted
    ir.Model with every initializer in memory (quantized weights computed, external data read)."""
    io.check_tensors(model, "the model")
    model = model.clone()
    model, done = quantize_model(model, config, progress)
    for graph in model.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            if isinstance(tensor, ir.LazyTensor):
                value.const_value = ir.Tensor(tensor.numpy(), dtype=tensor.dtype, name=value.name)
    _release_statistics(done.plan)
    ir.external_data.load_to_model(model)
    return model
