import numpy as np
import pytest

from udfs.tiling import (
    block_tiles,
    decode_array,
    decode_mask,
    encode_array,
    encode_mask,
    encode_tiles,
    plan_read_blocks,
    tile_grid_shape,
    tile_transform,
    tile_window,
    window_bounds,
)


def test_tile_grid_covers_partial_edges():
    assert tile_grid_shape(512, 512, 256) == (2, 2)
    assert tile_grid_shape(513, 300, 256) == (3, 2)


def test_edge_tiles_are_clipped_not_padded():
    w = tile_window(2, 1, 513, 300, 256)
    assert (w.row_off, w.col_off, w.height, w.width) == (512, 256, 1, 44)


def test_overlap_grows_tiles_and_is_clipped_at_the_scene_edge():
    w = tile_window(0, 0, 600, 600, 256, overlap=8)
    assert (w.row_off, w.col_off, w.height, w.width) == (0, 0, 264, 264)
    w = tile_window(1, 1, 600, 600, 256, overlap=8)
    assert (w.row_off, w.col_off, w.height, w.width) == (248, 248, 272, 272)


@pytest.mark.parametrize(
    "h, w, t, per", [(1000, 777, 256, 2), (5490, 5490, 256, 4), (10, 10, 256, 4)]
)
def test_read_blocks_hold_every_tile_exactly_once(h, w, t, per):
    blocks = plan_read_blocks(h, w, t, 0, per)
    cover = np.zeros((h, w), dtype=np.int32)
    keys = set()
    for b in blocks:
        for tw in block_tiles(b, h, w, t):
            keys.add((tw.tile_row, tw.tile_col))
            cover[tw.row_off : tw.row_off + tw.height, tw.col_off : tw.col_off + tw.width] += 1
            assert b.row_off <= tw.row_off and tw.row_off + tw.height <= b.row_off + b.height
            assert b.col_off <= tw.col_off and tw.col_off + tw.width <= b.col_off + b.width
    assert (cover == 1).all()
    assert len(keys) == np.prod(tile_grid_shape(h, w, t))


def test_tile_transform_and_bounds_by_hand():
    transform = (10.0, 0.0, 600000.0, 0.0, -10.0, 5700000.0)
    assert tile_transform(transform, 256, 512) == (10.0, 0.0, 605120.0, 0.0, -10.0, 5697440.0)
    assert window_bounds(transform, 256, 512, 256, 256) == (
        605120.0,
        5694880.0,
        607680.0,
        5697440.0,
    )


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_encode_decode_roundtrip(dtype):
    a = (np.arange(35).reshape(5, 7) * 3).astype(dtype)
    buf = encode_array(a)
    assert len(buf) == a.size * np.dtype(dtype).itemsize
    np.testing.assert_array_equal(decode_array(buf, dtype, 5, 7), a)


def test_encoding_is_little_endian():
    assert encode_array(np.array([[1]], dtype=">u2")) == b"\x01\x00"


def test_decode_refuses_wrong_size():
    with pytest.raises(ValueError, match="expected 8"):
        decode_array(b"\x00" * 6, "uint16", 2, 2)


def test_mask_roundtrip():
    m = np.random.default_rng(1).random((13, 11)) > 0.5
    np.testing.assert_array_equal(decode_mask(encode_mask(m), 13, 11), m)


@pytest.mark.parametrize("dtype", ["<u2", ">u2", "u1"])
def test_encode_tiles_equals_encoding_each_tile(dtype):
    rng = np.random.default_rng(4)
    block = rng.integers(0, 255, (70, 53)).astype(dtype)
    # Full, clipped and overlapping tiles of the block, and a 1-pixel one.
    cuts = [(0, 0, 32, 32), (0, 32, 32, 21), (24, 24, 40, 29), (64, 0, 6, 53), (69, 52, 1, 1)]
    col = encode_tiles(block, cuts, np.dtype("uint16"))
    assert len(col) == len(cuts) and col.null_count == 0
    for (r, c, h, w), got in zip(cuts, col.to_pylist(), strict=True):
        want = encode_array(block[r : r + h, c : c + w].astype(np.uint16))
        assert got == want
        np.testing.assert_array_equal(
            decode_array(got, "uint16", h, w), block[r : r + h, c : c + w]
        )


def test_encode_tiles_of_no_tiles_is_an_empty_column():
    col = encode_tiles(np.zeros((4, 4), np.uint16), [], np.dtype("uint16"))
    assert len(col) == 0
