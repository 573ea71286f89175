"""Causal language models: their interface, read from the model and its folder, and the feeds for it.

The one source of LM feeds for calibration from text, perplexity (eval), bench and generate:

- the token-id input (``input_ids``, ``ids``, ``tokens``, ``idx``, ``input``, or the only integer input),
- ``attention_mask`` and ``position_ids`` when the model has them,
- KV-cache inputs ``past_key_values.{i}.key/value`` (optimum's and ONNX Runtime GenAI's names; also
  ``past.{i}.key``) of shape [batch, kv_heads, past, head_dim], and the ``present.{i}.key/value``
  outputs that match them,
- the logits output (``logits``, else the first output) [batch, seq, vocab], the vocabulary size and
  the context length: ONNX metadata (``context_length``, ``max_position_embeddings``),
  ``genai_config.json`` (``model.context_length``, ``search.max_length``) or ``config.json``
  (``max_position_embeddings``, ``n_positions``, ``n_ctx``) beside the model, else a fixed sequence dimension.

A window of tokens is fed with an empty past (past length 0) when the graph accepts one (probed once
per session), else with a one-token past of zeros that the attention mask hides.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import re

import numpy as np

from int4onnx.errors import ConfigError, UnsupportedModelError, first_line

logger = logging.getLogger(__name__)

TOKEN_NAMES = ("input_ids", "ids", "tokens", "idx", "input")
DEFAULT_LENGTH = 512  # tokens per window when the option is not given (clamped to the context length)
_PAST = re.compile(r"^(?:past_key_values|past_key_value|past)[._](\d+)[._](key|value)$")
_PRESENT = re.compile(r"^(?:present|present_key_values)[._](\d+)[._](key|value)$")
_CONTEXT_KEYS = ("context_length", "max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length")

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
              "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


@dataclasses.dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple  # int for a fixed dimension, None for a symbolic or unknown one; () if rank unknown
    rank_known: bool = True

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape) if self.rank_known else "..."
        return f"{self.dtype.name if self.dtype is not None else '?'}[{dims}]"


def _spec(name, ort_type, shape) -> InputSpec:
    dtype = _ORT_TYPES.get(ort_type)
    dims = tuple(d if isinstance(d, int) and d >= 0 else None for d in (shape or []))
    return InputSpec(name, np.dtype(dtype) if dtype is not None else None, dims, shape is not None)


def session_inputs(session) -> list[InputSpec]:
    """The inputs of an ONNX Runtime session as InputSpecs."""
    return [_spec(i.name, i.type, i.shape) for i in session.get_inputs()]


def is_past_input(name: str) -> bool:
    return _PAST.match(name) is not None


@dataclasses.dataclass
class LMInterface:
    """What a causal LM takes and gives (see the module docstring). `problem` says why the model is not
    one (then the feed builders refuse)."""

    where: str
    inputs: list[InputSpec]
    token: InputSpec | None = None
    mask: InputSpec | None = None
    positions: InputSpec | None = None
    past: list[InputSpec] = dataclasses.field(default_factory=list)
    present: dict[str, str] = dataclasses.field(default_factory=dict)  # past input name -> present output name
    logits: str | None = None
    vocab_size: int | None = None
    context_length: int | None = None
    context_source: str | None = None
    problem: str | None = None
    empty_past: bool | None = None  # does the graph accept a past of length 0? (None: not probed yet)

    # -- reading it -------------------------------------------------------------------------------------

    @classmethod
    def describe(cls, inputs: list[InputSpec], outputs: list[tuple[str, tuple]] = (), path=None,
                 metadata: dict | None = None, where: str | None = None) -> LMInterface:
        """The interface of a model with these inputs and outputs ((name, shape) with None for symbolic
        dimensions); `path` is the model file (its folder may hold config.json / genai_config.json)."""
        self = cls(where=str(where or path or "the model"), inputs=list(inputs))
        ints = [i for i in inputs if i.dtype is not None and i.dtype.kind in "iu"]
        self.token = next((i for i in ints if i.name in TOKEN_NAMES), None)
        if self.token is None and len(inputs) == 1 and ints:
            self.token = ints[0]
        if self.token is None:
            self.problem = ("the model has no integer token-id input (inputs: "
                            + ", ".join(f"{i.name} {i.describe()}" for i in inputs) + ")")
        out_names = [n for n, _ in outputs]
        for spec in inputs:
            if spec is self.token:
                continue
            if "mask" in spec.name and spec.dtype is not None and spec.dtype.kind in "iub":
                self.mask = spec
            elif "position" in spec.name and spec.dtype is not None and spec.dtype.kind in "iu":
                self.positions = spec
            elif is_past_input(spec.name):
                self.past.append(spec)
                layer, kind = _PAST.match(spec.name).groups()
                match = next((o for o in out_names if (m := _PRESENT.match(o)) and m.groups() == (layer, kind)), None)
                if match:
                    self.present[spec.name] = match
            elif self.problem is None:
                self.problem = (f"cannot make model input '{spec.name}' from token ids (known: token ids, "
                                "attention_mask, position_ids, past_key_values.N.key/value)")
        for spec in self.past:
            if self.problem is None and (not spec.rank_known or len(spec.shape) != 4 or spec.shape[1] is None
                                         or spec.shape[3] is None or spec.dtype is None or spec.dtype.kind != "f"):
                self.problem = (f"past input '{spec.name}' is {spec.describe()}; expected float "
                                "[batch, kv_heads, past, head_dim] with fixed kv_heads and head_dim")
            elif self.problem is None and spec.shape[2] is not None:
                self.problem = (f"past input '{spec.name}' has a fixed length {spec.shape[2]} (a shared KV buffer); "
                                "export the model with a dynamic past length")
        shapes = dict(outputs)
        if outputs:
            self.logits = "logits" if "logits" in shapes else out_names[0]
            shape = shapes[self.logits]
            if shape and len(shape) != 3 and self.problem is None:  # () or None: rank unknown
                self.problem = (f"its output '{self.logits}' has rank {len(shape)}; a causal LM gives logits "
                                "[batch, seq, vocab]")
            elif shape and len(shape) == 3 and shape[2] is not None:
                self.vocab_size = int(shape[2])
        self._read_config(path, metadata or {})
        return self

    def _read_config(self, path, metadata: dict) -> None:
        found: list[tuple[int, str]] = []
        for key in _CONTEXT_KEYS:
            if str(metadata.get(key, "")).strip().isdigit():
                found.append((int(metadata[key]), f"the model's metadata '{key}'"))
        folder = pathlib.Path(path).parent if path else None
        cfg = _read_json(folder / "genai_config.json") if folder else None
        if cfg:
            model = cfg.get("model", {}) if isinstance(cfg.get("model"), dict) else {}
            for value, key in ((model.get("context_length"), "model.context_length"),
                               ((cfg.get("search") or {}).get("max_length"), "search.max_length")):
                if isinstance(value, int) and value > 0:
                    found.append((value, f"genai_config.json {key}"))
            if self.vocab_size is None and isinstance(model.get("vocab_size"), int):
                self.vocab_size = model["vocab_size"]
        cfg = _read_json(folder / "config.json") if folder else None
        if cfg:
            for key in _CONTEXT_KEYS[1:]:
                if isinstance(cfg.get(key), int) and cfg[key] > 0:
                    found.append((cfg[key], f"config.json {key}"))
            if self.vocab_size is None and isinstance(cfg.get("vocab_size"), int):
                self.vocab_size = cfg["vocab_size"]
        if self.token is not None and self.token.rank_known and len(self.token.shape) == 2 and self.token.shape[1]:
            found.append((self.token.shape[1], f"the fixed sequence dimension of input '{self.token.name}'"))
        if found:
            self.context_length, self.context_source = found[0]

    @classmethod
    def from_session(cls, session, path=None, where=None) -> LMInterface:
        outputs = [(o.name, None if o.shape is None else
                    tuple(d if isinstance(d, int) and d >= 0 else None for d in o.shape)) for o in session.get_outputs()]
        try:
            metadata = dict(session.get_modelmeta().custom_metadata_map)
        except Exception:  # noqa: BLE001 - metadata is optional
            metadata = {}
        return cls.describe(session_inputs(session), outputs, path if isinstance(path, (str, pathlib.Path)) else None,
                            metadata, where)

    @classmethod
    def from_model(cls, model, path=None, where=None) -> LMInterface:
        """From an onnx_ir Model (before any session exists: calibration)."""
        from int4onnx.calibrate import model_inputs

        outputs = [(v.name, None if v.shape is None else tuple(d if isinstance(d, int) else None for d in v.shape))
                   for v in model.graph.outputs]
        return cls.describe(model_inputs(model), outputs, path, dict(model.metadata_props or {}), where)

    # -- checks -----------------------------------------------------------------------------------------

    def require(self, hint: str = "", error=UnsupportedModelError) -> LMInterface:
        """Raise `error` (one line naming the model and `hint`, what to do) unless this is a causal LM."""
        if self.problem:
            raise error(f"{self.where}: {self.problem}" + (f"; {hint}" if hint else ""))
        return self

    @property
    def is_lm(self) -> bool:
        return self.problem is None

    def window_length(self, value: int | None, option: str, default: int = DEFAULT_LENGTH) -> int:
        """Tokens per window: `value` (an explicit option, an error beyond the context length), or
        `default` clamped to the context length (said on stderr)."""
        ctx = self.context_length
        if value is None:
            if ctx is not None and default > ctx:
                logger.warning("%s: %s defaults to the model's context length, %d tokens (from %s)",
                               self.where, option, ctx, self.context_source)
                return ctx
            return default
        if value < 1:
            raise ConfigError(f"{option} must be at least 1, got {value}")
        if ctx is not None and value > ctx:
            raise ConfigError(f"{option} {value} is longer than the context of {self.where}: {ctx} tokens (from "
                              f"{self.context_source}); give {option} {ctx} or less")
        return value

    def check_tokens(self, ids, tokenizer=None) -> None:
        """Token ids beyond the vocabulary are a one-line error naming the tokenizer."""
        if self.vocab_size is None or len(ids) == 0:
            return
        top = int(np.max(ids))
        if top >= self.vocab_size:
            src = f"tokenizer {tokenizer}" if tokenizer else "the token ids"
            raise ConfigError(f"{src} gives token id {top}, beyond the vocabulary of {self.where} "
                              f"({self.vocab_size} entries); use the model's own tokenizer")

    # -- feeds ------------------------------------------------------------------------------------------

    def window_feed(self, ids: np.ndarray, past: int = 0, empty_past: bool | None = None) -> dict:
        """Feed for token ids [batch, seq] after `past` cached tokens (zeros; bench times decoding with
        them). With past = 0 the KV inputs are empty, or (empty_past False, or the probe said the graph
        refuses that) one zero token hidden by the attention mask."""
        self.require()
        if past and not self.past:
            raise ConfigError(f"{self.where} has no KV-cache inputs to hold {past} past tokens")
        ids = np.asarray(ids)
        b, s = ids.shape
        use_empty = self.empty_past if empty_past is None else empty_past  # None: not probed, try empty
        masked = 1 if self.past and past == 0 and use_empty is False else 0
        if masked:
            if self.mask is None:
                raise UnsupportedModelError(f"{self.where}: the graph refuses an empty past and has no attention_mask "
                                            "to hide a placeholder one")
        total = past + masked
        feed = {self.token.name: ids.astype(self.token.dtype)}
        if self.mask is not None:
            m = np.ones((b, total + s), dtype=self.mask.dtype)
            m[:, :masked] = 0
            feed[self.mask.name] = m
        if self.positions is not None:
            feed[self.positions.name] = np.broadcast_to(np.arange(past, past + s), (b, s)).astype(self.positions.dtype)
        for spec in self.past:
            feed[spec.name] = np.zeros((b, spec.shape[1], total, spec.shape[3]), dtype=spec.dtype)
        return feed

    def next_feed(self, feed: dict, outputs: dict, ids: np.ndarray) -> dict:
        """The feed of the next decoding step: `ids` [batch, n] after the tokens of `feed`, whose run
        gave `outputs` (name -> array, the present.* outputs among them)."""
        ids = np.asarray(ids)
        b, n = ids.shape
        nxt = {self.token.name: ids.astype(self.token.dtype)}
        if self.mask is not None:
            nxt[self.mask.name] = np.concatenate([feed[self.mask.name], np.ones((b, n), self.mask.dtype)], axis=1)
        if self.positions is not None:
            last = feed[self.positions.name][:, -1:]
            nxt[self.positions.name] = (last + 1 + np.arange(n)).astype(self.positions.dtype)
        for spec in self.past:
            nxt[spec.name] = outputs[self.present[spec.name]]
        return nxt

    @property
    def has_cache(self) -> bool:
        return bool(self.past) and len(self.present) == len(self.past)

    def probe_empty_past(self, session) -> bool:
        """Whether the session runs (finite logits) on one token with an empty past; cached."""
        if self.empty_past is None:
            if not self.past:
                self.empty_past = True
            else:
                try:
                    listed = getattr(session, "get_outputs", None)  # calibration's session has no logits
                    has_logits = listed is None or self.logits in {o.name for o in listed()}
                    out = session.run([self.logits] if self.logits and has_logits else None,
                                      self.window_feed(np.zeros((1, 1), np.int64), empty_past=True))[0]
                    self.empty_past = bool(np.isfinite(out).all())
                except Exception as exc:  # noqa: BLE001 - ONNX Runtime refuses the 0-length dimension
                    logger.info("%s refuses an empty past (%s); feeding a masked one", self.where, first_line(exc))
                    self.empty_past = False
        return self.empty_past

    def has_empty_past(self, feed: dict) -> bool:
        return any(spec.name in feed and feed[spec.name].ndim == 4 and feed[spec.name].shape[2] == 0
                   for spec in self.past)

    def mask_empty_past(self, feed: dict) -> dict:
        """`feed` with each empty past replaced by one zero token, hidden by a 0 prepended to the mask."""
        if not self.has_empty_past(feed):
            return feed
        if self.mask is None or self.mask.name not in feed:
            raise UnsupportedModelError(f"{self.where}: the graph refuses an empty past and has no attention_mask "
                                        "to hide a placeholder one")
        out = dict(feed)
        m = feed[self.mask.name]
        out[self.mask.name] = np.concatenate([np.zeros((m.shape[0], 1), m.dtype), m], axis=1)
        for spec in self.past:
            p = feed[spec.name]
            out[spec.name] = np.zeros((p.shape[0], p.shape[1], 1, p.shape[3]), p.dtype)
        return out

    def settle_feeds(self, session, feeds: list[dict]) -> None:
        """Replace (in place) the empty pasts of `feeds` by masked ones when the session refuses them."""
        if self.past and any(self.has_empty_past(f) for f in feeds) and not self.probe_empty_past(session):
            feeds[:] = [self.mask_empty_past(f) for f in feeds]


def _read_json(path: pathlib.Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning("%s: cannot read it (%s); ignored", path, exc)
        return None
    return data if isinstance(data, dict) else None
