"""The int8 kernels at the edges of their integer ranges: 4-bit codes all 15 (or all 0) against activations of
magnitude 127, where AVX2's int16 runs (x86_int8_256.inc: I8_RUN16 pair sums of up to 2 * 15 * 127 before one
widening) come closest to overflowing, on several block sizes (one int16 run, several, and a short last one) and
row counts (the many-rows tiles and their remainders). Scales are powers of two and activations quantize
exactly, so every kernel must equal the numpy statement of the int8 path bit for bit, serially and through the
threaded driver."""

import numpy as np
import pytest
from modelgen import int8_path_reference

from int4onnx import _native

INT8_KERNELS = [k for k in _native.kernels_available() if k.endswith("_int8")]


def _activations(M, K, pattern, rng):
    """Integers of magnitude 127 (scale_a = 1, q = a): all +127, all -127, or random signs."""
    if pattern == "pos":
        return np.full((M, K), 127.0, dtype=np.float32)
    if pattern == "neg":
        return np.full((M, K), -127.0, dtype=np.float32)
    return (127 * rng.choice([-1, 1], size=(M, K))).astype(np.float32)


@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("block,K", [(16, 48), (32, 96), (48, 96), (64, 160), (128, 256)])
def test_int4_codes_at_the_int16_bound(block, K, sym):
    N = 40  # two column groups and a half one
    rng = np.random.default_rng(block + K)
    nb = (K + block - 1) // block
    scales = np.ldexp(1.0, rng.integers(-8, -2, size=(N, nb))).astype(np.float32)
    for code in (15, 0):
        codes = np.full((N, K), code, dtype=np.uint8)
        codes[::7] = rng.integers(0, 16, size=codes[::7].shape)  # a few columns of mixed codes
        zp = None if sym else rng.integers(0, 16, size=(N, nb)).astype(np.uint8)
        packed = _native.pack_weights(codes, 4, block, zero_points=zp)
        zpp = None if zp is None else _native.pack_zero_points(zp, 4)
        for pattern in ("pos", "neg", "mixed"):
            for M in (4, 5, 9, 16):
                A = _activations(M, K, pattern, rng)
                ref = int8_path_reference(A, codes, scales, zp, K, block, 4)
                for kernel in INT8_KERNELS:
                    where = f"{kernel} code={code} {pattern} M={M} K={K} block={block} sym={sym}"
                    y = _native.matmul(A, packed, scales, zpp, K, N, 4, block, kernel=kernel, compute="int8")
                    np.testing.assert_array_equal(y, ref, err_msg=where)
                    yt = _native.matmul(A, packed, scales, zpp, K, N, 4, block, kernel=kernel, compute="int8",
                                        threads=3)
                    np.testing.assert_array_equal(yt, y, err_msg=f"{where}: threaded driver")
