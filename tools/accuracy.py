"""Accuracy of the quantization methods on the shared real models: perplexity and bits per weight.

    python tools/accuracy.py stories260k [--wikitext]   # TinyStories (first 40,000 chars) and wikitext-2 test
    python tools/accuracy.py tinygpt                     # tiny shakespeare validation split (last 10%)

Every configuration is converted with the int4onnx API (calibration data never overlaps the
evaluation text) and evaluated with int4onnx.runtime.perplexity; the table is printed as markdown.
Bits per weight count codes, scales, zero points and super-scales of all quantized MatMul weights.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "models"))

from paths import SHARED  # noqa: E402

import int4onnx  # noqa: E402
from int4onnx.runtime import Tokenizer, make_session, perplexity  # noqa: E402

STORIES = SHARED / "models" / "stories260K"
TINYSTORIES = SHARED / "corpora" / "tinystories_Niklas6_sample.txt"
SHAKESPEARE = SHARED / "corpora" / "tinyshakespeare_input.txt"
WIKITEXT = SHARED / "corpora" / "wikitext2_test.txt"

# (label, options); all quantize every MatMul weight at 4 bits unless mixed precision says otherwise
STORIES_CONFIGS = [
    ("RTN, group 32", dict(method="rtn", group_size=32)),
    ("RTN, group 16", dict(method="rtn", group_size=16)),
    ("RTN, per-channel", dict(method="rtn", group_size=-1)),
    ("clip, per-channel", dict(method="clip", group_size=-1)),
    ("AWQ, per-channel", dict(method="awq", group_size=-1)),
    ("GPTQ, per-channel", dict(method="gptq", group_size=-1)),
    ("GPTQ, per-channel, act-order", dict(method="gptq", group_size=-1, act_order=True)),
    ("GPTQ, per-channel, 128 samples", dict(method="gptq", group_size=-1, calibration_samples=128)),
    ("GPTQ + mixed precision, --target-bits 4.6", dict(method="gptq", group_size=-1, target_bits=4.6)),
    ("GPTQ, group 32", dict(method="gptq", group_size=32)),
    ("GPTQ, group 16", dict(method="gptq", group_size=16)),
    # all 159 calibration windows the text after the evaluation span holds
    ("AWQ+GPTQ, group 32, int8 scales, act-order, 159 samples",
     dict(method="awq-gptq", group_size=32, double_quant=True, act_order=True, calibration_samples=159)),
    ("AWQ+GPTQ, int8 scales, act-order, 159 samples, --target-bits 4.6 (best)",
     dict(method="awq-gptq", group_size=32, double_quant=True, act_order=True, calibration_samples=159, target_bits=4.6)),
]
TINYGPT_CONFIGS = [
    ("RTN, group 32", dict(method="rtn", group_size=32)),
    ("RTN, group 64", dict(method="rtn", group_size=64)),
    ("clip, group 64", dict(method="clip", group_size=64)),
    ("AWQ, group 64", dict(method="awq", group_size=64)),
    ("GPTQ, group 64", dict(method="gptq", group_size=64)),
    ("RTN, group 32, int8 scales", dict(method="rtn", group_size=32, double_quant=True)),
    ("AWQ, group 32, int8 scales", dict(method="awq", group_size=32, double_quant=True)),
    ("GPTQ, group 32, int8 scales", dict(method="gptq", group_size=32, double_quant=True)),
    ("GPTQ, group 32, int8 scales, act-order", dict(method="gptq", group_size=32, double_quant=True, act_order=True)),
    ("GPTQ + mixed precision, --target-bits 4.6", dict(method="gptq", group_size=64, target_bits=4.6)),
    ("AWQ+GPTQ, group 32, int8 scales, act-order", dict(method="awq-gptq", group_size=32, double_quant=True, act_order=True)),
    ("GPTQ, int8 scales, act-order, --target-bits 4.6 (best)",
     dict(method="gptq", group_size=32, double_quant=True, act_order=True, target_bits=4.6)),
]


def run(model, configs, calibration: dict, evals: dict, window: int, out_dir: pathlib.Path) -> None:
    ref = make_session(str(model))
    base = {name: perplexity(ref, ids, window=window)[0] for name, ids in evals.items()}
    cols = " | ".join(f"{n} ppl" for n in evals)
    print(f"| configuration | bits/weight | {cols} | convert s |")
    print("|---|---|" + "---|" * len(evals) + "---|")
    print(f"| fp32 | 32 | {' | '.join(f'{base[n]:.4f}' for n in evals)} | |")
    for label, opts in configs:
        out = out_dir / "q.onnx"
        options = {**calibration, "lm_head": "4", **opts}
        if options["method"] == "rtn" and "target_bits" not in options:
            options = {k: v for k, v in options.items() if not k.startswith(("calibration", "tokenizer", "sequence"))}
        t = time.perf_counter()
        report = int4onnx.quantize(model, out, **options)
        seconds = time.perf_counter() - t
        sess = make_session(str(out))
        ppl = {name: perplexity(sess, ids, window=window)[0] for name, ids in evals.items()}
        print(f"| {label} | {report.bits_per_weight:.3f} | {' | '.join(f'{ppl[n]:.4f}' for n in evals)} | "
              f"{seconds:.1f} |", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=["stories260k", "tinygpt"])
    ap.add_argument("--wikitext", action="store_true", help="stories260k: also wikitext-2 test (slow)")
    ap.add_argument("--only", help="run only configurations whose label contains this")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        if a.model == "stories260k":
            model = STORIES / "stories260K.onnx"
            tok = Tokenizer(STORIES / "tok512.model")
            evals = {"TinyStories 40K": tok.encode_document(TINYSTORIES.read_text(encoding="utf-8")[:40000])}
            if a.wikitext:
                evals["wikitext-2 test"] = tok.encode_document(WIKITEXT.read_text(encoding="utf-8"))
            calibration = dict(calibration_text=str(TINYSTORIES), tokenizer=str(STORIES / "tok512.model"),
                               calibration_skip_chars=40000, calibration_samples=32, sequence_length=512)
            configs, window = STORIES_CONFIGS, 512
        else:
            import tinygpt

            model, tok_path = tinygpt.export(tmp / "tinygpt_char.onnx")
            text = SHAKESPEARE.read_text(encoding="utf-8")
            split = tinygpt.validation_split()
            evals = {"shakespeare val": Tokenizer(tok_path).encode_document(text[split:])}
            calibration = dict(calibration_text=str(SHAKESPEARE), tokenizer=str(tok_path), calibration_samples=64,
                               sequence_length=128)  # the first 8,192 characters: training split
            configs, window = TINYGPT_CONFIGS, 128
        if a.only:
            configs = [c for c in configs if a.only in c[0]]
        run(model, configs, calibration, evals, window, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
