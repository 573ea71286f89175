"""Text generation with a causal LM in ONNX Runtime (`int4onnx generate`), int4onnx's op registered.

The prompt runs once (prefill); each new token then runs alone against the KV cache (the present.*
outputs fed back as past_key_values.*) when the model has one, else the whole sequence runs again.
Greedy by default; temperature / top-k / top-p sampling with a seeded generator. Stops at the
tokenizer's end-of-sequence token, after `max_new_tokens`, or at the model's context length.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import time

import numpy as np

from int4onnx.errors import ConfigError, ModelLoadError, first_line

CHATML_START = "<|im_start|>"


@dataclasses.dataclass
class Generation:
    """What `generate` returns: the new text and tokens, and how fast they came."""

    text: str
    prompt_tokens: list[int]
    tokens: list[int]                 # the new tokens (no end-of-sequence token)
    time_to_first_token_s: float      # prefill and the choice of the first new token
    prefill_tokens_per_s: float       # prompt tokens / prefill time
    decode_tokens_per_s: float | None  # tokens after the first / their time (None: no decoding step ran)
    stopped: str                      # "eos", "max_new_tokens" or "context"
    kv_cache: bool

    def speed_line(self) -> str:
        decode = (f"decode {self.decode_tokens_per_s:.1f} tokens/s" if self.decode_tokens_per_s is not None
                  else "no decoding step")
        return (f"prompt {len(self.prompt_tokens)} tokens, {len(self.tokens)} new ({self.stopped}); "
                f"time to first token {1e3 * self.time_to_first_token_s:.1f} ms, "
                f"prefill {self.prefill_tokens_per_s:.1f} tokens/s, {decode}"
                f"{'' if self.kv_cache else ' (no KV cache: the whole sequence runs each step)'}")


def find_tokenizer(model) -> pathlib.Path:
    """The tokenizer beside `model`: <stem>.tokenizer.json, tokenizer.json, tokenizer.model, <stem>.model,
    else the only *tokenizer.json or *.model of its folder."""
    model = pathlib.Path(model)
    folder, stem = model.parent, model.name[:-5] if model.name.endswith(".onnx") else model.name
    names = [f"{stem}.tokenizer.json", "tokenizer.json", "tokenizer.model", f"{stem}.model"]
    for name in names:
        if (folder / name).is_file():
            return folder / name
    for pattern in ("*tokenizer.json", "*.model"):
        found = sorted(p for p in folder.glob(pattern) if p.is_file())
        if len(found) == 1:
            return found[0]
    raise ConfigError(f"{model}: no tokenizer beside it (looked for {', '.join(names)} in {folder}); give --tokenizer")


def chat_prompt(tokenizer, prompt: str) -> str:
    """`prompt` as the user's message in the chat template of tokenizer_config.json (beside the tokenizer).

    Rendered with jinja2 when it is installed; without it, ChatML templates (<|im_start|>role ...
    <|im_end|>) are written directly: a default system message that the template spells out
    literally, then the user message; other templates need jinja2."""
    template = tokenizer.config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if not isinstance(template, str) or not template:
        raise ConfigError(f"tokenizer {tokenizer.path}: no chat_template in the tokenizer_config.json beside it; "
                          "leave out --chat")

    def special(key):
        v = tokenizer.config.get(key)
        return (v.get("content") if isinstance(v, dict) else v) or ""

    messages = [{"role": "user", "content": prompt}]
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        if CHATML_START in template:
            # a default system message written literally in the template (SmolLM2's) is kept
            system = re.search(r"'(<\|im_start\|>system(?:\n|\\n).*?<\|im_end\|>(?:\n|\\n))'", template, re.S)
            system = system.group(1).replace("\\n", "\n") if system else ""
            return f"{system}{CHATML_START}user\n{prompt}<|im_end|>\n{CHATML_START}assistant\n"
        raise ConfigError(f"tokenizer {tokenizer.path}: rendering its chat template needs jinja2 "
                          "(pip install jinja2)") from None

    def raise_exception(message):
        raise ConfigError(f"tokenizer {tokenizer.path}: chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=True,
                                                bos_token=special("bos_token"), eos_token=special("eos_token"))
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"tokenizer {tokenizer.path}: cannot render its chat template: {first_line(exc)}") from None


def pick_token(logits: np.ndarray, temperature: float, top_k: int, top_p: float, rng) -> int:
    """The next token: argmax for temperature 0, else a sample of softmax(logits / temperature) restricted
    to the top_k most likely (0: all) and to the smallest set whose probability reaches top_p."""
    if temperature <= 0:
        return int(np.argmax(logits))
    x = logits.astype(np.float64) / temperature
    if 0 < top_k < len(x):
        x[x < np.partition(x, -top_k)[-top_k]] = -np.inf
    p = np.exp(x - x.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        before = np.cumsum(p[order]) - p[order]  # probability of the more likely tokens
        p[order[before >= top_p]] = 0.0
        p /= p.sum()
    return int(rng.choice(len(p), p=p))


def generate(model, prompt: str, tokenizer=None, max_new_tokens: int = 64, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, chat: bool = False, threads: int | None = None, seed: int = 0,
             op_threads: int | None = None) -> Generation:
    """Continue `prompt` with the causal LM at `model`, an .onnx file or a model folder (see the module
    docstring). `tokenizer`: a tokenizer.json or sentencepiece .model (default: found beside the model).

    The session is the only work of the process, so ONNX Runtime's threads spin between nodes (its own
    default; ``make_session`` turns spinning off for side-by-side sessions). op_threads >= 2: the MatMulInt4
    nodes on that many threads of int4onnx's own pool and the other nodes on one (``make_session``), faster
    decoding and slower prefill (docs/performance.md, "Which pools, end to end")."""
    from int4onnx.folder import model_path
    from int4onnx.lm import LMInterface
    from int4onnx.runtime import Tokenizer, check_op_threads, make_session

    model = model_path(model)  # a model folder: the model inside
    if max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
        raise ConfigError("--temperature and --top-k must be at least 0, --top-p in (0, 1]")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    check_op_threads(op_threads)
    tok = Tokenizer(tokenizer or find_tokenizer(model))
    session = make_session(model, threads=threads, config={"session.intra_op.allow_spinning": "1"},
                           op_threads=op_threads)
    lm = LMInterface.from_session(session, model).require("generate needs a causal LM whose first output is logits "
                                                           "[batch, seq, vocab]")
    ids = tok.encode(chat_prompt(tok, prompt)) if chat else tok.encode_prompt(prompt)
    if not ids:
        raise ConfigError("the prompt gives no tokens; give a non-empty --prompt")
    lm.check_tokens(ids, tok.path)
    ctx = lm.context_length
    if ctx is not None and len(ids) >= ctx:
        raise ConfigError(f"the prompt has {len(ids)} tokens, the context of {lm.where} is {ctx} "
                          f"(from {lm.context_source}); shorten the prompt")
    cache = lm.has_cache
    names = [lm.logits] + ([lm.present[p.name] for p in lm.past] if cache else [])
    lm.probe_empty_past(session)
    rng = np.random.default_rng(seed)

    def run(feed):
        try:
            return dict(zip(names, session.run(names, feed), strict=True))
        except Exception as exc:
            raise ModelLoadError(f"{lm.where}: ONNX Runtime cannot run it: {first_line(exc)}") from exc

    t0 = time.perf_counter()
    feed = lm.window_feed(np.array([ids], dtype=np.int64))
    outs = run(feed)
    nxt = pick_token(outs[lm.logits][0, -1], temperature, top_k, top_p, rng)
    t_first = time.perf_counter()
    new: list[int] = []
    steps = 0
    while True:
        if nxt in tok.eos_ids:
            stopped = "eos"
            break
        new.append(nxt)
        if len(new) >= max_new_tokens:
            stopped = "max_new_tokens"
            break
        if ctx is not None and len(ids) + len(new) >= ctx:
            stopped = "context"
            break
        if cache:
            feed = lm.next_feed(feed, outs, np.array([[nxt]], dtype=np.int64))
        else:
            feed = lm.window_feed(np.array([ids + new], dtype=np.int64))
        outs = run(feed)
        nxt = pick_token(outs[lm.logits][0, -1], temperature, top_k, top_p, rng)
        steps += 1
    t_end = time.perf_counter()
    return Generation(text=tok.decode(new), prompt_tokens=list(ids), tokens=new,
                      time_to_first_token_s=t_first - t0, prefill_tokens_per_s=len(ids) / max(t_first - t0, 1e-9),
                      decode_tokens_per_s=steps / (t_end - t_first) if steps else None, stopped=stopped, kv_cache=cache)
