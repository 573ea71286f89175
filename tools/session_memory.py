"""Memory a session of the benchmark chain adds to the process: ONNX Runtime keeps the model's
initializers, and MatMulInt4 its prepacked copy of the weights.

    python tools/session_memory.py [--case dram|cache] [--variants i4o_fp32,i4o_int8,nbits_acc4,fp32]

One variant per child process (resident memory is not given back reliably within a process).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import numpy as np


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def _measure(case: str, variant: str) -> None:
    import gc

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_matmul as b

    from int4onnx.runtime import make_session

    K, N, L = b.CASES[case]
    weights = b.make_weights(K, N, L, seed=1)
    model = b.chain_model(variant, weights, K, N).SerializeToString()
    del weights
    gc.collect()
    before = _rss_mb()
    session = make_session(model, threads=1)
    session.run(None, {"x": np.ones((1, K), np.float32)})
    print(f"{variant:12s} model {len(model) / 1e6:7.1f} MB   session adds {_rss_mb() - before:7.1f} MB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default="dram", choices=["dram", "cache"])
    ap.add_argument("--variants", default="fp32,nbits_acc4,i4o_fp32,i4o_int8")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _measure(args.case, args.child)
        return 0
    for v in args.variants.split(","):
        subprocess.run([sys.executable, __file__, "--case", args.case, "--child", v], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
