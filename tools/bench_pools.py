"""Which thread pools for a converted causal LM: the op's own pool or ONNX Runtime's, spinning or not.

    python tools/bench_pools.py model.int4.onnx --threads 16,8,4
    INT4ONNX_SPIN_US=100 python tools/bench_pools.py model.int4.onnx --threads 16

One decoding step (one token after --past cached tokens) and one prefill (--prefill tokens, empty cache)
for each of five sessions of the same model:
  ort_spin           ONNX Runtime's pool for every node, its threads spinning (its own default)
  ort_nospin         the same, spinning off (what `int4onnx bench` uses for side-by-side sessions)
  own_intra1         MatMulInt4 on T threads of int4onnx's own pool, the other nodes on one thread
                     (make_session(..., op_threads=T), `generate --op-threads T`)
  own_intraT_nospin  the own pool beside ONNX Runtime's pool of T threads, which does not spin
  own_intraT_spin    the own pool beside ONNX Runtime's pool of T threads, which spins
Each variant runs in blocks of calls (--block decode / --prefill-block prefill calls), the blocks
cycled --cycles times, 50 ms apart, so no variant's spinning threads run into another's (alternating
single calls would). Prints the median and 90th percentile per variant and its speed-up over ort_spin.
The own pool's spin (INT4ONNX_SPIN_US) is read once, when the first session starts it: set it in the
environment. docs/performance.md ("Which pools, end to end") has runs on the lent 16-core Xeon.
"""

from __future__ import annotations

import argparse
import statistics
import time

from int4onnx.folder import model_path
from int4onnx.lm import LMInterface
from int4onnx.runtime import make_session
from int4onnx.tools.bench import make_feeds

# name: (intra_op_num_threads as a multiple of T (0: one thread), ONNX Runtime spinning, the op's own pool)
VARIANTS = {
    "ort_spin": (1, True, False),
    "ort_nospin": (1, False, False),
    "own_intra1": (0, False, True),
    "own_intraT_nospin": (1, False, True),
    "own_intraT_spin": (1, True, True),
}


def session(path, threads: int, variant: str):
    intra, spin, own = VARIANTS[variant]
    config = {"session.intra_op.allow_spinning": "1" if spin else "0"}
    if not own:
        return make_session(path, threads=threads, config=config, op_threads=0)
    if intra == 0:
        return make_session(path, config=config, op_threads=threads)
    # both pools with T threads: make_session would put the other nodes on one thread, so build it here
    import onnxruntime as ort

    from int4onnx import library_path
    from int4onnx.runtime import own_threads

    so = ort.SessionOptions()
    so.register_custom_ops_library(library_path())
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    for key, value in config.items():
        so.add_session_config_entry(key, value)
    with own_threads(threads):
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def measure(path, threads: int, steps, block: dict[str, int], cycles: int, variants=tuple(VARIANTS)) -> list[dict]:
    """Rows {threads, step, variant, median_ms, p90_ms, speedup} for each (name, seq, past) in `steps`."""
    sessions = {v: session(path, threads, v) for v in variants}
    rows = []
    for name, seq, past in steps:
        feeds = {}
        for v, s in sessions.items():
            feeds[v] = make_feeds(s, seq=seq, past=past, lm=LMInterface.from_session(s, path).require())
            for _ in range(2):
                s.run(None, feeds[v])
        times = {v: [] for v in sessions}
        for _ in range(cycles):
            for v, s in sessions.items():
                time.sleep(0.05)
                for _ in range(block[name]):
                    t0 = time.perf_counter()
                    s.run(None, feeds[v])
                    times[v].append(time.perf_counter() - t0)
        base = statistics.median(times[variants[0]])
        for v, t in times.items():
            t.sort()
            med = statistics.median(t)
            rows.append({"threads": threads, "step": name, "variant": v, "median_ms": med * 1e3,
                         "p90_ms": t[int(0.9 * (len(t) - 1))] * 1e3, "speedup": base / med})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a converted causal LM (.onnx or its folder)")
    ap.add_argument("--threads", default="4", help="comma-separated thread counts T")
    ap.add_argument("--past", type=int, default=128, help="cached tokens before the decoding step")
    ap.add_argument("--prefill", type=int, default=128, help="prompt tokens of the prefill (0: none)")
    ap.add_argument("--block", type=int, default=20, help="decoding steps per block")
    ap.add_argument("--prefill-block", type=int, default=3, help="prefills per block")
    ap.add_argument("--cycles", type=int, default=6, help="rounds of blocks")
    a = ap.parse_args(argv)
    path = model_path(a.model)
    steps = [(f"decode (past {a.past})", 1, a.past)] + ([(f"prefill {a.prefill}", a.prefill, 0)] if a.prefill else [])
    block = {steps[0][0]: a.block, **({steps[1][0]: a.prefill_block} if a.prefill else {})}
    print(f"{path}: median ms (p90) per call, blocks cycled {a.cycles} times; speed-up over ort_spin")
    for t in (int(x) for x in a.threads.split(",")):
        for r in measure(path, t, steps, block, a.cycles):
            print(f"{r['threads']:3d} threads  {r['step']:18s} {r['variant']:18s} {r['median_ms']:9.3f} "
                  f"({r['p90_ms']:9.3f})  {r['speedup']:5.2f}x")


if __name__ == "__main__":
    main()
