"""Real ("float") zero points (issue 13): w = ((float)code - z) * scale with z any float, one per block.

The C API (i4o_weights.zero_points_float) against numpy in float64, on every kernel that computes them
(the kernel grid covers shapes: test_kernels.py); dispatch gives them to the scalar kernels where a SIMD
kernel lacks them; real zero points with integer values give the integer path's result bit for bit; the
op through ONNX Runtime with float32, float16 and int8 (+ zero_points_scale) zero points, initializers or
graph inputs, fp32 and int8 compute. Broken inputs: test_op_errors.py."""

import numpy as np
import pytest
from modelgen import dequant_reference, int8_path_reference
from opcases import check_valid, valid_case

from int4onnx import _native
from int4onnx.errors import NativeLibraryError

K, N, BLOCK = 176, 37, 32
NB = -(-K // BLOCK)
RNG = np.random.default_rng(13)
CODES = RNG.integers(0, 16, size=(N, K)).astype(np.uint8)
SCALES = (RNG.random((N, NB)) * 0.1 + 0.01).astype(np.float32)
ZINT = RNG.integers(0, 16, size=(N, NB)).astype(np.uint8)
Z = (ZINT + RNG.uniform(-0.5, 0.5, (N, NB))).astype(np.float32)
Z[0, 0], Z[1, 1] = -2.75, 17.3  # blocks whose values all have one sign
PACKED = _native.pack_weights(CODES, 4, BLOCK, "int", np.clip(np.rint(Z), 0, 15).astype(np.uint8))
KERNELS = _native.kernels_available()
REAL = [k for k in KERNELS if any(c["real_zero_points"] for c in _native.kernel_grid(k))]


def _compute(kernel):
    return "int8" if kernel.endswith("_int8") else "fp32"


def test_dequantize_is_code_minus_z_times_scale():
    w = _native.dequantize(PACKED, SCALES, Z, K, N, 4, BLOCK)
    ref = dequant_reference(CODES, SCALES, Z, K, BLOCK, 4)
    np.testing.assert_allclose(w, ref, rtol=1e-6, atol=1e-7)
    # the float32 statement exactly
    b = np.arange(K) // BLOCK
    np.testing.assert_array_equal(w, ((CODES.astype(np.float32) - Z[:, b]) * SCALES[:, b]).T)


@pytest.mark.parametrize("kernel", REAL)
def test_kernels_with_real_zero_points_match_numpy(kernel):
    A = RNG.standard_normal((5, K)).astype(np.float32)
    bias = RNG.standard_normal(N).astype(np.float32)
    w_ref = dequant_reference(CODES, SCALES, Z, K, BLOCK, 4)
    bound = np.abs(A).astype(np.float64) @ np.abs(w_ref) + 1.0
    y = _native.matmul(A, PACKED, SCALES, Z, K, N, 4, BLOCK, bias=bias, kernel=kernel, compute=_compute(kernel))
    if _compute(kernel) == "fp32":
        assert (np.abs(y - (A.astype(np.float64) @ w_ref + bias)) / bound).max() < 2e-6
    else:
        ref8 = int8_path_reference(A, CODES, SCALES, Z, K, BLOCK, 4, "int", bias)
        assert (np.abs(y - ref8) / bound).max() < 1e-6
        if kernel == "scalar_int8":
            np.testing.assert_array_equal(y, ref8)  # the definition, bit for bit
    np.testing.assert_array_equal(
        _native.matmul(A, PACKED, SCALES, Z, K, N, 4, BLOCK, bias=bias, kernel=kernel, compute=_compute(kernel),
                       threads=3), y)


def test_int8_path_rounds_real_zero_points_to_float16():
    """z = 8 + 2^-12 is 8 in float16: the int8 path gives what z = 8 gives, the fp32 path does not."""
    z = np.full((N, NB), 8 + 2.0**-12, np.float32)
    A = RNG.standard_normal((3, K)).astype(np.float32)
    for compute in ("fp32", "int8"):
        y = _native.matmul(A, PACKED, SCALES, z, K, N, 4, BLOCK, kernel=f"scalar_{compute}", compute=compute)
        y8 = _native.matmul(A, PACKED, SCALES, np.full_like(z, 8), K, N, 4, BLOCK, kernel=f"scalar_{compute}",
                            compute=compute)
        assert np.array_equal(y, y8) == (compute == "int8")


@pytest.mark.parametrize("bits", [4, 8])
def test_integer_valued_real_zero_points_equal_the_integer_path(bits):
    """((float)code - (float)zp) * s is (float)(code - zp) * s, and float(dot) - zp * float(sum) rounds the
    exact int32 value once: bit for bit the integer zero points' result, on every kernel that has both."""
    codes = RNG.integers(0, 1 << bits, size=(N, K)).astype(np.uint8)
    zp = RNG.integers(0, 1 << bits, size=(N, NB)).astype(np.uint8)
    packed = _native.pack_weights(codes, bits, BLOCK, "int", zp)
    A = RNG.standard_normal((4, K)).astype(np.float32)
    args = (K, N, bits, BLOCK)
    np.testing.assert_array_equal(_native.dequantize(packed, SCALES, zp.astype(np.float32), *args),
                                  _native.dequantize(packed, SCALES, _native.pack_zero_points(zp, bits), *args))
    for kernel in REAL:
        y_int = _native.matmul(A, packed, SCALES, _native.pack_zero_points(zp, bits), *args, kernel=kernel,
                               compute=_compute(kernel))
        y_real = _native.matmul(A, packed, SCALES, zp.astype(np.float32), *args, kernel=kernel, compute=_compute(kernel))
        np.testing.assert_array_equal(y_real, y_int, err_msg=kernel)


def test_dispatch_skips_kernels_without_real_zero_points():
    A = RNG.standard_normal((2, K)).astype(np.float32)
    for compute in ("fp32", "int8"):
        # the automatic choice runs them (on the best kernel that has them)
        y = _native.matmul(A, PACKED, SCALES, Z, K, N, 4, BLOCK, compute=compute)
        # dispatch's choice (it honours INT4ONNX_ISA), or the best kernel below it that has them
        chosen = _native.kernel_selected(compute)
        best = chosen if chosen in REAL else [k for k in REAL if _compute(k) == compute][-1]
        np.testing.assert_array_equal(y, _native.matmul(A, PACKED, SCALES, Z, K, N, 4, BLOCK, kernel=best,
                                                        compute=compute))
    for kernel in sorted(set(KERNELS) - set(REAL)):  # a kernel named explicitly that lacks them refuses
        with pytest.raises(NativeLibraryError, match="invalid weights for this kernel"):
            _native.matmul(A, PACKED, SCALES, Z, K, N, 4, BLOCK, kernel=kernel, compute=_compute(kernel))


def test_bad_real_zero_points_are_refused():
    out = np.empty((K, N), np.float32)
    # both kinds of zero points
    w = _native._Weights(PACKED, SCALES, Z, K, N, 4, BLOCK, "int")
    zpp = _native.pack_zero_points(ZINT, 4)
    w.c.zero_points = _native._ptr(zpp, "uint8_t *")
    assert _native.lib.i4o_dequantize(w.c, _native._ptr(out, "float *")) == _native.lib.I4O_E_ARG
    # NF4 takes none
    w = _native._Weights(PACKED, SCALES, Z, K, N, 4, BLOCK, "nf4")
    assert _native.lib.i4o_dequantize(w.c, _native._ptr(out, "float *")) == _native.lib.I4O_E_ARG
    with pytest.raises(NativeLibraryError, match="invalid weights"):
        _native.matmul(np.ones((1, K), np.float32), PACKED, SCALES, Z, K, N, 4, BLOCK, quant_type="nf4")
    with pytest.raises(ValueError, match="real zero_points shape"):
        _native.dequantize(PACKED, SCALES, Z[:, :-1], K, N, 4, BLOCK)


@pytest.mark.parametrize("a_type,real_zp", [("float", "float"), ("float", "float16"), ("float", "int8"),
                                            ("float16", "float16"), ("float16", "int8")])
@pytest.mark.parametrize("compute", ["fp32", "int8"])
@pytest.mark.parametrize("weights_as_inputs", [False, True])
def test_op_with_real_zero_points_matches_numpy(a_type, real_zp, compute, weights_as_inputs):
    """The op against numpy (float64 dequantization, or the int8 path's statement), with the zero points as
    initializers (widened once at session start) or as graph inputs (each run), with bias and int8 scales."""
    check_valid(valid_case(a_type=a_type, real_zp=real_zp, compute=compute, weights_as_inputs=weights_as_inputs,
                           bias=True, K=200, N=24, block=32, a_shape=[2, 3, 200]))
    check_valid(valid_case(a_type=a_type, real_zp=real_zp, compute=compute, weights_as_inputs=weights_as_inputs,
                           int8_scales=True, bits=8, K=64, N=16, block=16))
