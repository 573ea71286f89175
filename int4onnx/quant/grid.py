"""The quantization grid of one group: its parameters (scale, zero point) and the codes of values on it.

Every method (round to nearest, clip search, AWQ, GPTQ) is built from these three steps:

    scales, zero_points = group_params(blocks, grid, shrink)   # per group of block_size values along K
    codes = quantize_values(values, scales, zero_points, grid)  # nearest code, values broadcast per group
    w = dequantize_values(codes, scales, zero_points, grid)

so they choose codes against exactly the scales that will be stored (rounded to float16, or to int8
with a per-column float32 super-scale when scales are double-quantized).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from int4onnx import _native

SCALE_DTYPES = ("float32", "float16", "int8")
INT8_SCALE_MAX = 127


@dataclasses.dataclass(frozen=True)
class Grid:
    """bits 4|8; symmetric (no zero points); quant_type "int" | "nf4"; scale storage type."""

    bits: int = 4
    symmetric: bool = False
    quant_type: str = "int"
    scale_dtype: str = "float32"
    tensor_super_scale: bool = False  # int8 scales: one float32 super-scale for the tensor, not per column

    @property
    def qmax(self) -> int:
        return (1 << self.bits) - 1

    @property
    def half(self) -> int:
        return 1 << (self.bits - 1)


def to_blocks(w_kn: np.ndarray, block_size: int) -> np.ndarray:
    """[K, N] -> [N, n_blocks, block_size], zero padded past K."""
    K, N = w_kn.shape
    nb = -(-K // block_size)
    wt = np.zeros((N, nb * block_size), dtype=np.float32)
    wt[:, :K] = w_kn.T
    return wt.reshape(N, nb, block_size)


def from_blocks(blocks: np.ndarray, K: int) -> np.ndarray:
    """[N, n_blocks, block_size] -> [N, K]."""
    return blocks.reshape(blocks.shape[0], -1)[:, :K]


def raw_scales(blocks: np.ndarray, grid: Grid, shrink=1.0) -> tuple[np.ndarray, np.ndarray | None]:
    """Float scales (and the group minimum, for asymmetric grids) of [..., block_size] groups, with the
    range shrunk by `shrink` (a scalar, or an array broadcasting to the groups)."""
    if grid.quant_type == "nf4":
        return np.abs(blocks).max(axis=-1) * shrink, None
    if grid.symmetric:
        idx = np.abs(blocks).argmax(axis=-1)
        extreme = np.take_along_axis(blocks, idx[..., None], axis=-1)[..., 0]
        return extreme * shrink / -grid.half, None
    lo = np.minimum(blocks.min(axis=-1), 0.0) * shrink
    hi = np.maximum(blocks.max(axis=-1), 0.0) * shrink
    # the range in float64: hi - lo of weights near +-3.4e38 overflows float32, the scale does not
    span = hi.astype(np.float64) - lo
    return (span / grid.qmax).astype(hi.dtype), lo


def super_scales(scales: np.ndarray, grid: Grid) -> np.ndarray:
    """Float32 super-scales [N] of int8 scales: the column's largest |scale| maps to 127, or with a
    tensor super-scale the tensor's largest (every column then holds the same value)."""
    per_column = np.abs(scales).max(axis=-1)
    if grid.tensor_super_scale:
        per_column = np.full_like(per_column, per_column.max() if per_column.size else 0.0)
    return (per_column / INT8_SCALE_MAX).astype(np.float32)


def store_scales(scales: np.ndarray, grid: Grid, super_scale: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """Round float scales [N, nb] to their stored type. Returns (effective float32 scales, int8 codes
    or None). int8 scales need the column super-scales [N]; a nonzero scale never rounds to 0."""
    if grid.scale_dtype == "int8":
        ss = super_scale[:, None].astype(np.float32)
        q = np.rint(np.divide(scales, ss, out=np.zeros_like(scales, dtype=np.float32), where=ss != 0))
        q = np.clip(q, -INT8_SCALE_MAX, INT8_SCALE_MAX)
        q = np.where((q == 0) & (scales != 0), np.sign(scales), q).astype(np.int8)
        return (q.astype(np.float32) * ss).astype(np.float32), q
    return scales.astype(grid.scale_dtype).astype(np.float32), None


@dataclasses.dataclass
class GroupParams:
    """Parameters of [N, nb] groups as stored: effective float32 scales, zero points (float32, None for
    symmetric grids), and for int8 scales their codes and the per-column super-scales [N]."""

    scales: np.ndarray
    zero_points: np.ndarray | None
    scale_codes: np.ndarray | None = None
    super_scale: np.ndarray | None = None


def group_params(blocks: np.ndarray, grid: Grid, shrink=1.0, super_scale: np.ndarray | None = None) -> GroupParams:
    """Parameters of [N, nb, block_size] groups with their range shrunk by `shrink`. For int8 scales,
    `super_scale` defaults to the one of the unshrunk groups."""
    s, lo = raw_scales(blocks, grid, shrink)
    if grid.scale_dtype == "int8" and super_scale is None:
        super_scale = super_scales(raw_scales(blocks, grid)[0] if np.any(shrink != 1.0) else s, grid)
    scales, scale_codes = store_scales(s, grid, super_scale)
    zp = None
    if lo is not None:
        inv = np.divide(1.0, scales, out=np.zeros_like(scales), where=scales != 0)
        zp = np.clip(np.rint(-lo * inv), 0, grid.qmax).astype(np.float32)
    return GroupParams(scales, zp, scale_codes, super_scale if grid.scale_dtype == "int8" else None)


def quantize_values(x: np.ndarray, scales: np.ndarray, zp: np.ndarray | None, grid: Grid) -> np.ndarray:
    """Nearest codes (uint8) of values x given per-value (broadcast) scales and zero points."""
    inv = np.divide(1.0, scales, out=np.zeros_like(scales, dtype=np.float32), where=scales != 0)
    if grid.quant_type == "nf4":
        cb = _native.nf4_codebook()
        mids = (cb[1:] + cb[:-1]) / 2  # decision boundaries between neighbouring levels
        return np.searchsorted(mids, x * inv).astype(np.uint8)
    if grid.symmetric:
        q = np.clip(np.rint(x * inv), -grid.half, grid.half - 1) + grid.half
    else:
        q = np.clip(np.rint(x * inv) + zp, 0, grid.qmax)
    return q.astype(np.uint8)


def dequantize_values(codes: np.ndarray, scales: np.ndarray, zp: np.ndarray | None, grid: Grid) -> np.ndarray:
    if grid.quant_type == "nf4":
        return _native.nf4_codebook()[codes] * scales
    z = grid.half if zp is None else zp
    return ((codes.astype(np.float32) - z) * scales).astype(np.float32)


def fake_quantize(w_kn: np.ndarray, grid: Grid, block_size: int, shrink=1.0) -> np.ndarray:
    """float32 [K, N]: `w_kn` rounded to nearest on its groups' grid and dequantized, the same values as
    ``quantize_grid(w_kn, grid, block_size, shrink).dequantize()`` without building the QuantizedWeight
    (a view of an [N, K] array: pass a transposed C-ordered [N, K] array to skip the transposing copy)."""
    K = w_kn.shape[0]
    blocks = to_blocks(w_kn, block_size)
    p = group_params(blocks, grid, shrink)
    scales = p.scales[:, :, None]
    zp = None if p.zero_points is None else p.zero_points[:, :, None]
    deq = dequantize_values(quantize_values(blocks, scales, zp, grid), scales, zp, grid)
    return from_blocks(deq, K).T
