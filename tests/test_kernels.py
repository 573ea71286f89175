"""Every kernel this CPU runs against the scalar reference (and numpy) on a shape grid."""

import platform

import numpy as np
import pytest
from modelgen import dequant_reference, int8_path_reference
from modelgen import int8_scales as modelgen_int8_scales

from int4onnx import _native
from int4onnx.quant.rtn import quantize_rtn

KERNELS = _native.kernels_available()
FP32_KERNELS = [k for k in KERNELS if k.endswith("_fp32")]
INT8_KERNELS = [k for k in KERNELS if k.endswith("_int8")]
M_VALUES = list(range(1, 10)) + [32, 128]
VARIANTS = {  # name: (bits, symmetric, quant_type)
    "int4-sym": (4, True, "int"),
    "int4-asym": (4, False, "int"),
    "nf4": (4, True, "nf4"),
    "int8-sym": (8, True, "int"),
    "int8-asym": (8, False, "int"),
}


def _weights(K, N, block, variant, seed):
    bits, sym, qt = VARIANTS[variant]
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((K, N)).astype(np.float32)
    W[rng.integers(0, K, 3), rng.integers(0, N, 3)] *= 8  # a few outliers
    q = quantize_rtn(W, bits, block, sym, qt)
    return q


def _grid():
    for K in (16, 172, 256, 4096):
        for block in (16, 32, 64, 128, 256, None):
            if block is not None and block > K and block != 16:
                continue
            for variant in VARIANTS:
                if K == 4096 and variant not in ("int4-asym", "int4-sym") and block not in (32, None):
                    continue  # keep the large-K rows to the common configurations
                yield K, block, variant


@pytest.mark.parametrize("K,block,variant", list(_grid()))
@pytest.mark.parametrize("N", [7, 64])
def test_kernels_match_reference(K, block, variant, N):
    block = block or -(-K // 16) * 16  # None = per-channel
    q = _weights(K, N, block, variant, seed=K + N + block)
    packed, zp = q.packed(), q.packed_zero_points()
    args = (packed, q.scales, zp, K, N, q.bits, block, q.quant_type)
    w_ref = dequant_reference(q.codes, q.scales, q.zero_points, K, block, q.bits, q.quant_type)
    np.testing.assert_allclose(_native.dequantize(*args), w_ref, rtol=1e-6, atol=1e-7)
    rng = np.random.default_rng(K * N)
    bias = rng.standard_normal(N).astype(np.float32)
    for M in M_VALUES:
        A = rng.standard_normal((M, K)).astype(np.float32)
        b = bias if M % 2 else None
        ref = A.astype(np.float64) @ w_ref + (0 if b is None else b)
        bound = np.abs(A).astype(np.float64) @ np.abs(w_ref) + 1.0
        for kernel in FP32_KERNELS:
            y = _native.matmul(A, *args, bias=b, kernel=kernel, compute="fp32")
            err = np.abs(y - ref) / bound
            assert err.max() < 2e-6, f"{kernel} M={M}: max scaled error {err.max():.2e}"
        ref8 = int8_path_reference(A, q.codes, q.scales, q.zero_points, K, block, q.bits, q.quant_type, b)
        for kernel in INT8_KERNELS:
            y = _native.matmul(A, *args, bias=b, kernel=kernel, compute="int8")
            err = np.abs(y - ref8) / bound
            assert err.max() < 1e-6, f"{kernel} M={M}: max scaled error vs int8 reference {err.max():.2e}"
            # and the int8 path stays close to the exact product (activation quantization error only)
            assert (np.abs(y - ref) / bound).max() < 5e-2


def test_scalar_int8_is_exact_against_numpy_statement():
    q = _weights(172, 9, 32, "int4-asym", 1)
    A = np.random.default_rng(2).standard_normal((3, 172)).astype(np.float32)
    y = _native.matmul(A, q.packed(), q.scales, q.packed_zero_points(), 172, 9, 4, 32, kernel="scalar_int8",
                       compute="int8")
    ref8 = int8_path_reference(A, q.codes, q.scales, q.zero_points, 172, 32, 4)
    np.testing.assert_array_equal(y, ref8)


def test_kernel_list_and_selection():
    assert KERNELS[:2] == ["scalar_fp32", "scalar_int8"] or set(KERNELS) >= {"scalar_fp32", "scalar_int8"}
    assert _native.kernel_selected("fp32") in FP32_KERNELS
    assert _native.kernel_selected("int8") in INT8_KERNELS


# The x86 kernels and the /proc/cpuinfo flags each needs. A kernel this CPU lacks is not tested here;
# its test is skipped with the reason, so the output says what this run did not cover.
X86_KERNEL_FLAGS = {
    "avx2_fp32": {"avx2", "fma"}, "avx2_int8": {"avx2", "fma"},
    "avxvnni_int8": {"avx2", "fma", "avx_vnni"},
    "avx512_fp32": {"avx2", "fma", "avx512f", "avx512bw", "avx512vl"},
    "avx512vnni_int8": {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"},
}


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 kernels")
@pytest.mark.parametrize("kernel", sorted(X86_KERNEL_FLAGS))
def test_x86_kernel_runs_where_the_cpu_has_it(kernel):
    """The CPU probe offers exactly the kernels whose instructions the CPU has; the grid above covers
    those, and the others are reported here as skips (check them on a CPU that has them)."""
    flags = _cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags to compare with")
    missing = sorted(X86_KERNEL_FLAGS[kernel] - flags)
    if missing:
        assert kernel not in KERNELS
        pytest.skip(f"{kernel} not tested: this CPU lacks {', '.join(missing)} (run the suite on a CPU with them)")
    assert kernel in KERNELS, f"the CPU has {sorted(X86_KERNEL_FLAGS[kernel])} but {kernel} is not offered"


def test_forced_isa(monkeypatch):
    monkeypatch.setenv("INT4ONNX_ISA", "scalar")
    assert _native.kernel_selected("fp32") == "scalar_fp32"
    assert _native.kernel_selected("int8") == "scalar_int8"
    monkeypatch.setenv("INT4ONNX_ISA", "no-such-isa")
    assert _native.kernel_selected("fp32") == ""


def test_unknown_kernel_is_an_error():
    q = _weights(32, 4, 32, "int4-sym", 0)
    with pytest.raises(Exception, match="unknown kernel"):
        _native.matmul(np.zeros((1, 32), np.float32), q.packed(), q.scales, None, 32, 4, 4, 32, kernel="nope")


@pytest.mark.parametrize("variant,block", [("int4-sym", 32), ("int4-asym", 64), ("nf4", 32), ("int8-asym", 32),
                                           ("int4-asym", None)])
def test_tile_edges(variant, block):
    """Shapes at the edges of the SIMD kernels' tiles: N not a multiple of 16 or of a 64-column
    supergroup, M one past a row tile, K not a multiple of the block (panel and register paths)."""
    K = 520
    block = block or -(-K // 16) * 16
    rng = np.random.default_rng(3)
    for N in (33, 100):
        q = _weights(K, N, block, variant, seed=N)
        args = (q.packed(), q.scales, q.packed_zero_points(), K, N, q.bits, block, q.quant_type)
        w_ref = dequant_reference(q.codes, q.scales, q.zero_points, K, block, q.bits, q.quant_type)
        bias = rng.standard_normal(N).astype(np.float32)
        for M in (5, 7, 13, 25, 73):
            A = rng.standard_normal((M, K)).astype(np.float32)
            ref = A.astype(np.float64) @ w_ref + bias
            bound = np.abs(A).astype(np.float64) @ np.abs(w_ref) + 1.0
            for kernel in FP32_KERNELS:
                y = _native.matmul(A, *args, bias=bias, kernel=kernel, compute="fp32")
                assert (np.abs(y - ref) / bound).max() < 2e-6, (kernel, N, M)
            ref8 = int8_path_reference(A, q.codes, q.scales, q.zero_points, K, block, q.bits, q.quant_type, bias)
            for kernel in INT8_KERNELS:
                y = _native.matmul(A, *args, bias=bias, kernel=kernel, compute="int8")
                assert (np.abs(y - ref8) / bound).max() < 1e-6, (kernel, N, M)


def test_int8_path_scale_rounding():
    """The int8 path rounds weight scales to float16 precision under a per-column power of two
    (docs/format.md); columns with tiny, huge, negative and widely spread scales, and a maximum that
    rounds up to the next power of two, give the same numbers on every int8 kernel."""
    K, N, block = 128, 6, 32
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 16, size=(N, K)).astype(np.uint8)
    scales = np.array([[1e-30, 3e-31, -2e-30, 1e-31],
                       [1e20, -5e19, 1e19, 7e19],
                       [0.01, -0.02, 1e-7, 0.03],
                       [65535.0, 1.0, 2.0, -3.0],  # the maximum rounds up to 2^16 under E = 1
                       [0.0, 0.0, 0.0, 0.0],
                       [np.nextafter(np.float32(2.0), np.float32(3.0)), 1e-12, 0.5, 0.25]], dtype=np.float32)
    packed = _native.pack_weights(codes, 4, block)
    rounded = modelgen_int8_scales(scales)
    # rounding error of normal columns stays within half an ulp of float16
    normal = [0, 1, 2, 3, 5]
    rel = np.abs(rounded[normal] - scales[normal]) / np.maximum(np.abs(scales[normal]), 1e-38)
    assert (rel[np.abs(scales[normal]) >= np.abs(scales[normal]).max(axis=1, keepdims=True) * 2.0**-20] <= 2.0**-11).all()
    A = rng.standard_normal((3, K)).astype(np.float32)
    ref8 = int8_path_reference(A, codes, scales, None, K, block, 4)
    w_ref = dequant_reference(codes, scales, None, K, block, 4)
    bound = np.abs(A).astype(np.float64) @ np.abs(w_ref) + 1e-30
    for kernel in INT8_KERNELS:
        y = _native.matmul(A, packed, scales, None, K, N, 4, block, kernel=kernel, compute="int8")
        assert np.isfinite(y).all()
        assert (np.abs(y - ref8) / bound).max() < 1e-6, kernel


@pytest.mark.parametrize("bits,sym", [(4, True), (4, False), (8, True), (8, False)])
def test_int8_kernels_are_exact_when_the_float_epilogue_is(bits, sym):
    """With activations that quantize exactly (integers, each block's largest is 127) and power-of-two
    weight scales, every float operation of the int8 path is exact: the SIMD kernels must then agree
    with the scalar reference and the numpy statement bit for bit, which checks their integer parts."""
    K, N, block = 256, 100, 32
    rng = np.random.default_rng(11)
    nb = K // block
    codes = rng.integers(0, 1 << bits, size=(N, K)).astype(np.uint8)
    scales = np.ldexp(1.0, rng.integers(-8, -2, size=(N, nb))).astype(np.float32)
    zp = None if sym else rng.integers(0, 1 << bits, size=(N, nb)).astype(np.uint8)
    packed = _native.pack_weights(codes, bits, block, zero_points=zp)
    zpp = None if zp is None else _native.pack_zero_points(zp, bits)
    for M in (1, 3, 5, 13):
        A = rng.integers(-127, 128, size=(M, K)).astype(np.float32)
        A[:, ::block] = 127  # every block's largest magnitude is 127: scale_a = 1, q = a
        ref = int8_path_reference(A, codes, scales, zp, K, block, bits)
        for kernel in INT8_KERNELS:
            y = _native.matmul(A, packed, scales, zpp, K, N, bits, block, kernel=kernel, compute="int8")
            np.testing.assert_array_equal(y, ref, err_msg=f"{kernel} M={M}")
