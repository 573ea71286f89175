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

    def packed_zero_points(self) -> np.ndarray | None:
        return None if self.zero_points is None else _native.pack_zero_points(self.zero_points, self.bits)

    def columns(self, start: int, stop: int) -> "QuantizedWeight":
        """Output columns start..stop-1 of this weight (views, no copy)."""
        return dataclasses.replace(self, N=stop - start, codes=self.codes[start:stop], scales=self.scales[start:stop],
                                   zero_points=None if self.zero_points is None else self.zero_points[start:stop])

    @classmethod
    def concat_columns(cls, parts: list["QuantizedWeight"]) -> "QuantizedWeight":
        """Join weights quantized column slice by column slice (the inverse of ``columns``)."""
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        return dataclasses.replace(
            first, N=sum(p.N for p in parts), codes=np.concatenate([p.codes for p in parts]),
            scales=np.concatenate([p.scales for p in parts]),
            zero_points=None if first.zero_points is None else np.concatenate([p.zero_points for p in parts]))

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


def _error_sums(w: np.ndarray, wq: np.ndarray) -> tuple[float, float]:
    w = w.astype(np.float64)
    err = w - wq.astype(np.float64)
    return float(np.sum(w * w)), float(np.sum(err * err))


def error_metrics(w: np.ndarray, wq: np.ndarray) -> dict:
    """Relative Frobenius error and SQNR (dB) of wq against w."""
    return _metrics(*_error_sums(w, wq))


def error_metrics_of(w: np.ndarray, qw: QuantizedWeight, max_elements: int = 1 << 22) -> dict:
    """error_metrics(w, qw.dequantize()) computed a slice of columns at a time, so that the float
    temporaries stay near max_elements whatever the size of the layer."""
    step = max(1, max_elements // max(qw.K, 1))
    signal = noise = 0.0
    for n0 in range(0, qw.N, step):
        n1 = min(qw.N, n0 + step)
        s, e = _error_sums(w[:, n0:n1], qw.columns(n0, n1).dequantize())
        signal, noise = signal + s, noise + e
    return _metrics(signal, noise)


def _metrics(signal: float, noise: float) -> dict:
    rel = float(np.sqrt(noise / signal)) if signal > 0 else 0.0
    sqnr = float(10 * np.log10(signal / noise)) if noise > 0 and signal > 0 else float("inf")
    return {"rel_error": rel, "sqnr_db": sqnr}
