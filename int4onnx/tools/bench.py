"""Speed measurement: several ONNX Runtime sessions timed in one process, alternating, medians.

Machines are noisy (other processes, frequency changes), so variants are never timed one after the
other in blocks: every round runs each variant once, in turn, and the statistics are taken per
variant over the rounds. Ratios of medians from the same rounds are what to compare.

Every session has its own intra-op thread pool, and by default ONNX Runtime's pool threads spin for
a while after each run: with several sessions alive, the idle sessions' threads then compete with the
one being timed (measured on 2 cores: fp32 MatMul 2.6x slower with five sessions than alone). The
benchmarks therefore turn spinning off (``session.intra_op.allow_spinning = 0``) for every variant
alike, unless asked to keep it.

Used by ``int4onnx bench`` (whole models) and ``tools/bench_matmul.py`` (MatMul chains).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np

from int4onnx.errors import ConfigError, ModelLoadError, first_line


@dataclasses.dataclass
class Timing:
    """Wall-clock seconds of every timed run of one variant."""

    name: str
    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def p90(self) -> float:
        s = sorted(self.seconds)
        return s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))]


@dataclasses.dataclass(frozen=True)
class SelfTimed:
    """What a runner returns when it timed its own work (e.g. in another process, where the wall
    time of the call would add the round trip): `seconds` replaces the call's wall-clock time."""

    seconds: float


def time_alternating(runners: dict[str, Callable[[], object]], repeats: int = 20, warmup: int = 2,
                     min_seconds: float = 0.0) -> dict[str, Timing]:
    """Call every runner `warmup` times, then `repeats` rounds of one call each, in turn.

    With min_seconds > 0, rounds continue past `repeats` until every variant has run that long in
    total (short kernels get more samples). The order inside a round rotates so no variant always
    runs right after the same neighbour. A runner that returns a `SelfTimed` is credited with its
    seconds instead of the call's wall-clock time.
    """
    if not runners:
        raise ConfigError("nothing to time")
    names = list(runners)
    for _ in range(warmup):
        for name in names:
            runners[name]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    rounds = 0
    while rounds < repeats or (min_seconds and min(sum(s) for s in samples.values()) < min_seconds
                               and rounds < 50 * repeats):
        shift = rounds % len(names)
        for name in names[shift:] + names[:shift]:
            t = time.perf_counter()
            result = runners[name]()
            elapsed = time.perf_counter() - t
            samples[name].append(result.seconds if isinstance(result, SelfTimed) else elapsed)
        rounds += 1
    return {n: Timing(n, samples[n]) for n in names}


# ---- whole models (`int4onnx bench MODEL --vs OTHER`) -------------------------------------------------


_INT_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}
_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def make_feeds(session, batch: int = 1, seq: int = 1, seed: int = 0, vocab: int = 32, past: int = 0,
               lm=None) -> dict[str, np.ndarray]:
    """Inputs for a session. A causal LM (`int4onnx.lm`) gets `seq` random token ids in [0, vocab)
    after `past` cached tokens (zeros; an empty past when 0) with its mask and positions. Other models:
    dynamic dimensions become `batch` (the first) and `seq` (the others); float inputs are standard
    normal, integer inputs are ids in [0, vocab), except names with "mask" (ones) and "position" (0, 1, 2,
    ... along the last axis). Fixed dimensions are kept.
    """
    from int4onnx.lm import LMInterface

    rng = np.random.default_rng(seed)
    lm = lm or LMInterface.from_session(session)
    if lm.is_lm:
        lm.probe_empty_past(session)
        ids = rng.integers(0, min(vocab, lm.vocab_size or vocab), size=(batch, seq))
        return lm.window_feed(ids, past=past)
    if past:
        lm.require("--past is for causal LMs with a KV cache", ConfigError)
    feeds = {}
    for inp in session.get_inputs():
        shape = []
        for i, d in enumerate(inp.shape):
            shape.append(d if isinstance(d, int) and d > 0 else (batch if i == 0 and len(inp.shape) > 1 else seq))
        if inp.type in _FLOAT_TYPES:
            feeds[inp.name] = rng.standard_normal(shape).astype(_FLOAT_TYPES[inp.type])
        elif inp.type in _INT_TYPES:
            dt = _INT_TYPES[inp.type]
            if "mask" in inp.name:
                feeds[inp.name] = np.ones(shape, dtype=dt)
            elif "position" in inp.name:
                feeds[inp.name] = np.broadcast_to(np.arange(shape[-1], dtype=dt), shape).copy() if shape else np.zeros(shape, dt)
            else:
                feeds[inp.name] = rng.integers(0, vocab, size=shape).astype(dt)
        elif inp.type == "tensor(bool)":
            feeds[inp.name] = np.ones(shape, dtype=bool)
        else:
            raise ModelLoadError(f"cannot make a benchmark input for '{inp.name}' of type {inp.type}")
    return feeds


@dataclasses.dataclass
class ModelBench:
    """Result of `bench_models`: one row per (shape, model)."""

    rows: list[dict]
    threads: int
    repeats: int

    def table(self) -> str:
        lines = [f"{'batch':>5} {'seq':>5}  {'model':<40} {'median ms':>10} {'p90 ms':>9} {'speed-up':>9}  output check"]
        for r in self.rows:
            ratio = f"{r['speedup']:.2f}x" if r.get("speedup") is not None else ""
            name = r["model"] if len(r["model"]) <= 40 else "..." + r["model"][-37:]
            lines.append(f"{r['batch']:>5} {r['seq']:>5}  {name:<40} {r['median_ms']:>10.3f} "
                         f"{r['p90_ms']:>9.3f} {ratio:>9}  {r.get('check', '')}")
        return "\n".join(lines)


def _compare(a: np.ndarray, b: np.ndarray) -> str:
    if a.shape != b.shape:
        return f"shapes differ {a.shape} vs {b.shape}"
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    denom = np.linalg.norm(a64) * np.linalg.norm(b64)
    cos = float(a64 @ b64 / denom) if denom > 0 else float("nan")
    rel = float(np.linalg.norm(a64 - b64) / max(np.linalg.norm(b64), 1e-30))
    return f"cosine {cos:.5f}, rel. L2 diff {rel:.2e}"


NO_SPIN = {"session.intra_op.allow_spinning": "0"}
SPIN = {"session.intra_op.allow_spinning": "1"}


def bench_models(paths: Sequence[str], threads: int | None = None, shapes: Sequence[tuple[int, int]] = ((1, 1),),
                 repeats: int = 20, warmup: int = 2, vocab: int = 32, spin: bool = False, past: int = 0,
                 op_threads: int | None = None) -> ModelBench:
    """Time the models at `paths` alternating in one process, for each (batch, seq) in `shapes`.

    The first model is the one under test: every other row gets the first model's speed-up over it
    (its median / the first model's median; above 1 = the first model is faster) and a comparison of
    its first output (causal LMs: the logits) with the first model's. When every model is a causal LM,
    each is fed the same token ids through its own interface (KV-cache and no-cache exports compare).
    op_threads: the first model's MatMulInt4 nodes run on that many threads of int4onnx's own pool and its
    other nodes on one (``make_session``'s op_threads); the other models keep `threads`.
    """
    from int4onnx.lm import LMInterface
    from int4onnx.runtime import check_op_threads, make_session

    if repeats < 1:
        raise ConfigError(f"repeats must be at least 1, got {repeats}")
    threads = threads or os.cpu_count() or 1
    check_op_threads(op_threads)
    sessions = {}
    for i, p in enumerate(paths):
        # --op-threads: the first model on the own pool, the others on ONNX Runtime's (even with INT4ONNX_THREADS set)
        own = {"op_threads": op_threads if i == 0 else 0} if op_threads else {}
        sessions.setdefault(str(p), make_session(str(p), threads=threads, config=SPIN if spin else NO_SPIN, **own))
    lms = {name: LMInterface.from_session(sess, name) for name, sess in sessions.items()}
    all_lm = all(lm.is_lm for lm in lms.values())
    if past < 0:
        raise ConfigError(f"--past must be at least 0, got {past}")
    rows = []
    for batch, seq in shapes:
        first = next(iter(sessions))
        if all_lm:
            for lm in lms.values():
                lm.window_length(seq + past, "--seq" if not past else "--seq plus --past")
            feeds = {n: make_feeds(sessions[n], batch=batch, seq=seq, vocab=vocab, past=past, lm=lms[n]) for n in sessions}
        else:
            feed = make_feeds(sessions[first], batch=batch, seq=seq, vocab=vocab, past=past, lm=lms[first])
            feeds = {n: feed for n in sessions}
        outs = {}
        for name, sess in sessions.items():
            if sorted(i.name for i in sess.get_inputs()) != sorted(feeds[name]):
                raise ModelLoadError(f"{name} has inputs {[i.name for i in sess.get_inputs()]}, "
                                     f"the first model has {sorted(feeds[first])}: they cannot be compared")
            try:
                outs[name] = sess.run([lms[name].logits] if all_lm else None, feeds[name])[0]
            except Exception as exc:
                line = first_line(exc)
                raise ModelLoadError(f"{name}: cannot run it with batch {batch}, seq {seq}: {line}") from exc
        timings = time_alternating({n: (lambda s=s, f=feeds[n]: s.run(None, f)) for n, s in sessions.items()},
                                   repeats=repeats, warmup=warmup)
        base = next(iter(timings.values()))
        ref_out = next(iter(outs.values()))
        for i, (name, t) in enumerate(timings.items()):
            rows.append({"batch": batch, "seq": seq, "model": name, "median_ms": t.median * 1e3,
                         "p90_ms": t.p90 * 1e3, "best_ms": t.best * 1e3,
                         "speedup": None if i == 0 else t.median / base.median,
                         "check": "" if i == 0 else _compare(outs[name], ref_out)})
    return ModelBench(rows, threads, repeats)
