"""A model with more than 2 GB of float32 weights in external data converts in bounded memory.

The model is generated into a temporary folder at test time and deleted afterwards. The conversion
runs in a child process (the CLI, as a user runs it); its peak resident set size comes from
wait4's rusage and must stay below 1.5x the size of the output file. The output is then checked
layer by layer against the source weights and run through ONNX Runtime.
"""

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import onnx_ir as ir
import pytest
from modelgen import write_external_data_model

from int4onnx import _native
from int4onnx.runtime import make_session

LAYERS, K, N = 36, 4096, 4096  # 36 x 64 MiB = 2.42 GB of float32 weights


def _run_measured(args, log):
    """Run a child process; returns (exit code, peak RSS in bytes, seconds)."""
    start = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss * 1024, time.perf_counter() - start


@pytest.mark.slow
def test_large_external_data_model_converts_in_bounded_memory(tmp_path):
    work = tmp_path / "large"
    work.mkdir()
    try:
        src = work / "big.onnx"
        weight_bytes = write_external_data_model(src, LAYERS, K, N)
        assert weight_bytes > 2 * 1024**3
        out = work / "big.int4.onnx"
        code, peak, seconds = _run_measured(
            [sys.executable, "-m", "int4onnx.cli", "convert", str(src), "-o", str(out), "--group-size", "32"],
            work / "log.txt")
        log = (work / "log.txt").read_text()
        assert code == 0, log
        out_bytes = out.stat().st_size + (out.with_name(out.name + ".data").stat().st_size
                                          if out.with_name(out.name + ".data").exists() else 0)
        print(f"\nlarge model: {weight_bytes / 1e9:.2f} GB fp32 -> {out_bytes / 1e6:.1f} MB in {seconds:.1f} s, "
              f"peak RSS {peak / 1e6:.1f} MB = {peak / out_bytes:.2f}x the output")
        assert peak < 1.5 * out_bytes, (peak, out_bytes)
        assert sorted(p.name for p in work.iterdir()) == ["big.int4.onnx", "big.onnx", "big.onnx.data", "log.txt"]

        # the output holds every layer; the first and last are close to their source weights
        model = ir.load(str(out))
        nodes = [n for n in model.graph if n.op_type == _native.OP_NAME]
        assert len(nodes) == LAYERS
        source = np.memmap(str(src) + ".data", dtype=np.float32, mode="r", shape=(LAYERS, K, N))
        x = np.random.default_rng(1).standard_normal((2, K)).astype(np.float32)
        h = x
        for i, node in enumerate(nodes):
            a = {k: v.value for k, v in node.attributes.items()}
            packed, scales, zp = (v.const_value.numpy() for v in node.inputs[1:4])
            if i in (0, LAYERS - 1):
                ref = np.asarray(source[i])
                w = _native.dequantize(packed, scales, zp, K, N, a["bits"], a["block_size"])
                rel = np.linalg.norm(w - ref) / np.linalg.norm(ref)
                assert rel < 0.12, (i, rel)
            h = _native.matmul(h, packed, scales, zp, K, N, a["bits"], a["block_size"])
        del model, source

        # and the file runs in ONNX Runtime, giving what the layers read back above give
        y = make_session(str(out)).run(None, {"x": x})[0]
        np.testing.assert_allclose(y, h, rtol=1e-4, atol=1e-4 * np.abs(h).max())
    finally:
        shutil.rmtree(work, ignore_errors=True)
