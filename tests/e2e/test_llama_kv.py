"""models/llama.py's optimum-style graphs (build_model, with and without KV cache) on tiny random
Llamas, against the numpy reference (tests/llama_ref.py) and against each other."""

import numpy as np
import onnx
import pytest
from llama import LlamaConfig, build_model, build_onnx, kv_names, random_weights
from llama_ref import forward, optimum_position_ids

from int4onnx.runtime import make_session

TOL = dict(rtol=1e-4, atol=1e-4)  # float32 graph vs float64 reference, logits of order 1


def _tiny(tied=False, kv_heads=2, theta=10000.0):
    cfg = LlamaConfig(dim=64, hidden_dim=96, n_layers=2, n_heads=4, n_kv_heads=kv_heads, vocab_size=101,
                      seq_len=64, rope_theta=theta, tied_embeddings=tied)
    w = random_weights(cfg, seed=7)
    w.attention_norm = [np.random.default_rng(i).uniform(0.5, 1.5, cfg.dim).astype(np.float32) for i in range(2)]
    return cfg, w


def _session(model):
    return make_session(model.SerializeToString())


def _run_kv(sess, cfg, ids, mask, pos, past):
    """(logits, the next call's past) of one kv_cache step."""
    past_names, present_names = kv_names(cfg)
    outs = sess.run(["logits", *present_names], {"input_ids": ids, "attention_mask": mask, "position_ids": pos, **past})
    return outs[0], dict(zip(past_names, outs[1:], strict=True))


def _empty_past(cfg, batch):
    past_names, _ = kv_names(cfg)
    return {n: np.zeros((batch, cfg.n_kv_heads, 0, cfg.head_size), np.float32) for n in past_names}


@pytest.mark.parametrize("tied,kv_heads,theta", [(False, 2, 10000.0), (True, 1, 100000.0), (True, 4, 500.0)])
def test_no_cache_model_matches_reference(tied, kv_heads, theta):
    cfg, w = _tiny(tied, kv_heads, theta)
    ids = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 9)).astype(np.int64)
    mask = np.ones_like(ids)
    sess = _session(build_model(cfg, w, kv_cache=False))
    logits = sess.run(["logits"], {"input_ids": ids, "attention_mask": mask,
                                   "position_ids": optimum_position_ids(mask)})[0]
    np.testing.assert_allclose(logits, forward(cfg, w, ids), **TOL)
    legacy = _session(build_onnx(cfg, w)).run(["logits"], {"input_ids": ids})[0]
    np.testing.assert_allclose(legacy, logits, rtol=1e-5, atol=1e-5)


def test_kv_cache_io_convention():
    cfg, w = _tiny()
    g = build_model(cfg, w, kv_cache=True).graph
    past, present = kv_names(cfg)
    assert [i.name for i in g.input] == ["input_ids", "attention_mask", "position_ids", *past]
    assert [o.name for o in g.output] == ["logits", *present]
    dims = [d.dim_value or d.dim_param for d in g.input[3].type.tensor_type.shape.dim]
    assert dims == ["batch", cfg.n_kv_heads, "past_seq", cfg.head_size]
    onnx.checker.check_model(build_model(cfg, w, kv_cache=True))


def test_tied_embeddings_share_one_initializer():
    cfg, w = _tiny(tied=True)
    g = build_model(cfg, w, kv_cache=True).graph
    tables = [i for i in g.initializer if list(i.dims) == [cfg.vocab_size, cfg.dim]]
    assert [t.name for t in tables] == ["tok_embeddings"]
    readers = [n.op_type for n in g.node if "tok_embeddings" in n.input]
    assert sorted(readers) == ["Gather", "Transpose"]


@pytest.mark.parametrize("batch", [1, 2])
def test_prefill_then_decode_matches_whole_sequence(batch):
    cfg, w = _tiny(kv_heads=2)
    ids = np.random.default_rng(2).integers(0, cfg.vocab_size, (batch, 12)).astype(np.int64)
    mask = np.ones_like(ids)
    pos = optimum_position_ids(mask)
    sess = _session(build_model(cfg, w, kv_cache=True))
    whole, _ = _run_kv(sess, cfg, ids, mask, pos, _empty_past(cfg, batch))
    np.testing.assert_allclose(whole, forward(cfg, w, ids), **TOL)
    # prefill 5 tokens, then one token at a time with the cache
    logits, past = _run_kv(sess, cfg, ids[:, :5], mask[:, :5], pos[:, :5], _empty_past(cfg, batch))
    steps = [logits]
    for t in range(5, ids.shape[1]):
        logits, past = _run_kv(sess, cfg, ids[:, t:t + 1], mask[:, :t + 1], pos[:, t:t + 1], past)
        assert past["past_key_values.0.key"].shape == (batch, cfg.n_kv_heads, t + 1, cfg.head_size)
        steps.append(logits)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), whole, rtol=1e-5, atol=1e-5)


def test_left_padding_is_masked():
    """A left-padded row gives the logits of the same row unpadded, in prefill and in decode."""
    cfg, w = _tiny()
    rng = np.random.default_rng(3)
    real = rng.integers(0, cfg.vocab_size, (1, 6)).astype(np.int64)
    pad = 3
    ids = np.concatenate([np.full((1, pad), 0, np.int64), real], axis=1)
    mask = np.concatenate([np.zeros((1, pad), np.int64), np.ones_like(real)], axis=1)
    pos = optimum_position_ids(mask)
    sess = _session(build_model(cfg, w, kv_cache=True))
    padded, past = _run_kv(sess, cfg, ids, mask, pos, _empty_past(cfg, 1))
    assert np.isfinite(padded).all()
    np.testing.assert_allclose(padded[:, pad:], forward(cfg, w, real), **TOL)
    nxt = rng.integers(0, cfg.vocab_size, (1, 1)).astype(np.int64)
    step, _ = _run_kv(sess, cfg, nxt, np.ones((1, pad + 7), np.int64) * np.r_[mask[0], 1], pos[:, -1:] + 1, past)
    np.testing.assert_allclose(step[:, 0], forward(cfg, w, np.concatenate([real, nxt], 1))[:, -1], **TOL)
