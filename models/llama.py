"""Llama-architecture ONNX exporter (no torch): llama2.c checkpoints and deterministic synthetic models.

    python models/llama.py stories260k            # models/stories260K.onnx from ../shared's checkpoint
    python models/llama.py synthetic --dim 1024 --layers 4 -o models/synth_llama_d1024.onnx
    python models/llama.py synthetic --kv-cache --dim 256 --layers 2 -o models/synth_llama_kv.onnx

One graph builder, two input/output conventions:
- build_onnx(cfg, w): input_ids [batch, seq] (int64) -> logits [batch, seq, vocab] (llama2.c style,
  positions 0..seq-1, causal mask only);
- build_model(cfg, w, kv_cache): optimum's decoder convention: input_ids [batch, seq],
  attention_mask [batch, past+seq], position_ids [batch, seq] and, with kv_cache,
  past_key_values.{i}.key/value [batch, kv_heads, past, head_dim] -> logits [batch, seq, vocab] and
  present.{i}.key/value [batch, kv_heads, past+seq, head_dim]. The mask is causal (query i sits at
  position past+i of the sequence) and hides keys whose attention_mask is 0; a past of length 0 is
  accepted, so one model serves prefill and decode.

Per layer: RMSNorm -> Q/K/V MatMuls -> rotary embedding (interleaved pairs (2i, 2i+1), llama2.c's and
GGUF's row order) -> grouped-query attention -> output MatMul -> residual, RMSNorm -> SwiGLU FFN (w1,
w3, w2) -> residual; final RMSNorm and classifier MatMul. Weights are stored as [in, out] so every
linear layer is `activations @ weight`, the pattern int4onnx quantizes. With tied embeddings
(cfg.tied_embeddings) the classifier reads the token table itself through a Transpose, one
initializer for both, as real exports of tied models do.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import struct
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from paths import ROOT, SHARED  # noqa: E402

STORIES260K_BIN = SHARED / "models" / "stories260K" / "stories260K.bin"
OPSET = 17


@dataclasses.dataclass
class LlamaConfig:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int                               # rotary table length (max_position_embeddings)
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tied_embeddings: bool = False              # classifier = token table (w.output unused)

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads


@dataclasses.dataclass
class LlamaWeights:
    """PyTorch layout: linear weights are [out, in]."""

    tok_embeddings: np.ndarray                 # [vocab, dim]
    attention_norm: list[np.ndarray]           # [dim] per layer
    wq: list[np.ndarray]
    wk: list[np.ndarray]
    wv: list[np.ndarray]
    wo: list[np.ndarray]
    ffn_norm: list[np.ndarray]
    w1: list[np.ndarray]
    w2: list[np.ndarray]
    w3: list[np.ndarray]
    norm: np.ndarray                           # [dim]
    output: np.ndarray                         # [vocab, dim]


def read_llama2c(path) -> tuple[LlamaConfig, LlamaWeights]:
    """Read a llama2.c (legacy version 0) float32 checkpoint."""
    raw = pathlib.Path(path).read_bytes()
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("7i", raw[:28])
    shared_cls = vocab > 0
    cfg = LlamaConfig(dim, hidden, n_layers, n_heads, n_kv, abs(vocab), seq_len)
    data = np.frombuffer(raw, dtype=np.float32, offset=28)
    pos = 0

    def take(*shape):
        nonlocal pos
        n = int(np.prod(shape))
        out = data[pos:pos + n].reshape(shape).copy()
        pos += n
        return out

    L, hs, kv_dim = n_layers, cfg.head_size, n_kv * cfg.head_size
    emb = take(cfg.vocab_size, dim)
    att_norm = take(L, dim)
    wq, wk, wv, wo = take(L, dim, dim), take(L, kv_dim, dim), take(L, kv_dim, dim), take(L, dim, dim)
    ffn_norm = take(L, dim)
    w1, w2, w3 = take(L, hidden, dim), take(L, dim, hidden), take(L, hidden, dim)
    norm = take(dim)
    take(seq_len, hs // 2)  # freq_cis_real: recomputed in build_onnx (same formula)
    take(seq_len, hs // 2)  # freq_cis_imag
    out = emb if shared_cls else take(cfg.vocab_size, dim)
    w = LlamaWeights(emb, list(att_norm), list(wq), list(wk), list(wv), list(wo), list(ffn_norm), list(w1),
                     list(w2), list(w3), norm, out)
    return cfg, w


def random_weights(cfg: LlamaConfig, seed: int = 0) -> LlamaWeights:
    """Deterministic random weights with transformer-like scales (1/sqrt(fan_in))."""
    rng = np.random.default_rng(seed)
    kv_dim = cfg.n_kv_heads * cfg.head_size

    def lin(out_f, in_f):
        return (rng.standard_normal((out_f, in_f), dtype=np.float32) / np.sqrt(in_f)).astype(np.float32)

    L = cfg.n_layers
    return LlamaWeights(
        tok_embeddings=rng.standard_normal((cfg.vocab_size, cfg.dim), dtype=np.float32) * 0.02,
        attention_norm=[np.ones(cfg.dim, np.float32)] * L,
        wq=[lin(cfg.dim, cfg.dim) for _ in range(L)],
        wk=[lin(kv_dim, cfg.dim) for _ in range(L)],
        wv=[lin(kv_dim, cfg.dim) for _ in range(L)],
        wo=[lin(cfg.dim, cfg.dim) for _ in range(L)],
        ffn_norm=[np.ones(cfg.dim, np.float32)] * L,
        w1=[lin(cfg.hidden_dim, cfg.dim) for _ in range(L)],
        w2=[lin(cfg.dim, cfg.hidden_dim) for _ in range(L)],
        w3=[lin(cfg.hidden_dim, cfg.dim) for _ in range(L)],
        norm=np.ones(cfg.dim, np.float32),
        output=lin(cfg.vocab_size, cfg.dim),
    )


synthetic_weights = random_weights  # the name the exporters and the demo use


class _Builder:
    def __init__(self):
        self.nodes, self.inits, self.count = [], [], 0

    def name(self, base):
        self.count += 1
        return f"{base}_{self.count}"

    def const(self, name, array):
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type, inputs, **attrs):
        out = self.name(op_type)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def build_onnx(cfg: LlamaConfig, w: LlamaWeights) -> onnx.ModelProto:
    """input_ids -> logits (llama2.c style: no mask input, positions 0..seq-1)."""
    return _build(cfg, w, optimum_io=False, kv_cache=False)


def build_model(cfg: LlamaConfig, w: LlamaWeights, kv_cache: bool = False) -> onnx.ModelProto:
    """optimum's decoder I/O: input_ids, attention_mask, position_ids [, past_key_values.*] -> logits
    [, present.*] (see the module docstring)."""
    return _build(cfg, w, optimum_io=True, kv_cache=kv_cache)


def kv_names(cfg: LlamaConfig) -> tuple[list[str], list[str]]:
    """(past inputs, present outputs) of a kv_cache model, in graph order: key then value per layer."""
    past = [f"past_key_values.{i}.{kv}" for i in range(cfg.n_layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(cfg.n_layers) for kv in ("key", "value")]
    return past, present


def _build(cfg: LlamaConfig, w: LlamaWeights, optimum_io: bool, kv_cache: bool) -> onnx.ModelProto:
    if kv_cache and not optimum_io:
        raise ValueError("a KV cache needs optimum's inputs (attention_mask, position_ids)")
    b = _Builder()
    hs, H, KVH = cfg.head_size, cfg.n_heads, cfg.n_kv_heads
    rep = H // KVH
    # rotary tables as llama2.c: freq_i = theta^(-2i/hs), angle = pos * freq_i, pairs (2i, 2i+1)
    freqs = 1.0 / (cfg.rope_theta ** (np.arange(0, hs, 2, dtype=np.float32) / hs))
    angles = np.outer(np.arange(cfg.seq_len, dtype=np.float32), freqs)
    b.const("rope_cos", np.cos(angles).astype(np.float32).reshape(cfg.seq_len, 1, hs // 2, 1))
    b.const("rope_sin", np.sin(angles).astype(np.float32).reshape(cfg.seq_len, 1, hs // 2, 1))
    if not optimum_io:
        causal = np.triu(np.full((cfg.seq_len, cfg.seq_len), -1e9, dtype=np.float32), k=1)
        b.const("causal_mask", causal)
    b.const("zero1", np.array([0], np.int64))
    b.const("one1", np.array([1], np.int64))
    b.const("two1", np.array([2], np.int64))
    b.const("split_half", np.array([1, 1], np.int64))
    b.const("eps", np.array(cfg.norm_eps, np.float32))
    b.const("inv_sqrt_hs", np.array(1.0 / np.sqrt(hs), np.float32))
    b.const("shape_q5", np.array([0, 0, H, hs // 2, 2], np.int64))
    b.const("shape_k5", np.array([0, 0, KVH, hs // 2, 2], np.int64))
    b.const("shape_q4", np.array([0, 0, H, hs], np.int64))
    b.const("shape_k4", np.array([0, 0, KVH, hs], np.int64))
    b.const("shape_rep", np.array([1, 1, rep, 1, 1], np.int64))
    b.const("shape_heads", np.array([0, H, -1, hs], np.int64))
    b.const("shape_out", np.array([0, 0, cfg.dim], np.int64))

    if optimum_io:
        cos, sin, mask = _optimum_prologue(b)
    else:
        seq = b.op("Shape", ["input_ids"], start=1, end=2)  # [S]
        cos = b.op("Slice", ["rope_cos", "zero1", seq, "zero1"])
        sin = b.op("Slice", ["rope_sin", "zero1", seq, "zero1"])
        mask_rows = b.op("Slice", ["causal_mask", "zero1", seq, "zero1"])
        mask = b.op("Slice", [mask_rows, "zero1", seq, "one1"])

    def rmsnorm(x, weight_name):
        sq = b.op("Mul", [x, x])
        mean = b.op("ReduceMean", [sq], axes=[-1], keepdims=1)
        inv = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [mean, "eps"])])])
        return b.op("Mul", [b.op("Mul", [x, inv]), weight_name])

    def rope(x, shape5, shape4):
        x5 = b.op("Reshape", [x, shape5])
        x0 = b.name("rope_even")
        x1 = b.name("rope_odd")
        b.nodes.append(helper.make_node("Split", [x5, "split_half"], [x0, x1], axis=-1, name=b.name("Split")))
        r0 = b.op("Sub", [b.op("Mul", [x0, cos]), b.op("Mul", [x1, sin])])
        r1 = b.op("Add", [b.op("Mul", [x0, sin]), b.op("Mul", [x1, cos])])
        return b.op("Reshape", [b.op("Concat", [r0, r1], axis=-1), shape4])

    past_names, present_names = kv_names(cfg)
    x = b.op("Gather", [b.const("tok_embeddings", w.tok_embeddings), "input_ids"])
    for i in range(cfg.n_layers):
        p = f"l{i}"
        h = rmsnorm(x, b.const(f"{p}.attention_norm", w.attention_norm[i]))
        q = b.op("MatMul", [h, b.const(f"{p}.wq.T", np.ascontiguousarray(w.wq[i].T))])
        k = b.op("MatMul", [h, b.const(f"{p}.wk.T", np.ascontiguousarray(w.wk[i].T))])
        v = b.op("MatMul", [h, b.const(f"{p}.wv.T", np.ascontiguousarray(w.wv[i].T))])
        q = b.op("Transpose", [rope(q, "shape_q5", "shape_q4")], perm=[0, 2, 1, 3])   # [B, H, S, hs]
        k = b.op("Transpose", [rope(k, "shape_k5", "shape_k4")], perm=[0, 2, 1, 3])   # [B, KVH, S, hs]
        v = b.op("Transpose", [b.op("Reshape", [v, "shape_k4"])], perm=[0, 2, 1, 3])
        if kv_cache:  # present = past ++ new, [B, KVH, past + S, hs]; attention reads all of it
            for j, new in ((0, k), (1, v)):
                b.nodes.append(helper.make_node("Concat", [past_names[2 * i + j], new], [present_names[2 * i + j]],
                                                axis=2, name=b.name("Concat")))
            k, v = present_names[2 * i], present_names[2 * i + 1]
        if rep > 1:  # grouped-query attention: query head j reads KV head j // rep
            k = b.op("Reshape", [b.op("Tile", [b.op("Unsqueeze", [k, "two1"]), "shape_rep"]), "shape_heads"])
            v = b.op("Reshape", [b.op("Tile", [b.op("Unsqueeze", [v, "two1"]), "shape_rep"]), "shape_heads"])
        scores = b.op("Mul", [b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 1, 3, 2])]), "inv_sqrt_hs"])
        att = b.op("Softmax", [b.op("Add", [scores, mask])], axis=-1)
        o = b.op("Reshape", [b.op("Transpose", [b.op("MatMul", [att, v])], perm=[0, 2, 1, 3]), "shape_out"])
        x = b.op("Add", [x, b.op("MatMul", [o, b.const(f"{p}.wo.T", np.ascontiguousarray(w.wo[i].T))])])
        h = rmsnorm(x, b.const(f"{p}.ffn_norm", w.ffn_norm[i]))
        a = b.op("MatMul", [h, b.const(f"{p}.w1.T", np.ascontiguousarray(w.w1[i].T))])
        g = b.op("MatMul", [h, b.const(f"{p}.w3.T", np.ascontiguousarray(w.w3[i].T))])
        act = b.op("Mul", [b.op("Mul", [a, b.op("Sigmoid", [a])]), g])
        x = b.op("Add", [x, b.op("MatMul", [act, b.const(f"{p}.w2.T", np.ascontiguousarray(w.w2[i].T))])])
    x = rmsnorm(x, b.const("norm", w.norm))
    if cfg.tied_embeddings:  # the classifier reads the token table: x @ table^T, one initializer for both
        head = b.op("Transpose", ["tok_embeddings"], perm=[1, 0])
    else:
        head = b.const("output.T", np.ascontiguousarray(w.output.T))
    logits = b.op("MatMul", [x, head])
    b.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="logits_identity"))
    vi = helper.make_tensor_value_info
    if optimum_io:
        inputs = [vi("input_ids", TensorProto.INT64, ["batch", "seq"]),
                  vi("attention_mask", TensorProto.INT64, ["batch", "total_seq"]),
                  vi("position_ids", TensorProto.INT64, ["batch", "seq"])]
        outputs = [vi("logits", TensorProto.FLOAT, ["batch", "seq", cfg.vocab_size])]
        if kv_cache:
            inputs += [vi(n, TensorProto.FLOAT, ["batch", KVH, "past_seq", hs]) for n in past_names]
            outputs += [vi(n, TensorProto.FLOAT, ["batch", KVH, "total_seq", hs]) for n in present_names]
    else:
        inputs = [vi("input_ids", TensorProto.INT64, ["batch", "seq"])]
        outputs = [vi("logits", TensorProto.FLOAT, ["batch", "seq", cfg.vocab_size])]
    graph = helper.make_graph(b.nodes, "llama", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="int4onnx-models")
    model.ir_version = 8
    # initializers moved in one at a time (make_graph and make_model would each copy all of them)
    inits, b.inits = b.inits, None
    for i, tensor in enumerate(inits):
        model.graph.initializer.append(tensor)
        inits[i] = None
    return model


def _optimum_prologue(b: _Builder) -> tuple[str, str, str]:
    """Rotary tables gathered at position_ids, and the additive attention mask [B, 1, S, past+S]: 0 where
    key j is visible to query i (j <= past + i and attention_mask[b, j] == 1), -1e9 elsewhere."""
    cos = b.op("Gather", ["rope_cos", "position_ids"])                      # [B, S, 1, hs/2, 1]
    sin = b.op("Gather", ["rope_sin", "position_ids"])
    b.const("zero", np.array(0, np.int64))
    b.const("one", np.array(1, np.int64))
    b.const("mask_open", np.array(0.0, np.float32))
    b.const("mask_hidden", np.array(-1e9, np.float32))
    seq = b.op("Squeeze", [b.op("Shape", ["input_ids"], start=1, end=2), "zero1"])          # S
    total = b.op("Squeeze", [b.op("Shape", ["attention_mask"], start=1, end=2), "zero1"])   # past + S
    key_pos = b.op("Range", ["zero", total, "one"])                                         # [T]
    query_pos = b.op("Unsqueeze", [b.op("Range", [b.op("Sub", [total, seq]), total, "one"]), "one1"])  # [S, 1]
    causal = b.op("LessOrEqual", [key_pos, query_pos])                                      # [S, T]
    keep = b.op("Cast", ["attention_mask"], to=TensorProto.BOOL)
    keep = b.op("Unsqueeze", [keep, b.const("axes_12", np.array([1, 2], np.int64))])        # [B, 1, 1, T]
    visible = b.op("And", [causal, keep])                                                   # [B, 1, S, T]
    return cos, sin, b.op("Where", [visible, "mask_open", "mask_hidden"])


def save(model: onnx.ModelProto, path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if model.ByteSize() > 1_800_000_000:
        onnx.save(model, str(path), save_as_external_data=True, location=path.name + ".data")
    else:
        onnx.save(model, str(path))
    return path


def export_stories260k(out=ROOT / "models" / "stories260K.onnx", checkpoint=STORIES260K_BIN) -> pathlib.Path:
    if not pathlib.Path(checkpoint).is_file():
        sys.exit(f"checkpoint not found: {checkpoint} (expected ../shared/data beside the project)")
    cfg, w = read_llama2c(checkpoint)
    return save(build_onnx(cfg, w), out)


def export_synthetic(out, dim=1024, layers=4, heads=16, kv_heads=8, hidden=None, vocab=4096, seq_len=512,
                     seed=0, optimum=False, kv_cache=False, tied=False) -> pathlib.Path:
    """optimum / kv_cache: build_model's I/O (without / with the KV cache); else build_onnx's. tied: the
    classifier reads the token table (as SmolLM2's does)."""
    hidden = hidden or int(8 * dim / 3 + 255) // 256 * 256
    cfg = LlamaConfig(dim, hidden, layers, heads, kv_heads, vocab, seq_len, tied_embeddings=tied)
    w = synthetic_weights(cfg, seed)
    return save(build_model(cfg, w, kv_cache) if optimum or kv_cache else build_onnx(cfg, w), out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("stories260k")
    s.add_argument("-o", "--output", default=str(ROOT / "models" / "stories260K.onnx"))
    s.add_argument("--checkpoint", default=str(STORIES260K_BIN))
    y = sub.add_parser("synthetic")
    y.add_argument("-o", "--output", required=True)
    y.add_argument("--dim", type=int, default=1024)
    y.add_argument("--layers", type=int, default=4)
    y.add_argument("--heads", type=int, default=16)
    y.add_argument("--kv-heads", type=int, default=8)
    y.add_argument("--hidden", type=int, default=None)
    y.add_argument("--vocab", type=int, default=4096)
    y.add_argument("--seed", type=int, default=0)
    y.add_argument("--optimum", action="store_true", help="optimum's inputs (attention_mask, position_ids), no cache")
    y.add_argument("--kv-cache", action="store_true", help="optimum's inputs with past_key_values.* / present.*")
    y.add_argument("--tied", action="store_true", help="the classifier reads the token table (tied embeddings)")
    y.add_argument("--seq-len", type=int, default=512, help="context length (rotary table)")
    a = ap.parse_args(argv)
    if a.what == "stories260k":
        print(export_stories260k(a.output, a.checkpoint))
    else:
        print(export_synthetic(a.output, a.dim, a.layers, a.heads, a.kv_heads, a.hidden, a.vocab, seed=a.seed,
                               optimum=a.optimum, kv_cache=a.kv_cache, tied=a.tied,
                               seq_len=a.seq_len))


if __name__ == "__main__":
    main()
