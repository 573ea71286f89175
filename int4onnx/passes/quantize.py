"""How a selected weight is stored by default (default_spec) and quantizing it on demand (WeightQuantizer).

Quantization itself is deferred: RewriteMatMulsPass puts lazy initializers in the graph and the
WeightQuantizer runs when the saver writes them, one weight at a time. A method sees one weight and
its LayerContext (the target, its LayerSpec, the calibration statistics of its input, the config);
it never needs the other layers, so memory stays bounded by the largest layer plus statistics.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Callable

import numpy as np
import onnx_ir as ir

from int4onnx import methods
from int4onnx.config import QuantConfig
from int4onnx.errors import CalibrationError, UnsupportedModelError
from int4onnx.passes.plan import LayerSpec, MatMulTarget, QuantPlan, release
from int4onnx.passes.results import ErrorStats, LayerResult, QuantResults
from int4onnx.quant.base import QuantizedWeight, error_metrics, error_metrics_of
from int4onnx.quant.clip import quantize_clip
from int4onnx.quant.gptq import dead_channels, quantize_gptq
from int4onnx.quant.grid import Grid
from int4onnx.quant.rtn import quantize_grid

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]


@dataclasses.dataclass
class LayerContext:
    """Everything a method may use besides the weight itself."""

    target: MatMulTarget
    spec: LayerSpec
    stats: object | None      # calibrate.ActivationStats of the layer's input (after any AWQ scaling)
    config: QuantConfig

    @property
    def grid(self) -> Grid:
        return self.spec.grid


# A method maps a float32 [K, N] weight and its context to a QuantizedWeight.
Method = Callable[[np.ndarray, LayerContext], QuantizedWeight]


def rtn_method(w: np.ndarray, ctx: LayerContext) -> QuantizedWeight:
    return quantize_grid(w, ctx.grid, ctx.spec.block_size)


def clip_method(w: np.ndarray, ctx: LayerContext) -> QuantizedWeight:
    weight = ctx.stats.mean_sq if ctx.stats is not None else None
    gram = ctx.stats.gram if ctx.stats is not None else None
    return quantize_clip(w, ctx.grid, ctx.spec.block_size, channel_weight=weight, gram=gram)


def awq_method(w: np.ndarray, ctx: LayerContext) -> QuantizedWeight:
    """The input scaling was applied to the graph by AwqPass; what is left is per-group rounding."""
    return clip_method(w, ctx) if ctx.config.clip_search else rtn_method(w, ctx)


def gptq_method(w: np.ndarray, ctx: LayerContext) -> QuantizedWeight:
    if ctx.stats is None or ctx.stats.gram is None:
        raise CalibrationError(f"gptq: no calibration Gram matrix for the input of {ctx.target.node.name}")
    return quantize_gptq(w, ctx.stats.gram, ctx.grid, ctx.spec.block_size, damp=ctx.config.damp,
                         act_order=ctx.config.act_order, clip=ctx.config.clip_search)


# Methods marked ``column_independent`` quantize every output column on its own, so they run on slices
# of about CHUNK_ELEMENTS weights and their float temporaries stay small whatever the layer size.
rtn_method.column_independent = True
clip_method.column_independent = True
CHUNK_ELEMENTS = 1 << 22



def _run_method(method, w: np.ndarray, ctx, independent: bool | None = None) -> QuantizedWeight:
    """Run a method on the whole weight, or slice by slice of columns if it is column independent."""
    if independent is None:
        independent = getattr(method, "column_independent", False)
    if ctx is not None and ctx.spec.tensor_super_scale:
        independent = False  # one super-scale spans every column
    step = max(1, CHUNK_ELEMENTS // max(w.shape[0], 1))
    if not independent or w.shape[1] <= step:
        return method(w, ctx)
    return QuantizedWeight.concat_columns([method(w[:, n0:n0 + step], ctx) for n0 in range(0, w.shape[1], step)])


TENSOR_SUPER_SCALE_BELOW_K = 1024
# int8 real zero points need finer super-scales: on SmolLM2's K = 576 layers, one super-scale per tensor
# for scales and zero points gives a relative weight error of 0.023, one per column 0.0099 (for 64 / K =
# 0.11 bits per weight more); below K = 256 a column's two super-scales would cost more than 1/4 bit
REAL_ZP_TENSOR_SUPER_SCALE_BELOW_K = 256


FP16_MAX = 65504.0
FP16_MIN_NORMAL = 2.0 ** -14


def _weight_range(t: MatMulTarget) -> tuple[float, float]:
    """(min, max) of the weight times alpha, read once per tensor (cached in its metadata: AWQ's rescaling
    gives the value a new tensor, whose range is read again)."""
    tensor = ir.convenience.get_const_tensor(t.weight)
    meta = tensor.meta
    if "int4onnx.range" not in meta:
        a = tensor.numpy()
        meta["int4onnx.range"] = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        del a
        release(tensor)
    lo, hi = (np.float64(x) * t.alpha for x in meta["int4onnx.range"])
    return float(min(lo, hi)), float(max(lo, hi))


def float_scale_dtype(config: QuantConfig, t: MatMulTarget, bits: int, symmetric: bool, quant_type: str) -> str:
    """The float scale type of a layer: the model's type, or for float32 models in the int4onnx format
    float16 as --scale-dtype asks (auto: float16 unless the layer's largest scale would overflow
    float16 or be subnormal there, then float32 with a warning; float16: such a layer is an error)."""
    if t.dtype == ir.DataType.FLOAT16:
        return "float16"
    if config.format != "int4onnx" or config.scale_dtype == "float32":
        return "float32"
    lo, hi = _weight_range(t)
    amax = max(-lo, hi)
    if quant_type == "nf4":
        largest = amax
    elif symmetric:
        largest = amax / (1 << (bits - 1))
    else:
        largest = (max(hi, 0.0) - min(lo, 0.0)) / ((1 << bits) - 1)
    margin = 2.0 if config.scale_dtype == "auto" else 1.0  # GPTQ's updated weights may widen a group a little
    if largest * margin < FP16_MAX and (largest >= FP16_MIN_NORMAL or largest == 0.0):
        return "float16"
    why = (f"weight '{t.weight.name}' [{t.K} x {t.N}] (values in [{lo:.3g}, {hi:.3g}]): its largest {bits}-bit scale "
           f"{largest:.3g} is {'beyond float16' if largest >= FP16_MIN_NORMAL else 'subnormal in float16'}")
    if config.scale_dtype == "float16":
        raise UnsupportedModelError(f"{why}; use --scale-dtype float32 (or auto), or leave it float with "
                                    f"--exclude '{t.node.name}'")
    if not t.weight.meta.get("int4onnx.warned"):
        t.weight.meta["int4onnx.warned"] = True
        logger.warning("%s: its scales stay float32", why)
    return "float32"


def default_spec(config: QuantConfig, t: MatMulTarget, bits: int | None = None, lm_head: bool = False) -> LayerSpec:
    """The LayerSpec the options ask for (bits may be overridden, e.g. 8 for an lm_head; a 4-bit lm_head is
    symmetric with --lm-head-symmetric)."""
    bits = bits or config.bits
    quant_type = config.quant_type if bits == 4 else "int"
    symmetric = config.symmetric or quant_type == "nf4" or (lm_head and bits == 4 and config.lm_head_symmetric)
    scale_dtype = "int8" if config.double_quant else float_scale_dtype(config, t, bits, symmetric, quant_type)
    # int8 scales need float32 super-scales: one per column costs 32 / K bits per weight, which is
    # negligible for large K and half a bit at K = 64, where one super-scale for the tensor is used
    real_zp = config.float_zero_points and not symmetric
    below = REAL_ZP_TENSOR_SUPER_SCALE_BELOW_K if real_zp else TENSOR_SUPER_SCALE_BELOW_K
    tensor_super = config.double_quant and t.K < below
    return LayerSpec(bits=bits, block_size=config.block_size_for(t.K), symmetric=symmetric,
                     quant_type=quant_type, scale_dtype=scale_dtype, tensor_super_scale=tensor_super,
                     float_zero_points=real_zp)


class WeightQuantizer:
    """Quantizes one weight when first asked, records its LayerResult in ``results`` (its own record;
    the plan is only read), and keeps the last few quantized weights
    so that the several initializers made from one weight (codes, scales, zero points) share one run.

    The LayerResult's metrics compare the method with round to nearest on the original weight (before
    any AWQ scaling): weight relative error / SQNR, and with calibration data the same for the layer
    output on the calibration inputs (``output_*``)."""

    def __init__(self, config: QuantConfig, plan: QuantPlan, progress: Progress | None = None,
                 method: Method | None = None, keep: int = 2):
        self.config = config
        self.plan = plan
        self.progress = progress
        self.method = method or methods.BY_NAME[config.method].load()  # the one registry: int4onnx/methods.py
        self.by_key = plan.targets_by_key()
        # the MatMul input each weight multiplies (read now: the rewrite detaches the original nodes)
        self.input_name = {key: ts[0].node.inputs[0].name for key, ts in self.by_key.items()}
        self.cache: collections.OrderedDict[tuple, QuantizedWeight] = collections.OrderedDict()
        self.keep = keep
        self.results = QuantResults()

    def stats_for(self, key: tuple):
        return self.plan.stats.get(self.input_name[key])

    def quantize(self, key: tuple, spec: LayerSpec, w: np.ndarray | None = None) -> QuantizedWeight:
        """Quantize one weight with `spec` (no caching, no record): used by the saver and by mixed precision."""
        t = self.by_key[key][0]
        w = t.weight_kn() if w is None else w
        return _run_method(self.method, w, LayerContext(t, spec, self.stats_for(key), self.config))

    def __call__(self, key: tuple) -> QuantizedWeight:
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        targets = self.by_key[key]
        t, spec = targets[0], self.plan.specs[key]
        if self.progress:
            self.progress(len(self.results.layers), len(self.by_key), t.weight.name or "")
        w = t.weight_kn()
        qw = self.quantize(key, spec, w)
        if not np.isfinite(qw.scales).all():  # e.g. float16 scales of a weight beyond float16's range
            raise UnsupportedModelError(
                f"weight '{t.weight.name}' [{t.K} x {t.N}]: its values (largest magnitude "
                f"{float(np.abs(w).max()):.3g}) give scales that overflow {spec.scale_dtype}; "
                + ("use --scale-dtype float32, or " if spec.scale_dtype == "float16" and t.dtype == ir.DataType.FLOAT
                   else "") + f"leave it float with --exclude '{t.node.name}'")
        if qw.float_zero_points and not np.isfinite(qw.zero_points).all():
            raise UnsupportedModelError(
                f"weight '{t.weight.name}' [{t.K} x {t.N}]: a group far from 0 for its range gives a real zero "
                f"point beyond {spec.scale_dtype}; use --scale-dtype float32, or leave it float with "
                f"--exclude '{t.node.name}'")
        metrics = self._metrics(key, spec, w, qw)
        del w
        layer = self.plan.layer(key)
        self.results.layers[key] = LayerResult(
            weight=key[0], nodes=tuple(x.node.name or "" for x in targets), K=t.K, N=t.N, spec=spec,
            method=self.config.method, error=ErrorStats.of(metrics),
            rtn_error=ErrorStats.of({k[4:]: v for k, v in metrics.items() if k.startswith("rtn_")}),
            dead_input_channels=metrics.get("dead_input_channels"), decision=layer.decision,
            sensitivity=layer.sensitivity, awq=layer.awq)
        logger.debug("quantized %s [%d x %d]: %s", t.weight.name, t.K, t.N, metrics)
        if self.progress and len(self.results.layers) == len(self.by_key):
            self.progress(len(self.by_key), len(self.by_key), "")
        self.cache[key] = qw
        while len(self.cache) > self.keep:
            self.cache.popitem(last=False)
        return qw

    def _metrics(self, key: tuple, spec: LayerSpec, w: np.ndarray, qw: QuantizedWeight) -> dict:
        stats = self.stats_for(key)
        s = self.plan.input_scales.get(key)
        if s is not None:  # AWQ: the stored weight is diag(s) W and its input x / s
            w = w / s[:, None]
            stats = stats.scaled(s) if stats is not None else None
            gram = stats.gram if stats is not None else None
            after = error_metrics(w, qw.dequantize() / s[:, None], gram)
        else:  # column slices: temporaries stay small for large layers
            gram = stats.gram if stats is not None else None
            after = error_metrics_of(w, qw, gram, CHUNK_ELEMENTS)
        if self.config.method == "rtn" and s is None:
            before = after
        else:
            grid = spec.grid
            # column slices, unless one super-scale spans every column (as _run_method decides with a context)
            rtn = _run_method(lambda w_, _ctx: quantize_grid(w_, grid, spec.block_size), w, None,
                              independent=not spec.tensor_super_scale)
            before = error_metrics_of(w, rtn, gram, CHUNK_ELEMENTS)
        metrics = dict(after)
        metrics.update({f"rtn_{k}": v for k, v in before.items()})
        if stats is not None:
            # channels the calibration data never exercises: the output error above cannot see their
            # weights (GPTQ rounds them to nearest; the weight error rel_error covers them)
            metrics["dead_input_channels"] = int(dead_channels(stats.mean_sq).sum())
        return metrics

    def quantize_all(self) -> None:
        """Force every pending weight (used when the model is kept in memory rather than saved)."""
        for key in self.by_key:
            if key not in self.results.layers:
                self(key)
