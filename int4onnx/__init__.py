"""int4onnx: convert ONNX MatMul weights to packed INT4 and run them through a native ONNX Runtime op."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["QuantConfig", "quantize", "library_path", "Int4OnnxError", "__version__"]

from int4onnx.config import QuantConfig
from int4onnx.errors import Int4OnnxError


def library_path() -> str:
    """Path of the custom-op library: ``SessionOptions.register_custom_ops_library(library_path())``."""
    from int4onnx._native import library_path as _path

    return _path()


def quantize(input_path, output_path, config: QuantConfig | None = None, **options):
    """Convert the ONNX model at ``input_path`` and write it atomically to ``output_path``.

    Options are the fields of :class:`QuantConfig` (``bits``, ``group_size``, ``symmetric``,
    ``method``, ``format``, ``exclude``, ...), given either as a config or as keywords.
    Returns a :class:`int4onnx.report.Report`.
    """
    import dataclasses

    from int4onnx.errors import ConfigError
    from int4onnx.pipeline import quantize_file

    known = {f.name for f in dataclasses.fields(QuantConfig)}
    for name in options:
        if name not in known:
            raise ConfigError(f"unknown option {name!r}; options are {', '.join(sorted(known))}")
    if config is None:
        config = QuantConfig(**options)
    elif options:
        config = config.replace(**options)
    return quantize_file(input_path, output_path, config)
