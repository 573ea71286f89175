"""INT4ONNX_LIBRARY: another build of the native library (how `make test-sanitize` runs the suite
against a sanitizer build). Checked in child processes, as the library is chosen at import."""

import json
import os
import shutil
import subprocess
import sys

from int4onnx import _native

PROBE = """
import json, numpy as np, onnxruntime as ort
from int4onnx import _native, library_path
info = {"ext": _native._ext.__file__}
try:
    info["library"] = library_path()
    so = ort.SessionOptions()
    so.register_custom_ops_library(info["library"])
    info["registered"] = True
except Exception as exc:
    info["error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(info))
"""


def probe(value):
    env = dict(os.environ, INT4ONNX_LIBRARY=str(value))
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_extension_build_replaces_binding_and_op_library(tmp_path):
    copy = tmp_path / os.path.basename(_native._ext.__file__)
    shutil.copy(_native._ext.__file__, copy)
    info = probe(copy)
    assert info["ext"] == str(copy) and info["library"] == str(copy) and info["registered"]


def test_other_library_only_changes_the_op_library(tmp_path):
    lib = tmp_path / "libint4onnx_ops.so"
    shutil.copy(_native._ext.__file__, lib)  # exports RegisterCustomOps like the standalone build
    info = probe(lib)
    assert info["ext"] != str(lib) and info["library"] == str(lib) and info["registered"]


def test_missing_library_is_a_clear_error(tmp_path):
    info = probe(tmp_path / "nowhere.so")
    assert info["error"].startswith("NativeLibraryError: INT4ONNX_LIBRARY=") and "no such file" in info["error"]
