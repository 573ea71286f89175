"""Errors a user can cause. The CLI prints their message on one line and exits with `exit_code`."""

from __future__ import annotations


def first_line(exc: BaseException, default: str | None = None) -> str:
    """The first line of an exception's message, for one-line errors; `default` (or the exception's
    type name) when the message is empty."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else (default if default is not None else type(exc).__name__)


class Int4OnnxError(Exception):
    """Base class: a problem with the user's input or options, not a bug in int4onnx."""

    exit_code = 2


class ConfigError(Int4OnnxError):
    """An option has an invalid value or options contradict each other."""


class ModelLoadError(Int4OnnxError):
    """The input model cannot be read (missing, not ONNX, truncated, external data missing)."""


class UnsupportedModelError(Int4OnnxError):
    """The model is valid ONNX but int4onnx cannot convert it as asked."""


class NothingToQuantizeError(Int4OnnxError):
    """The model has no MatMul/Gemm that can be quantized; no output is written."""

    exit_code = 3


class CalibrationError(Int4OnnxError):
    """Calibration data does not match the model or cannot be read."""


class OutputError(Int4OnnxError):
    """The output cannot be written where asked."""


class NativeLibraryError(Int4OnnxError):
    """The native library reported an error."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived during a CLI command; it unwinds like Ctrl-C (KeyboardInterrupt)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
