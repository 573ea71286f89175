"""MatMul benchmark: fp32 MatMul vs ONNX Runtime's MatMulNBits vs int4onnx's MatMulInt4, in one process.

Each case is a chain of L MatMuls [K, N] (x -> x @ W1 -> ... -> x @ WL) built in code:
  dram   16 x 4096 x 4096 (int4 weights 168 MB, fp32 1.07 GB: far larger than the caches)
  cache  4 x 1024 x 1024 (int4 weights 2.6 MB, fp32 16.8 MB: resident in L2/L3)
All variants compute with the very same quantized weights: random 4-bit codes, block 32, symmetric,
float32 scales; the fp32 model holds those weights dequantized, MatMulNBits and MatMulInt4 the same
packed bytes (the layouts are byte-identical). Variants:
  fp32        onnx MatMul, float32 weights (MLAS SGEMM)
  nbits_acc0  com.microsoft.MatMulNBits, accuracy_level 0 (float activations)
  nbits_acc4  com.microsoft.MatMulNBits, accuracy_level 4 (int8 activations)
  i4o_fp32    com.int4onnx.MatMulInt4, compute "fp32"
  i4o_int8    com.int4onnx.MatMulInt4, compute "int8"
Scale-storage variants (--variants; not in the default run): i4o_fp32_f16 / i4o_int8_f16 store the
scales as float16 (--scale-dtype float16: the weights differ by that rounding), i4o_fp32_dq /
i4o_int8_dq as int8 with a float32 super-scale per column (--double-quant); the op widens both at
session start, so this measures whether the stored type changes anything at run time.
Every round runs each variant once, in turn (int4onnx.bench.time_alternating); medians per variant.
ONNX Runtime's thread spinning is off for every variant (--spin keeps it on; see int4onnx/bench.py).
Reported per variant: median ms per chain, effective weight GB/s (bytes of the weights as stored --
codes + scales, or fp32 -- divided by the time), GFLOP/s (2*M*K*N*L / time); per M the speed-ups
i4o_int8/nbits_acc4, i4o_fp32/nbits_acc0 and i4o_*/fp32 (peer median / our median).

    python tools/bench_matmul.py                                 # 2 threads (or all cores), both cases
    python tools/bench_matmul.py --threads 1,2,4,8,16 --m 1,128 --case dram --json scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import int4onnx
from int4onnx import _native
from int4onnx.bench import NO_SPIN, SPIN, time_alternating
from int4onnx.runtime import make_session

CASES = {"dram": (4096, 4096, 16), "cache": (1024, 1024, 4)}
VARIANTS = ("fp32", "nbits_acc0", "nbits_acc4", "i4o_fp32", "i4o_int8")
SCALE_VARIANTS = ("i4o_fp32_f16", "i4o_int8_f16", "i4o_fp32_dq", "i4o_int8_dq")  # scales stored as float16 / int8
BLOCK = 32
OPSET = 17


def make_weights(K: int, N: int, layers: int, seed: int = 0):
    """Per layer: packed codes [N, nb, 16] (random 4-bit codes) and float32 scales [N, nb] chosen so that
    activations keep unit variance along the chain (codes - 8 have standard deviation ~4.6)."""
    rng = np.random.default_rng(seed)
    nb = _native.n_blocks(K, BLOCK)
    out = []
    for _ in range(layers):
        packed = rng.integers(0, 256, size=(N, nb, _native.blob_bytes(4, BLOCK)), dtype=np.uint8)
        scales = (rng.uniform(0.5, 1.5, size=(N, nb)) / (4.6 * np.sqrt(K))).astype(np.float32)
        out.append((packed, scales))
    return out


def _model(nodes, inits, K, N, opsets):
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", N])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)] + opsets)
    model.ir_version = 10
    return model


def chain_model(variant: str, weights, K: int, N: int) -> onnx.ModelProto:
    nodes, inits, cur = [], [], "x"
    opsets = []
    for i, (packed, scales) in enumerate(weights):
        out = "y" if i == len(weights) - 1 else f"h{i}"
        if variant == "fp32":
            W = _native.dequantize(packed, scales, None, K, N, 4, BLOCK)
            inits.append(numpy_helper.from_array(W, f"w{i}"))
            nodes.append(helper.make_node("MatMul", [cur, f"w{i}"], [out], name=f"mm{i}"))
        else:
            inputs = [cur, f"b{i}", f"s{i}"]
            if variant.endswith("_f16"):
                scales = scales.astype(np.float16)
            elif variant.endswith("_dq"):  # int8 codes times the column's largest scale / 127
                super_scale = (scales.max(axis=1) / 127).astype(np.float32)
                scales = np.clip(np.rint(scales / super_scale[:, None]), 1, 127).astype(np.int8)
                inits.append(numpy_helper.from_array(super_scale, f"ss{i}"))
                inputs = _native.op_inputs(A=cur, B=f"b{i}", scales=f"s{i}", zero_points="", bias="",
                                           scales_scale=f"ss{i}")
            inits += [numpy_helper.from_array(packed, f"b{i}"), numpy_helper.from_array(scales, f"s{i}")]
            if variant.startswith("nbits"):
                nodes.append(helper.make_node("MatMulNBits", [cur, f"b{i}", f"s{i}"], [out], name=f"mm{i}",
                                              domain="com.microsoft", K=K, N=N, bits=4, block_size=BLOCK,
                                              accuracy_level=int(variant[-1])))
            else:
                nodes.append(helper.make_node(_native.OP_NAME, inputs, [out], name=f"mm{i}",
                                              domain=_native.DOMAIN, K=K, N=N, bits=4, block_size=BLOCK,
                                              compute=variant.split("_")[1]))
        cur = out
    if variant.startswith("nbits"):
        opsets.append(helper.make_opsetid("com.microsoft", 1))
    elif variant.startswith("i4o"):
        opsets.append(helper.make_opsetid(_native.DOMAIN, 1))
    return _model(nodes, inits, K, N, opsets)


def weight_bytes(variant: str, K: int, N: int, layers: int) -> int:
    if variant == "fp32":
        return K * N * 4 * layers
    nb = _native.n_blocks(K, BLOCK)
    scale_bytes = N * nb * 2 if variant.endswith("_f16") else N * nb + 4 * N if variant.endswith("_dq") else N * nb * 4
    return (N * nb * _native.blob_bytes(4, BLOCK) + scale_bytes) * layers


def run_case(case: str, threads: int, ms: list[int], repeats: int, variants, log=print, spin: bool = False) -> list[dict]:
    K, N, L = CASES[case]
    weights = make_weights(K, N, L, seed=1)
    sessions = {}
    for v in variants:
        sessions[v] = make_session(chain_model(v, weights, K, N).SerializeToString(), threads=threads,
                                   config=SPIN if spin else NO_SPIN)
    del weights
    rows = []
    rng = np.random.default_rng(2)
    for M in ms:
        x = rng.standard_normal((M, K)).astype(np.float32)
        feeds = {"x": x}
        outs = {v: s.run(None, feeds)[0] for v, s in sessions.items()}
        ref = outs.get("fp32")
        # short chains get more rounds so that every variant runs at least ~0.5 s in total
        timings = time_alternating({v: (lambda s=s, f=feeds: s.run(None, f)) for v, s in sessions.items()},
                                   repeats=repeats, warmup=2, min_seconds=0.5)
        flops = 2.0 * M * K * N * L
        for v in variants:
            t = timings[v].median
            err = None
            if ref is not None and v != "fp32":
                err = float(np.linalg.norm(outs[v] - ref) / np.linalg.norm(ref))
            rows.append({"case": case, "K": K, "N": N, "layers": L, "threads": threads, "M": M, "variant": v,
                         "median_ms": t * 1e3, "best_ms": timings[v].best * 1e3, "rounds": len(timings[v].seconds),
                         "us_per_layer": t * 1e6 / L, "weight_GBps": weight_bytes(v, K, N, L) / t / 1e9,
                         "GFLOPs": flops / t / 1e9, "rel_err_vs_fp32": err})
        log(format_block([r for r in rows if r["M"] == M]))
    return rows


def _get(rows, v):
    for r in rows:
        if r["variant"] == v:
            return r
    return None


def ratios(rows_m: list[dict]) -> dict[str, float]:
    """Speed-ups (peer median / our median) for one (case, threads, M)."""
    pairs = {"int8/acc4": ("i4o_int8", "nbits_acc4"), "fp32/acc0": ("i4o_fp32", "nbits_acc0"),
             "int8/fp32MM": ("i4o_int8", "fp32"), "fp32/fp32MM": ("i4o_fp32", "fp32"),
             # the same kernels with scales stored as float16 or int8, against float32 scales
             "int8_f16/int8": ("i4o_int8_f16", "i4o_int8"), "int8_dq/int8": ("i4o_int8_dq", "i4o_int8"),
             "fp32_f16/fp32": ("i4o_fp32_f16", "i4o_fp32"), "fp32_dq/fp32": ("i4o_fp32_dq", "i4o_fp32")}
    out = {}
    for label, (ours, peer) in pairs.items():
        a, b = _get(rows_m, ours), _get(rows_m, peer)
        if a and b:
            out[label] = b["median_ms"] / a["median_ms"]
    return out


def format_block(rows_m: list[dict]) -> str:
    r0 = rows_m[0]
    head = f"{r0['case']} {r0['layers']}x{r0['K']}x{r0['N']}, M={r0['M']}, {r0['threads']} thread(s)"
    lines = [head, f"  {'variant':<11} {'median ms':>10} {'us/layer':>9} {'weight GB/s':>11} {'GFLOP/s':>8} {'rel.err':>8}"]
    for r in rows_m:
        err = f"{r['rel_err_vs_fp32']:.1e}" if r["rel_err_vs_fp32"] is not None else ""
        lines.append(f"  {r['variant']:<11} {r['median_ms']:>10.3f} {r['us_per_layer']:>9.1f} {r['weight_GBps']:>11.1f} "
                     f"{r['GFLOPs']:>8.1f} {err:>8}")
    rs = ratios(rows_m)
    if rs:
        lines.append("  speed-up: " + ", ".join(f"{k} {v:.2f}x" for k, v in rs.items()))
    return "\n".join(lines)


def markdown(rows: list[dict]) -> str:
    """One table per (case, threads): M down, medians and speed-ups across."""
    out = []
    keys = sorted({(r["case"], r["threads"]) for r in rows}, key=lambda k: (list(CASES).index(k[0]), k[1]))
    for case, threads in keys:
        sel = [r for r in rows if r["case"] == case and r["threads"] == threads]
        K, N, L = sel[0]["K"], sel[0]["N"], sel[0]["layers"]
        variants = [v for v in VARIANTS + SCALE_VARIANTS if any(r["variant"] == v for r in sel)]
        out.append(f"**{case}**: {L} x MatMul {K}x{N}, {threads} thread(s); median ms per chain "
                   f"(weight GB/s | GFLOP/s)\n")
        ratio_keys = list(dict.fromkeys(k for M in sorted({r["M"] for r in sel})
                                        for k in ratios([r for r in sel if r["M"] == M])))
        out.append("| M | " + " | ".join(variants) + " | " + " | ".join(ratio_keys) + " |")
        out.append("|---" * (1 + len(variants) + len(ratio_keys)) + "|")
        for M in sorted({r["M"] for r in sel}):
            rm = [r for r in sel if r["M"] == M]
            cells = []
            for v in variants:
                r = _get(rm, v)
                cells.append(f"{r['median_ms']:.2f} ({r['weight_GBps']:.1f} \\| {r['GFLOPs']:.0f})" if r else "")
            rs = ratios(rm)
            out.append(f"| {M} | " + " | ".join(cells) + " | " + " | ".join(f"{rs[k]:.2f}x" if k in rs else ""
                                                                          for k in ratio_keys) + " |")
        out.append("")
    return "\n".join(out)


def _ints(text: str) -> list[int]:
    try:
        vals = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=_ints, default=[min(2, os.cpu_count() or 1)],
                    help="comma-separated thread counts (intra_op_num_threads), e.g. 1,2,4,8,16")
    ap.add_argument("--m", type=_ints, default=[1, 4, 16, 128, 512], help="rows of activations (tokens)")
    ap.add_argument("--case", choices=[*CASES, "all"], default="all")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"subset of {','.join(VARIANTS + SCALE_VARIANTS)}")
    ap.add_argument("--repeats", type=int, default=15, help="rounds (at least; short runs get more)")
    ap.add_argument("--spin", action="store_true",
                    help="keep ONNX Runtime's thread spinning on (off by default: idle sessions' spinning threads "
                         "would compete with the session being timed)")
    ap.add_argument("--json", help="also write the rows as JSON to this file")
    ap.add_argument("--markdown", help="also write markdown tables to this file")
    args = ap.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    bad = set(variants) - set(VARIANTS) - set(SCALE_VARIANTS)
    if bad:
        ap.error(f"unknown variants {sorted(bad)}")
    cases = list(CASES) if args.case == "all" else [args.case]
    import onnxruntime as ort

    print(f"int4onnx {int4onnx.__version__} (kernels: {', '.join(_native.kernels_available())}; selected "
          f"{_native.kernel_selected('fp32')} / {_native.kernel_selected('int8')}), onnxruntime {ort.__version__}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs")
    rows = []
    for threads in args.threads:
        for case in cases:
            rows += run_case(case, threads, args.m, args.repeats, variants, spin=args.spin)
            print()
    md = markdown(rows)
    print(md)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"onnxruntime": ort.__version__, "int4onnx": int4onnx.__version__,
                       "kernels": _native.kernels_available(), "rows": rows}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
