"""Time one decoding step of several KV-cache models, alternating them in one process.

    python tools/decode_step.py --threads 2 --past 64 --rounds 100 a.onnx b.onnx ...

Every model gets the same feed: one new token after `--past` cached tokens (a random cache, built by
int4onnx.lm's feed builder); the rounds alternate the models' order. Prints the fastest and the median
time of each model and the first model's time divided by each one's (above 1: that model is faster).
On a shared machine the fastest round is the better guide to kernel speed.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from int4onnx.folder import model_path
from int4onnx.lm import LMInterface
from int4onnx.runtime import make_session


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--past", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=100)
    a = ap.parse_args(argv)
    paths = [model_path(m) for m in a.models]
    sessions = [make_session(p, threads=a.threads) for p in paths]
    lm = LMInterface.from_session(sessions[0], paths[0]).require()
    feed = lm.window_feed(np.array([[1]]), past=a.past)
    rng = np.random.default_rng(0)
    for spec in lm.past:
        feed[spec.name] = rng.standard_normal(feed[spec.name].shape).astype(spec.dtype)
    for s in sessions:
        for _ in range(3):
            s.run([lm.logits], feed)
    times = [[] for _ in sessions]
    for r in range(a.rounds):
        order = range(len(sessions)) if r % 2 == 0 else reversed(range(len(sessions)))
        for i in order:
            start = time.perf_counter()
            sessions[i].run([lm.logits], feed)
            times[i].append(time.perf_counter() - start)
    t = [np.array(x) * 1e3 for x in times]
    for path, x in zip(paths, t, strict=True):
        print(f"{str(path):40s} fastest {x.min():7.2f} ms (x{t[0].min() / x.min():.2f})  "
              f"median {np.median(x):7.2f} ms (x{np.median(t[0]) / np.median(x):.2f})")


if __name__ == "__main__":
    main()
