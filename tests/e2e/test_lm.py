"""Causal LMs: the interface read from the model (int4onnx.lm), context lengths and their errors, and
`int4onnx generate` (no-cache models here; KV-cache exports in test_lm_kv.py)."""

import json
import logging

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from modelgen import char_tokenizer, matmul_model, save, tiny_lm

from int4onnx.cli import main
from int4onnx.errors import UnsupportedModelError
from int4onnx.lm import LMInterface
from int4onnx.runtime import make_session
from int4onnx.tools import generate as gen

ALPHABET = "abcdefghijklmnopqrstuvwxyz .,\n"
V = 40
TEXT = "the quick brown fox jumps over the lazy dog.\n" * 30


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(r, needle):
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("int4onnx: error:") and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output


@pytest.fixture()
def lm(tmp_path):
    """tiny_lm with its char tokenizer beside it (as generate finds it) and a text."""
    path = save(tiny_lm(V=V), tmp_path / "lm.onnx")
    tok = char_tokenizer(tmp_path / "lm.tokenizer.json", ALPHABET)
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    return path, tok, text


def with_context(src, dst, n):
    m = onnx.load(str(src))
    onnx.helper.set_model_props(m, {"context_length": str(n)})
    return save(m, dst)


# -- the interface --------------------------------------------------------------------------------

def test_interface_of_a_no_cache_lm_and_context_sources(tmp_path, lm):
    path, _, _ = lm
    it = LMInterface.from_session(make_session(path), path)
    assert it.is_lm and it.token.name == "input_ids" and it.logits == "logits" and it.vocab_size == V
    assert it.mask is None and it.positions is None and not it.past and it.context_length is None
    # config.json beside the model, then genai_config.json (read first), then the ONNX metadata (first of all)
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 96, "vocab_size": V}))
    it = LMInterface.from_session(make_session(path), path)
    assert (it.context_length, it.context_source) == (96, "config.json max_position_embeddings")
    (tmp_path / "genai_config.json").write_text(json.dumps({"model": {"context_length": 80}, "search": {"max_length": 70}}))
    assert LMInterface.from_session(make_session(path), path).context_length == 80
    meta = with_context(path, tmp_path / "m.onnx", 64)
    assert LMInterface.from_session(make_session(meta), meta).context_length == 64
    # a fixed sequence dimension
    m = onnx.load(path)
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 48
    (tmp_path / "sub").mkdir()
    fixed = save(m, tmp_path / "sub" / "fixed.onnx")
    it = LMInterface.from_session(make_session(fixed), fixed)
    assert it.context_length == 48 and "fixed sequence dimension" in it.context_source


def test_not_a_language_model(tmp_path, lm):
    _, tok, text = lm
    chain = save(matmul_model({"w": np.ones((8, 4), np.float32)}), tmp_path / "chain.onnx")
    it = LMInterface.from_session(make_session(chain), chain)
    assert not it.is_lm and "no integer token-id input" in it.problem
    r = invoke("eval", chain, chain, "--perplexity", text, "--tokenizer", tok)
    one_line_error(r, "chain.onnx: the model has no integer token-id input")
    r = invoke("generate", chain, "--prompt", "the", "--tokenizer", tok)
    one_line_error(r, "no integer token-id input")


# -- context length: defaults clamped, explicit values beyond it refused ---------------------------

def test_default_windows_clamped_to_the_context(tmp_path, lm, caplog):
    path, tok, text = lm
    ctx = with_context(path, tmp_path / "ctx.onnx", 40)
    with caplog.at_level(logging.WARNING, logger="int4onnx.lm"):
        r = invoke("eval", ctx, ctx, "--perplexity", text, "--tokenizer", tok, "--json")
    assert r.exit_code == 0, r.output
    p = json.loads(r.stdout)["perplexity"]
    assert p["window"] == 40 and p["reference"] == p["candidate"]
    assert "--window defaults to the model's context length, 40 tokens" in caplog.text
    # the same windows given explicitly: the same perplexity
    r = invoke("eval", ctx, ctx, "--perplexity", text, "--tokenizer", tok, "--json", "--window", 40)
    assert json.loads(r.stdout)["perplexity"]["reference"] == p["reference"]
    out = tmp_path / "q.onnx"
    r = invoke("convert", ctx, "-o", out, "--method", "gptq", "--calibration-text", text, "--tokenizer", tok,
               "--calibration-samples", 3, "--lm-head", "4")
    assert r.exit_code == 0, r.output
    assert "3 sample(s) from 3 x 40 tokens" in r.output
    r = invoke("bench", ctx, "--seq", "1,40", "--repeats", 1, "--vocab", V)
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("command,option", [
    ("eval", "--window"), ("eval-text", "--sequence-length"), ("convert", "--sequence-length"), ("bench", "--seq")])
def test_explicit_length_beyond_the_context_is_an_error(tmp_path, lm, command, option):
    path, tok, text = lm
    ctx = with_context(path, tmp_path / "ctx.onnx", 40)
    args = {"eval": ["eval", ctx, ctx, "--perplexity", text, "--tokenizer", tok, "--window", 41],
            "eval-text": ["eval", ctx, ctx, "--text", text, "--tokenizer", tok, "--sequence-length", 41],
            "convert": ["convert", ctx, "-o", tmp_path / "o.onnx", "--method", "gptq", "--calibration-text", text,
                        "--tokenizer", tok, "--sequence-length", 41],
            "bench": ["bench", ctx, "--seq", "1,41"]}[command]
    one_line_error(invoke(*args), f"{option} 41 is longer than the context of ")
    assert not (tmp_path / "o.onnx").exists()


def test_token_ids_beyond_the_vocabulary(tmp_path, lm):
    path, _, text = lm
    big = char_tokenizer(tmp_path / "big.json", "".join(chr(c) for c in range(0x100, 0x100 + V)) + ALPHABET)
    r = invoke("eval", path, path, "--perplexity", text, "--tokenizer", big)
    one_line_error(r, f"tokenizer {big} gives token id {V + max(map(ALPHABET.index, TEXT))}, beyond the vocabulary of")
    r = invoke("convert", path, "-o", tmp_path / "o.onnx", "--method", "gptq", "--calibration-text", text,
               "--tokenizer", big)
    one_line_error(r, "use the model's own tokenizer")
    r = invoke("generate", path, "--prompt", "the", "--tokenizer", big)
    one_line_error(r, "beyond the vocabulary")


def test_tinygpt_char_converts_and_evaluates_with_default_options(tmp_path, shared_data):
    import tinygpt

    model, tok = tinygpt.export(tmp_path / "tinygpt_char.onnx")
    r = invoke("convert", model, "-o", tmp_path / "q.onnx")
    assert r.exit_code == 0, r.output
    r = invoke("convert", model, "-o", tmp_path / "g.onnx", "--method", "gptq", "--calibration-text",
               tinygpt.SHAKESPEARE, "--tokenizer", tok, "--calibration-samples", 2)
    assert r.exit_code == 0 and "2 x 128 tokens" in r.output, r.output
    r = invoke("eval", model, tmp_path / "q.onnx", "--perplexity", tinygpt.SHAKESPEARE, "--tokenizer", tok,
               "--max-chars", 3000, "--json")
    assert r.exit_code == 0, r.output
    p = json.loads(r.stdout)["perplexity"]
    assert p["window"] == 128 and p["reference"] < p["candidate"] < 1.2 * p["reference"]
    r = invoke("eval", model, tmp_path / "q.onnx", "--text", tinygpt.SHAKESPEARE, "--tokenizer", tok, "--samples", 2)
    assert r.exit_code == 0, r.output
    r = invoke("generate", tmp_path / "q.onnx", "--prompt", "ROMEO:", "--tokenizer", tok, "--max-new-tokens", 200)
    assert r.exit_code == 0 and "(context)" in r.stderr, r.output  # 6 + 122 tokens fill the 128-token context


# -- generate -------------------------------------------------------------------------------------

def greedy_reference(path, ids, n):
    """Greedy continuation computed by running the whole sequence in ONNX Runtime each step."""
    sess = make_session(str(path))
    ids = list(ids)
    for _ in range(n):
        logits = sess.run(None, {"input_ids": np.array([ids], np.int64)})[0]
        ids.append(int(np.argmax(logits[0, -1])))
    return ids


def test_generate_greedy_and_cli(tmp_path, lm):
    path, tok, _ = lm
    res = gen.generate(path, "the quick", max_new_tokens=12)  # tokenizer found beside the model
    prompt = [ALPHABET.index(c) for c in "the quick"]
    assert res.prompt_tokens == prompt and not res.kv_cache and res.stopped == "max_new_tokens"
    assert prompt + res.tokens == greedy_reference(path, prompt, 12)
    assert res.text == "".join(ALPHABET[i] for i in res.tokens)
    assert res.time_to_first_token_s > 0 and res.prefill_tokens_per_s > 0 and res.decode_tokens_per_s > 0
    r = invoke("generate", path, "--prompt", "the quick", "--max-new-tokens", 12)
    assert r.exit_code == 0, r.output
    assert r.stdout == res.text + "\n"
    assert "prompt 9 tokens, 12 new (max_new_tokens); time to first token" in r.stderr and "decode" in r.stderr


def test_generate_sampling(lm):
    path, _, _ = lm
    a = gen.generate(path, "the", max_new_tokens=20, temperature=1.0, seed=3)
    b = gen.generate(path, "the", max_new_tokens=20, temperature=1.0, seed=3)
    greedy = gen.generate(path, "the", max_new_tokens=20)
    assert a.tokens == b.tokens
    assert gen.generate(path, "the", max_new_tokens=20, temperature=1.0, top_k=1, seed=5).tokens == greedy.tokens
    assert gen.generate(path, "the", max_new_tokens=20, temperature=0.7, top_p=1e-9, seed=5).tokens == greedy.tokens


def test_pick_token_distribution():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    rng = np.random.default_rng(0)
    draws = np.bincount([gen.pick_token(logits, 1.0, 0, 1.0, rng) for _ in range(4000)], minlength=4) / 4000
    np.testing.assert_allclose(draws, [0.5, 0.3, 0.15, 0.05], atol=0.03)
    draws = {gen.pick_token(logits, 1.0, 2, 1.0, rng) for _ in range(300)}
    assert draws == {0, 1}
    draws = np.bincount([gen.pick_token(logits, 1.0, 0, 0.75, rng) for _ in range(3000)], minlength=4) / 3000
    np.testing.assert_allclose(draws, [0.5 / 0.8, 0.3 / 0.8, 0, 0], atol=0.03)  # 0.5 + 0.3 reaches 0.75


def test_generate_stops_at_eos_and_errors(tmp_path, lm):
    path, tok, _ = lm
    greedy = gen.generate(path, "the", max_new_tokens=20).tokens
    eos = ALPHABET[greedy[3]]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": eos}))
    res = gen.generate(path, "the", max_new_tokens=20)
    assert res.stopped == "eos" and res.tokens == greedy[:greedy.index(greedy[3])]
    one_line_error(invoke("generate", path, "--prompt", "the", "--chat"), "no chat_template")
    one_line_error(invoke("generate", path, "--prompt", "the", "--max-new-tokens", 0), "--max-new-tokens must be at least 1")
    alone = tmp_path / "alone"
    alone.mkdir()
    bare = save(tiny_lm(V=V), alone / "m.onnx")
    one_line_error(invoke("generate", bare, "--prompt", "the"), "no tokenizer beside it")
    ctx = with_context(path, tmp_path / "ctx.onnx", 5)
    one_line_error(invoke("generate", ctx, "--prompt", "the quick"), "the prompt has 9 tokens, the context of")


class _FakeTokenizer:
    path = "tok.json"

    def __init__(self, config):
        self.config = config


def test_chat_template():
    chatml = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
              "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    text = gen.chat_prompt(_FakeTokenizer({"chat_template": chatml}), "hi there")
    assert text == "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n"
    system = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
              "{{ '<|im_start|>system\nYou are terse.<|im_end|>\n' }}{% endif %}" + chatml[len("{% for message in messages %}"):])
    text = gen.chat_prompt(_FakeTokenizer({"chat_template": system}), "hi there")
    assert text == "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n"
    other = "{{ bos_token }}[INST] {{ messages[0]['content'] }} [/INST]"
    try:
        import jinja2  # noqa: F401
    except ImportError:
        with pytest.raises(gen.ConfigError, match="needs jinja2"):
            gen.chat_prompt(_FakeTokenizer({"chat_template": other}), "hi")
    else:
        assert gen.chat_prompt(_FakeTokenizer({"chat_template": other, "bos_token": "<s>"}), "hi") == "<s>[INST] hi [/INST]"


class _RefusesEmptyPast:
    """A session stand-in that fails like ONNX Runtime on a 0-length past and records what it ran."""

    def __init__(self):
        self.runs = []

    def run(self, names, feed):
        self.runs.append(feed)
        if feed["past_key_values.0.key"].shape[2] == 0:
            raise RuntimeError("[ONNXRuntimeError] : Reshape: 0-sized dimension")
        return [np.zeros((1, feed["input_ids"].shape[1], V), np.float32)]


def test_masked_past_where_the_graph_refuses_an_empty_one():
    from int4onnx.lm import InputSpec

    i64 = np.dtype(np.int64)
    inputs = [InputSpec("input_ids", i64, (None, None)), InputSpec("attention_mask", i64, (None, None)),
              InputSpec("position_ids", i64, (None, None))]
    inputs += [InputSpec(f"past_key_values.0.{k}", np.dtype(np.float32), (None, 2, None, 8)) for k in ("key", "value")]
    outputs = [("logits", (None, None, V)), ("present.0.key", None), ("present.0.value", None)]
    lm = LMInterface.describe(inputs, outputs)
    assert lm.has_cache and lm.vocab_size == V
    ids = np.array([[3, 4, 5]])
    feed = lm.window_feed(ids)
    assert feed["past_key_values.0.value"].shape == (1, 2, 0, 8) and feed["attention_mask"].tolist() == [[1, 1, 1]]
    feeds = [feed, lm.window_feed(ids + 1)]
    sess = _RefusesEmptyPast()
    lm.settle_feeds(sess, feeds)
    assert lm.empty_past is False and len(sess.runs) == 1
    for f, x in zip(feeds, (ids, ids + 1), strict=True):
        assert f["past_key_values.0.key"].shape == (1, 2, 1, 8) and not f["past_key_values.0.key"].any()
        assert f["attention_mask"].tolist() == [[0, 1, 1, 1]] and f["position_ids"].tolist() == [[0, 1, 2]]
        assert (f["input_ids"] == x).all()
    # later windows are built masked at once; the next step extends the mask and the positions
    f = lm.window_feed(ids)
    assert f["attention_mask"].tolist() == [[0, 1, 1, 1]] and f["past_key_values.0.key"].shape[2] == 1
    present = {"present.0.key": np.ones((1, 2, 4, 8), np.float32), "present.0.value": np.ones((1, 2, 4, 8), np.float32)}
    nxt = lm.next_feed(f, present, np.array([[7]]))
    assert nxt["attention_mask"].tolist() == [[0, 1, 1, 1, 1]] and nxt["position_ids"].tolist() == [[3]]
    assert nxt["past_key_values.0.key"] is present["present.0.key"]
    # bench: zeros for 5 cached tokens, positions after them
    f = lm.window_feed(ids, past=5)
    assert f["past_key_values.0.key"].shape == (1, 2, 5, 8) and f["attention_mask"].shape == (1, 8)
    assert f["position_ids"].tolist() == [[5, 6, 7]]
    no_mask = LMInterface.describe([i for i in inputs if i.name != "attention_mask"], outputs)
    with pytest.raises(UnsupportedModelError, match="refuses an empty past and has no attention_mask"):
        no_mask.settle_feeds(_RefusesEmptyPast(), [no_mask.window_feed(ids)])
