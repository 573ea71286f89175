"""The AMX kernel (amx_fp32) on CPUs without AMX: a build of the extension with the tile instructions
written in C (I4O_AMX_EMULATE, native/src/kernel_amx.c) runs the kernel's grid and the exact-dequantization
test, so its layouts, the activations' three-part split and the block epilogue are checked wherever
AVX-512 VNNI runs; test_kernels.py checks the real instructions on a CPU with AMX."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

from int4onnx import _native

ROOT = pathlib.Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # a second build of the extension (~40 s on 2 cores)


def test_amx_kernel_on_emulated_tiles(tmp_path):
    if "avx512vnni_int8" not in _native.kernels_available():
        pytest.skip("amx_fp32's AVX-512 code needs AVX-512 F/BW/VL and VNNI, which this CPU lacks")
    env = dict(os.environ, CFLAGS=(os.environ.get("CFLAGS", "") + " -DI4O_AMX_EMULATE").strip())
    build = subprocess.run([sys.executable, str(ROOT / "native" / "build_ffi.py"), str(tmp_path)], env=env,
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    lib = next((tmp_path / "int4onnx").glob("_int4onnx_native*.so"))
    env = {k: v for k, v in os.environ.items() if k != "INT4ONNX_ISA"} | {"INT4ONNX_LIBRARY": str(lib)}
    probe = subprocess.run([sys.executable, "-c", "from int4onnx import _native; print(_native.kernel_selected('fp32'))"],
                           cwd=ROOT, env=env, capture_output=True, text=True)
    assert probe.stdout.strip() == "amx_fp32", probe.stdout + probe.stderr
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/native/test_kernels.py",
                          "-k", "amx_fp32 and grid or fp32_kernels_dequantize_exactly"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:]
    passed = re.search(r"(\d+) passed", run.stdout)
    assert passed and int(passed.group(1)) >= 8, run.stdout[-2000:]  # 4 formats' grids + test_grid_follows_the_tile + 4
