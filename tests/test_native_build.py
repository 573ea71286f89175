"""The standalone library (`int4onnx build-native`) and the C example app (examples/c), on this machine.

The cross builds and the emulated ARM runs are `make test-arm` (tools/arm/run_tests.py)."""

import glob
import os
import pathlib
import shutil
import subprocess

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from modelgen import matmul_model, save

import int4onnx
from int4onnx.cli import main

ROOT = pathlib.Path(__file__).resolve().parent.parent
RNG = np.random.default_rng(17)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def session(model, library):
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(library))
    return ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A two-layer model with K = 200 and 75 (not multiples of the group), int8 and fp32 compute."""
    d = tmp_path_factory.mktemp("models")
    src = save(matmul_model({"w0": RNG.standard_normal((200, 75)).astype(np.float32),
                             "w1": RNG.standard_normal((75, 33)).astype(np.float32)}, batch_dims=("b", "s")), d / "m.onnx")
    out = {}
    for compute in ("fp32", "int8"):
        out[compute] = d / f"m.{compute}.onnx"
        int4onnx.quantize(src, out[compute], group_size=32, compute=compute)
    return out


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    d = tmp_path_factory.mktemp("native")
    r = invoke("build-native", "--target", "x86_64", "-o", d)
    assert r.exit_code == 0, r.output
    assert "libint4onnx_ops.so" in r.output and "bytes stripped" in r.output
    return d / "libint4onnx_ops.so"


def test_build_native_x86_64_exports_one_symbol_and_runs_like_the_extension(standalone, converted):
    # the 300 KB aim is for the board libraries (checked by make test-arm); on x86-64 the AVX-512 kernels
    # are unrolled per block size and row count, about 1 MB stripped
    assert 0 < standalone.stat().st_size < 2 * 1024 * 1024
    out = subprocess.run(["nm", "-D", "--defined-only", standalone], capture_output=True, text=True, check=True).stdout
    assert [line.split()[-1] for line in out.splitlines() if line.strip()] == ["RegisterCustomOps"]
    # no Python symbols needed: the library loads outside a Python process's symbol space as well
    ldd = subprocess.run(["ldd", standalone], capture_output=True, text=True).stdout
    assert "python" not in ldd.lower()
    x = RNG.standard_normal((3, 9, 200)).astype(np.float32)
    for model in converted.values():
        y_ext = session(model, int4onnx.library_path()).run(None, {"x": x})[0]
        y_std = session(model, standalone).run(None, {"x": x})[0]
        np.testing.assert_array_equal(y_std, y_ext)


def test_build_native_missing_cross_compiler_is_one_line(tmp_path, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    r = invoke("build-native", "--target", "aarch64-linux-gnu", "-o", tmp_path / "out")
    assert r.exit_code == 2, r.output
    assert r.output.startswith("int4onnx: error: cross compiler aarch64-linux-gnu-gcc for aarch64-linux-gnu not found")
    assert "apt-get install gcc-aarch64-linux-gnu" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_build_native_bad_target_and_wrong_compiler(tmp_path):
    r = invoke("build-native", "--target", "riscv64", "-o", tmp_path / "out")
    assert r.exit_code == 2 and "unknown target 'riscv64'" in r.output
    r = invoke("build-native", "--target", "armv7", "--cc", "cc", "-o", tmp_path / "out")
    assert r.exit_code == 2 and "not arm-linux-gnueabihf" in r.output
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def app(tmp_path_factory, standalone):
    """examples/c built against the onnxruntime wheel's libonnxruntime, laid out as on a device."""
    capi = pathlib.Path(ort.__file__).parent / "capi"
    ort_lib = sorted(glob.glob(str(capi / "libonnxruntime.so.1*")))
    if not ort_lib:
        pytest.fail(f"no libonnxruntime.so in {capi}")
    d = tmp_path_factory.mktemp("app")
    subprocess.run(["make", "-s", "-C", ROOT / "examples" / "c", f"BUILD={d / 'obj'}", f"ORT_LIB={ort_lib[0]}"],
                   check=True)
    bundle = d / "bundle"
    bundle.mkdir()
    shutil.copy2(d / "obj" / "int4onnx_run", bundle)
    shutil.copy2(standalone, bundle)
    os.symlink(ort_lib[0], bundle / "libonnxruntime.so.1")  # the soname; the app's rpath is $ORIGIN
    return bundle


def run_app(bundle, *args):
    return subprocess.run([bundle / "int4onnx_run", *[str(a) for a in args]], capture_output=True, text=True)


def test_example_app_equals_python(app, converted, tmp_path):
    x = RNG.standard_normal((2, 5, 200)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    for compute, model in converted.items():
        out = tmp_path / compute
        out.mkdir()
        p = run_app(app, "--model", model, "--ops", app / "libint4onnx_ops.so", "--out-dir", out, "--repeat", 3,
                    tmp_path / "x.npy")
        assert p.returncode == 0, p.stderr
        assert "output y float32 [2, 5, 33]" in p.stdout and "median" in p.stdout
        ref = session(model, int4onnx.library_path()).run(None, {"x": x})[0]
        np.testing.assert_array_equal(np.load(out / "y.npy"), ref)


def test_example_app_errors_are_one_line(app, converted, tmp_path):
    np.save(tmp_path / "i.npy", np.zeros((1, 1, 200), np.int64))
    np.save(tmp_path / "f.npy", np.zeros((1, 1, 200), np.float32))
    cases = [
        (["--model", converted["fp32"], tmp_path / "f.npy"], "is not a registered function/op"),  # no --ops
        (["--model", converted["fp32"], "--ops", app / "libint4onnx_ops.so", tmp_path / "i.npy"],
         "input x is int64"),
        (["--model", converted["fp32"], "--ops", app / "libint4onnx_ops.so", f"z={tmp_path / 'f.npy'}"],
         "no input named"),
        (["--model", converted["fp32"], "--ops", app / "libint4onnx_ops.so", converted["fp32"]], "not a .npy file"),
    ]
    for args, needle in cases:
        p = run_app(app, *args)
        assert p.returncode == 1 and needle in p.stderr, (args, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1


def test_native_kernel_test_passes_here(tmp_path):
    """native/tests/test_kernels.c, which make test-arm runs under qemu, also passes with this CPU's kernels."""
    build = tmp_path / "build"
    subprocess.run(["make", "-s", f"-j{os.cpu_count() or 1}", "-C", ROOT / "native", f"BUILD={build}", "test-kernels"],
                   check=True, capture_output=True)
    r = subprocess.run([build / "test_kernels"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASS: 0 failure(s)" in r.stdout and "FAILED" not in r.stdout
    assert "scalar_int8" in r.stdout and "bit-exact vs scalar_int8" in r.stdout
