"""Round-to-nearest group-wise quantization (numpy). Codes are packed by the C library."""

from __future__ import annotations

import numpy as np

from int4onnx import _native
from int4onnx.quant.base import QuantizedWeight


def _blocks(w_kn: np.ndarray, block_size: int) -> np.ndarray:
    """[K, N] -> [N, n_blocks, block_size], zero padded past K."""
    K, N = w_kn.shape
    nb = -(-K // block_size)
    wt = np.zeros((N, nb * block_size), dtype=np.float32)
    wt[:, :K] = w_kn.T
    return wt.reshape(N, nb, block_size)


def _round_scales(scales: np.ndarray, scale_dtype: np.dtype) -> np.ndarray:
    """Scales as they will be stored (fp16 scales are rounded before the codes are chosen)."""
    return scales.astype(scale_dtype).astype(np.float32)


def quantize_rtn(w_kn: np.ndarray, bits: int = 4, block_size: int = 32, symmetric: bool = False,
                 quant_type: str = "int", scale_dtype=np.float32) -> QuantizedWeight:
    """Quantize a [K, N] weight group-wise along K.

    symmetric int: scale = (value of largest magnitude) / -2^(bits-1), so that value maps exactly
        to the most negative code; codes are round(w / scale) clamped to [-2^(bits-1), 2^(bits-1)-1]
        and stored offset by 2^(bits-1).
    asymmetric: the range [min(w, 0), max(w, 0)] is split into 2^bits - 1 steps; the zero point
        is round(-min / scale), so 0 is exact.
    nf4: scale = max |w|; each value takes the nearest codebook level of w / scale.
    All-zero groups get scale 0 and the zero code.
    """
    scale_dtype = np.dtype(scale_dtype)
    w_kn = np.asarray(w_kn, dtype=np.float32)
    K, N = w_kn.shape
    blocks = _blocks(w_kn, block_size)  # [N, nb, bs]
    qmax = (1 << bits) - 1
    zero_points = None
    if quant_type == "nf4":
        if bits != 4:
            raise ValueError("nf4 is 4-bit")
        scales = _round_scales(np.abs(blocks).max(axis=2), scale_dtype)
        inv = np.divide(1.0, scales, out=np.zeros_like(scales), where=scales != 0)
        x = blocks * inv[:, :, None]
        cb = _native.nf4_codebook()
        mids = (cb[1:] + cb[:-1]) / 2  # decision boundaries between neighbouring levels
        codes = np.searchsorted(mids, x).astype(np.uint8)
    elif symmetric:
        half = 1 << (bits - 1)
        idx = np.abs(blocks).argmax(axis=2)
        extreme = np.take_along_axis(blocks, idx[:, :, None], axis=2)[:, :, 0]
        scales = _round_scales(extreme / -half, scale_dtype)
        inv = np.divide(1.0, scales, out=np.zeros_like(scales), where=scales != 0)
        q = np.clip(np.round(blocks * inv[:, :, None]), -half, half - 1)
        codes = (q + half).astype(np.uint8)
    else:
        lo = np.minimum(blocks.min(axis=2), 0.0)
        hi = np.maximum(blocks.max(axis=2), 0.0)
        # padding zeros are inside [lo, hi] already, so they do not widen the range
        scales = _round_scales((hi - lo) / qmax, scale_dtype)
        inv = np.divide(1.0, scales, out=np.zeros_like(scales), where=scales != 0)
        zp = np.clip(np.round(-lo * inv), 0, qmax)
        q = np.clip(np.round(blocks * inv[:, :, None]) + zp[:, :, None], 0, qmax)
        codes = q.astype(np.uint8)
        zero_points = zp.astype(np.uint8)
    codes = codes.reshape(N, -1)[:, :K]
    return QuantizedWeight(K=K, N=N, bits=bits, block_size=block_size, codes=np.ascontiguousarray(codes),
                           scales=scales.astype(np.float32), zero_points=zero_points, quant_type=quant_type,
                           scale_dtype=scale_dtype)
