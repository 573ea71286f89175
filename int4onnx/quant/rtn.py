"""Round-to-nearest group-wise quantization (numpy). Codes are packed by the C library."""

from __future__ import annotations

import numpy as np

from int4onnx.quant.base import QuantizedWeight
from int4onnx.quant.grid import Grid, GroupParams, from_blocks, group_params, quantize_values, to_blocks


def make_weight(K: int, N: int, block_size: int, grid: Grid, codes_nk: np.ndarray, p: GroupParams) -> QuantizedWeight:
    """A QuantizedWeight from codes [N, K] and group parameters [N, n_blocks]."""
    return QuantizedWeight(
        K=K, N=N, bits=grid.bits, block_size=block_size, codes=np.ascontiguousarray(codes_nk, dtype=np.uint8),
        scales=np.ascontiguousarray(p.scales, dtype=np.float32),
        zero_points=None if p.zero_points is None else np.ascontiguousarray(
            p.zero_points, dtype=np.float32 if grid.float_zero_points else np.uint8),
        quant_type=grid.quant_type,
        scale_dtype=np.dtype(np.float32 if grid.scale_dtype == "int8" else grid.scale_dtype),
        scale_codes=p.scale_codes, scales_scale=p.super_scale,
        float_zero_points=grid.float_zero_points and p.zero_points is not None,
        zero_point_codes=p.zero_point_codes, zero_points_scale=p.zero_points_scale)


def quantize_grid(w_kn: np.ndarray, grid: Grid, block_size: int, shrink=1.0,
                  super_scale: np.ndarray | None = None) -> QuantizedWeight:
    """Round to nearest on `grid`, with each group's range optionally shrunk (clip search)."""
    w_kn = np.asarray(w_kn, dtype=np.float32)
    K, N = w_kn.shape
    blocks = to_blocks(w_kn, block_size)
    p = group_params(blocks, grid, shrink, super_scale)
    codes = quantize_values(blocks, p.scales[:, :, None], None if p.zero_points is None else p.zero_points[:, :, None],
                            grid)
    return make_weight(K, N, block_size, grid, from_blocks(codes, K), p)


def quantize_rtn(w_kn: np.ndarray, bits: int = 4, block_size: int = 32, symmetric: bool = False,
                 quant_type: str = "int", scale_dtype=np.float32) -> QuantizedWeight:
    """Quantize a [K, N] weight group-wise along K.

    symmetric int: scale = (value of largest magnitude) / -2^(bits-1), so that value maps exactly
        to the most negative code; codes are round(w / scale) clamped to [-2^(bits-1), 2^(bits-1)-1]
        and stored offset by 2^(bits-1).
    asymmetric: the range [min(w, 0), max(w, 0)] is split into 2^bits - 1 steps; the zero point
        is round(-min / scale), so 0 is exact. (quantize_grid with Grid.float_zero_points: the range
        [min(w), max(w)] with a real zero point -min / scale.)
    nf4: scale = max |w|; each value takes the nearest codebook level of w / scale.
    scale_dtype int8 (double quantization): scales are stored as int8 times a per-column float32
        super-scale (the column's largest |scale| / 127); codes are chosen against the rounded scales.
    All-zero groups get scale 0 and the zero code.
    """
    if quant_type == "nf4" and bits != 4:
        raise ValueError("nf4 is 4-bit")
    grid = Grid(bits=bits, symmetric=symmetric or quant_type == "nf4", quant_type=quant_type,
                scale_dtype=np.dtype(scale_dtype).name)
    return quantize_grid(w_kn, grid, block_size)


