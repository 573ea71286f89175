"""Where an M = 1 MatMul's time goes in ONNX Runtime's thread pool: per-layer time of a chain of square
layers at one token, for several thread counts, of MatMulNBits accuracy_level 4 and of our op split four ways
(INT4ONNX_MIN_TASK_MACS, read when a session prepares its weights):

  1task    one task, run inline on the calling thread: no pool at all (the single-core cost of the layer)
  2^18     tasks of at least 2^18 multiply-adds
  default  the driver's split (tasks of at least 2^17 multiply-adds: i4o_partition_tasks)
  fine     as fine as the kernel's 16-column tiles allow; on a small layer (K = N = 256: 16 tasks of ~0.1 us)
           this is the pool's own cost per parallel op, next to `1task`

ONNX Runtime's spinning stays on and every sample is the median of --burst back-to-back runs followed by an
untimed 50 ms wait (bench_matmul's --spin), as an application decodes token after token.

  python tools/op_floor.py --threads 1,2,4,8,16 --sizes 256,1024 --layers 16
"""

import argparse
import os
import sys

import bench_matmul as bm  # tools/ (the script's folder; tests/conftest.py puts it on the path)
import numpy as np

from int4onnx.tools.bench import time_alternating

SPLITS = {"1task": 1 << 40, "2^18": 1 << 18, "default": None, "fine": 0}


def measure(size: int, threads: int, layers: int, repeats: int, burst: int) -> dict[str, float]:
    """Median microseconds per layer of each variant at M = 1 on a chain of `layers` size x size layers."""
    weights = bm.make_weights(size, size, layers, seed=1)
    sessions = {"acc4": bm._session(bm.chain_model("nbits_acc4", weights, size, size), threads, True)}
    saved = os.environ.get("INT4ONNX_MIN_TASK_MACS")
    try:
        for name, macs in SPLITS.items():
            if macs is None:
                os.environ.pop("INT4ONNX_MIN_TASK_MACS", None)
            else:
                os.environ["INT4ONNX_MIN_TASK_MACS"] = str(macs)
            sessions[name] = bm._session(bm.chain_model("i4o_int8", weights, size, size), threads, True)
    finally:
        if saved is None:
            os.environ.pop("INT4ONNX_MIN_TASK_MACS", None)
        else:
            os.environ["INT4ONNX_MIN_TASK_MACS"] = saved
    feeds = {"x": np.random.default_rng(0).standard_normal((1, size)).astype(np.float32)}
    runners = {v: bm._settled(lambda s=s: s.run(None, feeds), burst) for v, s in sessions.items()}
    timings = time_alternating(runners, repeats=repeats, warmup=2)
    return {v: timings[v].median * 1e6 / layers for v in sessions}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=bm._ints, default=[1, 2])
    ap.add_argument("--sizes", type=bm._ints, default=[256, 1024], help="K = N of the chain's layers")
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--burst", type=int, default=20, help="back-to-back runs per sample")
    args = ap.parse_args(argv)
    if args.layers < 1 or args.repeats < 1 or args.burst < 1:
        ap.error("--layers, --repeats and --burst must be at least 1")
    print(f"us per layer at M = 1, {args.layers}-layer chains, spinning on, median of {args.repeats} samples of "
          f"{args.burst} runs")
    print("| K = N | threads | " + " | ".join(["acc4", *SPLITS]) + " |")
    print("|---|---|" + "---|" * (len(SPLITS) + 1))
    for size in args.sizes:
        for threads in args.threads:
            us = measure(size, threads, args.layers, args.repeats, args.burst)
            print(f"| {size} | {threads} | " + " | ".join(f"{us[v]:.1f}" for v in ["acc4", *SPLITS]) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
