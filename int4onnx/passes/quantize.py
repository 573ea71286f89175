"""Quantize the weight of every selected MatMul/Gemm once (weights shared by several nodes are shared)."""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import onnx_ir as ir

from int4onnx.config import QuantConfig
from int4onnx.passes.plan import LayerResult, QuantPlan
from int4onnx.quant.base import error_metrics
from int4onnx.quant.rtn import quantize_rtn

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]


class QuantizeWeightsPass(ir.passes.InPlacePass):
    """Fills ``plan.layers``: one :class:`LayerResult` per distinct weight. The graph is untouched;
    RewriteMatMulsPass consumes the results."""

    def __init__(self, config: QuantConfig, plan: QuantPlan, progress: Progress | None = None):
        super().__init__()
        self.config = config
        self.plan = plan
        self.progress = progress

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        keys = []
        for t in self.plan.targets:
            if t.key not in keys:
                keys.append(t.key)
        by_key = {k: [t for t in self.plan.targets if t.key == k] for k in keys}
        for i, key in enumerate(keys):
            targets = by_key[key]
            t = targets[0]
            if self.progress:
                self.progress(i, len(keys), t.weight.name or "")
            w = t.weight_kn()
            qw = self.quantize(w, t.dtype)
            metrics = error_metrics(w, qw.dequantize())
            self.plan.layers[key] = LayerResult(weight=qw, nodes=[x.node.name or "" for x in targets], metrics=metrics)
            self.plan.float_bytes += w.size * (2 if t.dtype == ir.DataType.FLOAT16 else 4)
            logger.debug("quantized %s [%d x %d]: rel error %.4f", t.weight.name, t.K, t.N, metrics["rel_error"])
        if self.progress:
            self.progress(len(keys), len(keys), "")
        return ir.passes.PassResult(model, modified=False)

    def quantize(self, w: np.ndarray, dtype: ir.DataType):
        c = self.config
        scale_dtype = np.float16 if dtype == ir.DataType.FLOAT16 else np.float32
        return quantize_rtn(w, bits=c.bits, block_size=c.block_size_for(w.shape[0]), symmetric=c.symmetric,
                            quant_type=c.quant_type, scale_dtype=scale_dtype)
