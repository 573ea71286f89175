"""Model folders in and out (int4onnx/folder.py): `convert DIR -o OUTDIR` for optimum's and ONNX Runtime
GenAI's layouts, the other commands on a folder, and the bad-input rules (nothing written, no input
overwritten)."""

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from folders import ALPHABET, llama_folder

import int4onnx
from int4onnx import folder as folders
from int4onnx.cli import main
from int4onnx.errors import Int4OnnxError
from int4onnx.runtime import make_session


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def tree(path):
    """{relative path: bytes} of every file under path."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def listing(path):
    return sorted(p.name for p in path.iterdir())


def ops(model_path):
    import onnx

    return {n.op_type for n in onnx.load(str(model_path), load_external_data=False).graph.node}


@pytest.mark.parametrize("fmt", ["int4onnx", "matmulnbits"])
def test_optimum_folder(tmp_path, fmt):
    src = llama_folder(tmp_path / "src", "optimum")
    (src / "extra").mkdir()
    (src / "extra" / "notes.txt").write_text("kept")
    before = tree(src)
    r = invoke("convert", src, "-o", tmp_path / "out", "--format", fmt)
    assert r.exit_code == 0, r.output
    out = tmp_path / "out"
    assert tree(src) == before  # the input is untouched
    got = tree(out)
    side = {k: v for k, v in before.items() if k != "model.onnx"}
    assert {k: got[k] for k in side} == side  # every side file copied, byte for byte
    assert set(got) == set(before)  # no library, nothing else
    assert ("MatMulInt4" if fmt == "int4onnx" else "MatMulNBits") in ops(out / "model.onnx")
    assert "optimum" in r.output and "ORTModelForCausalLM" in r.output if fmt == "int4onnx" else \
        "no custom-op library" in r.output
    assert oct((out).stat().st_mode & 0o777) == oct(0o777 & ~_umask())
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_genai_folder_gets_library(tmp_path):
    src = llama_folder(tmp_path / "src", "genai", filename="decoder.onnx", external_data=True)
    assert (src / "decoder.onnx.data").exists()
    r = invoke("convert", src, "-o", tmp_path / "out")
    assert r.exit_code == 0, r.output
    out = tmp_path / "out"
    assert listing(out) == sorted(["decoder.onnx", "genai_config.json", folders.LIBRARY_NAME, "tokenizer.json",
                                   "tokenizer_config.json"])  # the small output needs no .data file
    want = json.loads((src / "genai_config.json").read_text())
    got = json.loads((out / "genai_config.json").read_text())
    assert got["model"]["decoder"]["session_options"].pop("custom_ops_library") == folders.LIBRARY_NAME
    assert got == want and list(got["model"]) == list(want["model"])  # the rest as it was, key order too
    assert (out / folders.LIBRARY_NAME).read_bytes()[:4] == b"\x7fELF"
    assert "MatMulInt4" in ops(out / "decoder.onnx")
    assert "onnxruntime_genai.Model" in r.output and folders.LIBRARY_NAME in r.output


def test_genai_folder_matmulnbits_config_untouched(tmp_path):
    src = llama_folder(tmp_path / "src", "genai")
    assert invoke("convert", src, "-o", tmp_path / "out", "--format", "matmulnbits").exit_code == 0
    out = tmp_path / "out"
    assert (out / "genai_config.json").read_bytes() == (src / "genai_config.json").read_bytes()
    assert not (out / folders.LIBRARY_NAME).exists()


def test_folder_api_and_default_output(tmp_path):
    src = llama_folder(tmp_path / "m", "optimum")
    report = int4onnx.quantize(src, tmp_path / "api", group_size=64)
    assert report.output == str(tmp_path / "api" / "model.onnx") and report.input == str(src / "model.onnx")
    assert report.nodes_rewritten == 2 * 7 + 1  # q, k, v, o, w1, w2, w3 per layer, and the head (8-bit)
    assert (tmp_path / "api" / "model.onnx").exists()
    r = invoke("convert", src)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m-int4" / "model.onnx").exists()
    r = invoke("convert", src, "--bits", "8")  # into an empty folder that exists: allowed
    assert (tmp_path / "m-int8" / "model.onnx").exists()


def test_folder_runs_like_the_file(tmp_path):
    """eval, bench, inspect and generate take the folder: the model inside, its tokenizer and context."""
    src = llama_folder(tmp_path / "src", "optimum")
    out = tmp_path / "out"
    assert invoke("convert", src, "-o", out).exit_code == 0
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 10)
    r = invoke("eval", src, out, "--perplexity", text, "--json")  # tokenizer from the folder
    assert r.exit_code == 0, r.output
    p = json.loads(r.output)["perplexity"]
    assert p["window"] == 96  # config.json's max_position_embeddings clamps the default 512
    assert 1 < p["reference"] < len(ALPHABET) * 2 and 1 < p["candidate"] < len(ALPHABET) * 2
    r = invoke("inspect", out, "--json")
    assert r.exit_code == 0 and len(json.loads(r.output)["quantized_layers"]) == 15
    r = invoke("bench", out, "--vs", src, "--repeats", "2", "--seq", "4", "--json")
    assert r.exit_code == 0, r.output
    r = invoke("generate", out, "--prompt", "the ", "--max-new-tokens", "5")
    assert r.exit_code == 0, r.output
    assert "prefill" in r.output


def test_model_file_choice(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    with pytest.raises(Int4OnnxError, match="is a directory, expected an .onnx file or a model folder"):
        folders.open_folder(d)
    (d / "a.onnx").write_bytes(b"x")
    assert folders.open_folder(d).model == d / "a.onnx" and folders.open_folder(d).kind == "plain"
    (d / "b.onnx").write_bytes(b"x")
    with pytest.raises(Int4OnnxError, match="holds 2 .onnx files"):
        folders.open_folder(d)
    (d / "model.onnx").write_bytes(b"x")
    assert folders.open_folder(d).model == d / "model.onnx"
    for bad, needle in [("../x.onnx", "not a file name inside the folder"), ("/etc/x.onnx", "not a file name"),
                        ("missing.onnx", "no such file"), (3, "not a file name")]:
        (d / "genai_config.json").write_text(json.dumps({"model": {"decoder": {"filename": bad}}}))
        with pytest.raises(Int4OnnxError, match=needle):
            folders.open_folder(d)
    (d / "genai_config.json").write_text("{not json")
    with pytest.raises(Int4OnnxError, match="cannot read it as JSON"):
        folders.open_folder(d)


def test_bad_outputs_write_nothing(tmp_path):
    src = llama_folder(tmp_path / "src", "genai")
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("mine")
    afile = tmp_path / "afile"
    afile.write_text("mine")
    before_src, before = tree(src), listing(tmp_path)
    cases = [(src, "would overwrite the input folder"), (src / "sub", "would overwrite the input folder"),
             (tmp_path, "would overwrite the input folder"), (full, "exists and is not empty"),
             (afile, "exists and is not a folder"), (tmp_path / "no" / "out", "does not exist")]
    for out, needle in cases:
        r = invoke("convert", src, "-o", out)
        assert r.exit_code == 2, (out, r.output)
        assert needle in r.output and r.output.count("\n") == 1, r.output
    assert tree(src) == before_src and listing(tmp_path) == before and (full / "x").read_text() == "mine"


def test_failure_leaves_nothing(tmp_path):
    """A failure after the temporary folder exists (the model's conversion, an existing custom-op
    library in the config) removes it: no output folder, no temporary."""
    src = llama_folder(tmp_path / "src", "genai")
    before = listing(tmp_path)
    config = (src / "genai_config.json").read_text()
    cfg = json.loads(config)
    cfg["model"]["decoder"]["session_options"]["custom_ops_library"] = "other.so"
    (src / "genai_config.json").write_text(json.dumps(cfg))
    r = invoke("convert", src, "-o", tmp_path / "out")
    assert r.exit_code == 2 and "already 'other.so'" in r.output
    (src / "genai_config.json").write_text(config)
    r = invoke("convert", src, "-o", tmp_path / "out", "--exclude", ".*")  # nothing to quantize: exit 3
    assert r.exit_code == 3, r.output
    r = invoke("convert", src, "-o", tmp_path / "out", "--format", "matmulnbits", "--calibration", tmp_path / "no.npz",
               "--method", "gptq")
    assert r.exit_code == 2, r.output
    assert listing(tmp_path) == before


def test_converted_folder_matches_converted_file(tmp_path):
    """The folder's model is the same conversion as the file's: equal logits."""
    src = llama_folder(tmp_path / "src", "optimum")
    assert invoke("convert", src, "-o", tmp_path / "out").exit_code == 0
    assert invoke("convert", src / "model.onnx", "-o", tmp_path / "file.onnx").exit_code == 0
    ids = np.array([[1, 2, 3, 4]], np.int64)
    feeds = []
    for path in (tmp_path / "out" / "model.onnx", tmp_path / "file.onnx"):
        s = make_session(path)
        feed = {"input_ids": ids, "attention_mask": np.ones((1, 4), np.int64), "position_ids": np.arange(4)[None]}
        for i in s.get_inputs():
            if i.name.startswith("past"):
                feed[i.name] = np.zeros((1, 2, 0, 16), np.float32)
        feeds.append(s.run(["logits"], feed)[0])
    np.testing.assert_array_equal(feeds[0], feeds[1])
    assert np.abs(feeds[0]).max() > 0


def test_matmulnbits_defaults_to_accuracy_level_4(tmp_path):
    """--format matmulnbits writes accuracy_level 4 (int8 activations) unless --compute fp32 is given."""
    import onnx

    src = llama_folder(tmp_path / "src", "optimum")
    levels = {}
    for name, args in [("default", []), ("fp32", ["--compute", "fp32"])]:
        r = invoke("convert", src / "model.onnx", "-o", tmp_path / f"{name}.onnx", "--format", "matmulnbits", *args)
        assert r.exit_code == 0, r.output
        nodes = [n for n in onnx.load(str(tmp_path / f"{name}.onnx")).graph.node if n.op_type == "MatMulNBits"]
        levels[name] = {next((a.i for a in n.attribute if a.name == "accuracy_level"), 0) for n in nodes}
    assert levels == {"default": {4}, "fp32": {0}}
    assert int4onnx.QuantConfig(format="matmulnbits").compute == "int8"
    assert int4onnx.QuantConfig().compute == "fp32" and int4onnx.QuantConfig(format="qdq").compute == "fp32"


def test_ops_library_option(tmp_path):
    """--ops-library puts a given build (a device's) into a GenAI folder; refused where no library goes."""
    src = llama_folder(tmp_path / "src", "genai")
    lib = tmp_path / "libdevice.so"
    lib.write_bytes(b"\x7fELF device build")
    r = invoke("convert", src, "-o", tmp_path / "out", "--ops-library", lib)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out" / folders.LIBRARY_NAME).read_bytes() == lib.read_bytes()
    before = listing(tmp_path)
    for args, needle in [(["--format", "matmulnbits"], "--ops-library is for GenAI folders"),
                         ([], "no such file")]:
        r = invoke("convert", src, "-o", tmp_path / "o2", "--ops-library", tmp_path / "missing.so" if not args else lib,
                   *args)
        assert r.exit_code == 2 and needle in r.output, r.output
    r = invoke("convert", src / "model.onnx", "-o", tmp_path / "m.onnx", "--ops-library", lib)
    assert r.exit_code == 2 and "for model folders" in r.output
    assert listing(tmp_path) == before


@pytest.mark.parametrize("where", ["conversion", "copy"])
def test_interrupt_or_failure_midway_leaves_nothing(tmp_path, monkeypatch, where):
    """Ctrl-C during the conversion, or a disk error while the side files are copied: no output folder
    and no temporary folder are left, and the CLI says nothing was written."""
    import shutil

    from int4onnx import pipeline

    src = llama_folder(tmp_path / "src", "genai")
    before = listing(tmp_path)
    if where == "conversion":
        real = pipeline.quantize_file

        def interrupted(*args, **kwargs):
            real(*args, **kwargs)  # the model is written into the temporary folder, then Ctrl-C
            raise KeyboardInterrupt

        monkeypatch.setattr(pipeline, "quantize_file", interrupted)
    else:
        def full(*args, **kwargs):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(shutil, "copy2", full)
    r = invoke("convert", src, "-o", tmp_path / "out")
    if where == "conversion":
        assert r.exit_code == 130 and "nothing was written" in r.output, r.output
    else:
        assert r.exit_code == 2 and "cannot write" in r.output and "No space left on device" in r.output, r.output
    assert listing(tmp_path) == before


def test_report_cannot_overwrite_a_side_file_and_model_in_a_subfolder(tmp_path):
    src = llama_folder(tmp_path / "src", "genai", filename="onnx/decoder.onnx")
    before = tree(src)
    r = invoke("convert", src, "-o", tmp_path / "out", "--report", src / "tokenizer.json")
    assert r.exit_code == 2 and "would overwrite the input folder's file" in r.output, r.output
    assert tree(src) == before and not (tmp_path / "out").exists()
    r = invoke("convert", src, "-o", tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert "MatMulInt4" in ops(tmp_path / "out" / "onnx" / "decoder.onnx")
    assert json.loads((tmp_path / "out" / "genai_config.json").read_text())["model"]["decoder"]["filename"] == \
        "onnx/decoder.onnx"
