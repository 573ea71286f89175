"""Round to nearest with an MSE-optimal clipping range per group.

Plain RTN stretches each group's grid over its full range, so one outlier weight coarsens the step
for all the others. Clip search tries `points` shrink factors of the range between 1 and `min_shrink`
and keeps, for every group independently, the one with the least squared error, weighted per input
channel k by the calibration mean square E[x_k^2] when statistics are given (the expected output error
of the layer when input channels are uncorrelated). Cost: `points` RTN passes over the weight.
"""

from __future__ import annotations

import numpy as np

from int4onnx.quant.base import QuantizedWeight
from int4onnx.quant.grid import (
    Grid,
    dequantize_values,
    from_blocks,
    group_params,
    quantize_values,
    raw_scales,
    super_scales,
    to_blocks,
)
from int4onnx.quant.rtn import make_weight

DEFAULT_POINTS = 20
DEFAULT_MIN_SHRINK = 0.5


def best_shrink(blocks: np.ndarray, grid: Grid, channel_weight: np.ndarray | None = None,
                points: int = DEFAULT_POINTS, min_shrink: float = DEFAULT_MIN_SHRINK,
                super_scale: np.ndarray | None = None) -> np.ndarray:
    """Per-group shrink factor [N, nb] minimising the (channel-weighted) squared error of [N, nb, bs] blocks.
    channel_weight: [nb, bs] (per input channel, zero for padding) or None."""
    best_err = np.full(blocks.shape[:2], np.inf)
    best = np.ones(blocks.shape[:2], dtype=np.float32)
    if grid.scale_dtype == "int8" and super_scale is None:
        super_scale = super_scales(raw_scales(blocks, grid)[0])
    for shrink in np.linspace(1.0, min_shrink, points, dtype=np.float32):
        p = group_params(blocks, grid, shrink, super_scale)
        s = p.scales[:, :, None]
        z = None if p.zero_points is None else p.zero_points[:, :, None]
        err = dequantize_values(quantize_values(blocks, s, z, grid), s, z, grid) - blocks
        err = err * err
        if channel_weight is not None:
            err = err * channel_weight[None]
        err = err.sum(axis=2)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best = np.where(better, shrink, best)
    return best


def quantize_clip(w_kn: np.ndarray, grid: Grid, block_size: int, channel_weight: np.ndarray | None = None,
                  points: int = DEFAULT_POINTS, min_shrink: float = DEFAULT_MIN_SHRINK) -> QuantizedWeight:
    """[K, N] weight -> QuantizedWeight with the best clipping range per group.
    channel_weight: [K] importance of each input channel (e.g. calibration E[x^2]) or None."""
    w_kn = np.asarray(w_kn, dtype=np.float32)
    K, N = w_kn.shape
    blocks = to_blocks(w_kn, block_size)
    cw = None
    if channel_weight is not None:
        cw = to_blocks(np.asarray(channel_weight, dtype=np.float32)[:, None], block_size)[0]
    ss = super_scales(raw_scales(blocks, grid)[0]) if grid.scale_dtype == "int8" else None
    shrink = best_shrink(blocks, grid, cw, points, min_shrink, ss)
    p = group_params(blocks, grid, shrink, ss)
    codes = quantize_values(blocks, p.scales[:, :, None], None if p.zero_points is None else p.zero_points[:, :, None],
                            grid)
    return make_weight(K, N, block_size, grid, from_blocks(codes, K), p)
