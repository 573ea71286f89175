"""Settings that every build of the native code shares, in one place: where ONNX Runtime's C headers
are, the compiler flags, and the triple a compiler targets.

Read by native/build_ffi.py (the cffi extension, also during ``pip install``, before the int4onnx
package can be imported: so nothing here imports beyond the standard library),
int4onnx/tools/build_native.py (``int4onnx build-native``) and tools/arm/run_tests.py. The flags live in
native/cflags, which native/Makefile and native/CMakeLists.txt read as well; the Makefiles' compiler
choice is native/toolchain.mk.
"""

from __future__ import annotations

import os
import pathlib
import subprocess

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
ORT_HEADER = "onnxruntime_c_api.h"


def ort_include_candidates(explicit: str | os.PathLike | None = None) -> list[pathlib.Path]:
    """Where onnxruntime_c_api.h is looked for, in order: the given directory alone, else
    $ORT_INCLUDE_DIR, .deps/onnxruntime/include (``make deps``), then the system's locations."""
    if explicit is not None:
        return [pathlib.Path(explicit)]
    env = [pathlib.Path(os.environ["ORT_INCLUDE_DIR"])] if os.environ.get("ORT_INCLUDE_DIR") else []
    return env + [ROOT / ".deps" / "onnxruntime" / "include", pathlib.Path("/usr/include/onnxruntime"),
                  pathlib.Path("/usr/local/include/onnxruntime"), pathlib.Path("/usr/include")]


def find_ort_include(explicit: str | os.PathLike | None = None) -> pathlib.Path | None:
    """The first candidate directory that holds onnxruntime_c_api.h, or None."""
    for c in ort_include_candidates(explicit):
        if (c / ORT_HEADER).is_file():
            return c.resolve()
    return None


def cflags() -> list[str]:
    """Language, visibility, warning and floating-point flags of every build (native/cflags).
    -ffp-contract=off keeps the compiler from fusing a * b + c into one FMA where the C says two
    roundings: the kernels are tested bit for bit against the scalar reference and each other."""
    return (HERE / "cflags").read_text().split()


def compiler_triple(cc: str) -> str:
    """The triple `cc` targets (its -dumpmachine), or '' if it cannot run."""
    try:
        return subprocess.run([cc, "-dumpmachine"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""
