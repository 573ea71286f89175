"""The quantization grid of one group: its parameters (scale, zero point) and the codes of values on it.

Every method (round to nearest, clip search, AWQ, GPTQ) is built from these three steps:

    scales, zero_points = group_params(blocks, grid, shrink)   # per group of block_size values along K
    codes = quantize_values(values, scales, zero_points, grid)  # nearest code, values broadcast per group
    w = dequantize_values(codes, scales, zero_points, grid)

so they choose codes against exactly the scales that will be stored (rounded to float16, or to int8
with a per-column float32 super-scale when scales are double-quantized).

Asymmetric grids take an integer zero point (the range is widened to include 0, so 0 is exact), or with
``float_zero_points`` a real one, z = -min / scale over the group's own min..max (w = (q - z) * scale,
GGUF Q4_1's w = d * q + m with z = -m / d), stored like the scales: float16/float32, or int8 codes under
a float32 super-scale per column (the op's ``zero_points_scale``) when scales are int8.
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
    float_zero_points: bool = False   # asymmetric: real zero points stored like the scales (not integers)

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
    lo, hi = blocks.min(axis=-1), blocks.max(axis=-1)
    if grid.float_zero_points:
        # the group's own range, shrunk about its middle; a constant group takes 0 in, so that its scale is
        # not 0 (an all-zero group keeps scale 0)
        flat = hi == lo
        lo, hi = np.where(flat, np.minimum(lo, 0.0), lo), np.where(flat, np.maximum(hi, 0.0), hi)
        mid, half = (hi.astype(np.float64) + lo) / 2, (hi.astype(np.float64) - lo) / 2 * shrink
        lo, hi = (mid - half).astype(blocks.dtype), (mid + half).astype(blocks.dtype)
        return ((half * 2) / grid.qmax).astype(blocks.dtype), lo
    lo = np.minimum(lo, 0.0) * shrink
    hi = np.maximum(hi, 0.0) * shrink
    # the range in float64: hi - lo of weights near +-3.4e38 overflows float32, the scale does not
    span = hi.astype(np.float64) - lo
    return (span / grid.qmax).astype(hi.dtype), lo


def super_scales(scales: np.ndarray, grid: Grid) -> np.ndarray:
    """Float32 super-scales [N] of int8 scales: the column's largest |scale| maps to 127, or with a
    tensor super-scale the tensor's largest (every column then holds the same value)."""
    return (_column_max(scales, grid) / INT8_SCALE_MAX).astype(np.float32)


def _column_max(a: np.ndarray, grid: Grid) -> np.ndarray:
    """Largest |a| of each column [N, nb] -> [N], or the tensor's largest in every column."""
    per_column = np.abs(a).max(axis=-1) if a.shape[-1] else np.zeros(a.shape[:-1], a.dtype)
    if grid.tensor_super_scale:
        per_column = np.full_like(per_column, per_column.max() if per_column.size else 0.0)
    return per_column


def real_zero_points(lo: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """z = -lo / scale (float32; 0 where the scale is 0)."""
    inv = np.divide(1.0, scales, out=np.zeros_like(scales, dtype=np.float32), where=scales != 0)
    return (-lo * inv).astype(np.float32)


def column_super_scales(blocks: np.ndarray, grid: Grid) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The float32 super-scales [N] of int8 scales and of int8 real zero points, fixed from the unshrunk
    groups of [N, nb, block_size] blocks before any search (None where the grid stores no int8 codes)."""
    if grid.scale_dtype != "int8":
        return None, None
    s, lo = raw_scales(blocks, grid)
    ss = super_scales(s, grid)
    if not grid.float_zero_points or lo is None:
        return ss, None
    return ss, (_column_max(real_zero_points(lo, store_scales(s, grid, ss)[0]), grid)
                / INT8_SCALE_MAX).astype(np.float32)


def store_zero_points(z: np.ndarray, grid: Grid, zp_scale: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray | None]:
    """Round real zero points [N, nb] to their stored type (the scales'): (effective float32 values, int8
    codes or None). int8 codes need the column super-scales [N] (zero_points_scale)."""
    if grid.scale_dtype == "int8":
        zs = zp_scale[:, None].astype(np.float32)
        q = np.rint(np.divide(z, zs, out=np.zeros_like(z, dtype=np.float32), where=zs != 0))
        q = np.clip(q, -INT8_SCALE_MAX, INT8_SCALE_MAX).astype(np.int8)
        return (q.astype(np.float32) * zs).astype(np.float32), q
    return z.astype(grid.scale_dtype).astype(np.float32), None


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
    symmetric grids; integers, or real values with grid.float_zero_points), for int8 scales their codes
    and the per-column super-scales [N], and for int8 real zero points theirs."""

    scales: np.ndarray
    zero_points: np.ndarray | None
    scale_codes: np.ndarray | None = None
    super_scale: np.ndarray | None = None
    zero_point_codes: np.ndarray | None = None
    zero_points_scale: np.ndarray | None = None


def group_params(blocks: np.ndarray, grid: Grid, shrink=1.0, super_scale: np.ndarray | None = None,
                 zp_scale: np.ndarray | None = None) -> GroupParams:
    """Parameters of [N, nb, block_size] groups with their range shrunk by `shrink`. For int8 scales,
    `super_scale` (and for int8 real zero points `zp_scale`) default to those of the unshrunk groups
    (column_super_scales)."""
    s, lo = raw_scales(blocks, grid, shrink)
    if grid.scale_dtype == "int8" and (super_scale is None or (grid.float_zero_points and zp_scale is None)):
        ss, zs = column_super_scales(blocks, grid)
        super_scale = ss if super_scale is None else super_scale
        zp_scale = zs if zp_scale is None else zp_scale
    scales, scale_codes = store_scales(s, grid, super_scale)
    zp = zp_codes = None
    if lo is not None and grid.float_zero_points:
        zp, zp_codes = store_zero_points(real_zero_points(lo, scales), grid, zp_scale)
    elif lo is not None:
        inv = np.divide(1.0, scales, out=np.zeros_like(scales), where=scales != 0)
        zp = np.clip(np.rint(-lo * inv), 0, grid.qmax).astype(np.float32)
    return GroupParams(scales, zp, scale_codes, super_scale if grid.scale_dtype == "int8" else None,
                       zp_codes, zp_scale if zp_codes is not None else None)


def quantize_values(x: np.ndarray, scales: np.ndarray, zp: np.ndarray | None, grid: Grid) -> np.ndarray:
    """Nearest codes (uint8) of values x given per-value (broadcast) scales and zero points."""
    inv = np.divide(1.0, scales, out=np.zeros_like(scales, dtype=np.float32), where=scales != 0)
    if grid.quant_type == "nf4":
        cb = _native.nf4_codebook()
        mids = (cb[1:] + cb[:-1]) / 2  # decision boundaries between neighbouring levels
        return np.searchsorted(mids, x * inv).astype(np.uint8)
    if grid.symmetric:
        q = np.clip(np.rint(x * inv), -grid.half, grid.half - 1) + grid.half
    elif grid.float_zero_points:
        q = np.clip(np.rint(x * inv + zp), 0, grid.qmax)
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
