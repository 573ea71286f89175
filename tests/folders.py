"""Model folders for tests/e2e/test_folder.py and tests/e2e/test_genai.py: a tiny random KV-cache Llama
(models/llama.py, optimum's I/O) laid out as optimum-onnx or ONNX Runtime GenAI's model builder write it."""

from __future__ import annotations

import json
import pathlib

from llama import LlamaConfig, build_model, random_weights, save
from modelgen import char_tokenizer

ALPHABET = "abcdefghijklmnopqrstuvwxyz .,\n"
CONTEXT = 96
EOS = ALPHABET.index("\n")
CFG = LlamaConfig(dim=64, hidden_dim=128, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=len(ALPHABET),
                  seq_len=CONTEXT)


def genai_config(filename: str = "model.onnx", cfg: LlamaConfig = CFG) -> dict:
    """A genai_config.json for the model, as GenAI's model builder writes one (names of optimum's I/O)."""
    return {
        "model": {
            "bos_token_id": 0, "eos_token_id": EOS, "pad_token_id": 0, "context_length": CONTEXT,
            "vocab_size": cfg.vocab_size, "type": "llama",
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": filename, "head_size": cfg.head_size, "hidden_size": cfg.dim,
                "num_attention_heads": cfg.n_heads, "num_hidden_layers": cfg.n_layers,
                "num_key_value_heads": cfg.n_kv_heads,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "position_ids": "position_ids", "past_key_names": "past_key_values.%d.key",
                           "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": {"do_sample": False, "max_length": CONTEXT, "min_length": 0, "num_beams": 1,
                   "past_present_share_buffer": False, "top_k": 1, "top_p": 1.0, "temperature": 1.0},
    }


def llama_folder(path, kind: str, filename: str = "model.onnx", external_data: bool = False,
                 seed: int = 0) -> pathlib.Path:
    """A model folder: kind "optimum" (config.json, generation_config.json) or "genai" (genai_config.json
    naming `filename`); both with tokenizer.json and tokenizer_config.json."""
    import onnx

    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model = build_model(CFG, random_weights(CFG, seed), kv_cache=True)
    if external_data:
        onnx.save(model, str(path / filename), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=filename + ".data", size_threshold=1024)
    else:
        save(model, path / filename)
    char_tokenizer(path / "tokenizer.json", ALPHABET)
    (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "\n", "model_max_length": CONTEXT}))
    if kind == "genai":
        (path / "genai_config.json").write_text(json.dumps(genai_config(filename), indent=4))
    else:
        (path / "config.json").write_text(json.dumps({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": CFG.dim,
            "num_hidden_layers": CFG.n_layers, "num_attention_heads": CFG.n_heads,
            "num_key_value_heads": CFG.n_kv_heads, "vocab_size": CFG.vocab_size,
            "max_position_embeddings": CONTEXT, "eos_token_id": EOS}))
        (path / "generation_config.json").write_text(json.dumps({"eos_token_id": EOS}))
    return path
