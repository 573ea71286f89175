"""The MatMulInt4 op under random valid and broken graphs (tests/fuzz_op.py, hypothesis), in child
processes so that a crash is caught and reported with the case that caused it.

`make test-sanitize` runs this with the native library built with AddressSanitizer and
UndefinedBehaviorSanitizer; INT4ONNX_FUZZ_EXAMPLES sets the number of cases per seed.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

FUZZ = pathlib.Path(__file__).resolve().parents[1] / "fuzz_op.py"
EXAMPLES = int(os.environ.get("INT4ONNX_FUZZ_EXAMPLES", "500"))
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer")


@pytest.mark.parametrize("seed", [0, 1])
def test_op_never_crashes_on_random_graphs(seed):
    proc = subprocess.run([sys.executable, str(FUZZ), "--examples", str(EXAMPLES), "--seed", str(seed)],
                          capture_output=True, text=True, timeout=1800)
    cases = [line[5:] for line in proc.stdout.splitlines() if line.startswith("CASE ")]
    last = cases[-1] if cases else "(none)"
    crashed = proc.returncode < 0 or any(m in proc.stderr for m in SANITIZER_MARKS)
    if crashed:
        how = signal.Signals(-proc.returncode).name if proc.returncode < 0 else "sanitizer report"
        pytest.fail(f"the op crashed ({how}) on case {last}\nreplay: python {FUZZ} --replay '{last}'\n"
                    + proc.stderr[-4000:])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
    stats = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("SUMMARY "))
    # the fuzzer must exercise both sides: valid graphs checked against numpy, broken ones rejected
    assert stats["valid"] > EXAMPLES // 10 and stats["rejected"] > EXAMPLES // 10, stats
