"""`int4onnx eval`: how closely a converted model follows its reference on real inputs.

For every output, over all samples: cosine similarity of each row (vectors along the last axis:
a token's logits, a sentence embedding) - mean and minimum -, relative error ||y - y_ref|| / ||y_ref||
over all elements, largest absolute difference, and top-1 agreement (the argmax along the last
axis is the same). For causal LMs, perplexity of both models on a text (runtime.perplexity).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from int4onnx.calibrate import FeedSource
from int4onnx.errors import CalibrationError, Int4OnnxError
from int4onnx.lm import LMInterface, session_inputs
from int4onnx.runtime import make_session, perplexity


@dataclasses.dataclass
class OutputAgreement:
    """Streaming comparison of one output."""

    shape: tuple = ()
    rows: int = 0
    cos_sum: float = 0.0
    cos_min: float = 1.0
    top1: int = 0
    ref_sq: float = 0.0
    diff_sq: float = 0.0
    max_abs: float = 0.0

    def update(self, ref: np.ndarray, cand: np.ndarray) -> None:
        if ref.shape != cand.shape:
            raise Int4OnnxError(f"output shapes differ: reference {list(ref.shape)}, candidate {list(cand.shape)}")
        self.shape = tuple(ref.shape)
        last = ref.shape[-1] if ref.ndim else 1
        r = ref.astype(np.float64).reshape(-1, max(last, 1))
        c = cand.astype(np.float64).reshape(-1, max(last, 1))
        nr, nc = np.linalg.norm(r, axis=1), np.linalg.norm(c, axis=1)
        dot = np.sum(r * c, axis=1)
        both_zero = (nr == 0) & (nc == 0)
        cos = np.where(both_zero, 1.0, dot / np.maximum(nr * nc, 1e-300))
        self.rows += r.shape[0]
        self.cos_sum += float(cos.sum())
        self.cos_min = min(self.cos_min, float(cos.min()))
        self.top1 += int(np.sum(np.argmax(r, axis=1) == np.argmax(c, axis=1)))
        d = r - c
        self.ref_sq += float(np.sum(r * r))
        self.diff_sq += float(np.sum(d * d))
        self.max_abs = max(self.max_abs, float(np.abs(d).max()) if d.size else 0.0)

    def result(self) -> dict:
        out = {
            "shape": list(self.shape),
            "rows": self.rows,
            "cosine_mean": self.cos_sum / max(self.rows, 1),
            "cosine_min": self.cos_min,
            "rel_error": float(np.sqrt(self.diff_sq / self.ref_sq)) if self.ref_sq > 0 else float(np.sqrt(self.diff_sq)),
            "max_abs_error": self.max_abs,
        }
        if self.shape and self.shape[-1] > 1:
            out["top1_agreement"] = self.top1 / max(self.rows, 1)
        return out


def compare_outputs(ref_session, cand_session, feeds: list[dict]) -> dict:
    names = [o.name for o in ref_session.get_outputs()]
    cand_names = {o.name for o in cand_session.get_outputs()}
    missing = [n for n in names if n not in cand_names]
    if missing:
        raise Int4OnnxError(f"the candidate has no output '{missing[0]}' (reference outputs: {', '.join(names)})")
    acc = {n: OutputAgreement() for n in names}
    for feed in feeds:
        ys_r = ref_session.run(names, feed)
        ys_c = cand_session.run(names, feed)
        for n, yr, yc in zip(names, ys_r, ys_c, strict=True):
            acc[n].update(np.asarray(yr), np.asarray(yc))
    return {n: a.result() for n, a in acc.items()}


def evaluate(reference, candidate, source: FeedSource | None = None, perplexity_text: str | None = None,
             tokenizer: str | None = None, window: int | None = None, stride: int | None = None, skip_chars: int = 0,
             max_chars: int | None = None, threads: int | None = None) -> dict:
    """Compare two models; returns a JSON-serialisable dict. window=None: 512 tokens, or the
    reference's context length when shorter."""
    if source is None and perplexity_text is None:
        raise CalibrationError("nothing to evaluate on: give --data PATH, --text FILE --tokenizer FILE, "
                               "or --perplexity TEXT --tokenizer FILE")
    ref = make_session(reference, threads=threads)
    cand = make_session(candidate, threads=threads)
    ref_lm = LMInterface.from_session(ref, reference)
    cand_lm = LMInterface.from_session(cand, candidate)
    out: dict = {"reference": str(reference), "candidate": str(candidate)}
    if source is not None:
        feeds = source.feeds(session_inputs(ref), ref_lm)
        ref_lm.settle_feeds(ref, feeds)
        out["samples"] = len(feeds)
        out["data"] = source.describe()
        out["outputs"] = compare_outputs(ref, cand, feeds)
    if perplexity_text is not None:
        if not tokenizer:
            raise CalibrationError("--perplexity needs --tokenizer (a tokenizer.json or sentencepiece .model)")
        ref_lm.require("--perplexity needs a causal LM whose first output is logits [batch, seq, vocab]")
        window = ref_lm.window_length(window, "--window")
        tokens = FeedSource(text=perplexity_text, tokenizer=tokenizer, skip_chars=skip_chars,
                            max_chars=max_chars).tokens()
        if len(tokens) < 2:
            raise CalibrationError(f"{perplexity_text}: fewer than two tokens")
        p_ref, n = perplexity(ref, tokens, window=window, stride=stride, lm=ref_lm, tokenizer=tokenizer)
        p_cand, _ = perplexity(cand, tokens, window=window, stride=stride, lm=cand_lm, tokenizer=tokenizer)
        out["perplexity"] = {"text": str(perplexity_text), "tokens": n, "window": window, "stride": stride or window,
                             "reference": p_ref, "candidate": p_cand}
    return out
