"""Every kernel this CPU runs against the scalar reference (and numpy) on its own shape grid, serially
and through the threaded driver."""

import itertools
import platform

import numpy as np
import pytest
from modelgen import dequant_reference, int8_path_reference
from modelgen import int8_scales as modelgen_int8_scales

from int4onnx import _native
from int4onnx.errors import NativeLibraryError
from int4onnx.quant.rtn import quantize_rtn

KERNELS = _native.kernels_available()
FP32_KERNELS = [k for k in KERNELS if k.endswith("_fp32")]
INT8_KERNELS = [k for k in KERNELS if k.endswith("_int8")]
# Each kernel's grid comes from the C library (i4o_kernel_grid, derived from the kernel's register tile):
# the same list native/tests/test_kernels.c runs.
GRIDS = {k: _native.kernel_grid(k) for k in KERNELS}
TEST_THREADS = 3  # the threaded schedule's threads (the C test's default too)
# The kernels that compute real zero points (i4o_kernel.real_zero_points); the others are left out of the
# real-zero-point cases of their grid, and dispatch gives such weights to the next kernel down the ladder.
REAL_ZP_KERNELS = {"scalar_fp32", "scalar_int8", "avx512_fp32", "amx_fp32", "avx512vnni_int8", "avx2_fp32", "avx2_int8", "avxvnni_int8",
                   "neon_fp32", "neon_int8", "neondot_int8", "i8mm_int8"}


@pytest.fixture(autouse=True)
def finest_split(monkeypatch):
    """The threaded driver's finest split (no minimum work per task), so small shapes run many tasks."""
    monkeypatch.setenv("INT4ONNX_MIN_TASK_MACS", "0")


def _fmt(case) -> str:
    """A weight format's name: int4-sym, int4-asym, nf4, int8-sym, int8-asym; -s8 = int8 scales, -rz = real
    zero points."""
    name = "nf4" if case["quant_type"] == "nf4" else f"int{case['bits']}-{'sym' if case['symmetric'] else 'asym'}"
    return name + ("-s8" if case["int8_scales"] else "") + ("-rz" if case["real_zero_points"] else "")


def _weight_key(case):
    return case["K"], case["N"], case["block_size"], _fmt(case)


def _weights(K, N, block, bits, sym, quant_type, seed, int8_scales=False):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((K, N)).astype(np.float32)
    W[rng.integers(0, K, 3), rng.integers(0, N, 3)] *= 8  # a few outliers
    return quantize_rtn(W, bits, block, sym, quant_type, scale_dtype=np.int8 if int8_scales else np.float32)


def _case_weights(case, seed):
    return _weights(case["K"], case["N"], case["block_size"], case["bits"], case["symmetric"], case["quant_type"],
                    seed, case["int8_scales"])


def _real_zero_points(q, seed):
    """Real zero points [N, n_blocks] for an asymmetric RTN weight: its integer ones moved by up to half a
    step, and a block below and one above the code range (a block of values all of one sign)."""
    rng = np.random.default_rng(seed)
    z = (q.zero_points + rng.uniform(-0.5, 0.5, q.zero_points.shape)).astype(np.float32)
    z.flat[0] = -1.3
    z.flat[-1] = (1 << q.bits) + 0.7
    return z


def _block_amax(A, block):
    """|A| with every element replaced by the largest |a| of its row's block (float64)."""
    M, K = A.shape
    padded = np.zeros((M, -(-K // block) * block))
    padded[:, :K] = np.abs(A)
    return np.repeat(padded.reshape(M, -1, block).max(axis=2), block, axis=1)[:, :K]


@pytest.mark.parametrize("kernel,fmt", sorted({(k, _fmt(c)) for k in KERNELS for c in GRIDS[k]}))
def test_kernel_grid(kernel, fmt):
    """The kernel on every case of its grid in one weight format: fp32 kernels within 2e-6 (scaled) of the
    float64 product, int8 kernels within 1e-6 of the numpy statement of the int8 path (and 5e-2 of the
    exact product, on the scale of the activation quantization step); the threaded driver with its tasks in reverse order and on several threads gives the
    serial result bit for bit."""
    compute = "int8" if kernel in INT8_KERNELS else "fp32"
    cases = [c for c in GRIDS[kernel] if _fmt(c) == fmt]
    assert cases
    for n_weight, (key, group) in enumerate(itertools.groupby(cases, key=_weight_key)):
        group = list(group)
        K, N, block, _ = key
        q = _case_weights(group[0], seed=K * 7 + N + block + n_weight)
        packed, zp = q.packed(), q.packed_zero_points()
        z_ref = q.zero_points  # what the references take: integer [N, nb], real [N, nb], or None
        if group[0]["real_zero_points"]:
            zp = z_ref = _real_zero_points(q, seed=K + N)
        # int8 scales go to the kernel as they are stored (int8 codes and super-scales): the library expands them
        s8 = group[0]["int8_scales"]
        assert not s8 or (q.stored_scales().dtype == np.int8 and q.scales_scale.shape == (N,))
        args = (packed, q.stored_scales() if s8 else q.scales, zp, K, N, q.bits, block, q.quant_type)
        kw = {"scales_scale": q.scales_scale} if s8 else {}
        w_ref = dequant_reference(q.codes, q.scales, z_ref, K, block, q.bits, q.quant_type)
        np.testing.assert_allclose(_native.dequantize(*args, **kw), w_ref, rtol=1e-6, atol=1e-7)
        rng = np.random.default_rng(K * N)
        bias = rng.standard_normal(N).astype(np.float32)
        for c in group:
            M = c["M"]
            where = f"{kernel} {fmt} M={M} K={K} N={N} block={block}"
            A = rng.standard_normal((M, K)).astype(np.float32)
            b = bias if M % 2 else None
            ref = A.astype(np.float64) @ w_ref + (0 if b is None else b)
            bound = np.abs(A).astype(np.float64) @ np.abs(w_ref) + 1.0
            y = _native.matmul(A, *args, bias=b, kernel=kernel, compute=compute, **kw)
            for threads in (1, TEST_THREADS):  # 1: one thread, tasks in reverse order
                yt = _native.matmul(A, *args, bias=b, kernel=kernel, compute=compute, threads=threads, **kw)
                np.testing.assert_array_equal(yt, y, err_msg=f"{where}: threaded driver ({threads} threads)")
            err = np.abs(y - ref) / bound
            if compute == "fp32":
                assert err.max() < 2e-6, f"{where}: max scaled error {err.max():.2e}"
                continue
            ref8 = int8_path_reference(A, q.codes, q.scales, z_ref, K, block, q.bits, q.quant_type, b)
            err8 = np.abs(y - ref8) / bound
            assert err8.max() < 1e-6, f"{where}: max scaled error vs int8 reference {err8.max():.2e}"
            # and the int8 path stays close to the exact product: activation quantization moves each a by at
            # most half a step, amax(block) / 254, so the error is scaled by amax(block) @ |W| instead of |A| @ |W|
            err_q = np.abs(y - ref) / (_block_amax(A, block) @ np.abs(w_ref) + 1.0)
            assert err_q.max() < 5e-2, f"{where}: max scaled error vs the exact product {err_q.max():.2e}"


@pytest.mark.parametrize("kernel", KERNELS)
def test_grid_follows_the_tile(kernel):
    """The grid holds the shapes its tile implies (testgrid.c): N at 1, nr - 1, nr, nr + 1, 4 nr + 1;
    M from 1 to mr + 1 and 2 mr + 1; K at each block size +- 16; every weight format; the cases of one
    weight together, none twice."""
    t = _native.kernel_tile(kernel)
    grid = GRIDS[kernel]
    keys = [_weight_key(c) for c in grid]
    runs = [k for k, _ in itertools.groupby(keys)]
    assert len(runs) == len(set(runs)), "the cases of one weight are not adjacent"
    assert len({(c["M"], *_weight_key(c)) for c in grid}) == len(grid), "duplicate cases"
    assert {n for n in (1, t["nr"] - 1, t["nr"], t["nr"] + 1, 4 * t["nr"] + 1) if n > 0} <= {c["N"] for c in grid}
    assert set(range(1, t["mr"] + 2)) | {2 * t["mr"] + 1} <= {c["M"] for c in grid}
    for bs in (16, 32, 48, 64, 128, 256):
        assert {k for k in (bs - 16, bs, bs + 16) if k > 0} <= {c["K"] for c in grid if c["block_size"] == bs}, bs
    if t["kc"]:
        assert {t["kc"] - 16, t["kc"] + 16} <= {c["K"] for c in grid}
    tail = max(t["kr"] - 1, 1)
    assert (272 + tail, -(-(272 + tail) // 16) * 16) in {(c["K"], c["block_size"]) for c in grid}, "per-channel"
    real = {"int4-asym-rz", "int8-asym-rz"} if kernel in REAL_ZP_KERNELS else set()
    assert {_fmt(c) for c in grid} == {"int4-sym", "int4-asym", "nf4", "int8-sym", "int8-asym", "int4-asym-s8"} | real
    assert {(c["M"], c["K"], c["N"]) for c in grid} >= {(43, 500, 401)} | {(s, s, s) for s in range(1, 16)}


def test_grid_api():
    """i4o_kernel_grid returns the whole count and fills at most cap cases; unknown names and bad thread
    counts are errors."""
    ffi, lib = _native.ffi, _native.lib
    full = GRIDS["scalar_fp32"]
    part = ffi.new("i4o_test_case[]", 3)
    assert lib.i4o_kernel_grid(b"scalar_fp32", part, 3) == len(full)
    assert [(c.M, c.K, c.N, c.block_size) for c in part] == [(c["M"], c["K"], c["N"], c["block_size"]) for c in full[:3]]
    with pytest.raises(NativeLibraryError, match="no kernel named"):
        _native.kernel_tile("nope")
    with pytest.raises(NativeLibraryError, match="no test grid"):
        _native.kernel_grid("nope")
    q = _weights(32, 4, 32, 4, True, "int", 0)
    for threads in (0, 65):
        with pytest.raises(NativeLibraryError, match="threads must be 1..64"):
            _native.matmul(np.zeros((1, 32), np.float32), q.packed(), q.scales, None, 32, 4, 4, 32,
                           kernel="scalar_fp32", threads=threads)


def test_scalar_int8_is_exact_against_numpy_statement():
    q = _weights(172, 9, 32, 4, False, "int", 1)
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
    "amx_fp32": {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "amx_tile", "amx_bf16"},
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
    q = _weights(32, 4, 32, 4, True, "int", 0)
    with pytest.raises(Exception, match="unknown kernel"):
        _native.matmul(np.zeros((1, 32), np.float32), q.packed(), q.scales, None, 32, 4, 4, 32, kernel="nope")


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


@pytest.mark.parametrize("bits,sym", [(4, True), (4, False), (8, True), (8, False)])
def test_fp32_kernels_dequantize_exactly(bits, sym):
    """Rows of the identity as activations make each output one weight, w = (q - z) * s rounded once to
    float32 (every other product is an exact 0): every fp32 kernel, on its few-row and panel paths and
    through the threaded driver, must return exactly that, also for scales at the edges of the fast
    int4 fill's range (2^-102, 2^120, 0) and beyond it (subnormal-making 2^-103, 1e-33), where
    kernel_avx2.c's fill_panel falls back to shifting each code down."""
    K, N, block = 128, 40, 32
    rng = np.random.default_rng(5)
    nb = K // block
    codes = rng.integers(0, 1 << bits, size=(N, K)).astype(np.uint8)
    scales = rng.uniform(-0.1, 0.1, size=(N, nb)).astype(np.float32)
    scales[0, :] = [0.0, 2.0**-102, 2.0**120, -(2.0**-103)]
    scales[1, 1] = 1e-33
    scales[17, 2] = -(2.0**119)
    zp = None if sym else rng.integers(0, 1 << bits, size=(N, nb)).astype(np.uint8)
    packed = _native.pack_weights(codes, bits, block, zero_points=zp)
    zpp = None if zp is None else _native.pack_zero_points(zp, bits)
    z = np.full((N, nb), 1 << (bits - 1), np.float32) if zp is None else zp.astype(np.float32)
    w = ((codes.astype(np.float32) - np.repeat(z, block, axis=1)) * np.repeat(scales, block, axis=1)).T  # [K, N]
    eye = np.eye(K, dtype=np.float32)
    for rows in (slice(0, 1), slice(40, 45), slice(0, K)):
        for kernel in FP32_KERNELS:
            for threads in (None, TEST_THREADS):
                y = _native.matmul(eye[rows], packed, scales, zpp, K, N, bits, block, kernel=kernel, compute="fp32",
                                   threads=threads)
                np.testing.assert_array_equal(y, w[rows], err_msg=f"{kernel} rows {rows} threads {threads}")
