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


def quantize(input, output=None, config: QuantConfig | None = None, **options):
    """Convert an ONNX model.

    input: a path to an ``.onnx`` file or a model folder (ONNX Runtime GenAI's or optimum's: the model
        inside; see int4onnx.folder), an ``onnx.ModelProto`` or an ``onnx_ir.Model`` (never changed).
    output: a path: the converted model is written there atomically and a :class:`int4onnx.report.Report`
        is returned; for a model folder, a new folder with the other files copied. ``None``: nothing is written and the converted model is returned, as an
        ``onnx_ir.Model`` for an ``onnx_ir.Model`` input and as an ``onnx.ModelProto`` otherwise (all
        initializers in memory, so it must fit protobuf's 2 GB; write larger models to a path).
    Options are the fields of :class:`QuantConfig` (``bits``, ``group_size``, ``symmetric``,
    ``method``, ``format``, ``exclude``, ...), given either as a config or as keywords. Every mistake
    (an unknown option, a value of the wrong type) is an :class:`Int4OnnxError` naming it.
    """
    import dataclasses
    import os

    import onnx
    import onnx_ir as ir

    from int4onnx.errors import ConfigError, ModelLoadError
    from int4onnx.pipeline import quantize_file, quantize_in_memory

    known = {f.name for f in dataclasses.fields(QuantConfig)}
    for name in options:
        if name not in known:
            raise ConfigError(f"unknown option {name!r}; options are {', '.join(sorted(known))}")
    if config is not None and not isinstance(config, QuantConfig):
        raise ConfigError(f"config must be an int4onnx.QuantConfig, got {type(config).__name__}")
    if config is None:
        config = QuantConfig(**options)
    elif options:
        config = config.replace(**options)
    if output is not None and not isinstance(output, (str, os.PathLike)):
        raise ConfigError(f"output must be a path or None, got {type(output).__name__}")
    if isinstance(input, (str, os.PathLike)):
        from int4onnx import folder, io

        if output is not None and os.path.isdir(input):  # a model folder in, a folder out
            return folder.convert_folder(input, output, config)[0]
        if output is not None:
            return quantize_file(input, output, config)
        model = io.load_model(folder.model_path(input))
        input = None  # the model was loaded here: return a ModelProto
    elif isinstance(input, onnx.ModelProto):
        if input.ir_version < 1:
            raise ModelLoadError("the ModelProto is not a model (no IR version)")
        try:
            model = ir.serde.deserialize_model(input)
        except Exception as exc:
            raise ModelLoadError(f"the ModelProto cannot be read ({type(exc).__name__}: {exc})") from exc
    elif isinstance(input, ir.Model):
        model = input
    else:
        raise ConfigError(f"input must be a path, an onnx.ModelProto or an onnx_ir.Model, got {type(input).__name__}")
    if output is not None:
        return quantize_file(model, output, config)
    result = quantize_in_memory(model, config)
    if isinstance(input, ir.Model):
        return result
    from int4onnx.errors import OutputError

    try:
        proto = ir.serde.serialize_model(result)
        proto.ByteSize()  # protobuf cannot hold more than 2 GB
    except Exception as exc:
        raise OutputError(f"the converted model cannot be returned as an onnx.ModelProto ({type(exc).__name__}); "
                          "give an output path (models over 2 GB keep their weights in a .data file)") from exc
    return proto
