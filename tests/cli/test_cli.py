"""The CLI through click's runner: conversions, reports, inspect, and one-line errors with no files left."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from modelgen import matmul_model, save

from int4onnx.cli import main

RNG = np.random.default_rng(3)


@pytest.fixture()
def model(tmp_path):
    return save(matmul_model({"w0": RNG.standard_normal((64, 32)).astype(np.float32),
                              "w1": RNG.standard_normal((32, 16)).astype(np.float32)}), tmp_path / "m.onnx")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_convert_report_and_inspect(tmp_path, model):
    out, rep = tmp_path / "m.int4.onnx", tmp_path / "r.json"
    r = invoke("convert", model, "-o", out, "--group-size", 16, "--asymmetric", "--report", rep)
    assert r.exit_code == 0, r.output
    assert "quantized 2 MatMul/Gemm node(s)" in r.output
    report = json.loads(rep.read_text())
    assert [layer["K"] for layer in report["layers"]] == [64, 32]
    assert all(layer["bits"] == 4 and layer["block_size"] == 16 and 0 < layer["rel_error"] < 0.2
               for layer in report["layers"])
    assert report["bits_per_weight"] > 4
    r = invoke("inspect", out)
    assert r.exit_code == 0 and "2 quantized layer(s)" in r.output
    r = invoke("inspect", out, "--json")
    info = json.loads(r.output)
    assert len(info["quantized_layers"]) == 2 and info["bits_per_weight"] == pytest.approx(report["bits_per_weight"], rel=1e-3)


def test_default_output_name(tmp_path, model):
    r = invoke("convert", model, "--format", "matmulnbits", "-q")
    assert r.exit_code == 0 and r.output == ""
    assert (tmp_path / "m.int4.onnx").exists()


def test_exclude_regex(tmp_path, model):
    r = invoke("convert", model, "-o", tmp_path / "o.onnx", "--exclude", "mm1")
    assert r.exit_code == 0
    assert "1 x excluded by --exclude: mm1" in r.output


def _assert_clean_failure(r, tmp_path, before, needle, code=2):
    assert r.exit_code == code, r.output
    assert needle in r.output
    assert "Traceback" not in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("args,needle", [
    (["--bits", "3"], "bits must be 4 or 8"),
    (["--group-size", "-1", "--bits", "5"], "bits must be 4 or 8"),
    (["--group-size", "0"], "or -1 for per-channel; got 0"),
    (["--group-size", "-5"], "group size must be one of"),
    (["--group-size", "3"], "group size must be one of"),
    (["--dtype", "nf4", "--asymmetric"], "nf4 is a symmetric 4-bit code"),
])
def test_bad_options(tmp_path, model, args, needle):
    before = sorted(p.name for p in tmp_path.iterdir())
    r = invoke("convert", model, "-o", tmp_path / "o.onnx", *args)
    _assert_clean_failure(r, tmp_path, before, needle)


def test_bad_inputs(tmp_path, model):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(bytes(range(256)) * 4)
    before = sorted(p.name for p in tmp_path.iterdir())
    _assert_clean_failure(invoke("convert", tmp_path / "missing.onnx", "-o", tmp_path / "o.onnx"), tmp_path, before,
                          "no such file")
    _assert_clean_failure(invoke("convert", junk, "-o", tmp_path / "o.onnx"), tmp_path, before, "not a valid ONNX model")
    _assert_clean_failure(invoke("convert", model, "-o", model), tmp_path, before, "would overwrite the input model")
    _assert_clean_failure(invoke("convert", model, "-o", tmp_path / "nodir" / "o.onnx"), tmp_path, before,
                          "does not exist")


def test_unknown_choice_is_a_usage_error(tmp_path, model):
    r = invoke("convert", model, "--method", "magic")
    assert r.exit_code == 2 and "Invalid value for '--method'" in r.output


def test_debug_shows_traceback(tmp_path):
    r = CliRunner().invoke(main, ["--debug", "convert", str(tmp_path / "missing.onnx")])
    assert r.exit_code != 0 and r.exception is not None


def test_bench_compares_models(tmp_path, model, monkeypatch):
    out = tmp_path / "m.int4.onnx"
    assert invoke("convert", model, "-o", out, "-q").exit_code == 0
    r = invoke("bench", out, "--vs", model, "--seq", "1,3", "--repeats", 3, "--threads", 1, "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)["rows"]
    assert [(row["seq"], row["model"]) for row in rows] == [(1, str(out)), (1, str(model)), (3, str(out)), (3, str(model))]
    assert all(row["median_ms"] > 0 for row in rows)
    assert rows[0]["speedup"] is None and rows[1]["speedup"] > 0
    assert "cosine 0.9" in rows[1]["check"]  # int4 weights stay close to the float model
    r = invoke("bench", out, "--repeats", 2, "--threads", 1)
    assert r.exit_code == 0 and "median" in r.output
    # MODEL's op on its own 2 threads against the same file on ONNX Runtime's: identical outputs
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in tmp_path.glob("m.int4.onnx*"):
        (copy / f.name).write_bytes(f.read_bytes())
    r = invoke("bench", out, "--vs", copy / "m.int4.onnx", "--op-threads", 2, "--repeats", 2, "--threads", 1, "--json")
    assert r.exit_code == 0, r.output
    assert "rel. L2 diff 0.00e+00" in json.loads(r.output)["rows"][1]["check"]
    # the --vs models keep ONNX Runtime's pool even when the library's default is its own (INT4ONNX_THREADS)
    import int4onnx.runtime

    made = []
    real = int4onnx.runtime.make_session
    monkeypatch.setattr(int4onnx.runtime, "make_session", lambda *a, **k: made.append(k.get("op_threads")) or real(*a, **k))
    with int4onnx.runtime.own_threads(3):
        r = invoke("bench", out, "--vs", copy / "m.int4.onnx", "--op-threads", 2, "--repeats", 1)
    assert r.exit_code == 0 and "m.int4.onnx's MatMulInt4 on 2 threads of int4onnx's own pool" in r.output
    assert made == [2, 0]


def test_bench_user_errors(tmp_path, model):
    r = invoke("bench", tmp_path / "missing.onnx")
    assert r.exit_code == 2 and "no such file" in r.output
    other = save(matmul_model({"w0": RNG.standard_normal((48, 8)).astype(np.float32)}), tmp_path / "other.onnx")
    r = invoke("bench", model, "--vs", other, "--repeats", 1)
    assert r.exit_code == 2 and "int4onnx: error:" in r.output and "Traceback" not in r.output
    r = invoke("bench", model, "--seq", "0")
    assert r.exit_code == 2
    r = invoke("bench", model, "--op-threads", 300)
    assert r.exit_code == 2 and "--op-threads must be 0..256" in r.output
