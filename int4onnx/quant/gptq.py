"""GPTQ (Frantar et al., 2022): quantize the input channels of a layer one at a time and push each
channel's rounding error onto the channels not yet quantized, weighted by the inverse of the
calibration Gram matrix H = X^T X, so that the layer *output* error ||X W - X Q||^2 stays small.

    H += damp * mean(diag H) * I            (damping: H may be singular, e.g. dead channels)
    U = chol(H^-1) (upper)                   (rows of U give the optimal updates; Cholesky = stability)
    for each channel k (in blocks of columns; updates to later blocks are applied once per block):
        q_k = quantize(w_k) on its group's grid
        e = (w_k - q_k) / U[k, k];  w_j -= e * U[k, j]  for j > k

Group parameters (scale, zero point) are fixed when the first channel of a group is reached, from the
current (error-updated) weights, optionally with a clip search. With act-order the channels are
visited by decreasing H[k, k]; the stored format keeps groups contiguous along K, so the group
parameters are then computed up front from the original weights ("static groups").

Cost: O(K^3) for the inverse plus O(K^2 N) for the updates per layer; memory O(K^2 + K N).
"""

from __future__ import annotations

import concurrent.futures
import math

import numpy as np

from int4onnx._threads import blas_threads_for, column_slices
from int4onnx.quant.base import QuantizedWeight
from int4onnx.quant.clip import best_shrink
from int4onnx.quant.grid import (
    Grid,
    GroupParams,
    column_super_scales,
    dequantize_values,
    group_params,
    quantize_values,
    to_blocks,
)
from int4onnx.quant.rtn import make_weight

DEFAULT_DAMP = 0.01
LAZY_BLOCK = 128
SUB_BLOCK = 16  # channels per rank-1 sub-block inside a lazy block (_gptq)


# A channel whose calibration energy (Gram diagonal) is below this fraction of the mean is "dead"
DEAD_CHANNEL_FRACTION = 1e-6


def dead_channels(energy: np.ndarray) -> np.ndarray:
    """bool [K]: input channels whose calibration energy (sum or mean of x^2: the Gram diagonal) is zero
    or below DEAD_CHANNEL_FRACTION of the mean."""
    diag = np.asarray(energy, dtype=np.float64)
    mean = float(diag.mean()) if diag.size else 0.0
    return ~(diag > DEAD_CHANNEL_FRACTION * mean) | (diag <= 0)


def _lower_inverse(L: np.ndarray, leaf: int = 128) -> np.ndarray:
    """Inverse of a lower-triangular matrix by halves, [[A, 0], [C, D]]^-1 = [[A^-1, 0], [-D^-1 C A^-1,
    D^-1]]: K^3 / 3 multiply-adds in matrix products (numpy has no triangular inverse; np.linalg.inv
    would factorise it again, 2 K^3)."""
    K = L.shape[0]
    if K <= leaf:
        return np.tril(np.linalg.inv(L))
    h = K // 2
    Ai = _lower_inverse(L[:h, :h], leaf)
    Di = _lower_inverse(L[h:, h:], leaf)
    out = np.zeros_like(L)
    out[:h, :h] = Ai
    out[h:, h:] = Di
    out[h:, :h] = -(Di @ (L[h:, :h] @ Ai))
    return out


def _upper_inverse_cholesky(H: np.ndarray, damp: float) -> np.ndarray:
    """U (upper triangular) with U^T U = (H + damp * mean(diag H) I)^-1; more damping if H is not
    positive definite in floating point.

    One Cholesky factorisation and one triangular inverse: with J the order-reversing permutation and
    J H J = L L^T, H = (J L J)(J L J)^T where J L J is upper triangular, so H^-1 = U^T U with
    U = (J L J)^-1 = J L^-1 J (half the work of inverting H and factorising the inverse)."""
    K = H.shape[0]
    mean_diag = float(np.mean(np.diag(H)))
    for extra in (1.0, 10.0, 100.0, 1000.0):
        Hd = H[::-1, ::-1].copy()
        Hd[np.diag_indices(K)] += damp * extra * mean_diag
        try:
            L = np.linalg.cholesky(Hd)
        except np.linalg.LinAlgError:
            continue
        del Hd
        return np.ascontiguousarray(_lower_inverse(L)[::-1, ::-1])
    raise np.linalg.LinAlgError("the calibration Gram matrix is not positive definite even with damping")


def _params(values: np.ndarray, grid: Grid, block_size: int, weight: np.ndarray | None, clip: bool,
            supers: tuple) -> GroupParams:
    """Group parameters for [N, g] values of one group (g <= block_size; padded with zeros); supers: the
    column super-scales (column_super_scales) of int8 scales and zero points, fixed for the weight."""
    blocks = np.zeros((values.shape[0], 1, block_size), dtype=np.float64)
    blocks[:, 0, :values.shape[1]] = values
    shrink = 1.0
    if clip:  # the search in float32 (5x faster than float64 here); the parameters from the float64 values
        cw = None
        if weight is not None:
            cw = np.zeros((1, block_size), dtype=np.float32)
            cw[0, :weight.shape[0]] = weight / max(float(np.max(weight)), 1e-300)  # normalised: no overflow
        shrink = best_shrink(blocks.astype(np.float32), grid, cw, super_scale=supers[0], zp_scale=supers[1])
    return group_params(blocks, grid, shrink, *supers)


def quantize_gptq(w_kn: np.ndarray, gram: np.ndarray, grid: Grid, block_size: int, damp: float = DEFAULT_DAMP,
                  act_order: bool = False, clip: bool = False, lazy_block: int = LAZY_BLOCK,
                  threads: int | None = None) -> QuantizedWeight:
    """[K, N] weight and the [K, K] Gram matrix of its inputs -> QuantizedWeight.

    Output columns are independent once the inverse factor U is known, so slices of columns run in
    `threads` threads (default: the CPUs this process may use; numpy releases the GIL in its loops and
    BLAS calls); the result is the same whatever the number of threads."""
    w_kn = np.asarray(w_kn, dtype=np.float32)
    K, N = w_kn.shape
    with blas_threads_for(K):
        diag, perm, U = _inverse_factor(gram, damp, act_order)
    # int8 scales (and zero points): super-scales fixed up front from the original weights (all columns)
    supers = column_super_scales(to_blocks(w_kn, block_size), grid)
    parts = column_slices(N, threads)
    if len(parts) == 1:
        with blas_threads_for(max(K, N)):
            return _gptq(w_kn, diag, perm, U, supers, grid, block_size, act_order, clip, lazy_block)
    with blas_threads_for(0), concurrent.futures.ThreadPoolExecutor(len(parts)) as pool:
        # one BLAS thread per worker
        done = pool.map(lambda sl: _gptq(w_kn[:, sl], diag, perm, U, tuple(None if x is None else x[sl] for x in supers),
                                         grid, block_size, act_order, clip, lazy_block), parts)
        return QuantizedWeight.concat_columns(list(done))


def _inverse_factor(gram, damp: float, act_order: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(diagonal of the Gram after dead-channel handling [K], channel order [K], U [K, K] in that order)."""
    H = np.array(gram, dtype=np.float64)
    K = H.shape[0]
    # Dead (or nearly dead) channels: the calibration data never (hardly) exercises them, so the output
    # error on it says nothing about their weights, and error compensation would dump the other
    # channels' errors on them. Decouple them (no row/column in H): GPTQ then rounds them to nearest
    # on their group's grid, i.e. RTN, and never changes them to reduce the others' error.
    dead = dead_channels(np.diag(H))
    H[dead, :] = 0.0
    H[:, dead] = 0.0
    live = np.diag(H)[~dead]
    H[dead, dead] = float(live.mean()) if live.size else 1.0
    diag = np.diag(H).copy()
    perm = np.argsort(-diag, kind="stable") if act_order else np.arange(K)
    return diag, perm, _upper_inverse_cholesky(H[np.ix_(perm, perm)], damp)


def _gptq(w_kn, diag, perm, U, supers: tuple, grid: Grid, block_size: int, act_order: bool, clip: bool,
          lazy_block: int) -> QuantizedWeight:
    """GPTQ on [K, N] columns with the inverse factor U and channel order perm of _inverse_factor and
    the columns' super-scales of int8 scales and zero points (column_super_scales: each None or [N])."""
    ss, zs = supers
    K, N = w_kn.shape
    bs = block_size
    nb = -(-K // bs)
    W = w_kn.T.astype(np.float64)            # [N, K]: column k = input channel k

    scales = np.zeros((N, nb), np.float32)
    inv_scales = np.zeros((nb, N), np.float32)  # 1 / scale per group, as quantize_values computes it
    zps = None if grid.symmetric or grid.quant_type == "nf4" else np.zeros((N, nb), np.float32)
    scodes = np.zeros((N, nb), np.int8) if ss is not None else None
    zcodes = np.zeros((N, nb), np.int8) if zs is not None else None
    real_zp = grid.float_zero_points

    def set_group(g: int, p: GroupParams) -> None:
        scales[:, g] = p.scales[:, 0]
        np.divide(1.0, p.scales[:, 0], out=inv_scales[g], where=p.scales[:, 0] != 0)
        if zps is not None:
            zps[:, g] = p.zero_points[:, 0]
        if scodes is not None:
            scodes[:, g] = p.scale_codes[:, 0]
        if zcodes is not None:
            zcodes[:, g] = p.zero_point_codes[:, 0]

    if act_order:
        for g in range(nb):  # static groups from the original weights
            lo, hi = g * bs, min(K, (g + 1) * bs)
            set_group(g, _params(W[:, lo:hi], grid, bs, diag[lo:hi], clip, supers))
    Wk = np.ascontiguousarray(W.T[perm])     # [K, N]: row i = i-th channel visited (rows are contiguous)
    del W
    # per-group columns of the parameters, transposed once so that each channel reads contiguous rows
    scales_g = scales.T                       # views: set_group writes through them
    zps_g = None if zps is None else zps.T
    nf4 = grid.quant_type == "nf4"
    half = float(grid.half)

    codes = np.zeros((K, N), np.uint8)
    # without act-order, a block of columns must hold whole groups so group parameters see updated weights
    B = bs * max(1, lazy_block // bs) if not act_order else lazy_block
    # inside a block, each channel's error goes to the rest of its sub-block of `sub` channels at once
    # (rank-1 updates, elementwise) and to the block's later channels once per sub-block (one matrix
    # product): the lazy batch update of the GPTQ paper applied again within the block. Without
    # act-order a group starts on a sub-block boundary, so its parameters see every earlier update.
    sub = SUB_BLOCK if act_order else math.gcd(bs, SUB_BLOCK)
    for i1 in range(0, K, B):
        i2 = min(i1 + B, K)
        W1 = Wk[i1:i2].copy()                 # [B, N]
        E1 = np.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for j1 in range(0, i2 - i1, sub):
            j2 = min(j1 + sub, i2 - i1)
            for i in range(j1, j2):
                k = perm[i1 + i]
                g = k // bs
                if not act_order and k % bs == 0:
                    hi = min(i2 - i1, i + bs)
                    set_group(g, _params(W1[i:hi].T, grid, bs, diag[k:k + hi - i], clip, supers))
                w = W1[i]
                if nf4:
                    s, z = scales[:, g], None
                    c = quantize_values(w, s, z, grid)
                    deq = dequantize_values(c, s, z, grid)
                else:  # quantize_values and dequantize_values, inlined (same operations and types)
                    q = w * inv_scales[g]
                    if real_zp:  # round(w / s + z): the zero point is not an integer
                        q += zps_g[g]
                    np.rint(q, out=q)
                    if zps_g is None:
                        np.clip(q, -half, half - 1, out=q)
                        q += half
                        deq = (q.astype(np.float32) - np.float32(half)) * scales_g[g]
                    else:
                        if not real_zp:
                            q += zps_g[g]
                        np.clip(q, 0, grid.qmax, out=q)
                        deq = (q.astype(np.float32) - zps_g[g]) * scales_g[g]
                    c = q
                codes[k] = c
                err = (w - deq) / U1[i, i]
                if i + 1 < j2:
                    W1[i + 1:j2] -= U1[i, i + 1:j2, None] * err
                E1[i] = err
            if j2 < i2 - i1:
                W1[j2:] -= U1[j1:j2, j2:].T @ E1[j1:j2]
        Wk[i2:] -= U[i1:i2, i2:].T @ E1
    return make_weight(K, N, bs, grid, codes.T, GroupParams(scales, zps, scodes, ss, zcodes, zs))
