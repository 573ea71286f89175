"""The portable layout: C packer vs an independent numpy statement, round trips, padding."""

import numpy as np
import pytest
from modelgen import numpy_pack_reference

from int4onnx import _native
from int4onnx.errors import NativeLibraryError

SHAPES = [(16, 1), (17, 3), (172, 64), (256, 7), (1000, 5)]


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("block", [16, 32, 48, 64, 256])
@pytest.mark.parametrize("K,N", SHAPES)
@pytest.mark.parametrize("asym", [False, True])
def test_pack_matches_reference_and_round_trips(bits, block, K, N, asym):
    rng = np.random.default_rng(K * 31 + N + block + bits)
    codes = rng.integers(0, 1 << bits, size=(N, K), dtype=np.uint8)
    nb = -(-K // block)
    zp = rng.integers(0, 1 << bits, size=(N, nb), dtype=np.uint8) if asym else None
    packed = _native.pack_weights(codes, bits, block, "int", zp)
    pad = zp[:, -1] if asym else np.full(N, 1 << (bits - 1), np.uint8)
    np.testing.assert_array_equal(packed, numpy_pack_reference(codes, bits, block, pad))
    assert packed.shape == (N, nb, block * bits // 8)
    np.testing.assert_array_equal(_native.unpack_weights(packed, K, N, bits, block), codes)
    if asym:
        pz = _native.pack_zero_points(zp, bits)
        assert pz.shape == (N, -(-nb * bits // 8))
        np.testing.assert_array_equal(_native.unpack_zero_points(pz, N, nb, bits), zp)


def test_low_nibble_first():
    codes = np.array([[1, 2, 3]], dtype=np.uint8)
    packed = _native.pack_weights(codes, 4, 16)
    # element 0 low nibble, element 1 high nibble; padding is the implied zero point 8
    assert packed[0, 0, 0] == 0x21
    assert packed[0, 0, 1] == 0x83
    assert all(b == 0x88 for b in packed[0, 0, 2:])


def test_nf4_pads_with_zero_level():
    cb = _native.nf4_codebook()
    assert cb[7] == 0.0 and cb[0] == -1.0 and cb[15] == 1.0 and np.all(np.diff(cb) > 0)
    packed = _native.pack_weights(np.zeros((1, 1), np.uint8), 4, 16, "nf4")
    assert packed[0, 0, 0] == 0x70


def test_zero_points_odd_block_count_packs_per_row():
    zp = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.uint8)
    pz = _native.pack_zero_points(zp, 4)
    np.testing.assert_array_equal(pz, [[0x21, 0x03], [0x54, 0x06]])


@pytest.mark.parametrize("K,N,bits,block", [(0, 4, 4, 32), (4, 0, 4, 32), (32, 4, 3, 32), (32, 4, 4, 24),
                                            (32, 4, 4, 8), (32, 4, 4, 1 << 17)])
def test_invalid_layouts_are_rejected(K, N, bits, block):
    assert not _native.check_layout(K, N, bits, block)


def test_pack_rejects_bad_arguments():
    with pytest.raises(NativeLibraryError, match="pack_weights"):
        _native.pack_weights(np.zeros((2, 32), np.uint8), 4, 24)
