"""The tinygpt_char exporter against an independent numpy forward pass of the checkpoint."""

import math

import numpy as np
import tinygpt

from int4onnx.runtime import Tokenizer, make_session

_erf = np.vectorize(math.erf)


def _layernorm(x, w, b):
    m = x.mean(-1, keepdims=True)
    return (x - m) / np.sqrt(((x - m) ** 2).mean(-1, keepdims=True) + 1e-5) * w + b


def numpy_forward(state, idx, n_head=4):
    """PyTorch TinyGPT's forward (nn.Linear: x @ W.T + b; exact GELU; causal softmax attention)."""
    T = len(idx)
    C = state["tok_emb.weight"].shape[1]
    hs = C // n_head
    x = state["tok_emb.weight"][idx].astype(np.float64) + state["pos_emb.weight"][:T]
    for i in range(4):
        p = f"blocks.{i}."
        h = _layernorm(x, state[p + "ln1.weight"], state[p + "ln1.bias"])
        q, k, v = ((h @ state[p + f"attn.{n}.weight"].T).reshape(T, n_head, hs).transpose(1, 0, 2)
                   for n in ("query", "key", "value"))
        a = q @ k.transpose(0, 2, 1) / np.sqrt(hs) + np.triu(np.full((T, T), -np.inf), 1)
        a = np.exp(a - a.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        y = (a @ v).transpose(1, 0, 2).reshape(T, C)
        x = x + y @ state[p + "attn.proj.weight"].T + state[p + "attn.proj.bias"]
        h = _layernorm(x, state[p + "ln2.weight"], state[p + "ln2.bias"]) @ state[p + "mlp.0.weight"].T + state[p + "mlp.0.bias"]
        h = 0.5 * h * (1 + _erf(h / np.sqrt(2)))
        x = x + h @ state[p + "mlp.2.weight"].T + state[p + "mlp.2.bias"]
    return _layernorm(x, state["ln_f.weight"], state["ln_f.bias"]) @ state["head.weight"].T


def test_tinygpt_export_matches_numpy_forward(tmp_path, shared_data):
    model, tok_path = tinygpt.export(tmp_path / "tinygpt_char.onnx")
    state, config = tinygpt.read_checkpoint()
    assert config["vocab_size"] == 65 and state["tok_emb.weight"].shape == (65, 128)
    text = tinygpt.SHAKESPEARE.read_text(encoding="utf-8")
    tok = Tokenizer(tok_path)
    chars = sorted(set(text))
    sample = text[1000:1060]
    ids = tok.encode(sample)
    assert ids == [chars.index(c) for c in sample] and tok.bos_id is None
    logits = make_session(str(model)).run(None, {"idx": np.array([ids], np.int64)})[0][0]
    ref = numpy_forward(state, np.array(ids))
    np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
