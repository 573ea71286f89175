"""Independent numpy forward of a Llama (Hugging Face's math: rotate_half rotary, repeated KV heads,
additive causal + padding mask), the oracle of the Llama exporters' tests.

The exporter applies the rotary embedding to interleaved pairs (2i, 2i+1), the row order of llama2.c
checkpoints and of GGUF files (llama.cpp's converter permutes Hugging Face's Q/K rows into it). The
reference works in Hugging Face's order instead, so `hf_rows` undoes that permutation first: a rotary
mix-up shows as a mismatch, not as two copies of the same mistake."""

from __future__ import annotations

import numpy as np


def hf_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Q/K rows from the interleaved order (per head: pair i at rows 2i, 2i+1) to Hugging Face's
    (pair i at rows i and i + head_dim/2); the inverse of llama.cpp's `permute`."""
    out, inp = w.shape
    return w.reshape(n_heads, out // n_heads // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def _rms(x, g, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g


def _rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def optimum_position_ids(attention_mask: np.ndarray) -> np.ndarray:
    """position_ids as optimum and transformers derive them from a (left-padded) attention_mask."""
    pos = np.cumsum(attention_mask, axis=-1) - 1
    return np.where(attention_mask == 0, 1, pos).astype(np.int64)


def forward(cfg, w, ids: np.ndarray, attention_mask: np.ndarray | None = None,
            position_ids: np.ndarray | None = None) -> np.ndarray:
    """logits [B, S, vocab] (float64) of the whole sequence `ids` [B, S], without a cache."""
    ids = np.asarray(ids)
    B, S = ids.shape
    H, KVH, hs = cfg.n_heads, cfg.n_kv_heads, cfg.head_size
    f64 = np.float64
    am = np.ones((B, S), np.int64) if attention_mask is None else attention_mask
    pos = np.broadcast_to(np.arange(S), (B, S)) if position_ids is None else position_ids
    inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, hs, 2, dtype=f64) / hs))
    ang = pos[..., None].astype(f64) * inv_freq                      # [B, S, hs/2]
    cos = np.concatenate([np.cos(ang)] * 2, -1)[:, None]             # [B, 1, S, hs]
    sin = np.concatenate([np.sin(ang)] * 2, -1)[:, None]
    visible = np.tril(np.ones((S, S), bool))[None, None] & (am[:, None, None, :] != 0)
    bias = np.where(visible, 0.0, -1e9)
    x = w.tok_embeddings[ids].astype(f64)
    for i in range(cfg.n_layers):
        h = _rms(x, w.attention_norm[i], cfg.norm_eps)
        q = (h @ hf_rows(w.wq[i], H).T.astype(f64)).reshape(B, S, H, hs).transpose(0, 2, 1, 3)
        k = (h @ hf_rows(w.wk[i], KVH).T.astype(f64)).reshape(B, S, KVH, hs).transpose(0, 2, 1, 3)
        v = (h @ w.wv[i].T.astype(f64)).reshape(B, S, KVH, hs).transpose(0, 2, 1, 3)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        k, v = np.repeat(k, H // KVH, axis=1), np.repeat(v, H // KVH, axis=1)
        a = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hs) + bias
        a = np.exp(a - a.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        o = (a @ v).transpose(0, 2, 1, 3).reshape(B, S, H * hs)
        x = x + o @ w.wo[i].T.astype(f64)
        h = _rms(x, w.ffn_norm[i], cfg.norm_eps)
        gate = h @ w.w1[i].T.astype(f64)
        x = x + (gate / (1 + np.exp(-gate)) * (h @ w.w3[i].T.astype(f64))) @ w.w2[i].T.astype(f64)
    head = w.tok_embeddings if cfg.tied_embeddings else w.output
    return _rms(x, w.norm, cfg.norm_eps) @ head.T.astype(f64)
