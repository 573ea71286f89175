"""Per-thread timeline of M = 1 MatMulInt4 calls through ONNX Runtime's thread pool (or, with --own, the op's own
threads: make_session's op_threads): where a layer's time goes between ONNX Runtime's executor, our op's entry,
the pool's hand-out of the tasks, the tasks themselves and the join, for several thread counts (the op's trace:
i4o_trace_start / i4o_trace_stop in native/include/int4onnx.h).

A chain of --layers square layers (K = N = --size, the int8 path, block 32) runs --runs times back to back with
ONNX Runtime's spinning on (as an application decodes), after --warmup untraced runs. Per thread count, the
medians over the traced calls, in microseconds:

  period    from one call's entry to the next call's entry (the layer's whole cost; the chain's last layer
            is left out)
  call      the op's compute callback, entry to exit
  pre       entry -> the parallel section starts (ONNX Runtime's inputs and output, our checks; the
            activations are quantised or packed inside the section, by its first tasks)
  first     section start -> its first task starts (on whatever thread)
  last      section start -> its last task starts: how long the pool takes to bring every task to a thread
  task      one task's duration (median; `task max` the longest task of the call)
  join      the last task's end -> the section returns to the op
  gap       one call's exit -> the next call's entry (ONNX Runtime's executor between nodes)
  threads   distinct threads that ran the call's tasks
  busiest   the most tasks one thread ran in the call
  same      the fraction of tasks that ran on the same thread as the same node's same task one run before
            (the weights' slice then stays in that core's caches)

  python tools/op_timeline.py --threads 1,2,4,8,16 --size 1024 --layers 16 [--own]
"""

import argparse
import os
import sys

import bench_matmul as bm  # tools/ (the script's folder; tests/conftest.py puts it on the path)
import numpy as np

RECORD = np.dtype([("t0", "<i8"), ("t1", "<i8"), ("call", "<i4"), ("node", "<i4"), ("section", "<i4"),
                   ("task", "<i4"), ("n_tasks", "<i4"), ("thread", "<i4"), ("cpu", "<i4"), ("pad", "<i4")])
COLUMNS = ["period", "call", "pre", "first", "last", "task", "task max", "join", "gap", "threads", "busiest",
           "same"]


def trace(run, n_runs: int, capacity: int) -> np.ndarray:
    """Records of `n_runs` calls of run() (each running the op's nodes)."""
    from int4onnx._native import ffi, lib

    if lib.i4o_trace_start(capacity) != 0:
        raise MemoryError(f"no memory for a trace of {capacity} records")
    try:
        for _ in range(n_runs):
            run()
    finally:
        buf = ffi.new("i4o_trace_record[]", capacity)
        n = lib.i4o_trace_stop(buf, capacity)
    if n > capacity:
        raise RuntimeError(f"the trace lost {n - capacity} of {n} records: raise the capacity")
    assert RECORD.itemsize == ffi.sizeof("i4o_trace_record")
    return np.frombuffer(ffi.buffer(buf, n * RECORD.itemsize), dtype=RECORD).copy()


def summarize(rec: np.ndarray) -> dict[str, float]:
    """Medians of COLUMNS over the calls of a trace (see the module's docstring)."""
    calls = rec[rec["task"] == -1]
    calls = calls[np.argsort(calls["t0"])]
    by_call: dict[int, list] = {}
    for r in rec[rec["task"] != -1]:
        by_call.setdefault(int(r["call"]), []).append(r)
    rows = {c: [] for c in COLUMNS}
    last_thread: dict[tuple[int, int], int] = {}
    same = total = 0
    for i, c in enumerate(calls):
        recs = by_call.get(int(c["call"]), [])
        sections = [r for r in recs if r["task"] == -2]
        if not sections:
            continue
        sec = max(sections, key=lambda r: r["section"])  # the gemm's section (the last)
        tasks = [r for r in recs if r["task"] >= 0 and r["section"] == sec["section"]]
        if not tasks:
            continue
        starts = np.array([t["t0"] for t in tasks])
        ends = np.array([t["t1"] for t in tasks])
        if i + 1 < len(calls) and calls[i + 1]["t0"] >= c["t1"]:
            nxt = calls[i + 1]
            if nxt["node"] == c["node"] + 1:  # the next layer of the same run
                rows["period"].append(nxt["t0"] - c["t0"])
                rows["gap"].append(nxt["t0"] - c["t1"])
        rows["call"].append(c["t1"] - c["t0"])
        rows["pre"].append(sec["t0"] - c["t0"])
        rows["first"].append(starts.min() - sec["t0"])
        rows["last"].append(starts.max() - sec["t0"])
        rows["task"].append(float(np.median(ends - starts)))
        rows["task max"].append((ends - starts).max())
        rows["join"].append(sec["t1"] - ends.max())
        per_thread = np.unique([int(t["thread"]) for t in tasks], return_counts=True)[1]
        rows["threads"].append(len(per_thread))
        rows["busiest"].append(per_thread.max())
        for t in tasks:
            key = (int(c["node"]), int(t["task"]))
            if key in last_thread:
                total += 1
                same += last_thread[key] == int(t["thread"])
            last_thread[key] = int(t["thread"])
    out = {k: float(np.median(v)) / (1 if k in ("threads", "busiest") else 1e3) if v else float("nan") for k, v in rows.items()
           if k != "same"}
    out["same"] = same / total if total else float("nan")
    return out


def measure(size: int, threads: int, layers: int, runs: int, warmup: int, save: str | None = None,
            own: bool = False) -> dict[str, float]:
    """Summary of `runs` traced runs of the chain on `threads` threads, of ONNX Runtime's pool or (own) of the
    op's own pool (the op's split: INT4ONNX_MIN_TASK_MACS as set in the environment, else the pool's default,
    read when the session prepares its weights)."""
    weights = bm.make_weights(size, size, layers, seed=1)
    session = bm._session(bm.chain_model("i4o_int8", weights, size, size), threads, True, own=own)
    feeds = {"x": np.random.default_rng(0).standard_normal((1, size)).astype(np.float32)}
    for _ in range(warmup):
        session.run(None, feeds)
    # a layer records its call, up to 2 sections and its tasks (at most ~N / 16 of them)
    rec = trace(lambda: session.run(None, feeds), runs, runs * layers * (3 + size // 16 + 1))
    if save:
        np.save(save, rec)
    return summarize(rec)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=bm._ints, default=[1, 2])
    ap.add_argument("--size", type=int, default=1024, help="K = N of the chain's layers")
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--runs", type=int, default=200, help="traced runs of the chain, back to back")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--own", action="store_true", help="run the op on its own threads (make_session's op_threads; "
                    "ONNX Runtime's other nodes on one thread) instead of ONNX Runtime's pool")
    ap.add_argument("--save", metavar="DIR", help="also write each thread count's records to DIR/threads<T>.npy")
    args = ap.parse_args(argv)
    if min(args.size, args.layers, args.runs) < 1 or args.warmup < 0:
        ap.error("--size, --layers and --runs must be at least 1, --warmup at least 0")
    if args.save:
        os.makedirs(args.save, exist_ok=True)
    pool = "the op's own pool" if args.own else "ONNX Runtime's pool"
    print(f"M = 1, {args.layers} x {args.size}^2 (int8 path), {pool}, spinning on, {args.runs} runs back to back; "
          "medians in us (threads and same: count and fraction)")
    print("| threads | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for threads in args.threads:
        save = os.path.join(args.save, f"threads{threads}.npy") if args.save else None
        s = measure(args.size, threads, args.layers, args.runs, args.warmup, save, own=args.own)
        cells = [f"{s[c]:.2f}" if c == "same" else f"{s[c]:.1f}" for c in COLUMNS]
        print(f"| {threads} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
