"""Loading and atomic saving of ONNX models (external data included)."""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

import onnx_ir as ir

from int4onnx.errors import ModelLoadError, OutputError

# Above this many bytes of initializers the output keeps its weights in an external data file
# (protobuf cannot serialise a message over 2 GiB).
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def load_model(path) -> ir.Model:
    """Load an ONNX model; every failure is a ModelLoadError with a message a user can act on."""
    path = pathlib.Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a directory, expected an .onnx file")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path}: file is empty")
    try:
        model = ir.load(str(path))
    except Exception as exc:  # protobuf DecodeError, onnx errors, IR deserialisation errors
        raise ModelLoadError(f"{path}: not a valid ONNX model ({type(exc).__name__}: {_first_line(exc)})") from exc
    check_external_data(model, path)
    return model


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else "no details"


def check_external_data(model: ir.Model, path: pathlib.Path) -> None:
    """Every external tensor's file must exist and be long enough."""
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if isinstance(tensor, ir.ExternalTensor):
            data = pathlib.Path(tensor.base_dir) / tensor.location
            if not data.is_file():
                raise ModelLoadError(
                    f"{path}: initializer '{value.name}' lives in external data file '{tensor.location}', "
                    f"which is missing (looked for {data}); keep the .onnx and its data file together"
                )
            need = (tensor.offset or 0) + (tensor.length or 0)
            if data.stat().st_size < need:
                raise ModelLoadError(
                    f"{path}: external data file '{tensor.location}' is truncated "
                    f"({data.stat().st_size} bytes, initializer '{value.name}' needs {need})"
                )


def initializer_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def check_output_path(input_path, output_path) -> pathlib.Path:
    out = pathlib.Path(output_path)
    if input_path is not None:
        inp = pathlib.Path(input_path)
        same = out.resolve() == inp.resolve() or (out.exists() and inp.exists() and os.path.samefile(out, inp))
        if same:
            raise OutputError(f"output {out} is the input model; choose another output path")
    if out.is_dir():
        raise OutputError(f"output {out} is a directory; give a file name such as model.int4.onnx")
    parent = out.parent if str(out.parent) else pathlib.Path(".")
    if not parent.is_dir():
        raise OutputError(f"output directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {parent} is not writable")
    return out


def save_model_atomic(model: ir.Model, output_path, external_data: bool | None = None) -> list[pathlib.Path]:
    """Write the model (and its external data) under temporary names in the target directory, then
    rename them into place, data file first. A failure or interrupt leaves any previous output intact
    and removes the temporary files. Returns the files written."""
    out = pathlib.Path(output_path)
    if external_data is None:
        external_data = initializer_bytes(model) > EXTERNAL_DATA_THRESHOLD
    data_name = out.name + ".data"
    tmpdir = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        tmp_model = tmpdir / out.name
        try:
            if external_data:
                ir.save(model, str(tmp_model), external_data=data_name)
            else:
                ir.save(model, str(tmp_model))
        except OSError as exc:
            raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from exc
        written = []
        if external_data:
            os.replace(tmpdir / data_name, out.parent / data_name)
            written.append(out.parent / data_name)
        os.replace(tmp_model, out)
        written.append(out)
        return written
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
