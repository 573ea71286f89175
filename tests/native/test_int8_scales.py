"""i4o_weights carries double-quantized scales as the op stores them (int8 codes and a float32 super-scale per
column or for the tensor): i4o_dequantize, i4o_matmul and the threaded driver expand them exactly as
float32 (int8 * super-scale), and a weight with both kinds of scales, or neither, is refused."""

import numpy as np
import pytest

from int4onnx import _native
from int4onnx.errors import NativeLibraryError

K, N, BLOCK = 80, 12, 32
NB = -(-K // BLOCK)
RNG = np.random.default_rng(21)
CODES = RNG.integers(0, 16, size=(N, K)).astype(np.uint8)
ZP = RNG.integers(0, 16, size=(N, NB)).astype(np.uint8)
PACKED = _native.pack_weights(CODES, 4, BLOCK, "int", ZP)
ZP_PACKED = _native.pack_zero_points(ZP, 4)
S8 = RNG.integers(-127, 128, size=(N, NB)).astype(np.int8)


@pytest.mark.parametrize("per_tensor", [False, True])
def test_int8_scales_equal_their_float_expansion(per_tensor):
    ss = (RNG.random(1 if per_tensor else N) * 0.01 + 1e-3).astype(np.float32)
    expanded = S8.astype(np.float32) * (ss[0] if per_tensor else ss[:, None])  # float32 arithmetic, as the op
    args = (PACKED, S8, ZP_PACKED, K, N, 4, BLOCK)
    fargs = (PACKED, expanded, ZP_PACKED, K, N, 4, BLOCK)
    np.testing.assert_array_equal(_native.dequantize(*args, scales_scale=ss), _native.dequantize(*fargs))
    A = RNG.standard_normal((5, K)).astype(np.float32)
    for kernel in _native.kernels_available():
        compute = "int8" if kernel.endswith("_int8") else "fp32"
        y = _native.matmul(A, *fargs, kernel=kernel, compute=compute)
        np.testing.assert_array_equal(_native.matmul(A, *args, kernel=kernel, compute=compute, scales_scale=ss), y)
        np.testing.assert_array_equal(
            _native.matmul(A, *args, kernel=kernel, compute=compute, scales_scale=ss, threads=2), y)


def test_weights_with_wrong_scales_are_refused():
    with pytest.raises(ValueError, match="need scales_scale"):
        _native.dequantize(PACKED, S8, ZP_PACKED, K, N, 4, BLOCK)
    with pytest.raises(ValueError, match="not int8"):
        _native.dequantize(PACKED, S8.astype(np.float32), ZP_PACKED, K, N, 4, BLOCK, scales_scale=np.ones(N, np.float32))
    # the C checks themselves: a super-scale count other than N or 1, both kinds of scales, neither
    w = _native._Weights(PACKED, S8, ZP_PACKED, K, N, 4, BLOCK, "int", np.ones(2, np.float32))
    out = np.empty((K, N), np.float32)
    assert _native.lib.i4o_dequantize(w.c, _native._ptr(out, "float *")) == _native.lib.I4O_E_ARG
    w = _native._Weights(PACKED, S8, ZP_PACKED, K, N, 4, BLOCK, "int", np.ones(N, np.float32))
    floats = np.ones((N, NB), np.float32)
    w.c.scales = _native._ptr(floats, "float *")
    assert _native.lib.i4o_dequantize(w.c, _native._ptr(out, "float *")) == _native.lib.I4O_E_ARG
    w.c.scales = _native.ffi.NULL
    w.c.scales_int8 = _native.ffi.NULL
    assert _native.lib.i4o_weight_scales(w.c, _native._ptr(floats, "float *")) == _native.lib.I4O_E_ARG
    with pytest.raises(NativeLibraryError):
        _native.matmul(np.ones((1, K), np.float32), PACKED, S8, ZP_PACKED, K, N, 4, BLOCK,
                       scales_scale=np.ones(3, np.float32))
