"""UpgradeOpsetPass: the default-domain opset raised with ONNX's version converter (for --format qdq)."""

from __future__ import annotations

import onnx
import onnx_ir as ir

from int4onnx import io
from int4onnx.errors import UnsupportedModelError, first_line

QDQ_MIN_OPSET = 21  # int4 DequantizeLinear with block_size


class UpgradeOpsetPass(ir.passes.FunctionalPass):
    """Convert the default-domain opset to `target` with ONNX's version converter (for --format qdq)."""

    def __init__(self, target: int):
        super().__init__()
        self.target = target

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        current = model.opset_imports.get("", 1)
        if current >= self.target:
            return ir.passes.PassResult(model.clone(), modified=False)
        try:
            proto = onnx.version_converter.convert_version(ir.serde.serialize_model(model), self.target)
        except Exception as exc:
            raise UnsupportedModelError(
                f"the model uses opset {current}; the qdq format needs opset {self.target} and ONNX's version "
                f"converter failed ({type(exc).__name__}: {first_line(exc, '')}). "
                "Use --format int4onnx or --format matmulnbits, which work with any opset"
            ) from exc
        upgraded = ir.serde.deserialize_model(proto)
        # external data stays where it was: the serialised model only kept its relative locations
        base_dirs = {t.base_dir for _, t in io.external_tensors(model)}
        if base_dirs:
            ir.external_data.set_base_dir(upgraded.graph, base_dirs.pop())
        return ir.passes.PassResult(upgraded, modified=True)

    def ensures(self, model: ir.Model) -> None:
        if model.opset_imports.get("", 1) < self.target:
            raise ir.passes.PostconditionError(f"opset still below {self.target}")
