"""KV-cache decoders through int4onnx.lm: calibration from text and from .npz with an empty past,
`eval --perplexity`, `bench` and `generate`, on ONNX Runtime GenAI's interface (GroupQueryAttention with
fused rotary, tests/modelgen.gqa_lm)."""

import json
import logging
import pathlib
import shutil

import numpy as np
import onnx_ir as ir
import pytest
from click.testing import CliRunner
from modelgen import char_tokenizer, gqa_lm, save

from int4onnx import calibrate
from int4onnx.cli import main
from int4onnx.config import QuantConfig
from int4onnx.lm import LMInterface
from int4onnx.passes.select import select_matmuls
from int4onnx.runtime import log_softmax, make_session
from int4onnx.tools import generate as gen

ALPHABET = "abcdefghijklmnopqrstuvwxyz .,\n"
V, CONTEXT, LAYERS, KV_HEADS, HEAD = len(ALPHABET), 64, 2, 2, 16
TEXT = "the quick brown fox jumps over the lazy dog.\n" * 12


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture()
def genai(tmp_path):
    """A GenAI-style model folder: model.onnx, genai_config.json (context length), tokenizer.json; a text."""
    folder = tmp_path / "genai"
    folder.mkdir()
    path = save(gqa_lm(V=V, layers=LAYERS, kv_heads=KV_HEADS, context=CONTEXT), folder / "model.onnx")
    (folder / "genai_config.json").write_text(json.dumps({"model": {"context_length": CONTEXT, "vocab_size": V},
                                                          "search": {"max_length": CONTEXT}}))
    tok = char_tokenizer(folder / "tokenizer.json", ALPHABET)
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    return path, tok, text


def ids_of(text):
    return [ALPHABET.index(c) for c in text]


def hand_feed(ids):
    """A window with an empty past, written out by hand (independent of int4onnx.lm)."""
    ids = np.asarray(ids, np.int64).reshape(1, -1)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    for i in range(LAYERS):
        for kind in ("key", "value"):
            feed[f"past_key_values.{i}.{kind}"] = np.zeros((1, KV_HEADS, 0, HEAD), np.float32)
    return feed


def hand_perplexity(path, ids, window):
    sess = make_session(str(path))
    nll, n = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start:start + window + 1]
        lp = log_softmax(sess.run(["logits"], hand_feed(chunk[:-1]))[0][0])
        nll -= lp[np.arange(len(chunk) - 1), chunk[1:]].sum()
        n += len(chunk) - 1
    return float(np.exp(nll / n)), n


def test_interface_and_decode_steps_match_the_prefill(genai):
    path, _, _ = genai
    sess = make_session(path)
    lm = LMInterface.from_session(sess, path)
    assert lm.is_lm and lm.has_cache and lm.positions is None and lm.mask.name == "attention_mask"
    assert [p.name for p in lm.past] == [f"past_key_values.{i}.{k}" for i in range(LAYERS) for k in ("key", "value")]
    assert lm.present["past_key_values.1.value"] == "present.1.value"
    assert (lm.context_length, lm.context_source, lm.vocab_size) == (CONTEXT, "genai_config.json model.context_length", V)
    assert lm.probe_empty_past(sess) is True
    ids = np.array([ids_of("the quick brown")])
    full = sess.run(["logits"], hand_feed(ids))[0]
    names = ["logits"] + [lm.present[p.name] for p in lm.past]
    feed = lm.window_feed(ids[:, :4])
    outs = dict(zip(names, sess.run(names, feed), strict=True))
    steps = [outs["logits"][0]]
    for t in range(4, ids.shape[1]):
        feed = lm.next_feed(feed, outs, ids[:, t:t + 1])
        outs = dict(zip(names, sess.run(names, feed), strict=True))
        steps.append(outs["logits"][0])
    np.testing.assert_allclose(np.concatenate(steps), full[0], rtol=1e-5, atol=1e-5)


def test_eval_perplexity(genai, caplog):
    path, tok, text = genai
    r = invoke("eval", path, path, "--perplexity", text, "--tokenizer", tok, "--window", 32, "--json")
    assert r.exit_code == 0, r.output
    p = json.loads(r.stdout)["perplexity"]
    ref, n = hand_perplexity(path, ids_of(TEXT), 32)
    assert p["tokens"] == n and p["reference"] == pytest.approx(ref, rel=1e-9)
    with caplog.at_level(logging.WARNING, logger="int4onnx.lm"):
        r = invoke("eval", path, path, "--perplexity", text, "--tokenizer", tok, "--json")
    assert json.loads(r.stdout)["perplexity"]["reference"] == pytest.approx(hand_perplexity(path, ids_of(TEXT), CONTEXT)[0])
    assert "--window defaults to the model's context length, 64 tokens (from genai_config.json" in caplog.text
    r = invoke("eval", path, path, "--text", text, "--tokenizer", tok, "--samples", 2, "--json")
    assert r.exit_code == 0, r.output
    outs = json.loads(r.stdout)["outputs"]
    assert outs["logits"]["shape"] == [1, CONTEXT, V] and outs["present.0.key"]["shape"] == [1, KV_HEADS, CONTEXT, HEAD]


def test_calibration_from_text_and_from_npz_with_an_empty_past(genai, tmp_path):
    path, tok, text = genai
    L = 32
    data = tmp_path / "cal"
    data.mkdir()
    ids = ids_of(TEXT)
    for i in range(3):
        np.savez(data / f"{i}.npz", **hand_feed(ids[i * L:(i + 1) * L]))
    model = ir.load(str(path))
    lm = LMInterface.from_model(model, path)
    plan = select_matmuls(model, QuantConfig())
    values = [t.node.inputs[0] for t in plan.targets]
    inputs = calibrate.model_inputs(model)
    from_text = calibrate.FeedSource(text=str(text), tokenizer=str(tok), samples=3, sequence_length=L).feeds(inputs, lm)
    from_npz = calibrate.FeedSource(path=str(data)).feeds(inputs, lm)
    a = calibrate.collect_statistics(model, values, from_text, gram=True, lm=lm)
    b = calibrate.collect_statistics(model, values, from_npz, gram=True, lm=lm)
    assert sorted(a) == sorted(b) and len(a) == 1 + 2 * LAYERS  # x0, x1 (q, k, v), att0, att1 (o), x2 (head)
    for name in a:
        assert a[name].count == 3 * L
        np.testing.assert_allclose(a[name].gram, b[name].gram, rtol=1e-6, atol=1e-6)
    for cal in (["--calibration", data], ["--calibration-text", text, "--tokenizer", tok, "--calibration-samples", 2]):
        out = tmp_path / "q.onnx"
        r = invoke("convert", path, "-o", out, "--method", "gptq", "--lm-head", "4", *cal)
        assert r.exit_code == 0, r.output
        assert "calibration: 3 sample(s)" in r.output or "2 x 64 tokens" in r.output  # text: clamped to the context
        r = invoke("eval", path, out, "--perplexity", text, "--tokenizer", tok, "--json")
        p = json.loads(r.stdout)["perplexity"]
        assert p["candidate"] != p["reference"] and abs(p["candidate"] / p["reference"] - 1) < 0.1  # a random model


def test_bench(genai):
    path, _, _ = genai
    twin = shutil.copy(path, path.replace("model.onnx", "twin.onnx"))
    for args in (["--seq", "1,8"], ["--seq", "1", "--past", 16]):
        r = invoke("bench", path, "--vs", twin, "--repeats", 2, "--json", *args)
        assert r.exit_code == 0, r.output
        rows = json.loads(r.stdout)["rows"]
        assert "rel. L2 diff 0.00e+00" in rows[1]["check"]
    r = invoke("bench", path, "--seq", "60", "--past", 10)
    assert r.exit_code == 2 and "--seq plus --past 70 is longer than the context" in r.stderr


def test_generate_with_the_kv_cache(genai):
    path, _, _ = genai
    res = gen.generate(path, "the quick", max_new_tokens=10)
    assert res.kv_cache and res.stopped == "max_new_tokens" and len(res.tokens) == 10
    sess = make_session(path)
    ids = ids_of("the quick")
    for _ in range(10):  # greedy, the whole sequence from an empty past each step
        ids.append(int(np.argmax(sess.run(["logits"], hand_feed(ids))[0][0, -1])))
    assert res.prompt_tokens + res.tokens == ids
    assert res.text == "".join(ALPHABET[i] for i in res.tokens)
    long = gen.generate(path, "the quick", max_new_tokens=100)
    assert long.stopped == "context" and len(long.prompt_tokens) + len(long.tokens) == CONTEXT
    # GenAI's end-of-sequence id (genai_config.json model.eos_token_id)
    cfg = json.loads((tmp := pathlib.Path(path).parent / "genai_config.json").read_text())
    cfg["model"]["eos_token_id"] = [res.tokens[3]]
    tmp.write_text(json.dumps(cfg))
    stop = gen.generate(path, "the quick", max_new_tokens=10)
    assert stop.stopped == "eos" and stop.tokens == res.tokens[:res.tokens.index(res.tokens[3])]


# -- optimum's interface (models/llama.build_model): KV-cache and no-cache exports of the same weights --

@pytest.fixture()
def optimum(tmp_path):
    """Two optimum-style folders (model.onnx, config.json, tokenizer.json) holding the same tiny Llama,
    with and without the KV cache."""
    from llama import LlamaConfig, build_model, random_weights

    cfg = LlamaConfig(dim=64, hidden_dim=96, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=len(ALPHABET),
                      seq_len=CONTEXT)
    w = random_weights(cfg, seed=3)
    paths = {}
    for kv in (True, False):
        folder = tmp_path / ("kv" if kv else "nocache")
        folder.mkdir()
        paths[kv] = save(build_model(cfg, w, kv_cache=kv), folder / "model.onnx")
        (folder / "config.json").write_text(json.dumps({"max_position_embeddings": CONTEXT, "vocab_size": V}))
        char_tokenizer(folder / "tokenizer.json", ALPHABET)
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    return paths[True], paths[False], str(tmp_path / "kv" / "tokenizer.json"), text


def test_kv_and_no_cache_exports_give_the_same_perplexity(optimum):
    from int4onnx.runtime import Tokenizer, perplexity

    kv, nocache, tok, text = optimum
    r = invoke("eval", nocache, kv, "--perplexity", text, "--tokenizer", tok, "--json", "--stride", 16)
    assert r.exit_code == 0, r.output
    p = json.loads(r.stdout)["perplexity"]
    assert p["window"] == CONTEXT and p["candidate"] == pytest.approx(p["reference"], rel=1e-5)
    sess = make_session(kv)
    lm = LMInterface.from_session(sess, kv)
    assert lm.probe_empty_past(sess) is True
    lm.empty_past = False  # as for a graph that refuses a 0-length past: one masked zero token
    masked, n = perplexity(sess, Tokenizer(tok).encode_document(TEXT), stride=16, lm=lm)
    assert n == p["tokens"] and masked == pytest.approx(p["reference"], rel=1e-5)


@pytest.mark.parametrize("empty_past", [True, False])
def test_kv_and_no_cache_exports_give_the_same_calibration_statistics(optimum, empty_past):
    kv, nocache, tok, text = optimum
    stats = {}
    for path in (kv, nocache):
        model = ir.load(str(path))
        lm = LMInterface.from_model(model, path)
        lm.empty_past = None if path == nocache else empty_past
        plan = select_matmuls(model, QuantConfig())
        feeds = calibrate.FeedSource(text=str(text), tokenizer=tok, samples=3).feeds(calibrate.model_inputs(model), lm)
        if path == kv:
            assert feeds[0]["past_key_values.0.key"].shape[2] == (0 if empty_past else 1)
        s = calibrate.collect_statistics(model, [t.node.inputs[0] for t in plan.targets], feeds, gram=True, lm=lm)
        stats[path] = {t.node.inputs[1].name: s[t.node.inputs[0].name] for t in plan.targets}
    assert sorted(stats[kv]) == sorted(stats[nocache]) and len(stats[kv]) == 2 * 7 + 1
    for weight, a in stats[kv].items():
        b = stats[nocache][weight]
        assert a.count == b.count == 3 * CONTEXT
        np.testing.assert_allclose(a.gram, b.gram, rtol=1e-4, atol=1e-4 * np.abs(b.gram).max())
        np.testing.assert_allclose(a.absmax, b.absmax, rtol=1e-4, atol=1e-5)


def test_kv_and_no_cache_exports_convert_generate_and_bench_alike(optimum, tmp_path):
    kv, nocache, tok, text = optimum
    outs = {}
    for name, path in (("kv", kv), ("nocache", nocache)):
        outs[name] = tmp_path / f"{name}.int4.onnx"
        r = invoke("convert", path, "-o", outs[name], "--method", "gptq", "--calibration-text", text, "--tokenizer", tok,
                   "--calibration-samples", 3, "--lm-head", "4")
        assert r.exit_code == 0 and "3 x 64 tokens" in r.output, r.output
        # the context length of config.json travels with the converted model (written outside the folder)
        q = LMInterface.from_session(make_session(outs[name]), outs[name])
        assert (q.context_length, q.context_source) == (CONTEXT, "the model's metadata 'context_length'")
    r = invoke("eval", outs["nocache"], outs["kv"], "--perplexity", text, "--tokenizer", tok, "--json")
    assert r.exit_code == 0, r.output
    p = json.loads(r.stdout)["perplexity"]
    assert p["candidate"] == pytest.approx(p["reference"], rel=1e-4)
    a = gen.generate(kv, "the quick", tokenizer=tok, max_new_tokens=12)
    b = gen.generate(nocache, "the quick", tokenizer=tok, max_new_tokens=12)
    assert a.kv_cache and not b.kv_cache and a.tokens == b.tokens and a.text == b.text
    # the converted model's MatMulInt4 nodes on the op's own threads: the same tokens, the speed on stderr
    cmd = ["generate", outs["kv"], "--prompt", "the quick", "--tokenizer", tok, "--max-new-tokens", 12]
    pooled, plain = invoke(*cmd, "--op-threads", 3), invoke(*cmd, "--threads", 1)
    assert pooled.exit_code == 0 and plain.exit_code == 0, pooled.output + plain.output
    assert pooled.stdout == plain.stdout and "decode" in pooled.stderr
    for bad, needle in ((["--op-threads", 257], "--op-threads must be 0..256, got 257"),
                        (["--threads", 0], "--threads must be at least 1, got 0")):
        r = invoke(*cmd, *bad)
        assert r.exit_code == 2 and r.stderr == f"int4onnx: error: {needle}\n", r.output
    r = invoke("bench", kv, "--vs", nocache, "--seq", "1,16", "--repeats", 2, "--json")
    assert r.exit_code == 0, r.output
    for row in json.loads(r.stdout)["rows"][1::2]:
        assert float(row["check"].split("rel. L2 diff ")[1]) < 1e-5
