"""What the rewrite did: typed results the Report and the CLI read by attribute.

The plan (passes/plan.py) is decided before the rewrite and never changes; these are filled while the
rewrite runs (RewriteRecord) and while the output is written (QuantResults: the WeightQuantizer
quantizes each weight lazily, when the saver reads its bytes, and records its LayerResult here).

Item access (``result["bits"]``) on LayerResult, EmbeddingResult and Growth gives their JSON form (the
keys of ``convert --report``), so readers of the report's dicts keep working.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from int4onnx.passes.plan import JsonView, LayerSpec


@dataclasses.dataclass(frozen=True)
class ErrorStats:
    """Relative Frobenius error and SQNR (dB) of a quantized weight; with calibration Gram matrices also
    those of the layer output on the calibration inputs (quant.base.error_metrics' keys)."""

    rel_error: float
    sqnr_db: float
    output_rel_error: float | None = None
    output_sqnr_db: float | None = None

    @classmethod
    def of(cls, metrics: Mapping[str, float]) -> ErrorStats:
        return cls(**{f.name: float(metrics[f.name]) for f in dataclasses.fields(cls) if f.name in metrics})

    def to_dict(self, prefix: str = "") -> dict:
        return {prefix + k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclasses.dataclass(frozen=True, eq=False)
class LayerResult(JsonView):
    """One quantized weight (shared by every target with its key): how it is stored and how far from
    the float weight (``error``: the method, ``rtn_error``: round to nearest on the original weight)."""

    weight: str
    nodes: tuple[str, ...]
    K: int
    N: int
    spec: LayerSpec
    method: str
    error: ErrorStats
    rtn_error: ErrorStats
    dead_input_channels: int | None = None   # calibration data never exercises these input channels
    decision: str | None = None              # from the plan: why this spec
    sensitivity: Mapping[str, float] | None = None
    awq: object | None = None                # plan.AwqDecision

    @property
    def bits(self) -> int:
        return self.spec.bits

    @property
    def block_size(self) -> int:
        return self.spec.block_size

    @property
    def storage_bytes(self) -> int:
        return self.spec.storage_bytes(self.K, self.N)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.storage_bytes / (self.K * self.N)

    def metric(self, name: str) -> float | None:
        """A metric by its report name (``rel_error``, ``rtn_output_rel_error``, ...), None if not measured."""
        stats, field = (self.rtn_error, name[4:]) if name.startswith("rtn_") else (self.error, name)
        value = getattr(stats, field, None) if field in {f.name for f in dataclasses.fields(ErrorStats)} else None
        return None if value is None else round(value, 6)  # as the report states it

    def to_dict(self) -> dict:
        spec = self.spec
        d = {"weight": self.weight, "nodes": list(self.nodes), "K": self.K, "N": self.N, "bits": spec.bits,
             "block_size": spec.block_size, "symmetric": spec.symmetric, "quant_type": spec.quant_type,
             "scale_dtype": spec.scale_dtype, "bits_per_weight": round(self.bits_per_weight, 4),
             "bytes": self.storage_bytes, "method": self.method}
        if spec.grid.float_zero_points:
            d["float_zero_points"] = True
        metrics = {**self.error.to_dict(), **self.rtn_error.to_dict("rtn_")}
        d.update({k: round(v, 6) for k, v in metrics.items()})
        if self.dead_input_channels is not None:
            d["dead_input_channels"] = self.dead_input_channels
        if self.decision is not None:
            d["decision"] = self.decision
        if self.sensitivity is not None:
            d["sensitivity"] = dict(self.sensitivity)
        if self.awq is not None:
            d["awq"] = self.awq.to_dict()
        return d


@dataclasses.dataclass(frozen=True, eq=False)
class EmbeddingResult(JsonView):
    """A token-embedding Gather: its table quantized (GatherBlockQuantized), or left float and why."""

    node: str
    table: str
    quantized: bool
    reason: str | None = None
    bits: int | None = None
    block_size: int | None = None
    V: int | None = None
    D: int | None = None
    shared_with: tuple[str, ...] | None = None  # a tied table: the MatMul/Gemm nodes reading the same bytes
    bytes: int | None = None
    extra_bytes: int | None = None               # a tied table's second copy of its 4-bit zero points
    bits_per_weight: float | None = None

    def to_dict(self) -> dict:
        d = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is not None:
                d[f.name] = list(v) if isinstance(v, tuple) else v
        return d


@dataclasses.dataclass(frozen=True, eq=False)
class Growth(JsonView):
    """A tensor (or the whole model) stored in more bytes than its float input, and why."""

    tensor: str
    float_bytes: int
    stored_bytes: int
    reason: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class RewriteRecord:
    """Filled by the rewrite passes of one conversion (not part of the plan): nodes rewritten, the
    initializers of tied tables (RewriteMatMulsPass makes them, QuantizeEmbeddingsPass reads them),
    the embedding tables and the tensors that grew."""

    nodes_rewritten: int = 0
    tied_inputs: dict[tuple, dict] = dataclasses.field(default_factory=dict)
    embeddings: list[EmbeddingResult] = dataclasses.field(default_factory=list)
    grown: list[Growth] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class QuantResults:
    """The WeightQuantizer's record: one LayerResult per weight key, filled as weights are quantized
    (normally while the output is written)."""

    layers: dict[tuple, LayerResult] = dataclasses.field(default_factory=dict)
