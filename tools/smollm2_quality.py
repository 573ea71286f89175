"""Issue 13's quality target on SmolLM2-135M: bits per weight, wikitext-2 perplexity, greedy agreement.

    python tools/smollm2_quality.py --out q/ fp32                                   # the reference only
    python tools/smollm2_quality.py --out q/ convert --method gptq --group-size 32 --double-quant --lm-head 4 \\
        --calibration-text ../shared/data/corpora/wikitext2_valid.txt --calibration-samples 8
    python tools/smollm2_quality.py --out q/ ort rtn --block-size 32             # ONNX Runtime's quantizer
    python tools/smollm2_quality.py --out q/ ort hqq --block-size 32 --python /work/venv-torch/bin/python

`convert ...` runs `int4onnx convert MODEL -o OUT/<label> ...` with the options given (a child process:
wall time and peak RSS are measured; `--tokenizer` defaults to the folder's), `ort ALGO` runs ONNX
Runtime's `MatMulNBitsQuantizer` (rtn: DefaultWeightOnlyQuantConfig, k_quant:
KQuantWeightOnlyQuantConfig, hqq: HQQWeightOnlyQuantConfig, gptq: GPTQWeightOnlyQuantConfig on
--calibration-samples windows of --sequence-length tokens of wikitext-2 valid; hqq and gptq import torch) on the same model,
in a child process of `--python` (default this one; for hqq and gptq a separate venv with torch,
onnxruntime, onnx, onnx-ir, numpy: the child needs nothing of int4onnx; the scoring stays in this process).
Each result is scored the same way:

- bits per weight: the bytes of every initializer of the output that is not one of the fp32 model's
  non-weight initializers (norm weights, constants), times 8, over the number of weights of the fp32
  model's MatMul weights and token tables (the tied table counted once): codes, scales, zero points,
  super-scales, a second zero-point copy, and any weight left float (32 bits) are all counted;
- perplexity on wikitext-2 test, the first 16,384 predicted tokens (62,488 characters, 16,385 tokens),
  non-overlapping 512-token windows (`int4onnx.runtime.perplexity`, as `int4onnx eval --perplexity`);
- greedy agreement: `int4onnx.tools.generate.generate` on the fixed PROMPTS below, 32 new tokens each; a
  prompt's score is the length of the prefix its tokens share with fp32's (32 when the same).

fp32's perplexity and tokens are computed once and cached in OUT/fp32.json. Each row is printed as
markdown and appended to OUT/results.jsonl.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import resource
import shlex
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "models"))

from paths import SHARED  # noqa: E402

WIKITEXT = SHARED / "corpora" / "wikitext2_test.txt"
EVAL_CHARS = 62488  # the first 16,385 tokens of wikitext-2 test: 16,384 predictions
EVAL_TOKENS = 16385
WINDOW = 512
NEW_TOKENS = 32
# (prompt, chat template?): four questions to the instruct model, four plain continuations
PROMPTS = [
    ("What is the capital of France?", True),
    ("Explain what photosynthesis is in two sentences.", True),
    ("Write a short poem about the sea.", True),
    ("Give three tips for learning a new language.", True),
    ("Once upon a time, in a small village by the river,", False),
    ("The history of the Roman Empire began", False),
    ("In mathematics, a prime number is", False),
    ("The best way to cook rice is", False),
]


def default_model() -> pathlib.Path:
    for p in (ROOT / "models" / "smollm2", ROOT.parent / "main" / "models" / "smollm2"):
        if (p / "model.onnx").is_file():
            return p
    return ROOT / "models" / "smollm2"


# -- scoring ----------------------------------------------------------------------------------------


def _initializers(path: pathlib.Path) -> dict[str, int]:
    """name -> bytes of every initializer of the model (all graphs), external data not loaded."""
    import onnx_ir as ir

    model = ir.load(str(path))
    return {v.name: v.const_value.nbytes for g in model.graphs() for v in g.initializers.values()
            if v.const_value is not None}


def weight_census(fp32_model: pathlib.Path) -> tuple[set[str], int]:
    """The fp32 model's non-weight initializer names, and its number of weights (2-D float tables read by
    MatMul/Gemm, directly or through Transpose, or by Gather)."""
    import onnx_ir as ir

    model = ir.load(str(fp32_model))
    weights: dict[str, int] = {}
    for g in model.graphs():
        for node in g:
            reads = []
            if node.op_type in ("MatMul", "Gemm") and len(node.inputs) > 1:
                reads.append(node.inputs[1])
            if node.op_type == "Gather" and node.inputs:
                reads.append(node.inputs[0])
            for v in reads:
                p = v.producer() if v is not None else None
                if p is not None and p.op_type in ("Transpose", "Identity"):
                    v = p.inputs[0]
                if v is not None and v.const_value is not None and len(v.const_value.shape) == 2:
                    weights[v.name] = int(v.const_value.shape[0]) * int(v.const_value.shape[1])
    others = {name for name in _initializers(fp32_model) if name not in weights}
    return others, sum(weights.values())


def bits_per_weight(model: pathlib.Path, fp32_model: pathlib.Path) -> float:
    others, n = weight_census(fp32_model)
    stored = sum(b for name, b in _initializers(model).items() if name not in others)
    return 8 * stored / n


def eval_tokens(tokenizer: pathlib.Path) -> list[int]:
    from int4onnx.calibrate import FeedSource

    tokens = FeedSource(text=str(WIKITEXT), tokenizer=str(tokenizer), max_chars=EVAL_CHARS).tokens()
    if len(tokens) < EVAL_TOKENS:
        sys.exit(f"smollm2_quality: {WIKITEXT} gave {len(tokens)} tokens, expected {EVAL_TOKENS}")
    return tokens[:EVAL_TOKENS]


def score(folder: pathlib.Path, tokenizer: pathlib.Path, threads: int | None) -> dict:
    """Perplexity and the greedy tokens of a model folder (or .onnx beside its tokenizer)."""
    from int4onnx.folder import model_path
    from int4onnx.runtime import make_session, perplexity
    from int4onnx.tools.generate import generate

    t = time.perf_counter()
    ppl, n = perplexity(make_session(model_path(folder), threads=threads), eval_tokens(tokenizer), window=WINDOW)
    t_ppl = time.perf_counter() - t
    gens = [generate(folder, p, tokenizer=str(tokenizer), max_new_tokens=NEW_TOKENS, chat=chat, threads=threads)
            for p, chat in PROMPTS]
    return {"perplexity": ppl, "predicted_tokens": n, "perplexity_s": round(t_ppl, 1),
            "tokens": [g.tokens for g in gens], "texts": [g.text for g in gens]}


def agreement(tokens: list[int], reference: list[int]) -> int:
    """Length of the common prefix of two greedy continuations (NEW_TOKENS when they are equal)."""
    if tokens[:NEW_TOKENS] == reference[:NEW_TOKENS]:
        return NEW_TOKENS
    n = 0
    for a, b in zip(tokens, reference, strict=False):
        if a != b:
            break
        n += 1
    return n


def fp32_reference(model: pathlib.Path, tokenizer: pathlib.Path, out: pathlib.Path, threads) -> dict:
    key = hashlib.sha256(json.dumps([str(model.resolve()), PROMPTS, NEW_TOKENS, EVAL_CHARS]).encode()).hexdigest()
    cache = out / "fp32.json"
    if cache.is_file():
        ref = json.loads(cache.read_text())
        if ref.get("key") == key:
            return ref
    ref = {"key": key, **score(model, tokenizer, threads)}
    cache.write_text(json.dumps(ref))
    return ref


# -- producing a candidate ----------------------------------------------------------------------------


def run_convert(model: pathlib.Path, target: pathlib.Path, options: list[str], tokenizer: pathlib.Path) -> dict:
    if "--calibration-text" in options and "--tokenizer" not in options:
        options = [*options, "--tokenizer", str(tokenizer)]
    report = target.with_name(target.name + ".report.json")
    cmd = [sys.executable, "-c", "from int4onnx.cli import main; main()", "convert", str(model), "-o", str(target),
           "-q", "--report", str(report), *options]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"smollm2_quality: convert failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    rep = json.loads(report.read_text())
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # MB, the largest child so far
    return {"command": "int4onnx convert MODEL -o OUT " + shlex.join(options), "convert_s": round(seconds, 1),
            "peak_rss_mb": round(peak), "report_bits_per_weight": rep["bits_per_weight"],
            "output_rel_error": _mean_metric(rep, "output_rel_error")}


def _mean_metric(rep: dict, name: str) -> float | None:
    vals = [(layer[name], layer["K"] * layer["N"]) for layer in rep["layers"] if name in layer]
    if not vals or len(vals) != len(rep["layers"]):
        return None
    return round(sum(v * n for v, n in vals) / sum(n for _, n in vals), 5)


def untied_copy(model: pathlib.Path, folder: pathlib.Path) -> pathlib.Path:
    """A copy of the model whose MatMuls reading Transpose(constant) (the tied lm_head) read a transposed
    initializer of their own: ONNX Runtime's quantizer only quantizes a MatMul whose weight is an
    initializer. The table is then stored twice (once for the Gather, once for the lm_head)."""
    import onnx_ir as ir

    from int4onnx import io

    m = ir.load(str(model))
    for node in list(m.graph):
        w = node.inputs[1] if node.op_type == "MatMul" and len(node.inputs) > 1 else None
        p = w.producer() if w is not None else None
        if p is None or p.op_type != "Transpose" or p.inputs[0].const_value is None:
            continue
        table = p.inputs[0]
        t = ir.Tensor(np.ascontiguousarray(table.const_value.numpy().T), name=f"{table.name}_lm_head")
        v = ir.Value(name=t.name, shape=ir.Shape(t.shape), type=ir.TensorType(t.dtype), const_value=t)
        m.graph.register_initializer(v)
        node.replace_input_with(1, v)
    folder.mkdir(parents=True)
    io.save_model_atomic(m, folder / "model.onnx", external_data=True)
    return folder / "model.onnx"


ORT_ALGOS = ("rtn", "k_quant", "hqq", "gptq")
TORCH_ALGOS = ("hqq", "gptq")  # ONNX Runtime's code for them imports torch (gptq: to_numpy, even on numpy feeds)
CALIBRATION_TEXT = SHARED / "corpora" / "wikitext2_valid.txt"


def check_ort_python(algo: str, python: str | None) -> str:
    """The interpreter that runs ONNX Runtime's quantizer for `ort ALGO` (--python, else this one), checked
    up front (before the minutes of the fp32 reference) to import what ALGO needs; exits with one line if not."""
    exe = python or sys.executable
    if python is not None and not (pathlib.Path(python).is_file() and os.access(python, os.X_OK)):
        sys.exit(f"smollm2_quality: --python {python}: no such executable")
    needs = ["onnxruntime.quantization.matmul_nbits_quantizer"] + (["torch"] if algo in TORCH_ALGOS else [])
    proc = subprocess.run([exe, "-c", f"import {', '.join(needs)}"], capture_output=True, text=True)
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        hint = (f"ort {algo} needs torch: give --python /path/to/venv/bin/python, a separate venv with torch, "
                "onnxruntime, onnx, onnx-ir and numpy (docs/methods.md)") if algo in TORCH_ALGOS else "give --python"
        sys.exit(f"smollm2_quality: {exe} cannot import {', '.join(needs)} ({why}); {hint}")
    return exe


def ort_feeds(model: pathlib.Path, tokenizer: pathlib.Path, text: pathlib.Path, samples: int, length: int,
              path: pathlib.Path) -> None:
    """GPTQ's calibration feeds, as `int4onnx convert --calibration-text` builds them (`length`-token windows,
    an empty past), written to one .npz (key "i/input name") for ort_quantize."""
    from int4onnx.calibrate import FeedSource
    from int4onnx.lm import LMInterface, session_inputs
    from int4onnx.runtime import make_session

    session = make_session(model / "model.onnx")
    lm = LMInterface.from_session(session, path=model)
    feeds = FeedSource(text=str(text), tokenizer=str(tokenizer), samples=samples,
                       sequence_length=length).feeds(session_inputs(session), lm)
    lm.settle_feeds(session, feeds)
    np.savez(path, **{f"{i}/{k}": v for i, feed in enumerate(feeds) for k, v in feed.items()})


def ort_quantize(source: str, target: str, algo: str, block_size: int, symmetric: bool, accuracy_level: int | None,
                 untie: bool, feeds: str | None = None) -> None:
    """ONNX Runtime's MatMulNBitsQuantizer on `source`, written to `target`/model.onnx. Needs only onnx,
    onnxruntime and numpy (and torch for hqq and gptq): run_ort runs it in a child, possibly another venv's Python."""
    import logging

    import onnx
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)  # a line per node otherwise
    if algo == "rtn":
        ops = ("MatMul", "Gather") if untie else None
        config = mnq.DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric,
                                                  accuracy_level=accuracy_level, op_types_to_quantize=ops)
    elif algo == "k_quant":
        config = mnq.KQuantWeightOnlyQuantConfig()
    elif algo == "hqq":  # ONNX Runtime's HQQ quantizes MatMuls only (a Gather raises NotImplementedError)
        config = mnq.HQQWeightOnlyQuantConfig(block_size=block_size)
    else:
        data = np.load(feeds)
        samples: dict[int, dict] = {}
        for key in data.files:
            i, name = key.split("/", 1)
            samples.setdefault(int(i), {})[name] = data[key]

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.items = iter([samples[i] for i in sorted(samples)])

            def get_next(self):
                return next(self.items, None)

        config = mnq.GPTQWeightOnlyQuantConfig(calibration_data_reader=Reader())  # ONNX Runtime's defaults
    # k_quant's and GPTQ's model wrapper imports transformers when a config.json lies beside a model given by path
    q = mnq.MatMulNBitsQuantizer(onnx.load(source) if algo in ("k_quant", "gptq") else source, block_size=block_size,
                                 is_symmetric=symmetric, accuracy_level=accuracy_level, algo_config=config)
    q.process()
    proto = q.model.model  # the quantized ModelProto (both of ONNX Runtime's model wrappers have it)
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):  # the k_quant path forgets it
        proto.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    out = pathlib.Path(target)
    out.mkdir(parents=True)
    onnx.save_model(proto, str(out / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    onnx.checker.check_model(str(out / "model.onnx"))


def run_ort(model: pathlib.Path, target: pathlib.Path, algo: str, block_size: int, symmetric: bool,
            accuracy_level: int | None, untie: bool, python: str | None = None, samples: int = 16,
            length: int = WINDOW) -> dict:
    """ONNX Runtime's MatMulNBitsQuantizer on the model (ort_quantize in a child process of `python`, default
    this one, checked by check_ort_python: wall time and peak RSS are measured); the folder's side files
    copied beside the output.
    untie: quantize the lm_head (a copy of the tied table, see untied_copy); rtn also quantizes the token
    Gather (GatherBlockQuantized). gptq: calibrated on `samples` windows of `length` tokens of wikitext-2 valid."""
    exe = python or sys.executable
    source = untied_copy(model / "model.onnx", target.with_name(target.name + ".untied")) if untie \
        else model / "model.onnx"
    feeds = target.with_name(target.name + ".feeds.npz") if algo == "gptq" else None
    if feeds is not None:
        ort_feeds(model, model / "tokenizer.json", CALIBRATION_TEXT, samples, length, feeds)
    args = {"source": str(source), "target": str(target), "algo": algo, "block_size": block_size,
            "symmetric": symmetric, "accuracy_level": accuracy_level, "untie": untie,
            "feeds": str(feeds) if feeds else None}
    child = (f"import json, sys; sys.path.insert(0, {str(ROOT / 'tools')!r}); import smollm2_quality as s; "
             "s.ort_quantize(**json.loads(sys.argv[1]))")
    t = time.perf_counter()
    proc = subprocess.run([exe, "-c", child, json.dumps(args)], capture_output=True, text=True)
    seconds = time.perf_counter() - t
    for p in (source.parent if untie else None, feeds):
        if p is not None and p.is_dir():
            shutil.rmtree(p)
        elif p is not None and p.exists():
            p.unlink()
    if proc.returncode != 0:
        shutil.rmtree(target, ignore_errors=True)
        sys.exit(f"smollm2_quality: ONNX Runtime's {algo} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    for f in model.iterdir():
        if f.is_file() and not f.name.startswith("model.onnx"):
            shutil.copy2(f, target / f.name)
    opts = f"--block-size {block_size}" + (" --symmetric" if symmetric else "") + (" --untie" if untie else "") + \
        (f" --accuracy-level {accuracy_level}" if accuracy_level is not None else "") + \
        (f" --calibration-samples {samples} --sequence-length {length}" if algo == "gptq" else "") + (" --python TORCH_PY" if exe != sys.executable else "")
    return {"command": f"python tools/smollm2_quality.py ort {algo} {opts}", "convert_s": round(seconds, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)}


def float_min_grid(w: np.ndarray, block: int, scale_bits: int | None, coding: str = "min") -> np.ndarray:
    """Dequantized [K, N] weight on a Q4_1-style grid (GGUF's Q4_1: w = d * q + m, q in 0..15, a scale d and
    a float minimum m per block of `block` along K). scale_bits None: d and m kept in float16 (Q4_1 itself,
    5.0 bits per weight at block 32); 8: d and m each rounded to int8 codes of a float32 super-scale per
    output column (4.5 + 64 / K bits per weight at block 32).
    coding "zero-point": the minimum stored as a real zero point z = -m / d (w = (q - z) * d): the
    converter's own grid (`--float-zero-points`, int4onnx.quant.grid), float16 d and z, or int8 codes of
    float32 super-scales per column (`--double-quant` at K >= 256)."""
    if coding == "zero-point":
        from int4onnx.quant.grid import Grid
        from int4onnx.quant.rtn import quantize_grid

        grid = Grid(4, False, scale_dtype="int8" if scale_bits else "float16", float_zero_points=True)
        return quantize_grid(w, grid, block).dequantize()
    K, N = w.shape
    g = w.reshape(K // block, block, N)
    lo, hi = g.min(axis=1), g.max(axis=1)
    d, m = (hi - lo) / 15, lo
    if scale_bits is None:
        d, m = d.astype(np.float16).astype(np.float32), m.astype(np.float16).astype(np.float32)
    else:
        top = 2 ** (scale_bits - 1) - 1
        for a in (d, m):
            step = np.maximum(np.abs(a).max(axis=0), 1e-30) / top  # one float32 super-scale per column
            a[...] = np.round(a / step) * step
    safe = np.where(d > 0, d, 1)
    q = np.clip(np.round((g - m[:, None, :]) / safe[:, None, :]), 0, 15)
    return (q * d[:, None, :] + m[:, None, :]).reshape(K, N).astype(np.float32)


def run_simulate(model: pathlib.Path, target: pathlib.Path, scale_bits: int | None, coding: str = "min") -> dict:
    """The fp32 model with every MatMul weight that is an initializer (the body; the tied lm_head reads a
    Transpose and stays float) replaced by its float_min_grid dequantization."""
    import onnx_ir as ir

    from int4onnx import io

    t = time.perf_counter()
    m = ir.load(str(model / "model.onnx"))
    weights = stored = 0
    for node in m.graph:
        w = node.inputs[1] if node.op_type == "MatMul" and len(node.inputs) > 1 else None
        if w is None or w.const_value is None or w.name not in m.graph.initializers:
            continue
        K, N = (int(x) for x in w.const_value.shape)
        w.const_value = ir.Tensor(float_min_grid(w.const_value.numpy(), 32, scale_bits, coding), name=w.name)
        weights += K * N  # codes, d and m per block of 32; int8: two float32 super-scales per column
        stored += K * N * 4 + (K // 32) * N * 2 * (scale_bits or 16) + (N * 64 if scale_bits else 0)
    target.mkdir(parents=True)
    io.save_model_atomic(m, target / "model.onnx", external_data=True)
    for f in model.iterdir():
        if f.is_file() and not f.name.startswith("model.onnx"):
            shutil.copy2(f, target / f.name)
    return {"command": "python tools/smollm2_quality.py simulate" + (f" --scale-bits {scale_bits}" if scale_bits else "")
            + (f" --coding {coding}" if coding != "min" else ""),
            "convert_s": round(time.perf_counter() - t, 1), "bits_per_weight": round(stored / weights, 4)}


# -- main -----------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=pathlib.Path, default=None, help="the fp32 SmolLM2 folder (default: models/smollm2)")
    ap.add_argument("--out", type=pathlib.Path, required=True, help="folder for outputs, fp32.json, results.jsonl")
    ap.add_argument("--label", help="row label (default: the options)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the converted model")
    sub = ap.add_subparsers(dest="what", required=True)
    sub.add_parser("fp32", help="only the reference")
    sub.add_parser("convert", help="int4onnx convert with the options that follow (any convert option)")
    ort = sub.add_parser("ort", help="ONNX Runtime's MatMulNBitsQuantizer")
    ort.add_argument("algo", choices=ORT_ALGOS)
    ort.add_argument("--block-size", type=int, default=32)
    ort.add_argument("--symmetric", action="store_true")
    ort.add_argument("--accuracy-level", type=int, default=None)
    ort.add_argument("--untie", action="store_true", help="quantize the lm_head (own copy of the table); rtn: and the "
                     "Gather (with ONNX Runtime 1.32 the output fails ONNX's checker, docs/methods.md)")
    ort.add_argument("--python", help="the Python that runs ONNX Runtime's quantizer (default: this one); hqq and gptq "
                     "need torch: a separate venv with torch, onnxruntime, onnx, onnx-ir and numpy")
    ort.add_argument("--calibration-samples", type=int, default=16, help="gptq: windows of wikitext-2 valid "
                     "(default 16, as the convert rows)")
    ort.add_argument("--sequence-length", type=int, default=WINDOW, help="gptq: tokens per window (default 512)")
    sim = sub.add_parser("simulate", help="the body on a Q4_1-style float-min grid (fake-quantized, lm_head float)")
    sim.add_argument("--scale-bits", type=int, choices=[8], default=None, help="int8 scales and minimums (default fp16)")
    sim.add_argument("--coding", choices=["min", "zero-point"], default="min",
                     help="store the float minimum m (Q4_1), or the real zero point z = -m / d (the op's float zero points)")
    a, options = ap.parse_known_args(argv)
    if options and a.what != "convert":
        ap.error(f"unrecognized arguments: {' '.join(options)}")

    model = (a.model or default_model()).resolve()
    if not (model / "model.onnx").is_file():
        sys.exit(f"smollm2_quality: no model.onnx in {model}; build it with python models/smollm2.py")
    tokenizer = model / "tokenizer.json"
    if a.what == "ort":  # before the fp32 reference's minutes
        if a.calibration_samples < 1 or a.sequence_length < 1:
            ap.error("--calibration-samples and --sequence-length must be at least 1")
        a.python = check_ort_python(a.algo, a.python)
    a.out.mkdir(parents=True, exist_ok=True)
    ref = fp32_reference(model, tokenizer, a.out, a.threads)
    if a.what == "fp32":
        print(f"fp32: perplexity {ref['perplexity']:.4f} on {ref['predicted_tokens']} tokens")
        for (p, _), text in zip(PROMPTS, ref["texts"], strict=True):
            print(f"  {p!r} -> {text!r}")
        return 0

    options = [o for o in options if o != "--"]
    label = a.label or (" ".join(options) if a.what == "convert" else
                        f"simulated float-min grid, scale bits {a.scale_bits or 16}" + ("" if a.coding == "min" else f", {a.coding} coding")
                        if a.what == "simulate" else f"ORT {a.algo} block {a.block_size}"
                        + (" sym" if a.symmetric else " asym") + (" untied" if a.untie else "")
                        + (f" {a.calibration_samples} x {a.sequence_length} tokens" if a.algo == "gptq" else ""))
    target = a.out / hashlib.sha256(label.encode()).hexdigest()[:12]
    for p in (target, *(target.with_name(target.name + x) for x in (".report.json", ".untied", ".feeds.npz"))):
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    if a.what == "convert":
        row = run_convert(model, target, options, tokenizer)
    elif a.what == "simulate":
        row = run_simulate(model, target, a.scale_bits, a.coding)
    else:
        row = run_ort(model, target, a.algo, a.block_size, a.symmetric, a.accuracy_level, a.untie, a.python,
                      a.calibration_samples, a.sequence_length)
    if a.what != "simulate":  # simulate: the body's bits, from the shapes (the lm_head stays float)
        row["bits_per_weight"] = round(bits_per_weight(target / "model.onnx", model / "model.onnx"), 4)
    got = score(target, tokenizer, a.threads)
    agree = [agreement(t, r) for t, r in zip(got["tokens"], ref["tokens"], strict=True)]
    row.update({"label": label, "perplexity": round(got["perplexity"], 4),
                "vs_fp32": round(got["perplexity"] / ref["perplexity"] - 1, 4),
                "agreement": agree, "mean_agreement": sum(agree) / len(agree),
                "texts": got["texts"], "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
                "load": round(os.getloadavg()[0], 1)})
    with open(a.out / "results.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    if not a.keep:
        shutil.rmtree(target)
    print(f"| {label} | {row['bits_per_weight']:.3f} | {row['perplexity']:.2f} ({100 * row['vs_fp32']:+.1f}%) | "
          f"{row['mean_agreement']:.2f} ({' '.join(map(str, agree))}) | {row['convert_s']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
