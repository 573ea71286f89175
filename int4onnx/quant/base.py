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
    points (implied 2^(bits-1)).
    """

    K: int
    N: int
    bits: int
    block_size: int
    codes: np.ndarray              # uint8 [N, K]
    scales: np.ndarray             # float32 [N, n_blocks] (already rounded to scale_dtype)
    zero_points: np.ndarray | None  # uint8 [N, n_blocks]
    quant_type: str = "int"
    scale_dtype: np.dtype = dataclasses.field(default_factory=lambda: np.dtype(np.float32))
    # double-quantized scales: scales == scale_codes * scales_scale[:, None] (int8 [N, nb], float32 [N])
    scale_codes: np.ndarray | None = None
    scales_scale: np.ndarray | None = None

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
        return _native.pack_weights(self.codes, self.bits, bs, self.quant_type, self.zero_points)

    def stored_scales(self) -> np.ndarray:
        """Scales as written to the model: int8 codes for double-quantized scales, else scale_dtype."""
        if self.scale_codes is not None:
            return self.scale_codes
        return self.scales.astype(self.scale_dtype)

    def packed_zero_points(self) -> np.ndarray | None:
        return None if self.zero_points is None else _native.pack_zero_points(self.zero_points, self.bits)

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


def error_metrics(w: np.ndarray, wq: np.ndarray, gram: np.ndarray | None = None) -> dict:
    """Relative Frobenius error and SQNR (dB) of the weight wq against w; with the Gram matrix X^T X of
    the layer's calibration inputs also those of the layer output, X wq against X w
    (``output_rel_error``, ``output_sqnr_db``), computed as tr(D^T G D) without the activations."""
    w = w.astype(np.float64)
    err = w - wq.astype(np.float64)
    out = _ratio_metrics(float(np.sum(w * w)), float(np.sum(err * err)))
    if gram is not None:
        out.update(_ratio_metrics(float(np.sum((gram @ w) * w)), float(np.sum((gram @ err) * err)), "output_"))
    return out
