"""cffi builder: compiles native/src into the extension module ``int4onnx._int4onnx_native``.

The same shared object is the ONNX Runtime custom-op library (it exports ``RegisterCustomOps``)
and the Python binding of the packing layout and the kernels (declared in include/int4onnx.h).
ONNX Runtime's C headers and the compiler flags come from native/buildcfg.py (the one place every build
reads them from).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import sys

import cffi

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
SOURCES = sorted(str((HERE / "src" / f).relative_to(ROOT)) for f in os.listdir(HERE / "src") if f.endswith(".c"))
HEADER = HERE / "include" / "int4onnx.h"


def _load_buildcfg():
    """native/buildcfg.py, by path (this file runs inside setup.py's build, not as a package module)."""
    spec = importlib.util.spec_from_file_location("int4onnx_buildcfg", HERE / "buildcfg.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


buildcfg = _load_buildcfg()
CFLAGS = ["-O3", *buildcfg.cflags()]


def find_ort_include() -> str:
    found = buildcfg.find_ort_include()
    if found is None:
        sys.exit(
            "int4onnx: cannot find ONNX Runtime's C header onnxruntime_c_api.h.\n"
            "  Run `make deps` (fetches Debian's libonnxruntime-dev into .deps/), or\n"
            "  set ORT_INCLUDE_DIR to a directory that contains onnxruntime_c_api.h."
        )
    return str(found)


def public_declarations() -> str:
    """The header without preprocessor lines or the C++ guard: what cffi's cdef can parse."""
    text = HEADER.read_text()
    text = re.sub(r"#ifdef __cplusplus.*?#endif", "", text, flags=re.S)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def make_builder(sources) -> cffi.FFI:
    builder = cffi.FFI()
    builder.cdef(public_declarations())
    builder.set_source(
        "int4onnx._int4onnx_native",
        '#include "int4onnx.h"\n',
        sources=sources,
        include_dirs=[str(HERE / "include"), str(HERE / "src"), find_ort_include()],
        extra_compile_args=CFLAGS,
        libraries=["m"],
        extra_link_args=["-pthread"],  # src/pool.c, src/testgrid.c
    )
    return builder


ffibuilder = make_builder(SOURCES)

if __name__ == "__main__":
    # python native/build_ffi.py DIR: build the extension into DIR/int4onnx/ (CFLAGS and LDFLAGS from the
    # environment are added, e.g. for the sanitizer build of `make test-sanitize`)
    out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    make_builder([str(ROOT / s) for s in SOURCES]).compile(tmpdir=str(out), verbose=True)
