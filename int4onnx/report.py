"""What a conversion did: per-layer results, skipped nodes with reasons, sizes. JSON-serialisable."""

from __future__ import annotations

import dataclasses
import json

from int4onnx.passes.plan import CalibrationInfo, SkippedNode
from int4onnx.passes.results import EmbeddingResult, Growth, LayerResult


@dataclasses.dataclass
class Report:
    """The typed records of a conversion (read them by attribute: ``layers[0].bits``, ``skipped[0].reason``);
    each record's item access and ``to_dict()`` give the --report JSON (``layers[0]["bits"]``)."""

    input: str
    output: str
    config: dict
    layers: list[LayerResult]
    skipped: list[SkippedNode]
    nodes_rewritten: int
    input_bytes: int
    output_bytes: int
    float_weight_bytes: int
    quantized_weight_bytes: int
    seconds: float
    calibration: CalibrationInfo | None = None   # source, samples, seconds, mixed precision
    embeddings: list[EmbeddingResult] = dataclasses.field(default_factory=list)
    activations: dict = dataclasses.field(default_factory=dict)  # per MatMul input: calibration summary
    grown: list[Growth] = dataclasses.field(default_factory=list)  # tensors (or the model) stored larger than the input

    @classmethod
    def build(cls, conversion, config, input_path, output_path, input_bytes, output_bytes, seconds):
        """From a pipeline.Conversion whose weights have all been quantized (the output was written)."""
        plan, record = conversion.plan, conversion.record
        layers = list(conversion.layers.values())
        q_bytes = sum(layer.storage_bytes for layer in layers)
        q_bytes += sum(e.extra_bytes or 0 for e in record.embeddings)  # a tied table's second zero-point copy
        return cls(
            input=str(input_path), output=str(output_path), config=dataclasses.asdict(config), layers=layers,
            skipped=list(plan.skipped), nodes_rewritten=record.nodes_rewritten,
            input_bytes=input_bytes, output_bytes=output_bytes, float_weight_bytes=plan.float_bytes,
            quantized_weight_bytes=q_bytes, seconds=round(seconds, 3),
            calibration=plan.calibration, embeddings=list(record.embeddings),
            activations={name: st.summary() for name, st in plan.stats.items()}, grown=list(record.grown),
        )

    @property
    def bits_per_weight(self) -> float:
        n = sum(layer.K * layer.N for layer in self.layers)
        return 8 * self.quantized_weight_bytes / n if n else 0.0

    def mean_metric(self, name: str) -> float | None:
        """Weight-count-weighted mean of a per-layer metric (e.g. "output_rel_error"), if every layer has it."""
        vals = [(layer.metric(name), layer.K * layer.N) for layer in self.layers]
        if not vals or any(v is None for v, _ in vals):
            return None
        return sum(v * n for v, n in vals) / sum(n for _, n in vals)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("layers", "skipped", "embeddings", "grown"):
            d[name] = [x.to_dict() for x in d[name]]
        d["calibration"] = self.calibration.to_dict() if self.calibration is not None else {}
        d["bits_per_weight"] = round(self.bits_per_weight, 4)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)
