"""tools/smollm2_quality.py's scoring helpers: the float-minimum grid, greedy agreement, bits per weight."""

import pathlib
import sys

import numpy as np
from test_tied import tied_lm

import int4onnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tools"))
import smollm2_quality as sq  # noqa: E402


def test_float_min_grid_reproduces_q4_1():
    """A weight on a Q4_1 grid (float16 d and m per block of 32 along K) comes back exactly with float16
    d and m, and within half an int8 step of d and m with int8 ones."""
    rng = np.random.default_rng(0)
    K, N = 96, 5
    d = rng.uniform(0.01, 0.02, (K // 32, N)).astype(np.float16).astype(np.float32)
    m = rng.uniform(-0.2, -0.1, (K // 32, N)).astype(np.float16).astype(np.float32)
    q = rng.integers(0, 16, (K // 32, 32, N))
    q[:, 0], q[:, 1] = 0, 15  # every block spans the whole grid
    w = (q * d[:, None] + m[:, None]).reshape(K, N).astype(np.float32)
    np.testing.assert_array_equal(sq.float_min_grid(w, 32, None), w)
    w8 = sq.float_min_grid(w, 32, 8)
    assert 0 < np.abs(w8 - w).max() < 16 * 0.5 * 0.02 / 127 + 0.5 * 0.2 / 127
    # zero-point coding (the converter's --float-zero-points grid): float16 z = -m / d is within float16
    # rounding of z (|z| <= 20 here) times d; int8 z codes are within half a step of the column's |z| / 127
    wz = sq.float_min_grid(w, 32, None, "zero-point")
    assert 0 < np.abs(wz - w).max() < 0.02 * 20 * 2 ** -10
    wz8 = sq.float_min_grid(w, 32, 8, "zero-point")
    assert 0 < np.abs(wz8 - w).max() < 16 * 0.5 * 0.02 / 127 + 0.02 * 0.5 * 20 / 127


def test_agreement_is_the_common_prefix():
    assert sq.agreement([1, 2, 3], [1, 2, 3]) == sq.NEW_TOKENS  # the same (short) answer
    assert sq.agreement([1, 2, 4, 5], [1, 2, 3, 5]) == 2
    assert sq.agreement([7], [1]) == 0


def test_bits_per_weight_matches_the_report(tmp_path):
    """Counted from the output's initializers, the tied table once with its second zero-point copy."""
    src, _ = tied_lm(tmp_path / "m.onnx")
    out = tmp_path / "q.onnx"
    r = int4onnx.quantize(src, out, lm_head="4", group_size=32)
    _, n = sq.weight_census(pathlib.Path(src))
    assert n == 64 * 64 + 40 * 64  # W and the table, counted once
    extra_bytes = (sq.bits_per_weight(out, pathlib.Path(src)) - r.bits_per_weight) * n / 8
    assert abs(extra_bytes - 32) < 1e-6  # + the tied Gather's two int64 shape constants (4 values), nothing else
