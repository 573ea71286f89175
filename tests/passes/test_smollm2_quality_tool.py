"""tools/smollm2_quality.py's scoring helpers: the float-minimum grid, greedy agreement, bits per weight."""

import importlib.util
import pathlib
import sys
import types

import numpy as np
import onnx
import pytest
from test_tied import tied_lm

import int4onnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tools"))
import smollm2_quality as sq  # noqa: E402


def test_float_min_grid_reproduces_q4_1():
    """A weight on a Q4_1 grid (float16 d and m per block of 32 along K) comes back exactly with float16
    d and m, and within half an int8 step of d and m with int8 ones."""
    rng = np.random.default_rng(0)
    K, N = 96, 5
    d = rng.uniform(0.01, 0.02, (K // 32, N)).astype(np.float16).astype(np.float32)
    m = rng.uniform(-0.2, -0.1, (K // 32, N)).astype(np.float16).astype(np.float32)
    q = rng.integers(0, 16, (K // 32, 32, N))
    q[:, 0], q[:, 1] = 0, 15  # every block spans the whole grid
    w = (q * d[:, None] + m[:, None]).reshape(K, N).astype(np.float32)
    np.testing.assert_array_equal(sq.float_min_grid(w, 32, None), w)
    w8 = sq.float_min_grid(w, 32, 8)
    assert 0 < np.abs(w8 - w).max() < 16 * 0.5 * 0.02 / 127 + 0.5 * 0.2 / 127
    # zero-point coding (the converter's --float-zero-points grid): float16 z = -m / d is within float16
    # rounding of z (|z| <= 20 here) times d; int8 z codes are within half a step of the column's |z| / 127
    wz = sq.float_min_grid(w, 32, None, "zero-point")
    assert 0 < np.abs(wz - w).max() < 0.02 * 20 * 2 ** -10
    wz8 = sq.float_min_grid(w, 32, 8, "zero-point")
    assert 0 < np.abs(wz8 - w).max() < 16 * 0.5 * 0.02 / 127 + 0.02 * 0.5 * 20 / 127


def test_agreement_is_the_common_prefix():
    assert sq.agreement([1, 2, 3], [1, 2, 3]) == sq.NEW_TOKENS  # the same (short) answer
    assert sq.agreement([1, 2, 4, 5], [1, 2, 3, 5]) == 2
    assert sq.agreement([7], [1]) == 0


def test_bits_per_weight_matches_the_report(tmp_path):
    """Counted from the output's initializers, the tied table once with its second zero-point copy."""
    src, _ = tied_lm(tmp_path / "m.onnx")
    out = tmp_path / "q.onnx"
    r = int4onnx.quantize(src, out, lm_head="4", group_size=32)
    _, n = sq.weight_census(pathlib.Path(src))
    assert n == 64 * 64 + 40 * 64  # W and the table, counted once
    extra_bytes = (sq.bits_per_weight(out, pathlib.Path(src)) - r.bits_per_weight) * n / 8
    assert abs(extra_bytes - 32) < 1e-6  # + the tied Gather's two int64 shape constants (4 values), nothing else


# -- `ort`: ONNX Runtime's quantizer in a child process (hqq: another venv's Python with torch) ------------


def _folder(tmp_path: pathlib.Path) -> pathlib.Path:
    folder = tmp_path / "m"
    folder.mkdir()
    tied_lm(folder / "model.onnx")
    return folder


def _exit_message(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as e:
        sq.main(argv)
    return str(e.value.code)


def test_ort_python_is_checked_before_anything_is_written(tmp_path):
    model, out = _folder(tmp_path), tmp_path / "q"
    msg = _exit_message(["--model", str(model), "--out", str(out), "ort", "hqq", "--python", str(tmp_path / "venv" / "python")])
    assert msg == f"smollm2_quality: --python {tmp_path / 'venv' / 'python'}: no such executable"
    assert not out.exists()  # not even the fp32 reference was started


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is installed in this venv")
@pytest.mark.parametrize("algo,python", [("hqq", None), ("gptq", sys.executable)])
def test_ort_torch_algos_without_torch_name_the_option(tmp_path, algo, python):
    """hqq and gptq import torch, which the project's venv does not have: one line naming --python, nothing
    written."""
    model, out = _folder(tmp_path), tmp_path / "q"
    msg = _exit_message(["--model", str(model), "--out", str(out), "ort", algo] + (["--python", python] if python else []))
    assert msg.startswith(f"smollm2_quality: {sys.executable} cannot import onnxruntime.quantization.matmul_nbits_quantizer, torch")
    assert "No module named 'torch'" in msg and f"ort {algo} needs torch: give --python" in msg and "\n" not in msg
    assert not out.exists()


@pytest.mark.parametrize("option", ["--calibration-samples", "--sequence-length"])
def test_ort_calibration_sizes_must_be_positive(tmp_path, option):
    model, out = _folder(tmp_path), tmp_path / "q"
    with pytest.raises(SystemExit) as e:
        sq.main(["--model", str(model), "--out", str(out), "ort", "gptq", option, "0"])
    assert e.value.code == 2 and not out.exists()


def test_ort_gptq_quantizes_with_the_feeds_given(tmp_path, monkeypatch):
    """ort_quantize's gptq path reads its calibration feeds from the .npz run_ort writes, and its MatMulNBits
    output stays close to the float MatMul on them. ONNX Runtime's to_numpy imports torch but uses it only
    for feeds that are not numpy arrays: without torch, an empty module stands in."""
    import onnxruntime as ort

    if importlib.util.find_spec("torch") is None:
        monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    W = (rng.standard_normal((64, 48)) / 8).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "s", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "s", 48])],
                              [numpy_helper.from_array(W, "W")])
    src = tmp_path / "mm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), src)
    xs = [rng.standard_normal((1, 16, 64)).astype(np.float32) for _ in range(2)]
    feeds = tmp_path / "feeds.npz"
    np.savez(feeds, **{f"{i}/x": x for i, x in enumerate(xs)})
    sq.ort_quantize(str(src), str(tmp_path / "q"), "gptq", 32, False, None, False, str(feeds))
    q = onnx.load(str(tmp_path / "q" / "model.onnx"))
    assert [n.op_type for n in q.graph.node] == ["MatMulNBits"]
    y = ort.InferenceSession(str(tmp_path / "q" / "model.onnx")).run(None, {"x": xs[0]})[0]
    rel = np.linalg.norm(y - xs[0] @ W) / np.linalg.norm(xs[0] @ W)
    assert 0 < rel < 0.15  # 4-bit codes: an error, and a small one
