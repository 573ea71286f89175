"""What a conversion did: per-layer results, skipped nodes with reasons, sizes. JSON-serialisable."""

from __future__ import annotations

import dataclasses
import json

from int4onnx.passes.plan import QuantPlan


@dataclasses.dataclass
class Report:
    input: str
    output: str
    config: dict
    layers: list[dict]
    skipped: list[dict]
    nodes_rewritten: int
    input_bytes: int
    output_bytes: int
    float_weight_bytes: int
    quantized_weight_bytes: int
    seconds: float
    calibration: dict = dataclasses.field(default_factory=dict)   # source, samples, seconds, mixed precision
    embeddings: list[dict] = dataclasses.field(default_factory=list)
    activations: dict = dataclasses.field(default_factory=dict)  # per MatMul input: calibration summary
    grown: list[dict] = dataclasses.field(default_factory=list)  # tensors (or the model) stored larger than the input

    @classmethod
    def build(cls, plan: QuantPlan, config, input_path, output_path, input_bytes, output_bytes, seconds):
        layers = []
        q_bytes = 0
        for key, layer in plan.layers.items():
            spec = layer.spec
            size = layer.storage_bytes
            q_bytes += size
            entry = {
                "weight": key[0],
                "nodes": layer.nodes,
                "K": layer.K,
                "N": layer.N,
                "bits": spec.bits,
                "block_size": spec.block_size,
                "symmetric": spec.symmetric,
                "quant_type": spec.quant_type,
                "scale_dtype": spec.scale_dtype,
                "bits_per_weight": round(8 * size / (layer.K * layer.N), 4),
                "bytes": size,
                "method": config.method,
                **{k: round(v, 6) for k, v in layer.metrics.items()},
            }
            if key in plan.decisions:
                entry["decision"] = plan.decisions[key]
            if key in plan.sensitivity:
                entry["sensitivity"] = plan.sensitivity[key]
            if key in plan.awq:
                entry["awq"] = plan.awq[key]
            layers.append(entry)
        q_bytes += sum(e.get("extra_bytes", 0) for e in plan.embeddings)  # a tied table's second zero-point copy
        return cls(
            input=str(input_path), output=str(output_path), config=dataclasses.asdict(config), layers=layers,
            skipped=[dataclasses.asdict(s) for s in plan.skipped], nodes_rewritten=plan.rewritten,
            input_bytes=input_bytes, output_bytes=output_bytes, float_weight_bytes=plan.float_bytes,
            quantized_weight_bytes=q_bytes, seconds=round(seconds, 3),
            calibration=dict(plan.calibration), embeddings=list(plan.embeddings),
            activations={name: st.summary() for name, st in plan.stats.items()}, grown=list(plan.grown),
        )

    @property
    def bits_per_weight(self) -> float:
        n = sum(layer["K"] * layer["N"] for layer in self.layers)
        return 8 * self.quantized_weight_bytes / n if n else 0.0

    def mean_metric(self, name: str) -> float | None:
        """Weight-count-weighted mean of a per-layer metric (e.g. "output_rel_error"), if every layer has it."""
        vals = [(layer[name], layer["K"] * layer["N"]) for layer in self.layers if name in layer]
        if not vals or len(vals) != len(self.layers):
            return None
        return sum(v * n for v, n in vals) / sum(n for _, n in vals)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["bits_per_weight"] = round(self.bits_per_weight, 4)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)
