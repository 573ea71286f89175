"""Every kernel this CPU runs against the scalar reference (and numpy) on a shape grid."""

import numpy as np
import pytest
from modelgen import dequant_reference, int8_path_reference

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
