"""The plan of one conversion: what to quantize, how, what was skipped and why.

The analysis steps (selection, LM and tied-table policy, calibration, AWQ, mixed precision) each return
their part (Selection, LayerChoices, statistics, AwqResult); ``QuantPlan.assemble`` builds the frozen
plan from them once, and the rewrite passes read it. What happens while the output is written (the
quantized weights' results) lives in passes/results.py, not here.

Weights are quantized lazily, one at a time, when the output is written (RewriteMatMulsPass puts
ir.LazyTensor initializers in the graph), so memory stays bounded by the largest layer rather than
the model. Everything that must be known earlier (shapes, bits, block size) is in a LayerSpec.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType

import numpy as np
import onnx_ir as ir

from int4onnx import _native
from int4onnx.config import QuantConfig

MSFT_DOMAIN = "com.microsoft"


@dataclasses.dataclass(frozen=True)
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
    float_zero_points: bool = False   # asymmetric: real zero points [N, n_blocks] of the scales' type (int8: + super-scales)

    @property
    def grid(self):
        """The quantization grid (int4onnx.quant.grid.Grid) this spec stores weights on."""
        from int4onnx.quant.grid import Grid

        return Grid(self.bits, self.symmetric, self.quant_type, self.scale_dtype, self.tensor_super_scale,
                    self.float_zero_points and not self.symmetric)

    @property
    def double_quant(self) -> bool:
        return self.scale_dtype == "int8"

    def n_blocks(self, K: int) -> int:
        return _native.n_blocks(K, self.block_size)

    def storage_bytes(self, K: int, N: int) -> int:
        """Bytes of codes, scales, zero points and (int8 scales) the float32 super-scales: real zero points
        take one scale-sized value per group (int8 codes: plus their own super-scales)."""
        nb = self.n_blocks(K)
        real = self.float_zero_points and not self.symmetric
        zp = 0 if self.symmetric else N * nb * np.dtype(self.scale_dtype).itemsize if real \
            else N * _native.zero_point_row_bytes(nb, self.bits)
        super_scales = (4 if self.tensor_super_scale else 4 * N) * (2 if real else 1) if self.double_quant else 0
        return (N * nb * _native.blob_bytes(self.bits, self.block_size) + N * nb * np.dtype(self.scale_dtype).itemsize
                + zp + super_scales)

    def describe(self) -> str:
        kind = "nf4" if self.quant_type == "nf4" else f"int{self.bits}"
        asym = "asym-float-zp" if self.float_zero_points and not self.symmetric else "asym"
        return (f"{kind} block {self.block_size} {'sym' if self.symmetric else asym}"
                + ((" int8-scales/tensor" if self.tensor_super_scale else " int8-scales") if self.double_quant else ""))


class JsonView(Mapping):
    """Read-only item access to ``to_dict()``, the ``convert --report`` form of a typed record, so that
    readers of the report's JSON dicts (``layer["bits"]``) and of the records (``layer.bits``) agree."""

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __getitem__(self, name):
        return self.to_dict()[name]

    def __iter__(self):
        return iter(self.to_dict())

    def __len__(self):
        return len(self.to_dict())


@dataclasses.dataclass(frozen=True, eq=False)
class SkippedNode(JsonView):
    """A MatMul/Gemm left float, and why."""

    name: str
    op_type: str
    reason: str


def _frozen(mapping) -> MappingProxyType:
    return MappingProxyType(dict(mapping or {}))


def _empty_map():
    return dataclasses.field(default_factory=lambda: MappingProxyType({}))


def _by_key(targets) -> dict[tuple, list[MatMulTarget]]:
    out: dict[tuple, list[MatMulTarget]] = {}
    for t in targets:
        out.setdefault(t.key, []).append(t)
    return out


@dataclasses.dataclass(frozen=True)
class Selection:
    """Every MatMul/Gemm of a model: a target, or skipped with a reason (SelectMatMulsPass's result)."""

    targets: tuple[MatMulTarget, ...] = ()
    skipped: tuple[SkippedNode, ...] = ()

    def drop(self, reasons: Mapping[tuple, str]) -> Selection:
        """The selection with the targets of these weight keys moved to the skipped nodes (key -> why)."""
        if not reasons:
            return self
        gone = tuple(SkippedNode(t.node.name or "", t.node.op_type, reasons[t.key])
                     for t in self.targets if t.key in reasons)
        return Selection(tuple(t for t in self.targets if t.key not in reasons), self.skipped + gone)

    def targets_by_key(self) -> dict[tuple, list[MatMulTarget]]:
        return _by_key(self.targets)


@dataclasses.dataclass(frozen=True)
class LayerChoices:
    """One analysis step's decisions about some weights (by key): their spec and why, and the weights it
    keeps float (key -> why). The LM policy, the tied-table policy and mixed precision each return one;
    ``then`` combines them, the later step deciding a key winning."""

    specs: Mapping[tuple, LayerSpec] = _empty_map()
    decisions: Mapping[tuple, str] = _empty_map()
    floats: Mapping[tuple, str] = _empty_map()
    sensitivity: Mapping[tuple, Mapping[str, float]] = _empty_map()
    tied: Mapping[tuple, tuple] = _empty_map()  # key -> the token Gathers (passes.embedding.Embedding) sharing it
    tied_float: Mapping[str, str] = _empty_map()  # tied table name -> why it stays float in both readers

    def __post_init__(self):
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _frozen(getattr(self, f.name)))

    @property
    def fixed(self) -> frozenset[tuple]:
        """The keys this step decided (a spec or a decision; a tied table left float is not one)."""
        return frozenset(self.decisions) | frozenset(self.specs)

    def then(self, later: LayerChoices) -> LayerChoices:
        return LayerChoices(**{f.name: {**getattr(self, f.name), **getattr(later, f.name)}
                               for f in dataclasses.fields(self)})


@dataclasses.dataclass(frozen=True, eq=False)
class AwqDecision(JsonView):
    """AWQ's outcome for one weight: scaled (alpha, where 1/s went, the calibration error ratio), or why not."""

    applied: bool
    reason: str | None = None
    alpha: float | None = None
    input_scale: str | None = None
    calibration_output_error_ratio: float | None = None

    def to_dict(self) -> dict:
        if not self.applied:
            return {"applied": False, "reason": self.reason}
        return {"applied": True, "alpha": self.alpha, "input_scale": self.input_scale,
                "calibration_output_error_ratio": self.calibration_output_error_ratio}


@dataclasses.dataclass(frozen=True)
class AwqResult:
    """AwqPass's result: s per scaled weight key, the decision per key, and the input statistics after scaling."""

    input_scales: Mapping[tuple, np.ndarray]
    decisions: Mapping[tuple, AwqDecision]
    stats: Mapping[str, object]


@dataclasses.dataclass(frozen=True, eq=False)
class MixedPrecisionSummary(JsonView):
    target_bits: float | None
    max_error: float | None
    estimated_output_rel_error: float
    estimated_bits_per_weight_all_selected: float
    layers_4bit: int
    layers_8bit: int
    layers_float: int
    choices: Mapping[str, int]   # spec description (or "float") -> number of layers
    seconds: float

    def to_dict(self) -> dict:
        return {"target_bits": self.target_bits, "max_error": self.max_error,
                "estimated_output_rel_error": self.estimated_output_rel_error,
                "estimated_bits_per_weight_all_selected": self.estimated_bits_per_weight_all_selected,
                "layers": {"4": self.layers_4bit, "8": self.layers_8bit, "float": self.layers_float},
                "choices": dict(self.choices), "seconds": self.seconds}


@dataclasses.dataclass(frozen=True, eq=False)
class CalibrationInfo(JsonView):
    """What calibration ran on, how long it took, and the mixed-precision summary when that ran."""

    source: str
    samples: int
    gram: bool
    statistics_bytes: int
    seconds: float
    mixed_precision: MixedPrecisionSummary | None = None

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.mixed_precision is None:
            del d["mixed_precision"]
        else:
            d["mixed_precision"] = self.mixed_precision.to_dict()
        return d


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """Everything decided about one weight before the rewrite (a view of the plan for one key)."""

    key: tuple
    targets: tuple[MatMulTarget, ...]
    spec: LayerSpec
    method: str
    decision: str | None           # why this spec, when a policy or mixed precision chose it
    sensitivity: Mapping[str, float] | None
    awq: AwqDecision | None
    input_scale: np.ndarray | None  # AWQ's s: the stored weight is diag(s) W
    tied: tuple = ()                # token Gathers reading the same table

    @property
    def weight(self) -> str:
        return self.key[0]


@dataclasses.dataclass(frozen=True)
class QuantPlan:
    """The analysis phase's result, assembled once (``assemble``) and read, never changed, by the rewrite:
    the targets and skipped nodes, one LayerSpec per weight key, why (decisions, sensitivity), the
    calibration statistics of each MatMul input (by value name, after any AWQ scaling), AWQ's scales and
    the tied tables. Maps are read-only views."""

    method: str
    targets: tuple[MatMulTarget, ...]
    skipped: tuple[SkippedNode, ...]
    specs: Mapping[tuple, LayerSpec]
    decisions: Mapping[tuple, str] = _empty_map()
    sensitivity: Mapping[tuple, Mapping[str, float]] = _empty_map()
    stats: Mapping[str, object] = _empty_map()  # calibrate.ActivationStats by MatMul input name
    input_scales: Mapping[tuple, np.ndarray] = _empty_map()
    awq: Mapping[tuple, AwqDecision] = _empty_map()
    tied: Mapping[tuple, tuple] = _empty_map()
    tied_float: Mapping[str, str] = _empty_map()
    calibration: CalibrationInfo | None = None

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, (dict, MappingProxyType)):
                object.__setattr__(self, f.name, _frozen(v))
            elif isinstance(v, list):
                object.__setattr__(self, f.name, tuple(v))
        missing = [k[0] for k in _by_key(self.targets) if k not in self.specs]
        if missing:
            raise ValueError(f"plan: no LayerSpec for {missing}")

    @classmethod
    def assemble(cls, method: str, selection: Selection, choices: LayerChoices, default_spec,
                 stats: Mapping | None = None, calibration: CalibrationInfo | None = None,
                 awq: AwqResult | None = None) -> QuantPlan:
        """The plan of `selection` less the weights `choices` keeps float; weights no step decided get
        `default_spec(target)`."""
        kept = selection.drop(choices.floats)
        specs = {key: choices.specs.get(key) or default_spec(ts[0]) for key, ts in kept.targets_by_key().items()}
        return cls(method=method, targets=kept.targets, skipped=kept.skipped, specs=specs,
                   decisions=choices.decisions, sensitivity=choices.sensitivity,
                   stats=awq.stats if awq is not None else (stats or {}),
                   input_scales=awq.input_scales if awq is not None else {},
                   awq=awq.decisions if awq is not None else {}, tied=choices.tied, tied_float=choices.tied_float,
                   calibration=calibration)

    def targets_by_key(self) -> dict[tuple, list[MatMulTarget]]:
        return _by_key(self.targets)

    @property
    def float_bytes(self) -> int:
        """Bytes of the float weights selected for quantization (each shared weight once)."""
        return sum(ts[0].K * ts[0].N * (2 if ts[0].dtype == ir.DataType.FLOAT16 else 4)
                   for ts in self.targets_by_key().values())

    def layer(self, key: tuple) -> LayerPlan:
        return LayerPlan(key=key, targets=tuple(t for t in self.targets if t.key == key), spec=self.specs[key],
                         method=self.method, decision=self.decisions.get(key), sensitivity=self.sensitivity.get(key),
                         awq=self.awq.get(key), input_scale=self.input_scales.get(key), tied=self.tied.get(key, ()))


class PlanPass(ir.passes.InPlacePass):
    """A rewrite pass of one conversion: reads the options and the frozen plan (given in __init__)."""

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

