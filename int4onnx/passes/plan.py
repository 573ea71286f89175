"""State shared by the passes of one conversion: what to quantize, what was skipped and why."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from int4onnx.quant.base import QuantizedWeight


@dataclasses.dataclass
class MatMulTarget:
    """An eligible MatMul or Gemm: Y = A @ W (+ bias), W = alpha * (B or B^T) of shape [K, N]."""

    node: ir.Node
    weight: ir.Value          # the constant B
    K: int
    N: int
    dtype: ir.DataType        # FLOAT or FLOAT16: the activation and scale type
    transposed: bool = False  # Gemm transB=1: B is stored [N, K]
    alpha: float = 1.0
    bias: ir.Value | None = None  # Gemm C
    beta: float = 1.0

    @property
    def key(self) -> tuple:
        """Identity of the quantized weight: targets with the same key share one packed tensor."""
        return (self.weight.name, self.transposed, self.alpha)

    def weight_kn(self) -> np.ndarray:
        """The float32 [K, N] weight this target multiplies by."""
        w = ir.convenience.get_const_tensor(self.weight).numpy().astype(np.float32)
        if self.transposed:
            w = w.T
        if self.alpha != 1.0:
            w = w * np.float32(self.alpha)
        return np.ascontiguousarray(w)


@dataclasses.dataclass
class SkippedNode:
    name: str
    op_type: str
    reason: str


@dataclasses.dataclass
class LayerResult:
    """What happened to one quantized weight (shared by every target with its key)."""

    weight: QuantizedWeight
    nodes: list[str]
    metrics: dict


@dataclasses.dataclass
class QuantPlan:
    targets: list[MatMulTarget] = dataclasses.field(default_factory=list)
    skipped: list[SkippedNode] = dataclasses.field(default_factory=list)
    layers: dict[tuple, LayerResult] = dataclasses.field(default_factory=dict)
    float_bytes: int = 0   # bytes of the float weights that were quantized
    rewritten: int = 0     # nodes rewritten
