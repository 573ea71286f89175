"""ONNX Runtime GenAI end to end: a tiny random KV-cache Llama (optimum's I/O) in a GenAI folder with a
hand-written genai_config.json, converted by `int4onnx convert DIR -o OUTDIR`, generates through
onnxruntime_genai (our op loaded from the folder for the int4onnx format, none for matmulnbits) the
same greedy tokens as int4onnx.tools.generate on the same converted model."""

import pytest
from click.testing import CliRunner
from folders import EOS, llama_folder

from int4onnx.cli import main
from int4onnx.tools import generate as gen

og = pytest.importorskip("onnxruntime_genai")  # the test extra installs it (pyproject.toml)

NEW = 24


def genai_greedy(folder, prompt: list[int], new: int) -> list[int]:
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + new, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    tokens = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens[:tokens.index(EOS)] if EOS in tokens else tokens  # int4onnx.tools.generate leaves EOS out


@pytest.mark.parametrize("fmt", ["int4onnx", "matmulnbits"])
def test_genai_generates_like_int4onnx(tmp_path, fmt):
    src = llama_folder(tmp_path / "src", "genai", seed=3)
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["convert", str(src), "-o", str(out), "--format", fmt])
    assert r.exit_code == 0, r.output
    ours = gen.generate(out, "the cat sat on", max_new_tokens=NEW)  # the folder: its model and tokenizer
    assert len(ours.tokens) >= 8  # enough tokens to compare (a random model rarely says EOS early)
    theirs = genai_greedy(out, ours.prompt_tokens, NEW)
    assert theirs == ours.tokens


def test_genai_needs_the_library(tmp_path):
    """Without the custom_ops_library entry GenAI cannot load our op: the entry is what makes it work."""
    import json

    src = llama_folder(tmp_path / "src", "genai")
    out = tmp_path / "out"
    assert CliRunner().invoke(main, ["convert", str(src), "-o", str(out)]).exit_code == 0
    cfg = json.loads((out / "genai_config.json").read_text())
    del cfg["model"]["decoder"]["session_options"]["custom_ops_library"]
    (out / "genai_config.json").write_text(json.dumps(cfg))
    with pytest.raises(Exception, match="MatMulInt4"):
        og.Model(str(out))


@pytest.mark.parametrize("share_buffer", [False, True])
def test_genai_builder_style_gqa_model(tmp_path, share_buffer):
    """GenAI's own model builder's graph shape: GroupQueryAttention with fused rotary, no position_ids
    (tests/modelgen.gqa_lm); with GenAI's shared past/present buffer too."""
    import json

    from folders import ALPHABET, genai_config
    from modelgen import char_tokenizer, gqa_lm, save

    src = tmp_path / "src"
    src.mkdir()
    save(gqa_lm(V=len(ALPHABET), D=64, heads=4, kv_heads=2, layers=2, context=96, seed=2), src / "model.onnx")
    char_tokenizer(src / "tokenizer.json", ALPHABET)
    cfg = genai_config()
    cfg["model"]["decoder"]["inputs"].pop("position_ids")
    cfg["model"]["decoder"].update(head_size=16, hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
    cfg["search"]["past_present_share_buffer"] = share_buffer
    (src / "genai_config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["convert", str(src), "-o", str(out)])
    assert r.exit_code == 0, r.output
    ours = gen.generate(out, "the cat", max_new_tokens=NEW)
    assert len(ours.tokens) >= 8
    assert genai_greedy(out, ours.prompt_tokens, NEW) == ours.tokens
