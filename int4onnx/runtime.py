"""ONNX Runtime helpers shared by eval, bench and the demo (the passes never import this)."""

from __future__ import annotations

import logging
import os

import numpy as np

from int4onnx.errors import ModelLoadError, first_line


def ort_log_severity() -> int:
    """ONNX Runtime's log severity for int4onnx's logging level: 0 (verbose) with debug logging, 2
    (warnings) with info, otherwise 4 (fatal only): its errors reach the caller as exceptions, and its
    coloured multi-line log would repeat them before the CLI's one line."""
    level = logging.getLogger("int4onnx").getEffectiveLevel()
    return 0 if level <= logging.DEBUG else 2 if level <= logging.INFO else 4


def make_session(path, threads: int | None = None, optimization: str = "all", qdq_accuracy_level: int | None = None,
                 config: dict[str, str] | None = None):
    """An InferenceSession with int4onnx's custom op registered (harmless for models without it).
    `path` is a model file, or the serialised model as bytes.

    config: extra session configuration entries (``SessionOptions.add_session_config_entry``)."""
    import onnxruntime as ort

    from int4onnx import library_path

    so = ort.SessionOptions()
    so.register_custom_ops_library(library_path())
    so.log_severity_level = ort_log_severity()
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    so.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    if qdq_accuracy_level is not None:
        # ORT fuses DequantizeLinear+MatMul into MatMulNBits with accuracy level 4 (int8 activations) by default
        so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(qdq_accuracy_level))
    # no busy-waiting pool threads between runs by default: the caller (numpy statistics, the other model)
    # needs the cores. One entry per key: ORT warns when an entry is set twice.
    entries = {"session.intra_op.allow_spinning": "0", **(config or {})}
    for key, value in entries.items():
        so.add_session_config_entry(key, str(value))
    is_bytes = isinstance(path, (bytes, bytearray))
    if not is_bytes and not os.path.isfile(path):
        raise ModelLoadError(f"{path}: no such file")
    try:
        return ort.InferenceSession(path if is_bytes else str(path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = first_line(exc)
        raise ModelLoadError(f"{'the model' if is_bytes else path}: ONNX Runtime cannot load it: {first}") from exc


class Tokenizer:
    """A sentencepiece ``.model`` or a Hugging Face ``tokenizer.json`` behind one interface."""

    def __init__(self, path):
        path = str(path)
        if not os.path.isfile(path):
            raise ModelLoadError(f"tokenizer {path}: no such file")
        self.path = path
        if path.endswith(".json"):
            from tokenizers import Tokenizer as HFTokenizer

            try:
                self._hf = HFTokenizer.from_file(path)
            except Exception as exc:
                raise ModelLoadError(f"tokenizer {path}: cannot read it as tokenizer.json ({exc})") from exc
            self._sp = None
            self.bos_id = None
        else:
            import sentencepiece as spm

            try:
                self._sp = spm.SentencePieceProcessor(model_file=path)
            except Exception as exc:
                raise ModelLoadError(f"tokenizer {path}: cannot read it as a sentencepiece model ({exc})") from exc
            self._hf = None
            self.bos_id = self._sp.bos_id() if self._sp.bos_id() >= 0 else None

    def encode(self, text: str) -> list[int]:
        if self._sp is not None:
            return list(self._sp.encode(text))
        return list(self._hf.encode(text, add_special_tokens=False).ids)

    def encode_document(self, text: str) -> list[int]:
        """`text` as one document, as calibration and perplexity read it: BOS (when the tokenizer has
        one), then its tokens."""
        return ([self.bos_id] if self.bos_id is not None else []) + self.encode(text)


def lm_feeds(session, ids: np.ndarray) -> dict:
    """Feeds for a causal LM: input_ids plus attention_mask / position_ids if the model has them."""
    feeds = {}
    for inp in session.get_inputs():
        name = inp.name
        if name in ("input_ids", "ids", "tokens", "input") or (len(session.get_inputs()) == 1):
            feeds[name] = ids.astype(np.int64)
        elif "mask" in name:
            feeds[name] = np.ones_like(ids, dtype=np.int64)
        elif "position" in name:
            feeds[name] = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64), ids.shape).copy()
        else:
            raise ModelLoadError(f"cannot feed model input '{name}' for perplexity (expected input_ids/attention_mask/position_ids)")
    return feeds


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def perplexity(session, tokens: list[int], window: int = 512, stride: int | None = None) -> tuple[float, int]:
    """Perplexity of a causal LM over `tokens` (BOS already prepended by the caller).

    stride=None: non-overlapping windows of `window` inputs, each predicting its next tokens.
    stride=s < window: sliding windows that advance by s and score only the last s predictions of
    each window (the first window scores all of them), so every token keeps up to window-s context.
    """
    stride = stride or window
    if stride > window:
        raise ValueError("stride must not exceed the window")
    nll, count, start, scored_until = 0.0, 0, 0, 0
    out_name = session.get_outputs()[0].name
    while start < len(tokens) - 1:
        chunk = tokens[start:start + window + 1]
        x = np.array([chunk[:-1]], dtype=np.int64)
        logits = session.run([out_name], lm_feeds(session, x))[0][0]
        lp = log_softmax(logits)
        targets = np.array(chunk[1:])
        first = max(0, scored_until - start)  # predictions already scored by an earlier window
        pos = np.arange(first, len(targets))
        nll -= float(lp[pos, targets[pos]].sum())
        count += len(pos)
        scored_until = start + len(targets)
        if start + window + 1 >= len(tokens):
            break
        start += stride
    return float(np.exp(nll / count)), count
