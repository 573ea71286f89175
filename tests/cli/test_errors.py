"""Every bad input of the issue through the CLI: one line on stderr, the documented exit code, no
traceback, nothing written (the folder holds what it held before) and the input untouched.
docs/errors.md lists the same cases with their messages."""

import hashlib
import os
import pathlib

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from modelgen import make_model, matmul_model, save
from onnx import TensorProto, helper, numpy_helper

import int4onnx
from int4onnx.cli import main
from int4onnx.errors import ConfigError, ModelLoadError, NothingToQuantizeError, OutputError, UnsupportedModelError

RNG = np.random.default_rng(5)


def _w(K=64, N=32):
    return RNG.standard_normal((K, N)).astype(np.float32)


def _xy(elem=TensorProto.FLOAT, K=64, N=32, y_elem=None):
    return ([helper.make_tensor_value_info("x", elem, ["b", K])],
            [helper.make_tensor_value_info("y", y_elem or elem, ["b", N])])


# -- inputs: each maker writes files into a folder and returns the model path --------------------

def good(d):
    return save(matmul_model({"w0": _w()}), d / "m.onnx")


def junk(d):
    (d / "m.onnx").write_bytes(np.random.default_rng(0).bytes(5000))
    return d / "m.onnx"


def truncated(d):
    data = pathlib.Path(good(d)).read_bytes()
    (d / "m.onnx").write_bytes(data[: len(data) // 2])
    return d / "m.onnx"


def text(d):
    (d / "m.onnx").write_text("this is not a model\n" * 50)
    return d / "m.onnx"


def empty(d):
    (d / "m.onnx").write_bytes(b"")
    return d / "m.onnx"


def folder(d):
    (d / "m.onnx").mkdir()
    return d / "m.onnx"


def no_matmul(d):
    return save(make_model([helper.make_node("Relu", ["x"], ["y"])], *_xy(K=4, N=4), []), d / "m.onnx")


def dynamic(d):
    ins, outs = _xy()
    ins.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [64, 32]))
    return save(make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], ins, outs, []), d / "m.onnx")


def double(d):
    return save(make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], *_xy(TensorProto.DOUBLE),
                           [numpy_helper.from_array(_w().astype(np.float64), "w")]), d / "m.onnx")


def int8(d):
    return save(make_model([helper.make_node("MatMulInteger", ["x", "w"], ["y"], name="mmi")],
                           *_xy(TensorProto.UINT8, y_elem=TensorProto.INT32),
                           [numpy_helper.from_array(np.ones((64, 32), np.int8), "w")]), d / "m.onnx")


def _external(d, location="m.onnx.data"):
    model = matmul_model({"w0": _w()})
    onnx.save(model, str(d / "m.onnx"), save_as_external_data=True, location=location, size_threshold=0)
    return d / "m.onnx"


def external_missing(d):
    path = _external(d)
    os.remove(d / "m.onnx.data")
    return path


def external_truncated(d):
    path = _external(d)
    os.truncate(d / "m.onnx.data", 100)
    return path


def external_outside(d):
    """The weight's data file is named '../outside.data': outside the model's folder."""
    inner = d / "inner"
    inner.mkdir()
    w = _w()
    (d / "outside.data").write_bytes(w.tobytes())
    model = matmul_model({"w0": w})
    t = model.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../outside.data"), ("offset", "0"), ("length", str(w.nbytes))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    (inner / "m.onnx").write_bytes(model.SerializeToString())
    return inner / "m.onnx"


def _converted(fmt):
    def make(d):
        src = good(d)
        int4onnx.quantize(src, d / "q.onnx", format=fmt)
        os.remove(src)
        return d / "q.onnx"
    make.__name__ = f"quantized_{fmt}"
    return make


def opset_too_new(d):
    model = matmul_model({"w0": _w()})
    model.opset_import[0].version = 99
    return save(model, d / "m.onnx")


CASES = [
    # (make input, extra args, message fragment, exit code)
    (None, [], "no such file", 2),
    (folder, [], "is a directory, expected an .onnx file", 2),
    (junk, [], "not a valid ONNX model", 2),
    (truncated, [], "not a valid ONNX model", 2),
    (text, [], "not a valid ONNX model", 2),
    (empty, [], "file is empty", 2),
    (no_matmul, [], "the model has no MatMul or Gemm nodes (it has 1 Relu)", 3),
    (dynamic, [], "mm: weight is not a constant (activation x activation MatMul)", 3),
    (double, [], "mm: weight dtype DOUBLE is not float32/float16", 3),
    (int8, [], "its 1 MatMulInteger node(s) are already integer", 3),
    (external_missing, [], "lives in external data file 'm.onnx.data', which is missing", 2),
    (external_truncated, [], "external data file 'm.onnx.data' is truncated (100 bytes", 2),
    (external_outside, [], "outside the base directory", 2),
    (_converted("int4onnx"), [], "already quantized (it contains com.int4onnx::MatMulInt4 nodes)", 2),
    (_converted("matmulnbits"), [], "already quantized (it contains com.microsoft::MatMulNBits nodes)", 2),
    (_converted("qdq"), [], "already quantized (it contains uint4 DequantizeLinear weights", 2),
    (opset_too_new, [], "imports ONNX opset 99, newer than", 2),
    (opset_too_new, ["--format", "qdq"], "imports ONNX opset 99, newer than", 2),
    (good, ["--bits", "3"], "bits must be 4 or 8, got 3", 2),
    (good, ["--group-size", "0"], "or -1 for per-channel; got 0", 2),
    (good, ["--group-size", "3"], "group size must be one of", 2),
    (good, ["--group-size", "-5"], "group size must be one of", 2),
    (good, ["--group-size", "abc"], "Invalid value for '--group-size': 'abc' is not a valid integer", 2),
    (good, ["--method", "magic"], "Invalid value for '--method'", 2),
    (good, ["--format", "gguf"], "Invalid value for '--format'", 2),
    (good, ["--dtype", "nf4", "--asymmetric"], "nf4 is a symmetric 4-bit code", 2),
    (good, ["-o", "{model}"], "would overwrite the input model", 2),
    (good, ["-o", "{dir}/nodir/o.onnx"], "output directory", 2),
    (good, ["-o", "{model}/o.onnx"], "is not a directory", 2),
    (good, ["-o", "/proc/o.onnx"], "cannot write /proc/o.onnx", 2),
    (good, ["--report", "{dir}/o.onnx", "-o", "{dir}/o.onnx"], "would overwrite the output", 2),
]


def _digest(folder: pathlib.Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("make,args,needle,code", CASES,
                         ids=[f"{(m.__name__ if m else 'missing')}{' ' + ' '.join(a) if a else ''}"
                              for m, a, _, _ in CASES])
def test_bad_input(tmp_path, make, args, needle, code):
    model = make(tmp_path) if make else tmp_path / "m.onnx"
    args = [a.format(model=model, dir=tmp_path) for a in args]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "out.onnx")]
    before = _digest(tmp_path)
    r = CliRunner().invoke(main, ["convert", str(model), *args])
    assert r.exit_code == code, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("int4onnx: error: "), r.stderr
    assert needle in lines[0], lines[0]
    assert r.stdout == "" and "Traceback" not in r.output
    assert _digest(tmp_path) == before  # nothing written, nothing changed


def test_output_that_is_not_a_regular_file(tmp_path):
    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    r = CliRunner().invoke(main, ["convert", good(tmp_path), "-o", str(fifo)])
    assert r.exit_code == 2 and "exists and is not a regular file" in r.stderr


def test_output_over_the_inputs_external_data(tmp_path):
    src = _external(tmp_path, location="o.onnx.data")
    before = _digest(tmp_path)
    for out in ("o.onnx", "o.onnx.data"):
        r = CliRunner().invoke(main, ["convert", str(src), "-o", str(tmp_path / out)])
        assert r.exit_code == 2 and "the input model's external data" in r.stderr, r.stderr
    assert _digest(tmp_path) == before


def test_api_raises_the_same_errors(tmp_path):
    with pytest.raises(ModelLoadError):
        int4onnx.quantize(tmp_path / "missing.onnx", tmp_path / "o.onnx")
    with pytest.raises(NothingToQuantizeError) as info:
        int4onnx.quantize(no_matmul(tmp_path), tmp_path / "o.onnx")
    assert info.value.exit_code == 3
    with pytest.raises(ConfigError, match="unknown option 'group'"):
        int4onnx.quantize(good(tmp_path), tmp_path / "o.onnx", group=32)
    with pytest.raises(OutputError):
        int4onnx.quantize(good(tmp_path), tmp_path / "m.onnx")
    with pytest.raises(UnsupportedModelError):
        int4onnx.quantize(opset_too_new(tmp_path), tmp_path / "o.onnx")
    assert not (tmp_path / "o.onnx").exists()


def test_internal_errors_are_one_line_and_debug_shows_them(tmp_path, monkeypatch):
    from int4onnx import pipeline

    def broken(*a, **k):
        raise RuntimeError("something broke")

    monkeypatch.setattr(pipeline, "quantize_model", broken)
    src = good(tmp_path)
    r = CliRunner().invoke(main, ["convert", src, "-o", str(tmp_path / "o.onnx")])
    assert r.exit_code == 1 and r.stderr.count("\n") == 1
    assert "internal error: RuntimeError: something broke" in r.stderr and "--debug" in r.stderr
    r = CliRunner().invoke(main, ["--debug", "convert", src, "-o", str(tmp_path / "o.onnx")])
    assert isinstance(r.exception, RuntimeError)
    assert not (tmp_path / "o.onnx").exists()


def test_old_ir_version_weights_listed_as_inputs_are_converted(tmp_path):
    """IR version 3 lists initializers among the inputs; they are constants (as in ONNX Runtime)."""
    ins, outs = _xy()
    ins.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [64, 32]))
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], ins, outs,
                       [numpy_helper.from_array(_w(), "w")], opset=7)
    model.ir_version = 3
    onnx.checker.check_model(model)
    src = save(model, tmp_path / "m.onnx")
    for fmt in ("int4onnx", "qdq"):
        report = int4onnx.quantize(src, tmp_path / f"o.{fmt}.onnx", format=fmt)
        out = onnx.load(str(tmp_path / f"o.{fmt}.onnx"))
        onnx.checker.check_model(out)
        assert report.nodes_rewritten == 1 and [i.name for i in out.graph.input] == ["x"]
        assert "w" not in {i.name for i in out.graph.initializer}
