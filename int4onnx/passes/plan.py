"""State shared by the passes of one conversion: what to quantize, how, what was skipped and why.

Weights are quantized lazily, one at a time, when the output is written (RewriteMatMulsPass puts
ir.LazyTensor initializers in the graph), so memory stays bounded by the largest layer rather than
the model. Everything that must be known earlier (shapes, bits, block size) is in a LayerSpec.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from int4onnx import _native
from int4onnx.config import QuantConfig

MSFT_DOMAIN = "com.microsoft"


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
        """The float32 [K, N] weight this target multiplies by (a copy; the source is released)."""
        w = read_float32(ir.convenience.get_const_tensor(self.weight), transpose=self.transposed)
        if self.alpha != 1.0:
            w *= np.float32(self.alpha)
        return w


def release(tensor) -> None:
    """Unmap an external tensor's data so its pages stop counting against the process."""
    if isinstance(tensor, ir.ExternalTensor):
        tensor.release()


def read_float32(tensor, transpose: bool = False) -> np.ndarray:
    """A float32 copy of a constant (of its transpose if asked), made in one pass whatever the source
    type or layout; then the source is released. Every view of an external tensor's memory map must
    be gone before that (closing a map with live views raises BufferError), so read weights this way."""
    src = tensor.numpy()
    shape = src.shape[::-1] if transpose else src.shape
    out = np.empty(shape, dtype=np.float32)
    out[...] = src.T if transpose else src
    del src
    release(tensor)
    return out


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """How one weight is stored; decided before any weight is quantized."""

    bits: int
    block_size: int
    symmetric: bool
    quant_type: str = "int"
    scale_dtype: str = "float32"   # stored scales: "float32", "float16", or "int8" (double quantization)
    tensor_super_scale: bool = False  # int8 scales: one float32 super-scale for the tensor, not one per column

    @property
    def grid(self):
        """The quantization grid (int4onnx.quant.grid.Grid) this spec stores weights on."""
        from int4onnx.quant.grid import Grid

        return Grid(self.bits, self.symmetric, self.quant_type, self.scale_dtype, self.tensor_super_scale)

    @property
    def double_quant(self) -> bool:
        return self.scale_dtype == "int8"

    def n_blocks(self, K: int) -> int:
        return _native.n_blocks(K, self.block_size)

    def storage_bytes(self, K: int, N: int) -> int:
        """Bytes of codes, scales, zero points and (int8 scales) the float32 super-scales."""
        nb = self.n_blocks(K)
        zp = 0 if self.symmetric else N * _native.zero_point_row_bytes(nb, self.bits)
        super_scales = (4 if self.tensor_super_scale else 4 * N) if self.double_quant else 0
        return (N * nb * _native.blob_bytes(self.bits, self.block_size) + N * nb * np.dtype(self.scale_dtype).itemsize
                + zp + super_scales)

    def describe(self) -> str:
        kind = "nf4" if self.quant_type == "nf4" else f"int{self.bits}"
        return (f"{kind} block {self.block_size} {'sym' if self.symmetric else 'asym'}"
                + ((" int8-scales/tensor" if self.tensor_super_scale else " int8-scales") if self.double_quant else ""))


@dataclasses.dataclass
class SkippedNode:
    name: str
    op_type: str
    reason: str


@dataclasses.dataclass
class LayerResult:
    """What happened to one quantized weight (shared by every target with its key)."""

    spec: LayerSpec
    K: int
    N: int
    nodes: list[str]
    metrics: dict

    @property
    def storage_bytes(self) -> int:
        return self.spec.storage_bytes(self.K, self.N)


@dataclasses.dataclass
class QuantPlan:
    targets: list[MatMulTarget] = dataclasses.field(default_factory=list)
    skipped: list[SkippedNode] = dataclasses.field(default_factory=list)
    specs: dict[tuple, LayerSpec] = dataclasses.field(default_factory=dict)
    layers: dict[tuple, LayerResult] = dataclasses.field(default_factory=dict)  # filled as weights are quantized
    float_bytes: int = 0   # bytes of the float weights selected for quantization
    rewritten: int = 0     # nodes rewritten
    quantizer: object = None  # passes.quantize.WeightQuantizer, called lazily at save time
    # calibration statistics (calibrate.ActivationStats) of each MatMul input, by value name
    stats: dict = dataclasses.field(default_factory=dict)
    # AWQ: rows of these weights were multiplied by s (and their input divided by s); details for the report
    input_scales: dict[tuple, np.ndarray] = dataclasses.field(default_factory=dict)
    awq: dict[tuple, dict] = dataclasses.field(default_factory=dict)
    # why a layer got its spec (LM policy, mixed precision) and its measured sensitivity
    decisions: dict[tuple, str] = dataclasses.field(default_factory=dict)
    sensitivity: dict[tuple, dict] = dataclasses.field(default_factory=dict)
    embeddings: list[dict] = dataclasses.field(default_factory=list)  # quantized Gather tables
    # tied tables: weight key -> the embedding Gathers (passes.embedding.Embedding) reading the same table;
    # the rewrite puts the key's shared initializers in tied_inputs; tied_float: table name -> why it stays float
    tied: dict[tuple, list] = dataclasses.field(default_factory=dict)
    tied_inputs: dict[tuple, dict] = dataclasses.field(default_factory=dict)
    tied_float: dict[str, str] = dataclasses.field(default_factory=dict)
    grown: list[dict] = dataclasses.field(default_factory=list)  # tensors stored larger than the float input
    calibration: dict = dataclasses.field(default_factory=dict)  # what calibration ran on, and how long

    def targets_by_key(self) -> dict[tuple, list[MatMulTarget]]:
        out: dict[tuple, list[MatMulTarget]] = {}
        for t in self.targets:
            out.setdefault(t.key, []).append(t)
        return out


class PlanPass(ir.passes.InPlacePass):
    """An in-place pass of one conversion: reads the options and reads or fills the shared plan."""

    def __init__(self, config: QuantConfig, plan: QuantPlan):
        super().__init__()
        self.config = config
        self.plan = plan


class Names:
    """Fresh value names that collide with nothing in the graph."""

    def __init__(self, graph: ir.Graph):
        self.used = set()
        graphs = {id(graph): graph}
        for node in ir.traversal.RecursiveGraphIterator(graph):
            self.used.update(v.name for v in node.outputs if v.name)
            if node.name:
                self.used.add(node.name)
            graphs.setdefault(id(node.graph), node.graph)
        for g in graphs.values():  # subgraph initializers and inputs share the model's namespace
            self.used.update(g.initializers)
            self.used.update(v.name for v in g.inputs if v.name)

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name

    def add_initializer(self, graph: ir.Graph, base: str, array: np.ndarray,
                        dtype: ir.DataType | None = None) -> ir.Value:
        """A constant initializer of `graph` under a fresh name."""
        name = self.fresh(base)
        tensor = ir.Tensor(array, dtype=dtype, name=name)
        value = ir.Value(name=name, shape=tensor.shape, type=ir.TensorType(tensor.dtype), const_value=tensor)
        graph.register_initializer(value)
        return value

    def add_lazy(self, graph: ir.Graph, base: str, shape, dtype: ir.DataType, make) -> ir.Value:
        """An initializer of `graph` whose data `make()` returns when the saver asks for it."""
        name = self.fresh(base)
        tensor = ir.LazyTensor(lambda: ir.Tensor(make(), dtype=dtype, name=name), dtype=dtype,
                               shape=ir.Shape(list(shape)), name=name, cache=False)
        value = ir.Value(name=name, shape=tensor.shape, type=ir.TensorType(dtype), const_value=tensor)
        graph.register_initializer(value)
        return value

