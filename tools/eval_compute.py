"""Accuracy of the two compute paths of MatMulInt4 (`--compute fp32` vs `--compute int8`).

1. Model level: perplexity of stories260K (the real llama2.c model) on the first 40,000 characters of
   the shared TinyStories sample, fp32 model vs int4 weights with each compute path (and ONNX
   Runtime's MatMulNBits with the same weights at accuracy levels 0 and 4, for comparison).
2. Kernel level: relative error (Frobenius norm) of each path against the float64 product with the
   same dequantized weights, on activations of transformer-like statistics (normal, plus a few outlier
   channels 20x larger, as in LLM hidden states), K = 4096, block 32 and 128.

    python tools/eval_compute.py [--threads N]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "models"))

from paths import SHARED  # noqa: E402

import int4onnx  # noqa: E402
from int4onnx import _native  # noqa: E402
from int4onnx.quant.rtn import quantize_rtn  # noqa: E402
from int4onnx.runtime import Tokenizer, make_session, perplexity  # noqa: E402


def model_level(threads: int) -> None:
    src = SHARED / "models" / "stories260K" / "stories260K.onnx"
    text = (SHARED / "corpora" / "tinystories_Niklas6_sample.txt").read_text()[:40000]
    tok = Tokenizer(SHARED / "models" / "stories260K" / "tok512.model")
    ids = tok.encode_document(text)
    base, n = perplexity(make_session(src, threads=threads), ids)
    print(f"stories260K perplexity on {n} TinyStories tokens (fp32 model: {base:.4f})")
    print(f"  {'weights':<26} {'compute':<22} {'perplexity':>10} {'vs fp32 model':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        for sym, group in ((False, 32), (True, 32), (False, 128)):
            label = f"int4 g{group} {'sym' if sym else 'asym'}"
            for fmt, compute, name in (("int4onnx", "fp32", "int4onnx fp32"), ("int4onnx", "int8", "int4onnx int8"),
                                       ("matmulnbits", "fp32", "MatMulNBits acc. 0"),
                                       ("matmulnbits", "int8", "MatMulNBits acc. 4")):
                if fmt == "matmulnbits" and group != 32:
                    continue
                dst = pathlib.Path(tmp) / f"s_{fmt}_{compute}_{sym}_{group}.onnx"
                int4onnx.quantize(src, dst, group_size=group, symmetric=sym, format=fmt, compute=compute)
                ppl, _ = perplexity(make_session(dst, threads=threads), ids)
                print(f"  {label:<26} {name:<22} {ppl:>10.4f} {100 * (ppl / base - 1):>+13.2f}%")


def kernel_level() -> None:
    rng = np.random.default_rng(0)
    K, N, M = 4096, 512, 64
    print(f"\nkernel level: A [{M}, {K}] (normal, 8 outlier channels x20) @ W [{K}, {N}], relative error vs float64")
    print(f"  {'weights':<22} {'fp32 compute':>13} {'int8 compute':>13}")
    A = rng.standard_normal((M, K)).astype(np.float32)
    A[:, rng.choice(K, 8, replace=False)] *= 20
    W = (rng.standard_normal((K, N)) / np.sqrt(K)).astype(np.float32)
    for bits, block, sym, qt in ((4, 32, True, "int"), (4, 32, False, "int"), (4, 128, False, "int"), (4, 32, True, "nf4"),
                                 (8, 32, True, "int")):
        q = quantize_rtn(W, bits, block, sym, qt)
        args = (q.packed(), q.scales, q.packed_zero_points(), K, N, bits, block, qt)
        exact = A.astype(np.float64) @ _native.dequantize(*args).astype(np.float64)
        errs = []
        for compute in ("fp32", "int8"):
            y = _native.matmul(A, *args, compute=compute)
            errs.append(np.linalg.norm(y - exact) / np.linalg.norm(exact))
        label = f"{'nf4' if qt == 'nf4' else f'int{bits}'} g{block} {'sym' if sym else 'asym'}"
        print(f"  {label:<22} {errs[0]:>13.2e} {errs[1]:>13.2e}")
    q = quantize_rtn(W, 4, 32, True, "int")
    wq = _native.dequantize(q.packed(), q.scales, None, K, N, 4, 32)
    print(f"  (for scale: the int4 g32 sym weights themselves differ from W by {np.linalg.norm(wq - W) / np.linalg.norm(W):.2e},"
          f" and their product by {np.linalg.norm(A @ wq - A @ W) / np.linalg.norm(A @ W):.2e})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    print(f"int4onnx {int4onnx.__version__}; kernels {_native.kernel_selected('fp32')} / {_native.kernel_selected('int8')}")
    model_level(args.threads)
    kernel_level()
    return 0


if __name__ == "__main__":
    sys.exit(main())
