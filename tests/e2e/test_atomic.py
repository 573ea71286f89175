"""Atomic output: an interrupted or failed conversion leaves any previous output as it was and no
temporary files (after a clean exit); what a SIGKILL leaves is removed by the next conversion."""

import errno
import hashlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from modelgen import matmul_model, save

import int4onnx
from int4onnx import io
from int4onnx.errors import OutputError

RNG = np.random.default_rng(9)

# The CLI in a child process, with each weight's quantization slowed down so that a signal surely
# arrives while the output is being written; a marker file says when that has started.
SLOW_CLI = """
import signal
signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal, even if started where SIGINT is ignored
import pathlib, sys, time
from int4onnx.passes import quantize as q
marker = pathlib.Path(sys.argv[1])
original = q.WeightQuantizer.__call__
def slow(self, key):
    marker.touch()
    time.sleep(0.4)
    return original(self, key)
q.WeightQuantizer.__call__ = slow
from int4onnx.cli import main
sys.argv = ["int4onnx"] + sys.argv[2:]
main()
"""


def _model(tmp_path, layers=6):
    return save(matmul_model({f"w{i}": RNG.standard_normal((64, 64)).astype(np.float32) for i in range(layers)}),
                tmp_path / "m.onnx")


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _temporaries(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def _start_slow(tmp_path, src, out):
    marker = tmp_path / "started"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CLI, str(marker), "convert", str(src), "-o", str(out)],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert _temporaries(tmp_path), "the conversion should be writing into its temporary folder"
    return proc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_keeps_previous_output_and_cleans_up(tmp_path, sig):
    src = _model(tmp_path)
    out = tmp_path / "m.int4.onnx"
    int4onnx.quantize(src, out, group_size=64)  # a previous output, different from the next one
    previous = _sha(out)
    proc = _start_slow(tmp_path, src, out)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert f"interrupted ({signal.Signals(sig).name}); nothing was written" in err and "Traceback" not in err
    assert _sha(out) == previous
    assert _temporaries(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.int4.onnx", "m.onnx", "started"]


def test_sigkill_keeps_previous_output_and_next_run_removes_the_leftovers(tmp_path):
    src = _model(tmp_path)
    out = tmp_path / "m.int4.onnx"
    int4onnx.quantize(src, out, group_size=64)
    previous = _sha(out)
    proc = _start_slow(tmp_path, src, out)
    proc.kill()
    proc.communicate(timeout=60)
    assert _sha(out) == previous
    left = _temporaries(tmp_path)
    assert len(left) == 1 and left[0].startswith(".m.int4.onnx.int4onnx-")  # SIGKILL cannot be cleaned up
    int4onnx.quantize(src, out)  # the next conversion to the same output removes it
    assert _temporaries(tmp_path) == [] and _sha(out) != previous


def test_leftovers_of_a_running_conversion_are_kept(tmp_path):
    out = tmp_path / "m.int4.onnx"
    mine = tmp_path / f".m.int4.onnx.int4onnx-{os.getppid()}-abc.tmp"  # the parent process is alive
    dead = tmp_path / ".m.int4.onnx.int4onnx-999999999-abc.tmp"
    mine.mkdir()
    dead.mkdir()
    assert io.remove_stale_temporaries(out) == [dead]
    assert mine.exists() and not dead.exists()


def test_write_failure_keeps_previous_output(tmp_path, monkeypatch):
    src = _model(tmp_path, layers=2)
    out = tmp_path / "m.int4.onnx"
    int4onnx.quantize(src, out)
    previous = _sha(out)

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.ir, "save", disk_full)
    with pytest.raises(OutputError, match="cannot write .*No space left on device"):
        int4onnx.quantize(src, out, group_size=16)
    assert _sha(out) == previous and _temporaries(tmp_path) == []


def test_signal_during_the_renames_is_held_until_they_are_done(tmp_path):
    # Ctrl-C's usual meaning, also where the test runner was started with SIGINT ignored (a background job)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _held_until_done(tmp_path)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert (tmp_path / "done").exists()


def _held_until_done(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with io._signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # a handler that raised would have raised by now
            (tmp_path / "done").touch()


def test_external_data_output_is_atomic_too(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "EXTERNAL_DATA_THRESHOLD", 0)
    src = _model(tmp_path, layers=2)
    out = tmp_path / "m.int4.onnx"
    int4onnx.quantize(src, out)
    assert (tmp_path / "m.int4.onnx.data").exists()
    onnx.checker.check_model(str(out))

    def fail_late(*a, **k):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(io, "_fsync", fail_late)
    before = {p.name: _sha(p) for p in tmp_path.iterdir()}
    with pytest.raises(OutputError):
        int4onnx.quantize(src, out, group_size=16)
    assert {p.name: _sha(p) for p in tmp_path.iterdir()} == before


def test_single_file_output_is_what_onnx_save_writes(tmp_path):
    """The streamed single-file writer produces the canonical protobuf encoding."""
    src = _model(tmp_path, layers=3)
    for fmt in ("int4onnx", "matmulnbits", "qdq"):
        out = tmp_path / f"m.{fmt}.onnx"
        int4onnx.quantize(src, out, format=fmt, symmetric=fmt == "qdq")
        assert out.read_bytes() == onnx.load(str(out)).SerializeToString()


def test_string_initializers_survive(tmp_path):
    """String tensors cannot be external data; a model with a large one is still saved whole."""
    from onnx import TensorProto, helper

    model = matmul_model({"w0": RNG.standard_normal((64, 32)).astype(np.float32)})
    words = [f"token{i}".encode() for i in range(500)]
    model.graph.initializer.append(helper.make_tensor("vocab", TensorProto.STRING, [len(words)], words))
    model.graph.node.append(helper.make_node("Identity", ["vocab"], ["vocab_out"], name="keep"))
    model.graph.output.append(helper.make_tensor_value_info("vocab_out", TensorProto.STRING, [len(words)]))
    src = save(model, tmp_path / "m.onnx")
    int4onnx.quantize(src, tmp_path / "o.onnx")
    out = onnx.load(str(tmp_path / "o.onnx"))
    vocab = next(t for t in out.graph.initializer if t.name == "vocab")
    assert list(vocab.string_data) == words


def test_calibration_copy_lives_next_to_the_output(tmp_path, monkeypatch):
    """Calibration copies an external-data model to disk for ONNX Runtime: that copy goes next to the
    output (not $TMPDIR), named like the output's other temporaries, so a SIGKILL's leftovers are
    removed by the next conversion to that output."""
    model = matmul_model({"w0": RNG.standard_normal((64, 64)).astype(np.float32)})
    onnx.save(model, str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    np.savez(tmp_path / "c.npz", x=RNG.standard_normal((8, 64)).astype(np.float32))
    out = tmp_path / "out" / "o.onnx"
    out.parent.mkdir()
    stale = out.parent / ".o.onnx.int4onnx-999999999-calib-abc.tmp"  # left by a killed conversion
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"x")
    system_tmp = tmp_path / "systemtmp"
    system_tmp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(system_tmp))
    made = []
    original = io.make_temp_dir

    def record(kind=""):
        path = original(kind)
        made.append((kind, path, sorted(p.name for p in path.iterdir())))
        return path

    monkeypatch.setattr(io, "make_temp_dir", record)
    int4onnx.quantize(tmp_path / "m.onnx", out, method="gptq", calibration=str(tmp_path / "c.npz"))
    kinds = [k for k, _, _ in made]
    assert "calib" in kinds
    for _, path, _ in made:
        assert path.parent == out.parent and path.name.startswith(f".o.onnx.int4onnx-{os.getpid()}-")
    assert not stale.exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["o.onnx"] and list(system_tmp.iterdir()) == []
