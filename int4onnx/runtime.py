"""ONNX Runtime helpers shared by eval, bench and the demo (the passes never import this)."""

from __future__ import annotations

import contextlib
import logging
import os

import numpy as np

from int4onnx.errors import ConfigError, ModelLoadError, first_line


def ort_log_severity() -> int:
    """ONNX Runtime's log severity for int4onnx's logging level: 0 (verbose) with debug logging, 2
    (warnings) with info, otherwise 4 (fatal only): its errors reach the caller as exceptions, and its
    coloured multi-line log would repeat them before the CLI's one line."""
    level = logging.getLogger("int4onnx").getEffectiveLevel()
    return 0 if level <= logging.DEBUG else 2 if level <= logging.INFO else 4


def check_op_threads(op_threads: int | None) -> None:
    """The --op-threads range (what ``i4o_set_threads`` takes), as a user error."""
    if op_threads is not None and not 0 <= op_threads <= 256:
        raise ConfigError(f"--op-threads must be 0..256, got {op_threads}")


@contextlib.contextmanager
def own_threads(threads: int):
    """The op's kernels created inside the block run on `threads` threads of the library's own pool (0: ONNX
    Runtime's); the setting before the block comes back after it."""
    from int4onnx import _native

    before = _native.lib.i4o_get_threads()
    if _native.lib.i4o_set_threads(int(threads)) != 0:
        raise ValueError(f"op threads must be 0..256 (got {threads})")
    try:
        yield
    finally:
        _native.lib.i4o_set_threads(before)


def make_session(path, threads: int | None = None, optimization: str = "all", qdq_accuracy_level: int | None = None,
                 config: dict[str, str] | None = None, op_threads: int | None = None):
    """An InferenceSession with int4onnx's custom op registered (harmless for models without it).
    `path` is a model file, or the serialised model as bytes.

    config: extra session configuration entries (``SessionOptions.add_session_config_entry``).
    op_threads: >= 2 runs the op on the library's own spinning threads (``i4o_set_threads``) and every other
    node on one thread (intra_op_num_threads = 1, so the two pools do not spin on the same cores); it
    overrides `threads`. None: the library's setting (``i4o_set_threads`` before, or INT4ONNX_THREADS),
    with the same effect on `threads` when that is >= 2."""
    import onnxruntime as ort

    from int4onnx import _native, library_path

    so = ort.SessionOptions()
    so.register_custom_ops_library(library_path())
    so.log_severity_level = ort_log_severity()
    if (op_threads if op_threads is not None else _native.lib.i4o_get_threads()) >= 2:
        threads = 1
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
        # the kernels read the op's thread count when the session creates them
        with contextlib.nullcontext() if op_threads is None else own_threads(op_threads):
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
            self.config = _read_json_beside(path, "tokenizer_config.json")
            self.eos_ids = self._hf_eos_ids()
        else:
            import sentencepiece as spm

            try:
                self._sp = spm.SentencePieceProcessor(model_file=path)
            except Exception as exc:
                raise ModelLoadError(f"tokenizer {path}: cannot read it as a sentencepiece model ({exc})") from exc
            self._hf = None
            self.bos_id = self._sp.bos_id() if self._sp.bos_id() >= 0 else None
            self.config = {}
            self.eos_ids = {self._sp.eos_id()} if self._sp.eos_id() >= 0 else set()

    def _hf_eos_ids(self) -> set[int]:
        """End-of-sequence ids of a tokenizer.json: tokenizer_config.json's eos_token, and the eos_token_id
        of generation_config.json / config.json / genai_config.json (model.eos_token_id) beside it."""
        ids = set()
        eos = self.config.get("eos_token")
        eos = eos.get("content") if isinstance(eos, dict) else eos
        if isinstance(eos, str) and self._hf.token_to_id(eos) is not None:
            ids.add(self._hf.token_to_id(eos))
        genai = _read_json_beside(self.path, "genai_config.json").get("model")
        for value in [_read_json_beside(self.path, name).get("eos_token_id")
                      for name in ("generation_config.json", "config.json")] + \
                [genai.get("eos_token_id") if isinstance(genai, dict) else None]:
            ids.update(v for v in (value if isinstance(value, list) else [value]) if isinstance(v, int))
        return ids

    def decode(self, ids: list[int]) -> str:
        if self._sp is not None:
            return self._sp.decode(list(ids))
        return self._hf.decode(list(ids), skip_special_tokens=True)

    def encode_prompt(self, text: str) -> list[int]:
        """A generation prompt: BOS and the tokens (sentencepiece), or the tokenizer.json's own special
        tokens (its post-processor adds BOS where the model wants one)."""
        if self._sp is not None:
            return self.encode_document(text)
        return list(self._hf.encode(text, add_special_tokens=True).ids)

    def encode(self, text: str) -> list[int]:
        if self._sp is not None:
            return list(self._sp.encode(text))
        return list(self._hf.encode(text, add_special_tokens=False).ids)

    def encode_document(self, text: str) -> list[int]:
        """`text` as one document, as calibration and perplexity read it: BOS (when the tokenizer has
        one), then its tokens."""
        return ([self.bos_id] if self.bos_id is not None else []) + self.encode(text)


def _read_json_beside(path, name: str) -> dict:
    import json

    p = os.path.join(os.path.dirname(os.path.abspath(path)), name)
    try:
        with open(p, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def perplexity(session, tokens: list[int], window: int | None = None, stride: int | None = None,
               lm=None, tokenizer=None) -> tuple[float, int]:
    """Perplexity of a causal LM over `tokens` (BOS already prepended by the caller).

    stride=None: non-overlapping windows of `window` inputs, each predicting its next tokens.
    stride=s < window: sliding windows that advance by s and score only the last s predictions of
    each window (the first window scores all of them), so every token keeps up to window-s context.
    window=None: 512 tokens, or the model's context length when shorter (said on stderr).
    lm: the model's `int4onnx.lm.LMInterface` (read from the session when not given); KV-cache models
    get each window with an empty (or masked) past, so they score like their no-cache export.
    """
    from int4onnx.lm import LMInterface

    lm = lm or LMInterface.from_session(session)
    lm.require("--perplexity needs a causal LM whose first output is logits [batch, seq, vocab]")
    window = lm.window_length(window, "--window")
    stride = stride or window
    if stride > window:
        raise ConfigError(f"--stride {stride} must not exceed --window {window}")
    lm.check_tokens(tokens, tokenizer)
    lm.probe_empty_past(session)
    nll, count, start, scored_until = 0.0, 0, 0, 0
    while start < len(tokens) - 1:
        chunk = tokens[start:start + window + 1]
        x = np.array([chunk[:-1]], dtype=np.int64)
        try:
            logits = session.run([lm.logits], lm.window_feed(x))[0][0]
        except Exception as exc:
            raise ModelLoadError(f"{lm.where}: ONNX Runtime cannot run it on a {x.shape[1]}-token window: "
                                 f"{first_line(exc)}; try a smaller --window") from exc
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
