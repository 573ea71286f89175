"""The quantization methods: one table, read by QuantConfig's validation, the CLI's --method choices and
help, the pipeline (which methods need calibration, which scale input channels first) and the quantizer.

Adding a method: a function ``(w_kn, LayerContext) -> QuantizedWeight`` in its own module (the
numerics usually in ``int4onnx/quant/``), its test, and one line in ``REGISTRY``. The implementation is
named by ``"module:function"`` and imported on first use, so that reading the options (``QuantConfig``,
``int4onnx convert --help``) loads neither numpy nor the native library.
"""

from __future__ import annotations

import dataclasses
import importlib


@dataclasses.dataclass(frozen=True)
class Method:
    name: str             # the --method / method= value
    summary: str          # a few words for `int4onnx convert --help`
    calibrated: bool      # needs calibration data (Gram matrices)
    scales_inputs: bool   # AwqPass scales the input channels (folded into the graph) before quantization
    implementation: str   # "module:function": (w_kn, LayerContext) -> QuantizedWeight

    def load(self):
        """The function that quantizes one weight with this method."""
        module, _, attr = self.implementation.partition(":")
        return getattr(importlib.import_module(module), attr)


_Q = "int4onnx.passes.quantize"
REGISTRY: tuple[Method, ...] = (
    Method("rtn", "round to nearest", False, False, f"{_Q}:rtn_method"),
    Method("clip", "RTN with a per-group clipping search", False, False, f"{_Q}:clip_method"),
    Method("awq", "activation-aware scaling", True, True, f"{_Q}:awq_method"),
    Method("gptq", "error-compensating", True, False, f"{_Q}:gptq_method"),
    Method("awq-gptq", "AWQ's scaling, then GPTQ", True, True, f"{_Q}:gptq_method"),
)
BY_NAME: dict[str, Method] = {m.name: m for m in REGISTRY}

NAMES = tuple(m.name for m in REGISTRY)
CALIBRATED = tuple(m.name for m in REGISTRY if m.calibrated)
SCALES_INPUTS = tuple(m.name for m in REGISTRY if m.scales_inputs)


def cli_help() -> str:
    """The --method help: every method's summary, and which need calibration data."""
    calibrated = list(CALIBRATED)
    needs = ", ".join(calibrated[:-1]) + f" and {calibrated[-1]}" if len(calibrated) > 1 else calibrated[0]
    return "; ".join(f"{m.name}: {m.summary}" for m in REGISTRY) + f" ({needs} need calibration data)."
