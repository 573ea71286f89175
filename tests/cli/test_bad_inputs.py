"""The bad-input battery, by class: degenerate shapes (native entry points and converter), paths a run
both reads and writes, damaged tensors, damaged quantized nodes, numeric extremes, API types, and what
ONNX Runtime prints. Every user mistake: one line, exit 2 (3: nothing to quantize), no traceback,
nothing written and the inputs untouched (test_errors.py holds the older cases)."""

import json
import os
import pathlib
import subprocess
import sys
import warnings

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from click.testing import CliRunner
from modelgen import make_model, matmul_model, save
from onnx import TensorProto, helper, numpy_helper
from test_errors import _digest, _external, good

import int4onnx
from int4onnx.cli import main
from int4onnx.errors import ConfigError, Int4OnnxError, ModelLoadError, NothingToQuantizeError

RNG = np.random.default_rng(11)


def _w(K=64, N=32):
    return RNG.standard_normal((K, N)).astype(np.float32)


def _fails_cleanly(tmp_path, args, needle, code=2, before=None):
    """Run the CLI; check one error line with `needle`, the exit code and that nothing changed."""
    before = _digest(tmp_path) if before is None else before
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == code, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("int4onnx: error: "), r.stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in r.output
    assert _digest(tmp_path) == before
    return lines[0]


# -- degenerate shapes: the native library validates every argument ------------------------------

NATIVE_CALLS = {
    "n_blocks K=0": "lib.i4o_n_blocks(0, 32) == -1",
    "n_blocks block_size=0": "lib.i4o_n_blocks(64, 0) == -1",
    "n_blocks block_size=-16": "lib.i4o_n_blocks(64, -16) == -1",
    "blob_bytes bits=3": "lib.i4o_blob_bytes(3, 32) == -1",
    "blob_bytes block_size=0": "lib.i4o_blob_bytes(4, 0) == -1",
    "weight_bytes N=0": "lib.i4o_weight_bytes(64, 0, 4, 32) == -1",
    "weight_bytes K=-1": "lib.i4o_weight_bytes(-1, 8, 4, 32) == -1",
    "zero_point_row_bytes n_blocks=0": "lib.i4o_zero_point_row_bytes(0, 4) == -1",
    "pack K=0": "lib.i4o_pack_weights(buf, 0, 8, 4, 32, 0, ffi.NULL, buf) == lib.I4O_E_ARG",
    "pack block_size=0": "lib.i4o_pack_weights(buf, 64, 8, 4, 0, 0, ffi.NULL, buf) == lib.I4O_E_ARG",
    "pack NULL": "lib.i4o_pack_weights(ffi.NULL, 64, 8, 4, 32, 0, ffi.NULL, buf) == lib.I4O_E_ARG",
    "unpack N=0": "lib.i4o_unpack_weights(buf, 64, 0, 4, 32, buf) == lib.I4O_E_ARG",
    "pack_zero_points n_blocks=0": "lib.i4o_pack_zero_points(buf, 8, 0, 4, buf) == lib.I4O_E_ARG",
    "unpack_zero_points bits=0": "lib.i4o_unpack_zero_points(buf, 8, 2, 0, buf) == lib.I4O_E_ARG",
    "dequantize K=0": "lib.i4o_dequantize(weights(K=0), fbuf) == lib.I4O_E_ARG",
    "dequantize block_size=0": "lib.i4o_dequantize(weights(block_size=0), fbuf) == lib.I4O_E_ARG",
    "dequantize quant_type=7": "lib.i4o_dequantize(weights(quant_type=7), fbuf) == lib.I4O_E_ARG",
    "dequantize NULL": "lib.i4o_dequantize(ffi.NULL, fbuf) == lib.I4O_E_ARG",
    "matmul K=0": "lib.i4o_matmul(ffi.NULL, 0, fbuf, 1, weights(K=0), ffi.NULL, fbuf, err, 256) == lib.I4O_E_ARG",
    "matmul compute=9": "lib.i4o_matmul(ffi.NULL, 9, fbuf, 1, weights(), ffi.NULL, fbuf, err, 256) == lib.I4O_E_ARG",
    "matmul nf4 8-bit": "lib.i4o_matmul(ffi.NULL, 0, fbuf, 1, weights(bits=8, quant_type=1), ffi.NULL, fbuf, err, 256)"
                        " == lib.I4O_E_ARG",
    "kernel_selected compute=9": "ffi.string(lib.i4o_kernel_selected(9)) == b''",
    "kernel_tile unknown": "lib.i4o_kernel_tile(b'nope', ffi.new('i4o_tile *')) == lib.I4O_E_KERNEL",
    "kernel_tile NULL": "lib.i4o_kernel_tile(ffi.NULL, ffi.NULL) == lib.I4O_E_KERNEL",
    "kernel_tile NULL out": "lib.i4o_kernel_tile(b'scalar_fp32', ffi.NULL) == lib.I4O_E_ARG",
    "kernel_grid unknown": "lib.i4o_kernel_grid(b'nope', ffi.NULL, 0) == -1",
    "kernel_grid NULL cases": "lib.i4o_kernel_grid(b'scalar_fp32', ffi.NULL, 5) == -1",
    "kernel_grid cap=-1": "lib.i4o_kernel_grid(b'scalar_fp32', ffi.NULL, -1) == -1",
    "matmul_threads threads=0": "lib.i4o_matmul_threads(ffi.NULL, 0, fbuf, 1, weights(), ffi.NULL, fbuf, 0, err, 256)"
                                " == lib.I4O_E_ARG",
    "matmul_threads K=0": "lib.i4o_matmul_threads(ffi.NULL, 0, fbuf, 1, weights(K=0), ffi.NULL, fbuf, 2, err, 256)"
                          " == lib.I4O_E_ARG",
    "RegisterCustomOps NULL options": "ops.RegisterCustomOps(None, ort_lib.OrtGetApiBase()) is not None",  # a status
    "RegisterCustomOps NULL api": "ops.RegisterCustomOps(None, None) is None",
}

NATIVE_PRELUDE = """
import ctypes, glob, os
import onnxruntime
import int4onnx
from int4onnx._native import ffi, lib
ort_lib = ctypes.CDLL(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so*"))[0])
ort_lib.OrtGetApiBase.restype = ctypes.c_void_p
ops = ctypes.CDLL(int4onnx.library_path())
ops.RegisterCustomOps.restype = ctypes.c_void_p
ops.RegisterCustomOps.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
buf = ffi.new("uint8_t[4096]")
fbuf = ffi.new("float[4096]")
err = ffi.new("char[256]")
def weights(K=64, N=8, bits=4, block_size=32, quant_type=0):
    w = ffi.new("i4o_weights *")
    w.K, w.N, w.bits, w.block_size, w.quant_type = K, N, bits, block_size, quant_type
    w.data, w.scales, w.zero_points = buf, fbuf, ffi.NULL
    return w
"""


def test_native_entry_points_refuse_bad_arguments():
    """Each call in a child process: a division by zero (SIGFPE) or a bad read would kill it, and the
    failing call is named."""
    script = NATIVE_PRELUDE + "\n".join(f"assert {expr}, {name!r}\nprint({name!r}, flush=True)"
                                        for name, expr in NATIVE_CALLS.items())
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    done = r.stdout.splitlines()
    assert r.returncode == 0, f"failed after {done[-1:] or 'nothing'} (exit {r.returncode}): {r.stderr[-500:]}"
    assert done == list(NATIVE_CALLS)


def test_python_size_helpers_raise():
    from int4onnx import _native

    with pytest.raises(Int4OnnxError, match="n_blocks"):
        _native.n_blocks(0, 0)
    with pytest.raises(Int4OnnxError, match="zero_point_row_bytes"):
        _native.zero_point_row_bytes(0, 4)


@pytest.mark.parametrize("shape", [(0, 32), (64, 0), (0, 0)])
def test_zero_dimension_weight_is_skipped_with_a_reason(tmp_path, shape):
    """K = 0 crashed the converter with SIGFPE (block size 0); ONNX Runtime runs such a model."""
    src = save(matmul_model({"w0": np.zeros(shape, np.float32)}), tmp_path / "m.onnx")
    line = _fails_cleanly(tmp_path, ["convert", src, "-o", tmp_path / "o.onnx"], "no weights to quantize", code=3)
    assert f"[{shape[0]}, {shape[1]}]" in line
    with pytest.raises(NothingToQuantizeError):
        int4onnx.quantize(src, tmp_path / "o.onnx")


def test_zero_dimension_weight_next_to_a_good_one(tmp_path):
    K0 = helper.make_node("MatMul", ["x", "w0"], ["h"], name="empty")
    mm = helper.make_node("MatMul", ["x", "w1"], ["y"], name="good")
    model = make_model([K0, mm], [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 64])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 32]),
                        helper.make_tensor_value_info("h", TensorProto.FLOAT, ["b", 0])],
                       [numpy_helper.from_array(np.zeros((64, 0), np.float32), "w0"),
                        numpy_helper.from_array(_w(), "w1")])
    src = save(model, tmp_path / "m.onnx")
    report = int4onnx.quantize(src, tmp_path / "o.onnx")
    assert report.nodes_rewritten == 1
    assert [(s["name"], s["reason"]) for s in report.skipped] == [("empty", "weight has shape [64, 0] (K x N): no weights to quantize")]
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.register_custom_ops_library(int4onnx.library_path())
    y, h = ort.InferenceSession(str(tmp_path / "o.onnx"), so).run(["y", "h"], {"x": np.ones((2, 64), np.float32)})
    assert y.shape == (2, 32) and h.shape == (2, 0)


# -- paths: no file the run reads can be written by it ------------------------------------------

def _calibration_files(d):
    np.savez(d / "c.npz", x=RNG.standard_normal((4, 64)).astype(np.float32))
    (d / "cal").mkdir()
    np.savez(d / "cal" / "a.npz", x=RNG.standard_normal((4, 64)).astype(np.float32))
    (d / "t.txt").write_text("some calibration text\n" * 10)
    (d / "tok.json").write_text("{}")


OVERWRITES = [
    # (extra args, message fragment)
    (["--report", "{dir}/m.onnx.data", "-o", "{dir}/o.onnx"], "--report {dir}/m.onnx.data would overwrite the input model's external data"),
    (["--report", "{dir}/m.onnx", "-o", "{dir}/o.onnx"], "would overwrite the input model"),
    (["-o", "{dir}/c.npz", "--calibration", "{dir}/c.npz"], "would overwrite the calibration file"),
    (["-o", "{dir}/cal/a.npz", "--calibration", "{dir}/cal"], "would overwrite the calibration file"),
    (["-o", "{dir}/o.onnx", "--report", "{dir}/cal/a.npz", "--calibration", "{dir}/cal"], "would overwrite the calibration file"),
    (["-o", "{dir}/t.txt", "--calibration-text", "{dir}/t.txt", "--tokenizer", "{dir}/tok.json"], "would overwrite the calibration text"),
    (["-o", "{dir}/tok.json", "--calibration-text", "{dir}/t.txt", "--tokenizer", "{dir}/tok.json"], "would overwrite the tokenizer"),
    (["-o", "{dir}/o.onnx", "--report", "{dir}/tok.json", "--calibration-text", "{dir}/t.txt", "--tokenizer", "{dir}/tok.json"],
     "would overwrite the tokenizer"),
    (["-o", "{dir}/o.onnx", "--report", "{dir}/o.onnx.data"], "would overwrite the output's data file"),
    (["-o", "{dir}/link.onnx"], "would overwrite the input model"),            # a symlink to the input
    (["-o", "{dir}/hard.onnx"], "would overwrite the input model"),           # a hard link of the input
    (["-o", "{dir}/o.onnx", "--report", "{dir}/t.data"], "would overwrite the input model's external data"),
    (["-o", "{dir}/t"], "would overwrite the input model's external data"),  # -o's .data: a symlink to it
]


@pytest.mark.parametrize("args,needle", OVERWRITES, ids=[" ".join(a) for a, _ in OVERWRITES])
def test_outputs_never_overwrite_what_the_run_reads(tmp_path, args, needle):
    src = _external(tmp_path)  # m.onnx + m.onnx.data
    _calibration_files(tmp_path)
    os.symlink(src, tmp_path / "link.onnx")
    os.link(src, tmp_path / "hard.onnx")
    os.symlink(tmp_path / "m.onnx.data", tmp_path / "t.data")
    args = [a.format(dir=tmp_path) for a in args]
    _fails_cleanly(tmp_path, ["convert", src, *args], needle.format(dir=tmp_path))


def test_api_outputs_never_overwrite_calibration(tmp_path):
    src = good(tmp_path)
    _calibration_files(tmp_path)
    before = _digest(tmp_path)
    with pytest.raises(Int4OnnxError, match="calibration file"):
        int4onnx.quantize(src, tmp_path / "c.npz", calibration=str(tmp_path / "c.npz"), method="gptq")
    assert _digest(tmp_path) == before


@pytest.mark.parametrize("report,needle", [("{dir}", "is a directory"),
                                           ("{dir}/nodir/r.json", "--report directory {dir}/nodir does not exist")])
def test_report_path_checked_before_converting(tmp_path, report, needle):
    src = good(tmp_path)
    _fails_cleanly(tmp_path, ["convert", src, "-o", tmp_path / "o.onnx", "--report", report.format(dir=tmp_path)],
                   needle.format(dir=tmp_path))


def test_output_directory_gets_the_default_name(tmp_path):
    src = good(tmp_path)
    (tmp_path / "out").mkdir()
    r = CliRunner().invoke(main, ["convert", src, "-o", str(tmp_path / "out"), "-q"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m.int4.onnx"]


# -- damaged tensors -----------------------------------------------------------------------------

def _tensor_case(edit):
    def make(d):
        model = matmul_model({"w0": _w()})
        edit(model.graph.initializer[0], model)
        return save(model, d / "m.onnx")
    make.__name__ = edit.__name__
    return make


def short_raw(t, m):
    t.raw_data = t.raw_data[:100]


def long_raw(t, m):
    t.raw_data = t.raw_data + b"\0" * 8


def negative_dim(t, m):
    t.dims[0] = -64


def absurd_dims(t, m):
    t.dims[0] = 1 << 40


def overflowing_dims(t, m):
    t.dims[:] = [1 << 62, 1 << 62]


def short_float_data(t, m):
    values = numpy_helper.to_array(t).ravel()[:10]
    t.ClearField("raw_data")
    t.float_data.extend(values.tolist())


def short_constant(t, m):
    """The weight as a Constant node whose tensor is short."""
    value = onnx.TensorProto()
    value.CopyFrom(t)
    value.raw_data = value.raw_data[:64]
    m.graph.initializer.pop()
    m.graph.node.insert(0, helper.make_node("Constant", [], ["w0"], name="const", value=value))


TENSOR_CASES = [(short_raw, "holds 100 bytes"), (long_raw, "holds 8,200 bytes"),
                (negative_dim, "dims [-64, 32]: a dimension is negative"), (absurd_dims, "holds 8,192 bytes"),
                (overflowing_dims, "holds 8,192 bytes"), (short_float_data, "holds 10 float_data entries"),
                (short_constant, "node 'const' attribute 'value'")]


@pytest.mark.parametrize("edit,needle", TENSOR_CASES, ids=[e.__name__ for e, _ in TENSOR_CASES])
@pytest.mark.parametrize("command", ["convert", "inspect"])
def test_damaged_tensors(tmp_path, edit, needle, command):
    src = _tensor_case(edit)(tmp_path)
    args = [command, src] + (["-o", tmp_path / "o.onnx"] if command == "convert" else [])
    line = _fails_cleanly(tmp_path, args, needle)
    assert "export the model again" in line


def test_external_tensor_with_negative_dims(tmp_path):
    src = _external(tmp_path)
    model = onnx.load(src, load_external_data=False)
    model.graph.initializer[0].dims[0] = -1
    onnx.save(model, src)
    _fails_cleanly(tmp_path, ["convert", src, "-o", tmp_path / "o.onnx"], "a dimension is negative")


# -- damaged quantized nodes (inspect) -------------------------------------------------------------

def _quantized(d, fmt="int4onnx"):
    int4onnx.quantize(good(d), d / "q.onnx", format=fmt)
    return onnx.load(str(d / "q.onnx"))


def _set_attr(node, name, value):
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    if value is not None:
        node.attribute.append(helper.make_attribute(name, value))


@pytest.mark.parametrize("fmt,attr,value,needle", [
    ("int4onnx", "K", None, "no integer attribute 'K'"),
    ("int4onnx", "K", 0, "K=0 N=32"),
    ("int4onnx", "N", None, "no integer attribute 'N'"),
    ("int4onnx", "block_size", 0, "block_size=0"),
    ("int4onnx", "bits", 3, "bits=3"),
    ("int4onnx", "K", "64", "no integer attribute 'K'"),
    ("matmulnbits", "K", None, "no integer attribute 'K'"),
    ("matmulnbits", "N", -5, "N=-5"),
])
def test_inspect_damaged_quantized_node(tmp_path, fmt, attr, value, needle):
    model = _quantized(tmp_path, fmt)
    node = next(n for n in model.graph.node if n.op_type in ("MatMulInt4", "MatMulNBits"))
    _set_attr(node, attr, value)
    onnx.save(model, str(tmp_path / "bad.onnx"))
    line = _fails_cleanly(tmp_path, ["inspect", tmp_path / "bad.onnx"], needle)
    assert "the model is damaged" in line


def test_inspect_counts_external_data(tmp_path):
    src = _external(tmp_path)
    info = json.loads(CliRunner().invoke(main, ["inspect", str(src), "--json"]).output)
    assert info["file_bytes"] == os.path.getsize(src) + os.path.getsize(tmp_path / "m.onnx.data")


# -- options -------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,needle", [
    (["--vocab", "0"], "--vocab must be at least 1"),
    (["--vocab", "-3"], "--vocab must be at least 1"),
    (["--repeats", "0"], "--repeats must be at least 1"),
])
def test_bench_options(tmp_path, args, needle):
    _fails_cleanly(tmp_path, ["bench", good(tmp_path), *args], needle)


def test_verbose_after_the_subcommand(tmp_path):
    src = good(tmp_path)
    r = CliRunner().invoke(main, ["convert", src, "-o", str(tmp_path / "o.onnx"), "-v"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["inspect", str(tmp_path / "o.onnx"), "-vv"])
    assert r.exit_code == 0, r.output


def test_ir_version_newer_than_onnx_knows(tmp_path):
    model = matmul_model({"w0": _w()})
    model.ir_version = onnx.IR_VERSION + 1
    src = save(model, tmp_path / "m.onnx")
    _fails_cleanly(tmp_path, ["convert", src, "-o", tmp_path / "o.onnx"], f"IR version {onnx.IR_VERSION + 1}, newer")


def test_larger_output_says_larger(tmp_path):
    """A weight too small to gain from 4 bits: the summary must not call a bigger file smaller."""
    src = save(matmul_model({"w0": _w(16, 1)}), tmp_path / "m.onnx")
    r = CliRunner().invoke(main, ["convert", src, "-o", str(tmp_path / "o.onnx")])
    assert r.exit_code == 0, r.output
    size_in, size_out = os.path.getsize(src), os.path.getsize(tmp_path / "o.onnx")
    assert size_out > size_in
    assert "x larger)" in r.output and "smaller" not in r.output


# -- ONNX Runtime's own log ------------------------------------------------------------------------

def test_onnxruntime_log_only_with_verbose(tmp_path):
    """ONNX Runtime writes its log to the process's stderr (C++), so run the CLI as a process."""
    model = _quantized(tmp_path)
    node = next(n for n in model.graph.node if n.op_type == "MatMulInt4")
    _set_attr(node, "K", 0)
    onnx.save(model, str(tmp_path / "bad.onnx"))
    cli = [sys.executable, "-m", "int4onnx.cli"]
    r = subprocess.run(cli + ["bench", str(tmp_path / "bad.onnx"), "--repeats", "1"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("int4onnx: error: ") and "invalid K=0" in r.stderr
    r = subprocess.run(cli + ["bench", str(tmp_path / "bad.onnx"), "--repeats", "1", "-v"], capture_output=True, text=True)
    assert r.returncode == 2 and "[E:onnxruntime" in r.stderr


# -- numeric extremes ------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["--asymmetric"], ["--symmetric"], ["--method", "clip"], ["--double-quant"]])
def test_weights_near_the_float32_limit(tmp_path, args):
    w = RNG.uniform(-3e38, 3e38, (64, 32)).astype(np.float32)
    src = save(matmul_model({"w0": w}), tmp_path / "m.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warnings either
        r = CliRunner().invoke(main, ["convert", src, "-o", str(tmp_path / "o.onnx"), *args])
    assert r.exit_code == 0, r.output
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.register_custom_ops_library(int4onnx.library_path())
    y = ort.InferenceSession(str(tmp_path / "o.onnx"), so).run(None, {"x": np.eye(64, dtype=np.float32)})[0]
    assert np.isfinite(y).all()
    assert np.abs(y - w).max() <= 0.15 * np.abs(w).max()  # 4-bit grid spacing, not NaN


@pytest.mark.parametrize("scale", [0.0, 1e-9])
@pytest.mark.parametrize("method", ["gptq", "awq-gptq"])
def test_gptq_with_dead_calibration_channels(tmp_path, method, scale):
    """Half the input channels (near) zero in every calibration sample: GPTQ used to set their weights
    to zero (weight error 0.70 against RTN's 0.08) while reporting a small output error."""
    w = _w(128, 64)
    src = save(matmul_model({"w0": w}), tmp_path / "m.onnx")
    x = RNG.standard_normal((256, 128)).astype(np.float32)
    x[:, 64:] *= scale
    np.savez(tmp_path / "c.npz", x=x)
    r = CliRunner().invoke(main, ["convert", src, "-o", str(tmp_path / "o.onnx"), "--method", method,
                                  "--calibration", str(tmp_path / "c.npz"), "--report", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    layer = json.loads((tmp_path / "r.json").read_text())["layers"][0]
    assert layer["dead_input_channels"] == 64
    assert layer["rel_error"] < 1.2 * layer["rtn_rel_error"], layer
    assert "64 in all) that are (near) zero in every calibration sample: the output error above does not" in r.output
    # the dead channels' weights are RTN's, not zero
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.register_custom_ops_library(int4onnx.library_path())
    eye = np.eye(128, dtype=np.float32)
    wq = ort.InferenceSession(str(tmp_path / "o.onnx"), so).run(None, {"x": eye})[0]
    if method == "gptq":
        dead = np.linalg.norm(wq[64:] - w[64:]) / np.linalg.norm(w[64:])
        assert dead < 0.15


def test_live_channels_report_no_dead_ones(tmp_path):
    src = save(matmul_model({"w0": _w()}), tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", x=RNG.standard_normal((64, 64)).astype(np.float32))
    report = int4onnx.quantize(src, tmp_path / "o.onnx", method="gptq", calibration=str(tmp_path / "c.npz"))
    assert report.layers[0]["dead_input_channels"] == 0


# -- the Python API: inputs, outputs and option types ----------------------------------------------

BAD_OPTIONS = [
    ("symmetric", "no"), ("double_quant", "false"), ("exclude", None), ("calibration_samples", "32"),
    ("bits", 4.0), ("group_size", "32"), ("damp", "0.1"), ("damp", float("nan")), ("lm_head", 5),
    ("method", 1), ("format", None), ("act_order", 1), ("exclude", [1, 2]), ("calibration", 3),
    ("target_bits", "4.5"), ("sensitivity_samples", 2.5), ("clip_search", None), ("embedding", "16"),
]


@pytest.mark.parametrize("name,value", BAD_OPTIONS, ids=[f"{n}={v!r}" for n, v in BAD_OPTIONS])
def test_api_option_types(tmp_path, name, value):
    src = good(tmp_path)
    with pytest.raises(ConfigError, match=f"^{name} must be"):
        int4onnx.quantize(src, tmp_path / "o.onnx", **{name: value})
    with pytest.raises(ConfigError, match=f"^{name} must be"):
        int4onnx.QuantConfig(**{name: value})
    assert not (tmp_path / "o.onnx").exists()


def test_api_accepts_lossless_conversions(tmp_path):
    c = int4onnx.QuantConfig(bits=np.int64(8), lm_head=4, exclude="mm0", calibration=tmp_path / "c.npz",
                             damp=0, symmetric=np.bool_(True))
    assert (c.bits, c.lm_head, c.exclude, c.calibration, c.damp, c.symmetric) == \
        (8, "4", ("mm0",), str(tmp_path / "c.npz"), 0.0, True)
    assert type(c.bits) is int and type(c.symmetric) is bool


@pytest.mark.parametrize("kwargs,needle", [
    (dict(input=3), "input must be a path, an onnx.ModelProto or an onnx_ir.Model"),
    (dict(output=3), "output must be a path or None"),
    (dict(config="gptq"), "config must be an int4onnx.QuantConfig"),
])
def test_api_argument_types(tmp_path, kwargs, needle):
    args = {"input": good(tmp_path), "output": tmp_path / "o.onnx", **kwargs}
    with pytest.raises(ConfigError, match=needle):
        int4onnx.quantize(args.pop("input"), args.pop("output"), **args)


def _run(model_or_path, x):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.register_custom_ops_library(int4onnx.library_path())
    data = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    return ort.InferenceSession(data, so).run(None, {"x": x})[0]


def test_api_in_memory_models(tmp_path):
    proto = matmul_model({"w0": _w(), "w1": _w(32, 16)})
    before = proto.SerializeToString()
    src = save(proto, tmp_path / "m.onnx")
    int4onnx.quantize(src, tmp_path / "ref.onnx", group_size=16)
    x = RNG.standard_normal((3, 64)).astype(np.float32)
    ref = _run(tmp_path / "ref.onnx", x)

    out = int4onnx.quantize(proto, group_size=16)  # ModelProto in, ModelProto out
    assert isinstance(out, onnx.ModelProto) and proto.SerializeToString() == before
    np.testing.assert_array_equal(_run(out, x), ref)

    irm = ir.serde.deserialize_model(proto)
    n_nodes = len(irm.graph)
    out_ir = int4onnx.quantize(irm, group_size=16)  # ir.Model in, ir.Model out; the input unchanged
    assert isinstance(out_ir, ir.Model) and len(irm.graph) == n_nodes
    assert [n.op_type for n in irm.graph] == ["MatMul", "MatMul"]
    np.testing.assert_array_equal(_run(ir.serde.serialize_model(out_ir), x), ref)

    out_path = int4onnx.quantize(src, group_size=16)  # a path and no output: a ModelProto
    np.testing.assert_array_equal(_run(out_path, x), ref)

    report = int4onnx.quantize(proto, tmp_path / "o.onnx", group_size=16)  # ModelProto in, file out
    assert report.nodes_rewritten == 2
    np.testing.assert_array_equal(_run(tmp_path / "o.onnx", x), ref)


def test_api_in_memory_qdq_and_external_data(tmp_path):
    src = _external(tmp_path)
    out = int4onnx.quantize(src, format="qdq", symmetric=True)
    assert not any(t.data_location == TensorProto.EXTERNAL for t in out.graph.initializer)
    x = RNG.standard_normal((2, 64)).astype(np.float32)
    assert np.isfinite(_run(out, x)).all()


def test_api_in_memory_bad_models(tmp_path):
    with pytest.raises(ModelLoadError, match="not a model"):
        int4onnx.quantize(onnx.ModelProto())
    proto = matmul_model({"w0": _w()})
    proto.graph.initializer[0].raw_data = b"\0" * 10
    with pytest.raises(ModelLoadError, match="holds 10 bytes"):
        int4onnx.quantize(proto)
    with pytest.raises(NothingToQuantizeError):
        int4onnx.quantize(matmul_model({"w0": np.zeros((0, 4), np.float32)}))


def test_no_stray_files(tmp_path):
    """The in-memory API writes nothing next to the caller's files."""
    proto = matmul_model({"w0": _w()})
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        int4onnx.quantize(proto)
    finally:
        os.chdir(cwd)
    assert list(pathlib.Path(tmp_path).iterdir()) == []
