"""The options are defined once: QuantConfig's fields (with their help, choices and CLI spelling) give
`int4onnx convert` its options, int4onnx/methods.py gives the methods, and the README lists them all."""

import dataclasses
import pathlib
import re

import click
import pytest
from click.testing import CliRunner

from int4onnx import methods
from int4onnx.cli import convert, main
from int4onnx.config import QuantConfig

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
FIELDS = dataclasses.fields(QuantConfig)


def _param(name):
    return next((p for p in convert.params if p.name == name), None)


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f.name)
def test_every_field_is_a_convert_option(field):
    p = _param(field.name)
    assert isinstance(p, click.Option), f"QuantConfig.{field.name} has no `convert` option"
    assert p.help == field.metadata["help"]
    assert p.default == field.metadata.get("cli_default", field.default)
    choices = field.metadata.get("choices")
    if choices:
        assert isinstance(p.type, click.Choice) and tuple(p.type.choices) == choices
    spelling = field.metadata.get("cli") or f"--{field.name.replace('_', '-')}"
    assert spelling.split("/")[0].strip() in p.opts


def test_method_registry_is_the_one_source():
    assert QuantConfig.__dataclass_fields__["method"].metadata["choices"] == methods.NAMES
    assert tuple(_param("method").type.choices) == methods.NAMES
    assert "awq-gptq" in methods.NAMES and "awq-gptq" in _param("method").help
    for m in methods.REGISTRY:
        assert callable(m.load()), m.implementation
        assert f"{m.name}: {m.summary}" in _param("method").help
        if m.calibrated:  # validation reads the registry: no calibration data, one-line error
            with pytest.raises(Exception, match=f"--method {m.name} needs calibration data"):
                QuantConfig(method=m.name)
        else:
            assert QuantConfig(method=m.name).method == m.name


# Two command lines that between them set every QuantConfig field to something other than its default
# (--calibration and --calibration-text, --target-bits and --max-error exclude each other).
COMMAND_LINES = [
    ["--bits", "4", "--group-size", "64", "--symmetric", "--method", "awq-gptq", "--compute", "int8",
     "--exclude", "a", "--exclude", "b.*", "--dtype", "nf4", "--double-quant", "--no-clip-search", "--act-order",
     "--damp", "0.05", "--calibration-text", "t.txt", "--tokenizer", "tok.json", "--calibration-samples", "3",
     "--sequence-length", "8", "--calibration-skip-chars", "5", "--target-bits", "5.5",
     "--sensitivity-samples", "2", "--lm-head", "4", "--embedding", "8", "--lm-head-symmetric"],
    ["--bits", "8", "--asymmetric", "--format", "matmulnbits", "--method", "clip", "--calibration", "cal.npz",
     "--max-error", "0.01", "--lm-head", "float", "--group-size", "-1", "--scale-dtype", "float32",
     "--float-zero-points"],
]


@pytest.fixture()
def configs(monkeypatch):
    """The QuantConfig of each `convert` run, which stops there (no model is read)."""
    import int4onnx.pipeline

    seen = []

    def fake_quantize_file(model, output, config, **kw):
        seen.append(config)
        raise KeyboardInterrupt

    monkeypatch.setattr(int4onnx.pipeline, "quantize_file", fake_quantize_file)
    return seen


def test_command_lines_reach_every_field(tmp_path, configs):
    seen = configs
    for args in COMMAND_LINES:
        CliRunner().invoke(main, ["convert", str(tmp_path / "m.onnx"), *args])
    assert len(seen) == len(COMMAND_LINES)
    default = QuantConfig()
    changed = {f.name for c in seen for f in FIELDS if getattr(c, f.name) != getattr(default, f.name)}
    assert changed == {f.name for f in FIELDS}, "not set from the command line: " + ", ".join(
        sorted({f.name for f in FIELDS} - changed))
    first = seen[0]
    assert first.exclude == ("a", "b.*") and first.quant_type == "nf4" and first.calibration_text == "t.txt"
    assert first.damp == 0.05 and first.target_bits == 5.5 and first.embedding == "8"
    assert seen[1].compute == "int8"  # matmulnbits' default compute, as through the API
    assert seen[1].symmetric is False and seen[1].group_size == -1


def test_symmetric_default_follows_dtype(tmp_path, configs):
    seen = configs
    CliRunner().invoke(main, ["convert", str(tmp_path / "m.onnx"), "--dtype", "nf4"])
    CliRunner().invoke(main, ["convert", str(tmp_path / "m.onnx")])
    assert [c.symmetric for c in seen] == [True, False]


def _readme_options_table() -> str:
    text = README.read_text()
    start = text.index("`convert` options:")
    rows = re.match(r"\s*((?:\|.*\n)+)", text[start + len("`convert` options:"):])
    assert rows, "README: no table after '`convert` options:'"
    return rows.group(1)


def test_readme_table_lists_every_convert_option():
    table = _readme_options_table()
    for p in convert.params:
        if not isinstance(p, click.Option):
            continue
        for opt in p.opts + p.secondary_opts:
            assert re.search(re.escape(opt) + r"(?![\w-])", table), f"README's convert options table lacks {opt}"
        if isinstance(p.type, click.Choice):
            row = next(line for line in table.splitlines() if re.search(re.escape(p.opts[-1]) + r"(?![\w-])", line))
            for choice in p.type.choices:
                assert choice in row, f"README's row for {p.opts[-1]} lacks the choice {choice}"
