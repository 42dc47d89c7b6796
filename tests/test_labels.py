"""Label kernels: rasterizing polygons into a tile grid, spatial blocks, capped sampling.

Expected arrays are written out by hand for small grids.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from rasterio.warp import transform_geom
from shapely.geometry import Polygon, box, mapping, shape

from udfs.labels import (
    LabelError,
    held_out,
    rasterize_labels,
    sample_fractions,
    spatial_block,
    stratified_cap,
)

# A 10 x 10 tile of 10 m pixels in UTM 31N whose upper-left corner is (600000, 5700000).
X0, Y0 = 600000.0, 5700000.0
TILE = (10.0, 0.0, X0, 0.0, -10.0, Y0)


def utm_box(c0: int, r0: int, c1: int, r1: int) -> Polygon:
    """Polygon covering pixel columns c0..c1-1 and rows r0..r1-1 of TILE (pixel edges)."""
    return box(X0 + 10 * c0, Y0 - 10 * r1, X0 + 10 * c1, Y0 - 10 * r0)


def expected(shape_: tuple[int, int], *cells: tuple[int, int, int, int, int]) -> np.ndarray:
    out = np.zeros(shape_, dtype=np.uint8)
    for c0, r0, c1, r1, code in cells:
        out[r0:r1, c0:c1] = code
    return out


def test_polygon_in_tile_crs_labels_exactly_the_pixels_whose_centre_it_holds():
    got = rasterize_labels([(utm_box(2, 3, 5, 7), 4)], TILE, 10, 10, 32631, "EPSG:32631")
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected((10, 10), (2, 3, 5, 7, 4)))


def test_lonlat_polygon_is_reprojected_to_the_tile_crs():
    # The same square drawn in lon/lat (as in a GeoJSON file) lands on the same pixels.
    lonlat = shape(transform_geom("EPSG:32631", "EPSG:4326", mapping(utm_box(1, 1, 4, 6))))
    got = rasterize_labels([(lonlat, 2)], TILE, 10, 10, 32631)  # src_crs EPSG:4326
    np.testing.assert_array_equal(got, expected((10, 10), (1, 1, 4, 6, 2)))


def test_wkb_and_geojson_mappings_are_accepted():
    poly = utm_box(0, 0, 2, 2)
    a = rasterize_labels([(poly.wkb, 1)], TILE, 10, 10, 32631, "EPSG:32631")
    b = rasterize_labels([(mapping(poly), 1)], TILE, 10, 10, 32631, "EPSG:32631")
    np.testing.assert_array_equal(a, expected((10, 10), (0, 0, 2, 2, 1)))
    np.testing.assert_array_equal(a, b)


def test_tile_offset_in_the_scene_is_taken_from_its_transform():
    # A tile whose upper-left pixel is scene pixel (row 20, col 30).
    tile = (10.0, 0.0, X0 + 300.0, 0.0, -10.0, Y0 - 200.0)
    poly = box(X0 + 310, Y0 - 240, X0 + 330, Y0 - 220)  # scene cols 31..32, rows 22..23
    got = rasterize_labels([(poly, 3)], tile, 5, 5, 32631, "EPSG:32631")
    np.testing.assert_array_equal(got, expected((5, 5), (1, 2, 3, 4, 3)))


def test_overlapping_polygons_of_different_classes_leave_no_label():
    a = utm_box(0, 0, 4, 4)
    b = utm_box(2, 2, 6, 6)
    got = rasterize_labels([(a, 1), (b, 2)], TILE, 8, 8, 32631, "EPSG:32631")
    want = expected((8, 8), (0, 0, 4, 4, 1), (2, 2, 6, 6, 2))
    want[2:4, 2:4] = 0  # claimed by both classes
    np.testing.assert_array_equal(got, want)


def test_overlapping_polygons_of_one_class_keep_it():
    got = rasterize_labels(
        [(utm_box(0, 0, 4, 4), 5), (utm_box(2, 2, 6, 6), 5)], TILE, 8, 8, 32631, "EPSG:32631"
    )
    np.testing.assert_array_equal(got, expected((8, 8), (0, 0, 4, 4, 5), (2, 2, 6, 6, 5)))


def test_hole_of_a_polygon_is_unlabelled():
    outer = utm_box(0, 0, 6, 6)
    hole = utm_box(2, 2, 4, 4)
    donut = Polygon(outer.exterior.coords, [hole.exterior.coords])
    got = rasterize_labels([(donut, 1)], TILE, 6, 6, 32631, "EPSG:32631")
    want = np.ones((6, 6), np.uint8)
    want[2:4, 2:4] = 0
    np.testing.assert_array_equal(got, want)


def test_codes_above_255_give_int16():
    got = rasterize_labels([(utm_box(0, 0, 1, 1), 300)], TILE, 2, 2, 32631, "EPSG:32631")
    assert got.dtype == np.int16
    np.testing.assert_array_equal(got, [[300, 0], [0, 0]])


def test_no_polygons_and_polygons_outside_the_tile_give_zeros():
    assert not rasterize_labels([], TILE, 4, 4, 32631).any()
    far = box(X0 + 5000, Y0 - 5000, X0 + 5100, Y0 - 4900)
    got = rasterize_labels([(far, 1)], TILE, 4, 4, 32631, "EPSG:32631")
    assert got.shape == (4, 4) and not got.any()


@pytest.mark.parametrize("code", [0, -1, 40000, 1.5])
def test_bad_class_codes_are_refused(code):
    with pytest.raises(LabelError, match="class codes"):
        rasterize_labels([(utm_box(0, 0, 1, 1), code)], TILE, 2, 2, 32631, "EPSG:32631")


def test_bad_geometry_and_crs_are_refused():
    with pytest.raises(LabelError, match="geometry"):
        rasterize_labels([("not a polygon", 1)], TILE, 2, 2, 32631)
    with pytest.raises(LabelError, match="CRS"):
        rasterize_labels([(utm_box(0, 0, 1, 1), 1)], TILE, 2, 2, 32631, "EPSG:not-a-code")


# ----------------------------------------------------------------------------- blocks


def test_spatial_block_ids_by_hand():
    rows = np.array([0, 511, 512, 0, 1030])
    cols = np.array([0, 511, 0, 512, 2000])
    got = spatial_block(rows, cols, 512)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, [0, 0, 1 << 32, 1, (2 << 32) + 3])
    assert spatial_block(5, 7, 4) == (1 << 32) + 1


def test_spatial_block_refuses_bad_input():
    with pytest.raises(LabelError, match="block size"):
        spatial_block(0, 0, 0)
    with pytest.raises(LabelError, match=">= 0"):
        spatial_block(-1, 0, 8)


def test_held_out_is_deterministic_per_block_and_seed():
    blocks = spatial_block(*np.meshgrid(np.arange(100) * 8, np.arange(100) * 8), 8).ravel()
    a = held_out(blocks, 0.3, seed=1)
    np.testing.assert_array_equal(a, held_out(blocks, 0.3, seed=1))
    assert abs(a.mean() - 0.3) < 0.03  # 10 000 blocks
    b = held_out(blocks, 0.3, seed=2)
    assert (a != b).mean() > 0.2  # another seed holds out other blocks
    # Every pixel of one block shares its fate; the order of pixels does not matter.
    rev = held_out(blocks[::-1], 0.3, seed=1)[::-1]
    np.testing.assert_array_equal(a, rev)
    assert bool(held_out(blocks[5], 0.3, seed=1)) == bool(a[5])
    # A larger fraction holds out a superset of blocks.
    assert (held_out(blocks, 0.5, seed=1) >= a).all()


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_held_out_refuses_fractions_outside_0_1(fraction):
    with pytest.raises(LabelError, match="test fraction"):
        held_out([1, 2], fraction)


# ----------------------------------------------------------------------------- sampling


def test_stratified_cap_keeps_at_most_cap_per_class_and_all_of_small_classes():
    y = np.array([1] * 50 + [2] * 3 + [3] * 10)
    idx = stratified_cap(y, 10, seed=4)
    assert idx.dtype == np.int64
    assert (np.diff(idx) > 0).all()  # sorted, unique
    kept = dict(zip(*np.unique(y[idx], return_counts=True), strict=True))
    assert kept == {1: 10, 2: 3, 3: 10}
    assert set(idx[y[idx] == 2]) == {50, 51, 52}


def test_stratified_cap_is_seeded():
    y = np.repeat([1, 2, 3], 100)
    np.testing.assert_array_equal(stratified_cap(y, 20, seed=9), stratified_cap(y, 20, seed=9))
    assert not np.array_equal(stratified_cap(y, 20, seed=9), stratified_cap(y, 20, seed=10))


def test_stratified_cap_edge_cases():
    assert stratified_cap(np.array([], dtype=int), 5).size == 0
    with pytest.raises(LabelError, match="cap"):
        stratified_cap([1, 2], 0)


def test_sample_fractions_keep_at_least_cap_rows_with_high_probability():
    counts = {"train:1": 100, "train:2": 1_000_000, "test:1": 0}
    fr = sample_fractions(counts, 1000)
    assert fr["train:1"] == 1.0
    assert "test:1" not in fr  # nothing to sample
    rng = np.random.default_rng(0)
    kept = rng.binomial(1_000_000, fr["train:2"], size=2000)
    assert kept.min() >= 1000
    assert kept.mean() < 1000 * 1.2  # the collected sample stays near the cap


def test_label_and_model_kernels_do_not_import_pyspark():
    code = (
        "import sys, udfs.labels, udfs.models; "
        "sys.exit(any(m.startswith('pyspark') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
