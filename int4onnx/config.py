"""Conversion options: one frozen object, validated once, shared by the API, the CLI and the passes."""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import re
import typing

import numpy as np

from int4onnx import methods
from int4onnx.errors import ConfigError

GROUP_SIZES = (16, 32, 64, 128, 256)
METHODS = methods.NAMES
CALIBRATED_METHODS = methods.CALIBRATED  # need calibration data (Gram matrices)
AWQ_METHODS = methods.SCALES_INPUTS  # methods that scale input channels first (AwqPass)
LAYER_CHOICES = ("4", "8", "float")
FORMATS = ("int4onnx", "matmulnbits", "qdq")
COMPUTE = ("fp32", "int8")
QUANT_TYPES = ("int", "nf4")
SCALE_DTYPES = ("auto", "float32", "float16")


def default_compute(fmt) -> str:
    """The kernel arithmetic a format gets unless told: ONNX Runtime's MatMulNBits decodes with int8
    activations (accuracy_level 4) typically 1.2-1.4x faster than with float ones, at +0.2% perplexity on
    SmolLM2-135M (docs/deploy.md section 8); our op and qdq keep float activations."""
    return "int8" if fmt == "matmulnbits" else "fp32"


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def option(default, help: str, *, choices=None, cli: str | None = None, metavar: str | None = None,
           path: bool = False, cli_default=dataclasses.MISSING):
    """A QuantConfig field with what the CLI needs to offer it (cli.config_options builds the click
    options from these): its help, its `choices` (also checked by QuantConfig._check_types), its
    spelling when not --field-name (an option name, or a flag pair such as "--symmetric/--asymmetric"),
    a metavar, whether it is a file path, and a CLI default when it differs from the field's (None: the
    command works it out)."""
    metadata = {"help": help, "cli": cli, "metavar": metavar, "path": path}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if cli_default is not dataclasses.MISSING:
        metadata["cli_default"] = cli_default
    return dataclasses.field(default=default, metadata=metadata)


def _coerce(name: str, value, hint):
    """`value` as the type `hint` of field `name` asks for, or a ConfigError naming the field. Only
    lossless conversions: numpy integers to int, ints to float, paths to str, one name to a tuple."""
    args = typing.get_args(hint)
    if type(None) in args:  # X | None
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        raise ConfigError(f"{name} must be True or False, got {value!r}")
    if hint is int:
        if _is_int(value):
            return int(value)
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
            value = float(value)
            if math.isnan(value):
                raise ConfigError(f"{name} must be a number, got nan")
            return value
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise ConfigError(f"{name} must be a string, got {value!r}")
    if typing.get_origin(hint) is tuple:  # tuple[str, ...]: one string, or a list/tuple of them
        if isinstance(value, str):
            return (value,)
        if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{name} must be a string or a list of strings, got {value!r}")
    raise TypeError(f"QuantConfig field {name}: unsupported type {hint!r}")  # pragma: no cover - a bug here


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
        to int8 at run time; faster on VNNI/dotprod CPUs). Default (None): default_compute(format),
        fp32 for our op, int8 (accuracy_level 4) for matmulnbits (docs/deploy.md has the numbers).
    exclude: node names or regular expressions (full match) of MatMul/Gemm nodes to leave float.
    quant_type: "int" (uniform codes) or "nf4" (normal-quantile codebook, symmetric 4-bit only).
    double_quant: store scales as int8 with float32 super-scales (int4onnx format): one per output
        column, or one for the whole tensor when K < 1024, where a per-column super-scale would cost
        more than 1/32 bit per weight.
    scale_dtype: float scales of float32 models in the int4onnx format: "float16" (4.5 bits per weight
        at group 32 symmetric), "float32" (5.0), or "auto" (default): float16, except a layer whose
        range does not fit float16 scales keeps float32 (logged; the report's scale_dtype says so).
        Codes are chosen against the rounded scales. float16 models always store float16 scales;
        matmulnbits and qdq store scales of the model's type (auto; float16 is an error there).

    method: "rtn" (round to nearest), "clip" (RTN with an MSE-optimal clipping range per group,
        weighted by the calibration mean square when calibration data is given), "awq"
        (activation-aware input-channel scaling, then clip search), "gptq" (error-compensating
        quantization on the calibration Gram matrices), "awq-gptq" (AWQ's input scaling, then GPTQ on
        the scaled weights). docs/methods.md has the details.
    float_zero_points: asymmetric groups with a real zero point z = -min / scale (w = (q - z) * scale,
        scale = (max - min) / (2^bits - 1) over the group, no forced zero in the range) instead of an
        integer one; the zero points are stored like the scales: float16/float32 (the scales' dtype),
        or int8 codes under a float32 super-scale per column (``zero_points_scale``) with
        double_quant. int4onnx and matmulnbits (float zero points of A's type) formats only. A token
        table tied to the lm_head keeps integer zero points (GatherBlockQuantized reads no others),
        or symmetric codes with lm_head_symmetric.
    lm_head_symmetric: symmetric codes for a 4-bit lm_head and the token table tied to it, whatever
        `symmetric` says for the other layers (a tied table: 4.5 bits at group 32 with float16 scales).
    clip_search: awq and gptq also search each group's clipping range.
    act_order, damp: GPTQ options (visit channels by decreasing activation energy; damping as a
        fraction of the mean diagonal of the Gram matrix).

    Calibration data (needed by awq, gptq, target_bits, max_error; optional for clip):
    calibration: an .npz file (arrays keyed by input name: one sample) or a directory of them.
    calibration_text + tokenizer: a text file cut into `calibration_samples` windows of
        `sequence_length` tokens (tokenizer.json or sentencepiece .model), for causal LMs (default 512,
        or the model's context length when shorter; a longer explicit value is an error).

    Mixed precision and LM policy:
    target_bits: average bits per quantized weight to aim for (scales and zero points included);
        the most sensitive layers go to 8-bit or stay float while the average stays within it.
    max_error: promote the most sensitive layers until the estimated relative error of the model
        outputs on the calibration data is at most this.
    sensitivity_samples: calibration samples in the end-to-end part of the sensitivity pass (a large
        LM's windows are cut to a budget of multiply-adds: SmolLM2-135M runs 2 x 32 tokens per layer).
    lm_head: "8" (default), "4" (like the other layers) or "float": the final projection of a
        language model (a MatMul whose output is a graph output, in a model with a token embedding).
    embedding: "float" (default), "8" or "4": quantize token-embedding Gather tables (ONNX
        Runtime's com.microsoft.GatherBlockQuantized).
    """

    bits: int = option(4, "Weight bits: 4 or 8.")
    group_size: int = option(32, "Weights per scale along K: 16, 32, 64, 128, 256; -1 = per-channel.")
    symmetric: bool = option(False, "Symmetric codes (no zero points) or asymmetric (uint codes with zero points). "
                                    "Default: asymmetric, symmetric for --dtype nf4.",
                             cli="--symmetric/--asymmetric", cli_default=None)
    method: str = option("rtn", methods.cli_help(), choices=METHODS)
    format: str = option("int4onnx", "int4onnx: our MatMulInt4 op; matmulnbits: ONNX Runtime's MatMulNBits; "
                                     "qdq: opset-21 DequantizeLinear+MatMul.", choices=FORMATS)
    compute: str | None = option(None, "Kernel arithmetic: fp32 activations, or int8-quantized activations (faster, "
                                       "slightly less accurate). Default: fp32; int8 (accuracy_level 4) for --format "
                                       "matmulnbits.", choices=COMPUTE)  # None: default_compute(format)
    exclude: tuple[str, ...] = option((), "Leave these MatMul/Gemm nodes float (repeatable; full-match regex).",
                                      metavar="NAME|REGEX")
    quant_type: str = option("int", "Code type: uniform integers, or the NF4 codebook (symmetric 4-bit).",
                             choices=QUANT_TYPES, cli="--dtype")
    double_quant: bool = option(False, "Store scales as int8 with a float32 super-scale per output column (int4onnx "
                                       "format).")
    scale_dtype: str = option("auto", "Float scales of float32 models (int4onnx format): float16 (4.5 bits/weight at "
                                      "group 32 sym) or float32 (5.0). auto: float16, float32 for a layer whose "
                                      "range does not fit float16.", choices=SCALE_DTYPES)
    float_zero_points: bool = option(False, "Asymmetric weights with a real (float) zero point per group, w = (q - z) "
                                            "* s: the group's min..max range on the grid (int4onnx and matmulnbits "
                                            "formats). Stored like the scales (int8 codes under a float32 super-scale "
                                            "with --double-quant).")
    lm_head_symmetric: bool = option(False, "Language models: a 4-bit lm_head (and the token table tied to it) "
                                            "takes symmetric codes while the other layers are asymmetric.")
    clip_search: bool = option(True, "awq and gptq also search each group's clipping range.")
    act_order: bool = option(False, "gptq: quantize input channels by decreasing activation energy.")
    damp: float = option(0.01, "gptq: damping added to the Gram matrix diagonal (fraction of its mean).")
    calibration: str | None = option(None, "Calibration data: an .npz (arrays keyed by input name) or a directory of "
                                           ".npz files.", metavar="PATH", path=True)
    calibration_text: str | None = option(None, "Calibration text for a causal LM (tokenized with --tokenizer, "
                                                "default: the one beside MODEL or in its folder).",
                                          metavar="FILE", path=True)
    tokenizer: str | None = option(None, "tokenizer.json or sentencepiece .model for --calibration-text (default: the "
                                         "one beside MODEL or in its folder).", metavar="FILE", path=True)
    calibration_samples: int = option(32, "Number of calibration samples (text windows, or .npz files of a "
                                          "directory).")
    sequence_length: int | None = option(None, "Tokens per text sample (default: 512, or the model's context length "
                                               "when shorter).")  # None: 512, or the context length when shorter
    calibration_skip_chars: int = option(0, "Start reading the calibration text after this many characters (keep "
                                            "evaluation text out).")
    target_bits: float | None = option(None, "Mixed precision: promote the most sensitive layers to 8-bit or float "
                                             "while the average bits per weight stay within B.", metavar="B")
    max_error: float | None = option(None, "Mixed precision: promote layers until the estimated relative output "
                                           "error is at most E.", metavar="E")
    sensitivity_samples: int = option(16, "Mixed precision: calibration samples run end to end per layer "
                                          "to measure its sensitivity (a large LM's windows are cut short).")
    lm_head: str = option("8", "Language models: bits of the final vocabulary projection (4 = like the other "
                               "layers).", choices=LAYER_CHOICES)
    embedding: str = option("float", "Language models: quantize token-embedding Gather tables (ONNX Runtime's "
                                     "GatherBlockQuantized).", choices=LAYER_CHOICES)

    def __post_init__(self):
        if self.compute is None:
            object.__setattr__(self, "compute", default_compute(self.format))
        for name in ("lm_head", "embedding"):  # 8 and 4 may be given as numbers
            value = getattr(self, name)
            if _is_int(value):
                object.__setattr__(self, name, str(value))
        self._check_types()
        self.validate()

    def _check_types(self) -> None:
        """Every field against its annotation and its choices (the one place types are checked: the
        API's keywords and the CLI's options both end here)."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = _coerce(f.name, getattr(self, f.name), hints[f.name])
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise ConfigError(f"{f.name} must be one of {', '.join(choices)}; got {value!r}")
            object.__setattr__(self, f.name, value)

    def validate(self) -> None:
        if not _is_int(self.bits) or self.bits not in (4, 8):
            raise ConfigError(f"bits must be 4 or 8, got {self.bits!r}")
        if not _is_int(self.group_size) or self.group_size not in GROUP_SIZES + (-1,):
            raise ConfigError(
                f"group size must be one of {', '.join(map(str, GROUP_SIZES))}, or -1 for per-channel; got {self.group_size!r}"
            )
        if self.quant_type == "nf4":
            if self.bits != 4 or not self.symmetric:
                raise ConfigError("nf4 is a symmetric 4-bit code: use bits=4 with symmetric quantization")
            if self.format != "int4onnx":
                raise ConfigError("nf4 is only supported by the int4onnx format")
        if self.float_zero_points:
            if self.symmetric:
                raise ConfigError("--float-zero-points is for asymmetric weights: drop --symmetric")
            if self.format == "qdq":
                raise ConfigError("--float-zero-points is not supported by --format qdq (DequantizeLinear takes "
                                  "integer zero points); use --format int4onnx or matmulnbits")
        if self.double_quant and self.format != "int4onnx":
            raise ConfigError("double quantization (int8 scales) is only supported by the int4onnx format")
        if self.scale_dtype == "float16" and self.format != "int4onnx":
            raise ConfigError(f"--scale-dtype float16 is only supported by the int4onnx format ({self.format} "
                              "takes scales of the activations' type)")
        if self.double_quant and self.scale_dtype != "auto":
            raise ConfigError(f"--double-quant stores int8 scales: drop --scale-dtype {self.scale_dtype}")
        if not 0 <= self.damp < 10:
            raise ConfigError(f"damp must be in [0, 10), got {self.damp!r}")
        if self.embedding != "float" and self.format == "qdq":
            raise ConfigError("embedding quantization uses com.microsoft.GatherBlockQuantized; not with --format qdq")
        if self.calibration and self.calibration_text:
            raise ConfigError("give either --calibration (.npz data) or --calibration-text, not both")
        if self.calibration_text and not self.tokenizer:
            raise ConfigError("--calibration-text needs --tokenizer (a tokenizer.json or sentencepiece .model)")
        if self.calibration_samples < 1 or (self.sequence_length is not None and self.sequence_length < 1) \
                or self.calibration_skip_chars < 0:
            raise ConfigError("--calibration-samples and --sequence-length must be at least 1, "
                              "--calibration-skip-chars at least 0")
        if self.target_bits is not None and self.max_error is not None:
            raise ConfigError("give either --target-bits or --max-error, not both")
        if self.target_bits is not None and not 1 <= self.target_bits <= 32:
            raise ConfigError(f"--target-bits must be between 1 and 32, got {self.target_bits!r}")
        if self.max_error is not None and not self.max_error > 0:
            raise ConfigError(f"--max-error must be positive, got {self.max_error!r}")
        if not _is_int(self.sensitivity_samples) or self.sensitivity_samples < 1:
            raise ConfigError(f"--sensitivity-samples must be at least 1, got {self.sensitivity_samples!r}")
        if not self.has_calibration:
            need = [f"--method {self.method}"] if self.method in CALIBRATED_METHODS else []
            need += ["--target-bits"] if self.target_bits is not None else []
            need += ["--max-error"] if self.max_error is not None else []
            if need:
                raise ConfigError(f"{' and '.join(need)} needs calibration data: --calibration PATH (.npz or a "
                                  "directory of .npz) or --calibration-text FILE --tokenizer FILE")
        for pattern in self.exclude:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"--exclude {pattern!r} is not a valid regular expression: {exc}") from None

    @property
    def has_calibration(self) -> bool:
        return bool(self.calibration or self.calibration_text)

    @property
    def mixed_precision(self) -> bool:
        return self.target_bits is not None or self.max_error is not None

    @property
    def per_channel(self) -> bool:
        return self.group_size == -1

    def block_size_for(self, K: int) -> int:
        """Block size used for a weight with K rows: the group size, or K rounded up to 16 when one
        group spans K (per-channel, or a group size larger than K)."""
        if K < 1:
            raise ValueError(f"block_size_for: K must be at least 1, got {K}")  # selection skips such weights
        whole = -(-K // 16) * 16
        if self.per_channel or self.group_size >= K:
            return whole
        return self.group_size

    def replace(self, **changes) -> "QuantConfig":
        return dataclasses.replace(self, **changes)

    def excluded(self, node_name: str) -> bool:
        return any(node_name == p or re.fullmatch(p, node_name) for p in self.exclude)
