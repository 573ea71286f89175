"""The quantized form of one weight, independent of the output format, and its error metrics."""

from __future__ import annotations

import dataclasses

import numpy as np

from int4onnx import _native


@dataclasses.dataclass
class QuantizedWeight:
    """A [K, N] weight as codes [N, K], scales [N, n_blocks] and optional zero points [N, n_blocks].

    value(k, n) = (codes[n, k] - zero_point[n, b]) * scales[n, b] with b = k // block_size, or
    nf4_codebook[codes[n, k]] * scales[n, b] for quant_type "nf4". Symmetric weights have no zero
    points (implied 2^(bits-1)). Real ("float") zero points are float32 values (already rounded to
    their stored type), stored like the scales: scale_dtype, or int8 codes times zero_points_scale[n].
    """

    K: int
    N: int
    bits: int
    block_size: int
    codes: np.ndarray              # uint8 [N, K]
    scales: np.ndarray             # float32 [N, n_blocks] (already rounded to scale_dtype)
    zero_points: np.ndarray | None  # uint8 [N, n_blocks]; float32 for real zero points
    quant_type: str = "int"
    scale_dtype: np.dtype = dataclasses.field(default_factory=lambda: np.dtype(np.float32))
    # double-quantized scales: scales == scale_codes * scales_scale[:, None] (int8 [N, nb], float32 [N])
    scale_codes: np.ndarray | None = None
    scales_scale: np.ndarray | None = None
    # real zero points: float_zero_points; with int8 scales zero_points == zero_point_codes * zero_points_scale[:, None]
    float_zero_points: bool = False
    zero_point_codes: np.ndarray | None = None
    zero_points_scale: np.ndarray | None = None

    @property
    def n_blocks(self) -> int:
        return _native.n_blocks(self.K, self.block_size)

    @property
    def symmetric(self) -> bool:
        return self.zero_points is None

    def packed(self, block_size: int | None = None) -> np.ndarray:
        """Portable layout (C packer). block_size may differ from ours only when one block spans K."""
        bs = block_size or self.block_size
        if bs != self.block_size and self.n_blocks != 1:
            raise ValueError("re-blocking is only possible for a single block per column")
        return _native.pack_weights(self.codes, self.bits, bs, self.quant_type, self.padding_codes())

    def padding_codes(self) -> np.ndarray | None:
        """uint8 [N, n_blocks] codes the packer pads the last block with (value ~0): the zero points, or
        real zero points rounded to the nearest code."""
        if not self.float_zero_points:
            return self.zero_points
        return np.clip(np.rint(self.zero_points), 0, (1 << self.bits) - 1).astype(np.uint8)

    def stored_scales(self) -> np.ndarray:
        """Scales as written to the model: int8 codes for double-quantized scales, else scale_dtype."""
        if self.scale_codes is not None:
            return self.scale_codes
        return self.scales.astype(self.scale_dtype)

    def packed_zero_points(self) -> np.ndarray | None:
        """Integer zero points packed as the op reads them (uint8 [N, zero_point_row_bytes])."""
        if self.float_zero_points:
            raise ValueError("real zero points are not packed: use stored_zero_points()")
        return None if self.zero_points is None else _native.pack_zero_points(self.zero_points, self.bits)

    def stored_zero_points(self) -> np.ndarray | None:
        """Zero points as written to the model: packed integers, or real ones [N, n_blocks] as int8 codes
        (with zero_points_scale) or in scale_dtype."""
        if not self.float_zero_points:
            return self.packed_zero_points()
        if self.zero_point_codes is not None:
            return self.zero_point_codes
        return self.zero_points.astype(self.scale_dtype)

    def columns(self, start: int, stop: int) -> "QuantizedWeight":
        """Output columns start..stop-1 of this weight (views, no copy)."""
        def cut(a):
            return None if a is None else a[start:stop]

        return dataclasses.replace(self, N=stop - start, codes=self.codes[start:stop], scales=self.scales[start:stop],
                                   zero_points=cut(self.zero_points), scale_codes=cut(self.scale_codes),
                                   scales_scale=cut(self.scales_scale), zero_point_codes=cut(self.zero_point_codes),
                                   zero_points_scale=cut(self.zero_points_scale))

    @classmethod
    def concat_columns(cls, parts: list["QuantizedWeight"]) -> "QuantizedWeight":
        """Join weights quantized column slice by column slice (the inverse of ``columns``)."""
        if len(parts) == 1:
            return parts[0]
        first = parts[0]

        def join(attr):
            return None if getattr(first, attr) is None else np.concatenate([getattr(p, attr) for p in parts])

        return dataclasses.replace(
            first, N=sum(p.N for p in parts), codes=join("codes"), scales=join("scales"),
            zero_points=join("zero_points"), scale_codes=join("scale_codes"), scales_scale=join("scales_scale"),
            zero_point_codes=join("zero_point_codes"), zero_points_scale=join("zero_points_scale"))

    def dequantize(self) -> np.ndarray:
        """float32 [K, N], computed in numpy from codes/scales (independent of the C packer)."""
        bs, nb = self.block_size, self.n_blocks
        if self.quant_type == "nf4":
            values = _native.nf4_codebook()[self.codes]
        else:
            zp = self.zero_points if self.zero_points is not None else np.full(
                (self.N, nb), 1 << (self.bits - 1), np.uint8)
            zp_k = np.repeat(zp.astype(np.float32), bs, axis=1)[:, : self.K]
            values = self.codes.astype(np.float32) - zp_k
        s_k = np.repeat(self.scales.astype(np.float32), bs, axis=1)[:, : self.K]
        return np.ascontiguousarray((values * s_k).T)


def _ratio_metrics(signal: float, noise: float, prefix: str = "") -> dict:
    rel = float(np.sqrt(noise / signal)) if signal > 0 else 0.0
    sqnr = float(10 * np.log10(signal / noise)) if noise > 0 and signal > 0 else float("inf")
    return {f"{prefix}rel_error": rel, f"{prefix}sqnr_db": sqnr}


def _error_sums(w: np.ndarray, wq: np.ndarray, gram: np.ndarray | None) -> np.ndarray:
    """[sum w^2, sum err^2] and, with a Gram matrix, [tr(W^T G W), tr(D^T G D)]: all additive over columns."""
    w = w.astype(np.float64)
    err = w - wq.astype(np.float64)
    sums = [float(np.sum(w * w)), float(np.sum(err * err))]
    if gram is not None:  # report metrics: float32 products are precise enough and twice as fast
        g = gram.astype(np.float32)
        w32, e32 = w.astype(np.float32), err.astype(np.float32)
        sums += [float(np.sum((g @ w32) * w32, dtype=np.float64)), float(np.sum((g @ e32) * e32, dtype=np.float64))]
    return np.array(sums)


def _metrics_from_sums(sums: np.ndarray) -> dict:
    out = _ratio_metrics(sums[0], sums[1])
    if len(sums) > 2:
        out.update(_ratio_metrics(sums[2], sums[3], "output_"))
    return out


def error_metrics(w: np.ndarray, wq: np.ndarray, gram: np.ndarray | None = None) -> dict:
    """Relative Frobenius error and SQNR (dB) of the weight wq against w; with the Gram matrix X^T X of
    the layer's calibration inputs also those of the layer output, X wq against X w
    (``output_rel_error``, ``output_sqnr_db``), computed as tr(D^T G D) without the activations."""
    return _metrics_from_sums(_error_sums(w, wq, gram))


def error_metrics_of(w: np.ndarray, qw: QuantizedWeight, gram: np.ndarray | None = None,
                     max_elements: int = 1 << 22) -> dict:
    """error_metrics(w, qw.dequantize(), gram) computed a slice of columns at a time, so that the float
    temporaries stay near max_elements whatever the size of the layer."""
    step = max(1, max_elements // max(qw.K, 1))
    sums = None
    for n0 in range(0, qw.N, step):
        n1 = min(qw.N, n0 + step)
        part = _error_sums(w[:, n0:n1], qw.columns(n0, n1).dequantize(), gram)
        sums = part if sums is None else sums + part
    return _metrics_from_sums(sums)
