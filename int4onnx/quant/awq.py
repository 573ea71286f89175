"""AWQ (Lin et al., 2023): activation-aware per-input-channel scaling.

Input channels that carry large activations matter more to the output, so their weights deserve a
finer grid. AWQ multiplies row k of W by s_k and divides input channel k by s_k, which leaves
X W unchanged in exact arithmetic but gives the salient rows more of each group's range. The scales
are s = mean|x|^alpha (normalised so max(s) * min(s) = 1); alpha is searched on a grid in [0, 1)
to minimise the layer output error on the calibration data, computed from the Gram matrix G = X^T X
as sum over the layers sharing the input of tr(D^T G D), D = Q(diag(s) W) / s - W. alpha = 0 is
plain RTN, so the search never does worse on the calibration data.

The division of the input by s is folded into the op producing it where that is exact (the
multiplier of an RMSNorm/LayerNorm, the columns of a preceding MatMul) or kept as an input Mul
(passes/awq.py). Cost per input: `points` quantizations of each weight sharing it and as many
K x K x N float32 products.
"""

from __future__ import annotations

import concurrent.futures
from typing import Callable

import numpy as np

from int4onnx._threads import blas_threads_for, cpu_threads

DEFAULT_POINTS = 20
AWQ_THREAD_BYTES = 1 << 30  # bound on the search's temporaries when its points run in threads


def output_error(w_kn: np.ndarray, deq_kn: np.ndarray, gram: np.ndarray) -> float:
    d = deq_kn.astype(np.float64) - w_kn.astype(np.float64)
    return float(np.sum((gram @ d) * d))


def search_scales(weights: list[np.ndarray], mean_abs: np.ndarray, gram: np.ndarray,
                  fake_quant: Callable[[np.ndarray], np.ndarray], points: int = DEFAULT_POINTS
                  ) -> tuple[np.ndarray, float, dict]:
    """Best input-channel scales [K] for weights [K, N_i] sharing one input.

    fake_quant maps a [K, N] weight to its dequantized quantization. Returns (s, alpha, losses by alpha).
    """
    with blas_threads_for(0 if cpu_threads() > 1 else gram.shape[0]):  # threads: one BLAS thread each
        return _search(weights, mean_abs, gram, fake_quant, points)


def _search(weights, mean_abs, gram, fake_quant, points):
    x = np.maximum(np.asarray(mean_abs, dtype=np.float64), 1e-8)
    # float32 products with the Gram normalised to its largest entry (no overflow; the argmin over alpha
    # is unchanged up to float32 rounding), accumulated in float64: a third of the float64 product's time
    top = float(np.abs(gram).max()) if gram.size else 0.0
    g32 = np.asarray(gram / top if top > 0 else gram, dtype=np.float32)
    # [N, K] rows: the scaled weight is then transposed for free (its groups run along K)
    rows = [np.ascontiguousarray(np.asarray(w, dtype=np.float32).T) for w in weights]
    alphas = [float(i / points) for i in range(points)]

    def loss_at(alpha: float) -> tuple[float, np.ndarray]:
        s = x ** alpha
        s = s / np.sqrt(s.max() * s.min())
        s = np.clip(s, 1e-4, 1e4)
        s32 = s.astype(np.float32)
        loss = 0.0
        for r in rows:
            d = fake_quant((r * s32).T) / s32[:, None]
            d -= r.T
            loss += float(np.sum((g32 @ d) * d, dtype=np.float64))
        return loss * top, s

    # every point of the grid: a coarse-to-fine search (9 of the 20 points) picked other alphas on
    # tinygpt_char and stories260K, whose losses are not unimodal (perplexity 5.1951 -> 5.2205). The
    # points are independent: they run in as many threads as there are CPUs (numpy and BLAS release
    # the GIL; one BLAS thread each), with the same result as one after another
    # (temporaries: about four [K, N] float32 arrays per thread, kept under AWQ_THREAD_BYTES in all)
    per_thread = 16 * gram.shape[0] * max((r.shape[0] for r in rows), default=1)
    threads = max(1, min(cpu_threads(), points, AWQ_THREAD_BYTES // per_thread))
    if threads > 1:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(loss_at, alphas))
    else:
        results = [loss_at(a) for a in alphas]
    losses = {a: r[0] for a, r in zip(alphas, results, strict=True)}
    best = min(range(points), key=lambda i: losses[alphas[i]])
    alpha = alphas[best]
    return results[best][1].astype(np.float32), alpha, dict(sorted(losses.items()))
