"""Conversion options: one frozen object, validated once, shared by the API, the CLI and the passes."""

from __future__ import annotations

import dataclasses
import numbers
import re

from int4onnx.errors import ConfigError

GROUP_SIZES = (16, 32, 64, 128, 256)
METHODS = ("rtn",)
FORMATS = ("int4onnx", "matmulnbits", "qdq")
COMPUTE = ("fp32", "int8")
QUANT_TYPES = ("int", "nf4")


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """How to quantize.

    bits: 4 (default) or 8.
    group_size: weights along K share one scale per group of this many values (16, 32, 64, 128,
        256). ``-1`` means per-channel: one group spanning the whole of K. A group larger
        than K is the same as per-channel. K need not be a multiple of the group size: the last
        group is padded.
    symmetric: True = signed codes with an implied zero point (no zero-point tensor);
        False = unsigned codes with a zero point per group.
    method: quantization algorithm ("rtn": round to nearest).
    format: "int4onnx" (our MatMulInt4 op), "matmulnbits" (com.microsoft.MatMulNBits), or "qdq"
        (opset-21 int4 DequantizeLinear + MatMul, runnable by stock runtimes).
    compute: "fp32" (dequantize and use float math) or "int8" (activations quantized per block
        to int8 at run time; faster on VNNI/dotprod CPUs).
    exclude: node names or regular expressions (full match) of MatMul/Gemm nodes to leave float.
    quant_type: "int" (uniform codes) or "nf4" (normal-quantile codebook, symmetric 4-bit only).
    """

    bits: int = 4
    group_size: int = 32
    symmetric: bool = False
    method: str = "rtn"
    format: str = "int4onnx"
    compute: str = "fp32"
    exclude: tuple[str, ...] = ()
    quant_type: str = "int"

    def __post_init__(self):
        if isinstance(self.exclude, str):
            object.__setattr__(self, "exclude", (self.exclude,))
        else:
            object.__setattr__(self, "exclude", tuple(self.exclude))
        self.validate()

    def validate(self) -> None:
        if not _is_int(self.bits) or self.bits not in (4, 8):
            raise ConfigError(f"bits must be 4 or 8, got {self.bits!r}")
        if not _is_int(self.group_size) or self.group_size not in GROUP_SIZES + (-1,):
            raise ConfigError(
                f"group size must be one of {', '.join(map(str, GROUP_SIZES))}, or -1 for per-channel; got {self.group_size!r}"
            )
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.format not in FORMATS:
            raise ConfigError(f"unknown format {self.format!r}; choose from {', '.join(FORMATS)}")
        if self.compute not in COMPUTE:
            raise ConfigError(f"unknown compute mode {self.compute!r}; choose from {', '.join(COMPUTE)}")
        if self.quant_type not in QUANT_TYPES:
            raise ConfigError(f"unknown quant type {self.quant_type!r}; choose from {', '.join(QUANT_TYPES)}")
        if self.quant_type == "nf4":
            if self.bits != 4 or not self.symmetric:
                raise ConfigError("nf4 is a symmetric 4-bit code: use bits=4 with symmetric quantization")
            if self.format != "int4onnx":
                raise ConfigError("nf4 is only supported by the int4onnx format")
        if self.format == "qdq" and self.bits == 8 and not self.symmetric:
            pass  # uint8 DequantizeLinear: fine
        for pattern in self.exclude:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"--exclude {pattern!r} is not a valid regular expression: {exc}") from None

    @property
    def per_channel(self) -> bool:
        return self.group_size == -1

    def block_size_for(self, K: int) -> int:
        """Block size used for a weight with K rows: the group size, or K rounded up to 16 when one
        group spans K (per-channel, or a group size larger than K)."""
        whole = -(-K // 16) * 16
        if self.per_channel or self.group_size >= K:
            return whole
        return self.group_size

    def replace(self, **changes) -> "QuantConfig":
        return dataclasses.replace(self, **changes)

    def excluded(self, node_name: str) -> bool:
        return any(node_name == p or re.fullmatch(p, node_name) for p in self.exclude)
