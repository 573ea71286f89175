"""Model folders in and out: ONNX Runtime GenAI's model builder and optimum-onnx write a folder (the
model, its external data, genai_config.json or config.json, tokenizer files); `int4onnx convert DIR -o
OUTDIR` writes the same folder with the model converted.

- The model of a folder: genai_config.json's ``model.decoder.filename`` when present, else
  ``model.onnx``, else the folder's only ``.onnx`` file.
- Output: every other file of the folder copied (subfolders included; the input model's external data
  left out, the converted model writes its own), the model converted under the same name. For a GenAI
  folder in the int4onnx format, genai_config.json gains
  ``model.decoder.session_options.custom_ops_library`` naming our library, copied into the folder
  (GenAI refuses paths outside the folder); the rest of the file is kept as it was (key order too).
  Other formats need no library: the config is copied unchanged.
- The output folder must not exist or be empty, and is neither the input folder nor inside it (nor
  around it). It is assembled in a temporary folder next to it and renamed into place at the end, so a
  failure or an interrupt leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import shutil

from int4onnx import io
from int4onnx.errors import ConfigError, ModelLoadError, OutputError

logger = logging.getLogger(__name__)

GENAI_CONFIG = "genai_config.json"
OPTIMUM_CONFIG = "config.json"
DEFAULT_MODEL = "model.onnx"
# the name of our custom-op library inside a GenAI folder: the name `int4onnx build-native` gives the
# device build, so a board or phone build replaces it in place
LIBRARY_NAME = "libint4onnx_ops.so"


@dataclasses.dataclass(frozen=True)
class ModelFolder:
    """A model folder: where it is, the model file inside, and who wrote it ("genai", "optimum" or
    "plain": an ONNX file with whatever lies beside it)."""

    path: pathlib.Path
    model: pathlib.Path
    kind: str
    genai_config: dict | None = None


def _read_config(path: pathlib.Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: cannot read it as JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return data


def _decoder(config: dict) -> dict | None:
    model = config.get("model")
    decoder = model.get("decoder") if isinstance(model, dict) else None
    return decoder if isinstance(decoder, dict) else None


def open_folder(path) -> ModelFolder:
    """The model folder at `path` (a directory); a ModelLoadError when it holds no model to use."""
    path = pathlib.Path(path)
    genai = _read_config(path / GENAI_CONFIG) if (path / GENAI_CONFIG).is_file() else None
    kind = "genai" if genai is not None else "optimum" if (path / OPTIMUM_CONFIG).is_file() else "plain"
    name = (_decoder(genai) or {}).get("filename") if genai is not None else None
    if name is not None:
        where = f"{path / GENAI_CONFIG}: model.decoder.filename {name!r}"
        if not isinstance(name, str) or not name or pathlib.PurePath(name).is_absolute() or ".." in pathlib.PurePath(name).parts:
            raise ModelLoadError(f"{where} is not a file name inside the folder")
        model = path / name
        if not model.is_file():
            raise ModelLoadError(f"{where}: no such file")
        return ModelFolder(path, model, kind, genai)
    if (path / DEFAULT_MODEL).is_file():
        return ModelFolder(path, path / DEFAULT_MODEL, kind, genai)
    found = sorted(p for p in path.glob("*.onnx") if p.is_file())
    if len(found) == 1:
        return ModelFolder(path, found[0], kind, genai)
    if not found:
        raise ModelLoadError(f"{path}: is a directory, expected an .onnx file or a model folder holding one "
                             f"({DEFAULT_MODEL}, or the file named by {GENAI_CONFIG}'s model.decoder.filename)")
    raise ModelLoadError(f"{path}: the folder holds {len(found)} .onnx files ({', '.join(p.name for p in found[:4])}"
                         f"{', ...' if len(found) > 4 else ''}) and no {DEFAULT_MODEL}; give the model file itself")


def model_path(path) -> pathlib.Path:
    """`path` itself for a file, the model inside it for a model folder (eval, bench, generate, inspect)."""
    path = pathlib.Path(path)
    return open_folder(path).model if path.is_dir() else path


def default_output(path, bits: int) -> pathlib.Path:
    """Where `convert DIR` writes without -o: a sibling folder `DIR-int4` (`-int8` for 8 bits)."""
    path = pathlib.Path(os.path.abspath(path))
    return path.with_name(f"{path.name}-int{bits}")


def _inside(a: pathlib.Path, b: pathlib.Path) -> bool:
    """Is `a` the folder `b` or inside it (symlinks resolved)?"""
    a, b = pathlib.Path(os.path.realpath(a)), pathlib.Path(os.path.realpath(b))
    return a == b or b in a.parents


def check_output_folder(src: ModelFolder, out) -> pathlib.Path:
    """Refuse an output folder that is the input folder, inside it or around it, a file, or an existing
    folder with something in it; its parent must be a writable folder."""
    out = pathlib.Path(out)
    if _inside(out, src.path) or _inside(src.path, out):
        raise OutputError(f"output folder {out} would overwrite the input folder {src.path} (or lie inside it); "
                          "give a new folder")
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {out} exists and is not a folder; the output of a model folder is a folder")
    if out.is_dir() and any(out.iterdir()):
        raise OutputError(f"output folder {out} exists and is not empty; give a new or empty folder")
    parent = out.parent if str(out.parent) else pathlib.Path(".")
    if not parent.is_dir():
        raise OutputError(f"output directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {parent} is not writable")
    return out


def side_files(src: ModelFolder, skip=()) -> list[pathlib.Path]:
    """Files of the folder to copy (relative paths): all but the model, its external data files and `skip`."""
    model = io.load_model(src.model)
    leave = {os.path.realpath(src.model), *(os.path.realpath(p) for p in io.external_data_files(model))}
    leave |= {os.path.realpath(p) for p in skip}
    files = []
    for root, dirs, names in os.walk(src.path):
        dirs.sort()
        for name in sorted(names):
            full = pathlib.Path(root) / name
            if os.path.realpath(full) in leave or not full.is_file():
                continue
            if name.endswith(".onnx"):
                logger.warning("%s: another ONNX model in the folder, copied unconverted", full)
            files.append(full.relative_to(src.path))
    return files


def genai_config_with_library(config: dict, where) -> dict:
    """genai_config.json with model.decoder.session_options.custom_ops_library = LIBRARY_NAME; the rest as it was."""
    decoder = _decoder(config)
    if decoder is None:
        raise ModelLoadError(f"{where}: no model.decoder section; is this ONNX Runtime GenAI's genai_config.json?")
    options = decoder.setdefault("session_options", {})
    if not isinstance(options, dict):
        raise ModelLoadError(f"{where}: model.decoder.session_options is not an object")
    present = options.get("custom_ops_library")
    if present not in (None, LIBRARY_NAME):
        raise ConfigError(f"{where}: model.decoder.session_options.custom_ops_library is already {present!r}; "
                          "GenAI loads one library per session: convert with --format matmulnbits, which needs none")
    options["custom_ops_library"] = LIBRARY_NAME
    return config


@dataclasses.dataclass
class FolderResult:
    """What convert_folder wrote, beside the conversion's report."""

    folder: pathlib.Path
    model: pathlib.Path
    kind: str
    copied: list[str]
    library: pathlib.Path | None  # our library copied in (GenAI folders in the int4onnx format)


def convert_folder(src, out, config, progress=None, also_writes=(), ops_library=None):
    """Convert the model folder `src` into the new folder `out` (see the module docstring). Returns
    (the conversion's Report, FolderResult).

    ops_library: the custom-op library to copy into a GenAI folder as LIBRARY_NAME (default: this
    installation's, int4onnx.library_path(), which loads only inside a Python process: its Python
    bindings need the interpreter; a C or Android app needs `int4onnx build-native`'s)."""
    from int4onnx import library_path
    from int4onnx.pipeline import quantize_file

    folder = open_folder(src)
    out = check_output_folder(folder, out)
    library = folder.kind == "genai" and config.format == "int4onnx"
    if ops_library is not None:
        if not library:
            raise ConfigError("--ops-library is for GenAI folders (genai_config.json) in the int4onnx format; "
                              "other outputs need no library in the folder")
        if not pathlib.Path(ops_library).is_file():
            raise ConfigError(f"--ops-library {ops_library}: no such file")
    config_text = None
    if library:
        config_text = json.dumps(genai_config_with_library(_read_config(folder.path / GENAI_CONFIG),
                                                           folder.path / GENAI_CONFIG), indent=4) + "\n"
    copied = side_files(folder)
    io.check_overwrites(also_writes, [("the input folder's file", folder.path / rel) for rel in copied])
    rel_model = folder.model.relative_to(folder.path)
    with io.temporaries_next_to(out):
        tmp = io.make_temp_dir("folder")
    try:
        (tmp / rel_model).parent.mkdir(parents=True, exist_ok=True)
        try:
            report = quantize_file(folder.model, tmp / rel_model, config, progress, also_writes)
        except KeyboardInterrupt as exc:  # an interrupt held back while the model was renamed into tmp
            exc.output_written = False
            raise
        written = {os.path.realpath(p) for p in tmp.rglob("*")}
        try:
            for rel in copied:
                dest = tmp / rel
                if os.path.realpath(dest) in written:  # e.g. a stale model.onnx.data beside an external-data model
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                if library and rel == pathlib.Path(GENAI_CONFIG):
                    dest.write_text(config_text, encoding="utf-8")
                else:
                    shutil.copy2(folder.path / rel, dest)
            if library:
                shutil.copy2(ops_library or library_path(), tmp / LIBRARY_NAME)
        except OSError as exc:
            raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from exc
        io.publish_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report.output = str(out / rel_model)  # where the model is now, not the temporary folder it was written in
    result = FolderResult(out, out / rel_model, folder.kind, [str(p) for p in copied],
                          out / LIBRARY_NAME if library else None)
    return report, result


def how_to_run(fmt: str, kind: str | None, where) -> str:
    """One line for convert's summary: what the output needs registered, and how (kind: the input
    folder's kind, None for a single file)."""
    if kind == "genai":
        if fmt == "int4onnx":
            return (f"onnxruntime_genai.Model('{where}'): its genai_config.json loads {LIBRARY_NAME} from the folder "
                    "(unless given --ops-library, this installation's build, which loads only in Python; for GenAI's "
                    "C/Java API put `int4onnx build-native`'s library there; docs/deploy.md)")
        return f"onnxruntime_genai.Model('{where}'); no custom-op library needed"
    if fmt != "int4onnx":
        op = "com.microsoft::MatMulNBits" if fmt == "matmulnbits" else "opset-21 DequantizeLinear"
        return f"stock ONNX Runtime ({op}); no custom-op library to register"
    register = "register_custom_ops_library(int4onnx.library_path())"
    if kind == "optimum":
        return (f"optimum's ORTModelForCausalLM.from_pretrained('{where}', session_options=so) with "
                f"so = onnxruntime.SessionOptions(); so.{register} (docs/deploy.md)")
    return (f"register int4onnx's op library first: SessionOptions.{register} (Python), RegisterCustomOpsLibrary_V2 "
            f"with `int4onnx build-native`'s {LIBRARY_NAME} (C; docs/deploy.md)")
