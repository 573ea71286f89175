"""Decide how each selected weight is stored (PlanLayersPass) and quantize it on demand (WeightQuantizer).

Quantization itself is deferred: RewriteMatMulsPass puts lazy initializers in the graph and the
WeightQuantizer runs when the saver writes them, one weight at a time.
"""

from __future__ import annotations

import collections
import logging
from typing import Callable

import numpy as np
import onnx_ir as ir

from int4onnx.config import QuantConfig
from int4onnx.passes.plan import LayerResult, LayerSpec, MatMulTarget, QuantPlan
from int4onnx.quant.base import QuantizedWeight, error_metrics_of
from int4onnx.quant.rtn import quantize_rtn

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]
# A method maps (float32 [K, N] weight, its target, its spec) to a QuantizedWeight.
Method = Callable[[np.ndarray, MatMulTarget, LayerSpec], QuantizedWeight]


def rtn_method(w: np.ndarray, target: MatMulTarget, spec: LayerSpec) -> QuantizedWeight:
    return quantize_rtn(w, bits=spec.bits, block_size=spec.block_size, symmetric=spec.symmetric,
                        quant_type=spec.quant_type, scale_dtype=np.dtype(spec.scale_dtype))


# RTN quantizes every output column on its own, so it can run on a slice of columns at a time.
rtn_method.column_independent = True

METHODS: dict[str, Method] = {"rtn": rtn_method}

# Methods marked ``column_independent`` are run on slices of about this many weights, so the float
# temporaries of one call stay small whatever the layer size (memory is bounded by the largest layer).
CHUNK_ELEMENTS = 1 << 22


class PlanLayersPass(ir.passes.InPlacePass):
    """Fills ``plan.specs`` (one LayerSpec per distinct weight) from the config; reads no weights."""

    def __init__(self, config: QuantConfig, plan: QuantPlan):
        super().__init__()
        self.config = config
        self.plan = plan

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        c = self.config
        for key, targets in self.plan.targets_by_key().items():
            t = targets[0]
            if key in self.plan.specs:  # an earlier pass (e.g. mixed precision) decided already
                continue
            self.plan.specs[key] = LayerSpec(
                bits=c.bits, block_size=c.block_size_for(t.K), symmetric=c.symmetric, quant_type=c.quant_type,
                scale_dtype="float16" if t.dtype == ir.DataType.FLOAT16 else "float32")
            self.plan.float_bytes += t.K * t.N * (2 if t.dtype == ir.DataType.FLOAT16 else 4)
        return ir.passes.PassResult(model, modified=False)


class WeightQuantizer:
    """Quantizes one weight when first asked, records its LayerResult, and keeps the last few results
    so that the several initializers made from one weight (codes, scales, zero points) share one run."""

    def __init__(self, config: QuantConfig, plan: QuantPlan, progress: Progress | None = None,
                 method: Method | None = None, keep: int = 2):
        self.config = config
        self.plan = plan
        self.progress = progress
        self.method = method or METHODS[config.method]
        self.by_key = plan.targets_by_key()
        self.cache: collections.OrderedDict[tuple, QuantizedWeight] = collections.OrderedDict()
        self.keep = keep

    def __call__(self, key: tuple) -> QuantizedWeight:
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        targets = self.by_key[key]
        t, spec = targets[0], self.plan.specs[key]
        if self.progress:
            self.progress(len(self.plan.layers), len(self.by_key), t.weight.name or "")
        w = t.weight_kn()
        qw = self._quantize(w, t, spec)
        metrics = error_metrics_of(w, qw, CHUNK_ELEMENTS)
        del w
        self.plan.layers[key] = LayerResult(spec=spec, K=t.K, N=t.N, nodes=[x.node.name or "" for x in targets],
                                            metrics=metrics)
        logger.debug("quantized %s [%d x %d]: rel error %.4f", t.weight.name, t.K, t.N, metrics["rel_error"])
        if self.progress and len(self.plan.layers) == len(self.by_key):
            self.progress(len(self.by_key), len(self.by_key), "")
        self.cache[key] = qw
        while len(self.cache) > self.keep:
            self.cache.popitem(last=False)
        return qw

    def _quantize(self, w: np.ndarray, t: MatMulTarget, spec: LayerSpec) -> QuantizedWeight:
        step = max(1, CHUNK_ELEMENTS // max(t.K, 1))
        if not getattr(self.method, "column_independent", False) or t.N <= step:
            return self.method(w, t, spec)
        return QuantizedWeight.concat_columns(
            [self.method(w[:, n0:n0 + step], t, spec) for n0 in range(0, t.N, step)])

    def quantize_all(self) -> None:
        """Force every pending weight (used when the model is kept in memory rather than saved)."""
        for key in self.by_key:
            if key not in self.plan.layers:
                self(key)
