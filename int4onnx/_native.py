"""The only importer of the cffi extension: the packing layout and kernels live in C (native/).

Everything here is a thin, checked wrapper around int4onnx.h; no layout logic is written in Python.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np

from int4onnx.errors import NativeLibraryError

_MODULE = "int4onnx._int4onnx_native"
# INT4ONNX_LIBRARY: use another build of the native library. A build of the cffi extension
# (_int4onnx_native*.so, e.g. the sanitizer build of `make test-sanitize`) replaces both the Python
# binding and the ONNX Runtime op library; any other library (e.g. native/build/<triple>/
# libint4onnx_ops.so) only changes what library_path() returns.
_OVERRIDE = os.environ.get("INT4ONNX_LIBRARY") or None


def _load_extension(path: str):
    spec = importlib.util.spec_from_file_location(_MODULE, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"INT4ONNX_LIBRARY={path} is not a Python extension module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[_MODULE] = module
    return module


try:
    if _OVERRIDE and os.path.basename(_OVERRIDE).startswith("_int4onnx_native"):
        _ext = _load_extension(_OVERRIDE)
    else:
        from int4onnx import _int4onnx_native as _ext
except ImportError as exc:  # pragma: no cover - only without a build
    raise ImportError(
        "int4onnx's native library is not built. Install the package with `pip install .` "
        "(or run `make venv`); it needs ONNX Runtime's C headers (see DEVELOPERS.md)."
    ) from exc

ffi = _ext.ffi
lib = _ext.lib

QUANT_TYPES = {"int": lib.I4O_QUANT_INT, "nf4": lib.I4O_QUANT_NF4}
COMPUTE = {"fp32": lib.I4O_COMPUTE_FP32, "int8": lib.I4O_COMPUTE_INT8}
DOMAIN = ffi.string(lib.i4o_op_domain()).decode()
OP_NAME = ffi.string(lib.i4o_op_name()).decode()
VERSION = ffi.string(lib.i4o_version()).decode()
# MatMulInt4's schema, read from the library (defined once in int4onnx.h): input name -> slot, in slot
# order; the first OP_REQUIRED_INPUTS are required; attribute names in the header's order.
OP_INPUTS = {ffi.string(lib.i4o_op_input_name(i)).decode(): i for i in range(lib.I4O_IN_COUNT)}
OP_REQUIRED_INPUTS = lib.I4O_IN_REQUIRED
OP_ATTRS = tuple(ffi.string(lib.i4o_op_attr_name(i)).decode() for i in range(lib.I4O_ATTR_COUNT))


def op_inputs(**values) -> list:
    """MatMulInt4's input list from values by input name: [value or None] * len(OP_INPUTS), slot order."""
    unknown = set(values) - set(OP_INPUTS)
    if unknown:
        raise ValueError(f"MatMulInt4 has no input(s) {sorted(unknown)}; its inputs are {list(OP_INPUTS)}")
    return [values.get(name) for name in OP_INPUTS]


def library_path() -> str:
    """Path of the shared library to pass to ``SessionOptions.register_custom_ops_library``."""
    if _OVERRIDE:
        if not os.path.isfile(_OVERRIDE):
            raise NativeLibraryError(f"INT4ONNX_LIBRARY={_OVERRIDE}: no such file")
        return os.path.abspath(_OVERRIDE)
    return _ext.__file__


def _ptr(array: np.ndarray, ctype: str):
    return ffi.cast(ctype, ffi.from_buffer(array))


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise NativeLibraryError(f"{what} failed (native error code {rc})")


def check_layout(K: int, N: int, bits: int, block_size: int) -> bool:
    return lib.i4o_check_layout(K, N, bits, block_size) == 0


def _size(value: int, what: str) -> int:
    """A size helper's answer; the C library returns -1 for arguments outside the layout's ranges."""
    if value < 0:
        raise NativeLibraryError(f"{what}: invalid arguments (K, N and n_blocks in 1..2^31, bits 4 or 8, "
                                 "block_size a multiple of 16 in 16..65536)")
    return int(value)


def n_blocks(K: int, block_size: int) -> int:
    return _size(lib.i4o_n_blocks(K, block_size), f"n_blocks(K={K}, block_size={block_size})")


def blob_bytes(bits: int, block_size: int) -> int:
    return _size(lib.i4o_blob_bytes(bits, block_size), f"blob_bytes(bits={bits}, block_size={block_size})")


def weight_bytes(K: int, N: int, bits: int, block_size: int) -> int:
    return _size(lib.i4o_weight_bytes(K, N, bits, block_size),
                 f"weight_bytes(K={K}, N={N}, bits={bits}, block_size={block_size})")


def zero_point_row_bytes(n_blocks_: int, bits: int) -> int:
    return _size(lib.i4o_zero_point_row_bytes(n_blocks_, bits), f"zero_point_row_bytes(n_blocks={n_blocks_}, bits={bits})")


def pack_weights(codes: np.ndarray, bits: int, block_size: int, quant_type: str = "int",
                 zero_points: np.ndarray | None = None) -> np.ndarray:
    """codes: uint8 [N, K] (row n = column n of the [K, N] weight) -> uint8 [N, n_blocks, blob]."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    N, K = codes.shape
    what = f"pack_weights(K={K}, N={N}, bits={bits}, block_size={block_size})"
    nb = _size(lib.i4o_n_blocks(K, block_size), what)
    out = np.empty((N, nb, _size(lib.i4o_blob_bytes(bits, block_size), what)), dtype=np.uint8)
    zp_ptr = ffi.NULL
    if zero_points is not None:
        zero_points = np.ascontiguousarray(zero_points, dtype=np.uint8)
        if zero_points.shape != (N, nb):
            raise ValueError(f"zero_points shape {zero_points.shape} != {(N, nb)}")
        zp_ptr = _ptr(zero_points, "uint8_t *")
    rc = lib.i4o_pack_weights(_ptr(codes, "uint8_t *"), K, N, bits, block_size, QUANT_TYPES[quant_type], zp_ptr,
                              _ptr(out, "uint8_t *"))
    _check(rc, what)
    return out


def unpack_weights(packed: np.ndarray, K: int, N: int, bits: int, block_size: int) -> np.ndarray:
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    if packed.size != weight_bytes(K, N, bits, block_size):
        raise ValueError("packed size does not match K, N, bits, block_size")
    out = np.empty((N, K), dtype=np.uint8)
    _check(lib.i4o_unpack_weights(_ptr(packed, "uint8_t *"), K, N, bits, block_size, _ptr(out, "uint8_t *")),
           "unpack_weights")
    return out


def pack_zero_points(zero_points: np.ndarray, bits: int) -> np.ndarray:
    """uint8 [N, n_blocks] -> uint8 [N, ceil(n_blocks * bits / 8)]."""
    zero_points = np.ascontiguousarray(zero_points, dtype=np.uint8)
    N, nb = zero_points.shape
    out = np.empty((N, zero_point_row_bytes(nb, bits)), dtype=np.uint8)
    _check(lib.i4o_pack_zero_points(_ptr(zero_points, "uint8_t *"), N, nb, bits, _ptr(out, "uint8_t *")),
           "pack_zero_points")
    return out


def unpack_zero_points(packed: np.ndarray, N: int, n_blocks_: int, bits: int) -> np.ndarray:
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    if packed.size != N * zero_point_row_bytes(n_blocks_, bits):
        raise ValueError("packed zero-point size does not match N, n_blocks, bits")
    out = np.empty((N, n_blocks_), dtype=np.uint8)
    _check(lib.i4o_unpack_zero_points(_ptr(packed, "uint8_t *"), N, n_blocks_, bits, _ptr(out, "uint8_t *")),
           "unpack_zero_points")
    return out


def nf4_codebook() -> np.ndarray:
    return np.frombuffer(ffi.buffer(lib.i4o_nf4_codebook(), 16 * 4), dtype=np.float32).copy()


def _is_real(zero_points) -> bool:
    """Real ("float") zero points [N, n_blocks] (a floating dtype), not packed uint8 integer ones."""
    return zero_points is not None and np.asarray(zero_points).dtype.kind == "f"


class _Weights:
    """Keeps the numpy buffers alive while C holds pointers into them. int8 scales (double quantization)
    need scales_scale, float32 [N] or [1] (the op's inputs scales and scales_scale); other scales are
    used as float32. zero_points: packed uint8 integer ones, or real ones, a float array [N, n_blocks]
    (used as float32: i4o_weights.zero_points_float)."""

    def __init__(self, packed, scales, zero_points, K, N, bits, block_size, quant_type, scales_scale=None):
        self.packed = np.ascontiguousarray(packed, dtype=np.uint8)
        self.zpf = None
        if _is_real(zero_points):
            self.zpf, zero_points = np.ascontiguousarray(zero_points, dtype=np.float32), None
            nb = n_blocks(K, block_size)
            if self.zpf.shape != (N, nb):
                raise ValueError(f"real zero_points shape {self.zpf.shape} != {(N, nb)}")
        self.zp = None if zero_points is None else np.ascontiguousarray(zero_points, dtype=np.uint8)
        self.c = ffi.new("i4o_weights *")  # zero-filled: no int8 scales unless set below
        self.c.K, self.c.N, self.c.block_size, self.c.bits = K, N, block_size, bits
        self.c.quant_type = QUANT_TYPES[quant_type]
        self.c.data = _ptr(self.packed, "uint8_t *")
        if np.asarray(scales).dtype == np.int8:
            if scales_scale is None:
                raise ValueError("int8 scales need scales_scale (float32 [N] or [1])")
            self.scales = np.ascontiguousarray(scales, dtype=np.int8)
            self.ss = np.ascontiguousarray(scales_scale, dtype=np.float32).reshape(-1)
            self.c.scales_int8 = _ptr(self.scales, "int8_t *")
            self.c.scales_scale = _ptr(self.ss, "float *")
            self.c.n_scales_scale = self.ss.size
        else:
            if scales_scale is not None:
                raise ValueError("scales_scale given but the scales are not int8")
            self.scales = np.ascontiguousarray(scales, dtype=np.float32)
            self.c.scales = _ptr(self.scales, "float *")
        self.c.zero_points = ffi.NULL if self.zp is None else _ptr(self.zp, "uint8_t *")
        self.c.zero_points_float = ffi.NULL if self.zpf is None else _ptr(self.zpf, "float *")


def dequantize(packed, scales, zero_points, K: int, N: int, bits: int, block_size: int,
               quant_type: str = "int", scales_scale: np.ndarray | None = None) -> np.ndarray:
    """Portable-layout weight -> float32 [K, N] (zero_points packed uint8, real float [N, n_blocks], or None;
    int8 scales with scales_scale)."""
    w = _Weights(packed, scales, zero_points, K, N, bits, block_size, quant_type, scales_scale)
    out = np.empty((K, N), dtype=np.float32)
    _check(lib.i4o_dequantize(w.c, _ptr(out, "float *")), "dequantize")
    return out


def matmul(A: np.ndarray, packed, scales, zero_points, K: int, N: int, bits: int, block_size: int,
           quant_type: str = "int", bias: np.ndarray | None = None, kernel: str | None = None,
           compute: str = "fp32", threads: int | None = None, scales_scale: np.ndarray | None = None) -> np.ndarray:
    """A [M, K] @ W (+ bias) with a named kernel (None = automatic), single-threaded, tasks in order.
    zero_points: packed uint8 (integer), a float array [N, n_blocks] (real), or None (symmetric).

    threads: run the threaded driver with a test schedule instead (i4o_matmul_threads): 1 = the tasks
    in reverse order on this thread, 2..64 = on that many threads; the result must not change.
    scales_scale: the super-scale of int8 scales (double quantization), float32 [N] or [1]."""
    A = np.ascontiguousarray(A, dtype=np.float32)
    M = A.shape[0]
    if A.shape != (M, K):
        raise ValueError(f"A shape {A.shape} is not [M, {K}]")
    w = _Weights(packed, scales, zero_points, K, N, bits, block_size, quant_type, scales_scale)
    out = np.empty((M, N), dtype=np.float32)
    b = ffi.NULL
    if bias is not None:
        bias = np.ascontiguousarray(bias, dtype=np.float32)
        b = _ptr(bias, "float *")
    err = ffi.new("char[256]")
    args = (kernel.encode() if kernel else ffi.NULL, COMPUTE[compute], _ptr(A, "float *"), M, w.c, b,
            _ptr(out, "float *"))
    rc = lib.i4o_matmul(*args, err, 256) if threads is None else lib.i4o_matmul_threads(*args, threads, err, 256)
    if rc != 0:
        raise NativeLibraryError(f"matmul with kernel {kernel or 'auto'}: {ffi.string(err).decode()}")
    return out


def kernels_available() -> list[str]:
    return [k for k in ffi.string(lib.i4o_kernels_available()).decode().split(",") if k]


def kernel_selected(compute: str = "fp32") -> str:
    return ffi.string(lib.i4o_kernel_selected(COMPUTE[compute])).decode()


def kernel_tile(kernel: str) -> dict[str, int]:
    """A compiled-in kernel's register tile: mr rows x nr columns, K in steps of kr, panels kc deep."""
    t = ffi.new("i4o_tile *")
    if lib.i4o_kernel_tile(kernel.encode(), t) != 0:
        raise NativeLibraryError(f"no kernel named {kernel!r}")
    return {"mr": t.mr, "nr": t.nr, "kr": t.kr, "kc": t.kc}


def kernel_grid(kernel: str) -> list[dict]:
    """The kernel's test cases (i4o_kernel_grid, derived from its tile; the C kernel test runs the same list):
    dicts of M, K, N, block_size, bits, quant_type ("int" or "nf4"), symmetric, int8_scales and real_zero_points
    (bools)."""
    n = lib.i4o_kernel_grid(kernel.encode(), ffi.NULL, 0)
    if n < 0:
        raise NativeLibraryError(f"no test grid for kernel {kernel!r}")
    cases = ffi.new("i4o_test_case[]", n)
    lib.i4o_kernel_grid(kernel.encode(), cases, n)
    names = {v: k for k, v in QUANT_TYPES.items()}
    return [{"M": c.M, "K": c.K, "N": c.N, "block_size": c.block_size, "bits": c.bits,
             "quant_type": names[c.quant_type], "symmetric": bool(c.symmetric), "int8_scales": bool(c.int8_scales),
             "real_zero_points": bool(c.real_zero_points)}
            for c in cases]
