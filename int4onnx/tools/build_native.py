"""Standalone builds of the custom-op library for a device without Python: `int4onnx build-native`.

A thin wrapper around ``native/Makefile`` (the same C sources and flags as the Python extension): it
picks the compiler for the target, finds ONNX Runtime's C headers, builds in a temporary directory and
leaves one stripped ``libint4onnx_ops.so`` in the output directory. It needs the int4onnx source tree
(the ``native/`` directory beside the package, as in a git checkout or an editable install), ``make``
and a C compiler for the target; ONNX Runtime itself is not needed to build (only its headers).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile

from int4onnx.errors import Int4OnnxError

ROOT = pathlib.Path(__file__).resolve().parents[2]  # the checkout: int4onnx/tools/ is two levels down
NATIVE = ROOT / "native"
LIBRARY = "libint4onnx_ops.so"

# target name -> (GNU triple, Debian package of its cross compiler, host machines that build it natively)
TARGETS = {
    "x86_64": ("x86_64-linux-gnu", "gcc-x86-64-linux-gnu", ("x86_64", "amd64")),
    "aarch64-linux-gnu": ("aarch64-linux-gnu", "gcc-aarch64-linux-gnu", ("aarch64", "arm64")),
    "armv7": ("arm-linux-gnueabihf", "gcc-arm-linux-gnueabihf", ("armv7l", "armv8l")),
}
ALIASES = {"x86_64-linux-gnu": "x86_64", "aarch64": "aarch64-linux-gnu", "arm64": "aarch64-linux-gnu",
           "arm-linux-gnueabihf": "armv7", "armhf": "armv7"}


class BuildNativeError(Int4OnnxError):
    """The standalone library cannot be built as asked (unknown target, missing compiler or headers)."""


@dataclasses.dataclass(frozen=True)
class BuildResult:
    target: str
    triple: str
    compiler: str
    library: pathlib.Path
    size: int  # bytes, stripped


def resolve_target(target: str) -> str:
    name = ALIASES.get(target, target)
    if name not in TARGETS:
        choices = ", ".join(list(TARGETS) + list(ALIASES))
        raise BuildNativeError(f"unknown target {target!r}; choose from {choices}")
    return name


def _buildcfg():
    """native/buildcfg.py (the settings every native build shares), loaded by path from the source tree."""
    spec = importlib.util.spec_from_file_location("int4onnx_buildcfg", NATIVE / "buildcfg.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def find_ort_include(explicit: str | os.PathLike | None = None) -> pathlib.Path:
    """onnxruntime_c_api.h: the given directory, $ORT_INCLUDE_DIR, .deps/ (make deps), system paths."""
    cfg = _buildcfg()
    found = cfg.find_ort_include(explicit)
    if found is None:
        where = ", ".join(str(c) for c in cfg.ort_include_candidates(explicit))
        raise BuildNativeError(f"ONNX Runtime's C header onnxruntime_c_api.h not found in {where}; "
                               "run `make deps` in the source tree or pass --ort-include-dir")
    return found


def default_compiler(target: str) -> str:
    triple, _, native_machines = TARGETS[target]
    if platform.machine().lower() in native_machines and shutil.which("cc"):
        return "cc"
    return f"{triple}-gcc"


def build_native(target: str, out_dir: str | os.PathLike, cc: str | None = None,
                 ort_include_dir: str | os.PathLike | None = None, jobs: int | None = None) -> BuildResult:
    """Builds the stripped custom-op library for ``target`` into ``out_dir/libint4onnx_ops.so``."""
    target = resolve_target(target)
    triple, package, _ = TARGETS[target]
    if not (NATIVE / "Makefile").is_file():
        raise BuildNativeError(f"the C sources are not here ({NATIVE}); build-native runs from an int4onnx "
                               "source checkout (git clone, then pip install -e .)")
    compiler = cc or default_compiler(target)
    if shutil.which(compiler) is None:
        if cc is not None:
            raise BuildNativeError(f"C compiler {cc!r} (--cc) not found")
        raise BuildNativeError(f"cross compiler {compiler} for {target} not found; install it "
                               f"(Debian/Ubuntu: apt-get install {package}) or pass --cc")
    if shutil.which("make") is None:
        raise BuildNativeError("`make` not found; install it (Debian/Ubuntu: apt-get install make)")
    headers = find_ort_include(ort_include_dir)
    got = _buildcfg().compiler_triple(compiler)
    arch = triple.split("-")[0]
    if not got.startswith(arch):
        raise BuildNativeError(f"{compiler} targets {got or 'an unknown machine'}, not {triple}; pass --cc for {target}")
    out = pathlib.Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BuildNativeError(f"output {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    strip = shutil.which(f"{triple}-strip") or shutil.which("strip")
    if strip is None:
        raise BuildNativeError("`strip` not found (binutils); install binutils for the target")
    with tempfile.TemporaryDirectory(prefix="int4onnx-build-") as tmp:
        staged = pathlib.Path(tmp) / "out"
        cmd = ["make", "-C", str(NATIVE), f"-j{jobs or os.cpu_count() or 1}", f"CC={compiler}", f"STRIP={strip}",
               f"BUILD={pathlib.Path(tmp) / 'obj'}", f"ORT_INCLUDE_DIR={headers}", "install", f"DESTDIR={staged}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
            raise BuildNativeError(f"building for {target} with {compiler} failed: {tail}")
        dest = out / LIBRARY
        tmp_dest = out / f".{LIBRARY}.tmp"
        shutil.copy2(staged / LIBRARY, tmp_dest)
        tmp_dest.replace(dest)  # never a half-written library
    return BuildResult(target, triple, compiler, dest, dest.stat().st_size)
