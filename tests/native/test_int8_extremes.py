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


@pytest.mark.parametrize("block", [16, 32, 64])
def test_non_finite_activations_in_quantisation_groups(block):
    """The x86 int8 kernels quantise activations 16 (AVX2: 8) whole blocks at a time, a vector max per block
    that drops NaNs and a NaN flag per block beside it: a NaN or an infinity anywhere in a row (first or last
    element of a block, inside a group or in the blocks after the groups) must make that row non-finite on
    every int8 kernel, and the other rows, one with an all-zero block (scale 0) and one with a block of
    subnormals (127 / amax overflows to infinity), must match the numpy statement of the int8 path."""
    K, N = 33 * block + block // 2, 24  # two groups, a whole block and a part of one
    rng = np.random.default_rng(block)
    nb = -(-K // block)
    codes = rng.integers(0, 16, size=(N, K)).astype(np.uint8)
    scales = rng.uniform(0.01, 0.1, size=(N, nb)).astype(np.float32)
    packed = _native.pack_weights(codes, 4, block)
    specials = [(1, 5 * block + block - 1, np.nan), (2, 17 * block, np.nan), (3, 33 * block + 3, np.nan),
                (4, 9 * block + 1, np.inf), (5, 20 * block + block - 1, -np.inf), (6, 0, np.nan)]
    A = rng.standard_normal((8, K)).astype(np.float32)
    for row, k, value in specials:
        A[row, k] = value
    A[0, 2 * block:3 * block] = 0.0  # an all-zero block: scale 0, codes 0
    A[7, 30 * block:31 * block] = rng.standard_normal(block).astype(np.float32) * np.float32(1e-39)  # subnormals
    bad = sorted({row for row, _, _ in specials})
    good = [r for r in range(A.shape[0]) if r not in bad]
    with np.errstate(over="ignore"):  # the subnormal block's 127 / amax
        ref = int8_path_reference(A[good], codes, scales, None, K, block, 4)
    for kernel in INT8_KERNELS:
        y = _native.matmul(A, packed, scales, None, K, N, 4, block, kernel=kernel, compute="int8")
        assert not np.isfinite(y[bad]).any(), f"{kernel} block={block}: a row with a NaN or an infinity has finite outputs"
        bound = np.abs(A[good]).astype(np.float64) @ (np.abs(codes.T.astype(np.float64) - 8) * 0.1) + 1.0
        err = np.abs(y[good] - ref) / bound
        assert err.max() < 1e-6, f"{kernel} block={block}: max scaled error {err.max():.2e} against the reference"
