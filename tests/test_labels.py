"""Label kernels: rasterizing polygons into a tile grid, blocks, the split, capped sampling.

Expected arrays and groups are written out by hand for small grids and graphs.
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
    assign_split,
    hash_unit,
    map_block,
    overlap_links,
    pixel_centres,
    rasterize_labels,
    rasterize_polygons,
    sample_fractions,
    split_groups,
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


def test_polygon_ids_are_burnt_with_the_lowest_id_winning_within_a_class():
    # Polygons 7 and 3 of class 1 overlap on rows/cols 2..3; polygon 5 (class 2) overlaps
    # polygon 7 on rows 4..5, cols 2..3, where the label is ambiguous: no label, no id.
    items = [(utm_box(0, 0, 4, 4), 1, 7), (utm_box(2, 2, 6, 4), 1, 3), (utm_box(2, 4, 4, 6), 2, 5)]
    items[0] = (utm_box(0, 0, 4, 6), 1, 7)  # polygon 7 covers rows 0..5, cols 0..3
    labels, ids = rasterize_polygons(items, TILE, 8, 8, 32631, "EPSG:32631")
    want_ids = np.full((8, 8), -1, np.int32)
    want_ids[0:6, 0:4] = 7
    want_ids[2:4, 2:6] = 3  # shared with 7: the lower id, 3
    want_ids[4:6, 2:4] = -1  # classes 1 and 2 overlap
    want_labels = np.where(want_ids >= 0, 1, 0).astype(np.uint8)
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(labels, want_labels)
    # rasterize_labels burns the same classes.
    codes = rasterize_labels([(g, c) for g, c, _ in items], TILE, 8, 8, 32631, "EPSG:32631")
    np.testing.assert_array_equal(codes, want_labels)


def test_polygon_ids_must_be_non_negative_integers():
    with pytest.raises(LabelError, match="polygon ids"):
        rasterize_polygons([(utm_box(0, 0, 1, 1), 1, -1)], TILE, 2, 2, 32631, "EPSG:32631")


# ----------------------------------------------------------------------------- blocks


def test_pixel_centres_by_hand():
    x, y = pixel_centres(TILE, [0, 2], [0, 3])
    np.testing.assert_array_equal(x, [X0 + 5, X0 + 35])
    np.testing.assert_array_equal(y, [Y0 - 5, Y0 - 25])


def test_map_block_by_hand():
    # 640 m blocks: x 600005 -> 937, y 5699995 -> 8906; x -1 -> -1.
    half = 1 << 21
    got = map_block([600005.0, -1.0], [5699995.0, 5.0], 640.0, 32631)
    want = [
        (32631 << 44) + ((8906 + half) << 22) + (937 + half),
        (32631 << 44) + ((0 + half) << 22) + (-1 + half),
    ]
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got.view(np.uint64), np.asarray(want, dtype=np.uint64))
    # Another CRS is another block; None is stored as EPSG 0.
    assert map_block(600005.0, 5699995.0, 640.0, 32632) != got[0]
    assert map_block(5.0, 5.0, 640.0, None) == (half << 22) + half


def test_map_block_is_the_same_for_the_same_ground_in_two_grids():
    # A 10 m grid and a 30 m grid with other origins: pixel centres in one 640 m square
    # share a block whatever grid they come from.
    x10, y10 = pixel_centres((10.0, 0, 600000.0, 0, -10.0, 5700000.0), [70], [5])
    x30, y30 = pixel_centres((30.0, 0, 599985.0, 0, -30.0, 5700015.0), [24], [2])
    assert (x10[0] // 640, y10[0] // 640) == (x30[0] // 640, y30[0] // 640)
    assert map_block(x10, y10, 640.0, 32631) == map_block(x30, y30, 640.0, 32631)


def test_map_block_refuses_bad_input():
    with pytest.raises(LabelError, match="block side"):
        map_block(0.0, 0.0, 0.0, 32631)
    with pytest.raises(LabelError, match="too small"):
        map_block(5.0e6, 0.0, 1.0, 32631)
    with pytest.raises(LabelError, match="EPSG"):
        map_block(0.0, 0.0, 10.0, 1 << 20)
    with pytest.raises(LabelError, match="finite"):
        map_block(np.nan, 0.0, 10.0, 32631)


def test_hash_unit_is_in_0_1_and_seeded():
    u = hash_unit(np.arange(1000), seed=4)
    assert u.dtype == np.float64 and ((u >= 0) & (u < 1)).all()
    np.testing.assert_array_equal(u, hash_unit(np.arange(1000), seed=4))
    assert (u != hash_unit(np.arange(1000), seed=5)).all()


# ----------------------------------------------------------------------------- the split


def test_split_groups_by_hand():
    # Edges polygon-block: 0-A 1-A 1-B 2-B 3-C 4-D 6-E, and an overlap link 4-3. Polygon 5
    # has no pixel but links 6 to 0 (it overlaps both): groups {0,1,2,6} {3,4}.
    A, B, C, D, E = 100, 200, 300, 400, 500
    polygon = [2, 1, 1, 0, 3, 4, 6]
    block = [B, B, A, A, C, D, E]
    pols, groups = split_groups(polygon, block, ([4, 5, 5], [3, 0, 6]))
    np.testing.assert_array_equal(pols, [0, 1, 2, 3, 4, 6])
    np.testing.assert_array_equal(groups, [0, 0, 0, 3, 3, 0])
    # Without links: {0,1,2} {3} {4} {6}.
    _, groups = split_groups(polygon, block)
    np.testing.assert_array_equal(groups, [0, 0, 0, 3, 4, 6])


def test_split_groups_joins_blocks_through_polygons():
    # A chain: polygon 0 in blocks 1, 2; polygon 1 in blocks 2, 3; polygon 2 in block 3 and
    # polygon 3 alone in block 9.
    pols, groups = split_groups([0, 0, 1, 1, 2, 3], [1, 2, 2, 3, 3, 9])
    np.testing.assert_array_equal(groups, [0, 0, 0, 3])


def random_pairs(seed: int, n_polygons: int = 300, n_blocks: int = 120):
    """A random (polygon, block, pixels) table: each polygon in 1..3 blocks.

    With 1000 blocks for 300 polygons the groups stay small (a few dozen polygons at most);
    with a few hundred blocks one giant group forms, which no split can share out.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_polygons):
        for b in rng.choice(n_blocks, size=rng.integers(1, 4), replace=False):
            rows.append((p, int(b) * 7919, int(rng.integers(1, 200))))
    pol, blk, px = (np.asarray(c) for c in zip(*rows, strict=True))
    codes = rng.integers(1, 5, size=n_polygons)
    return pol, blk, px, codes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_puts_no_polygon_and_no_block_on_both_sides(seed):
    pol, blk, px, codes = random_pairs(seed, n_blocks=1000)
    split = assign_split(pol, blk, px, codes, 0.3, seed=seed)
    side = dict(zip(split.polygons.tolist(), split.test.tolist(), strict=True))
    # Checked on the raw table: every block's polygons share one side.
    for b in np.unique(blk):
        assert len({side[p] for p in pol[blk == b].tolist()}) == 1, b
    assert set(split.test_polygons).isdisjoint(split.train_polygons)
    assert set(split.test_polygons) | set(split.train_polygons) == set(pol.tolist())
    # Pixels per side add up; the held-out share is near the target.
    total = int(px.sum())
    assert split.pixels_test + split.pixels_train == total
    held = sum(int(px[pol == p].sum()) for p in split.test_polygons)
    assert held == split.pixels_test
    assert 0.2 < held / total < 0.4
    assert split.missing_test == () and split.missing_train == ()


def test_split_is_deterministic_and_independent_of_row_order():
    pol, blk, px, codes = random_pairs(7, n_blocks=1000)
    a = assign_split(pol, blk, px, codes, 0.3, seed=1)
    perm = np.random.default_rng(0).permutation(len(pol))
    b = assign_split(pol[perm], blk[perm], px[perm], codes, 0.3, seed=1)
    assert a.test_polygons == b.test_polygons
    c = assign_split(pol, blk, px, codes, 0.3, seed=2)
    assert a.test_polygons != c.test_polygons


def test_split_overlap_links_keep_overlapping_polygons_together():
    # Polygons 0 and 1 share no block but overlap: always on one side.
    pol = np.array([0, 1] + list(range(2, 40)))
    blk = np.arange(len(pol)) * 10
    px = np.full(len(pol), 10)
    codes = np.ones(len(pol), dtype=int)
    for seed in range(30):
        split = assign_split(pol, blk, px, codes, 0.5, seed=seed, links=([0], [1]))
        side = dict(zip(split.polygons.tolist(), split.test.tolist(), strict=True))
        assert side[0] == side[1]
        assert split.groups[0] == split.groups[1] == 0


@pytest.mark.parametrize("seed", range(12))
def test_split_gives_every_class_with_two_groups_both_sides(seed):
    # Class 1: 20 groups of 100 px; class 2: two single-pixel groups. Tiny groups nearly
    # always fit the remaining target, so the greedy pass alone often holds out both (with
    # seed 8 it does): the repair moves one back.
    pol = np.arange(22)
    blk = pol * 3
    px = np.array([100] * 20 + [1, 1])
    codes = np.array([1] * 20 + [2, 2])
    split = assign_split(pol, blk, px, codes, 0.3, seed=seed)
    side = dict(zip(split.polygons.tolist(), split.test.tolist(), strict=True))
    assert {side[20], side[21]} == {True, False}
    assert {side[p] for p in range(20)} == {True, False}
    assert split.missing_test == split.missing_train == split.one_group == ()


def test_split_reports_a_class_it_cannot_put_on_both_sides():
    # Class 3 is one polygon: it is on one side only, and the split says so.
    pol = np.arange(11)
    blk = pol
    px = np.full(11, 10)
    codes = np.array([1] * 10 + [3])
    split = assign_split(pol, blk, px, codes, 0.3, seed=0)
    assert split.one_group == (3,)
    on_test = bool(split.test[10])
    assert (split.missing_train if on_test else split.missing_test) == (3,)
    assert split.n_groups == 11


def test_one_group_holds_nothing_out():
    # Every polygon shares block 5: one group, which cannot be split.
    split = assign_split([0, 1, 2], [5, 5, 5], [10, 10, 10], [1, 2, 1], 0.3, seed=0)
    assert split.n_groups == 1
    assert split.pixels_test == 0 or split.pixels_train == 0


def test_assign_split_refuses_unknown_polygon_ids():
    with pytest.raises(LabelError, match="polygon ids"):
        assign_split([0, 3], [1, 2], [1, 1], [1, 1], 0.3)


def test_overlap_links_find_overlaps_not_touches():
    a = box(0, 0, 2, 2)
    b = box(1, 1, 3, 3)  # overlaps a
    c = box(2, -1, 4, 0.5)  # touches a at x = 2 only, overlaps nothing else
    d = box(10, 10, 11, 11)
    e = box(0.5, 0.5, 0.7, 0.7)  # inside a
    i, j = overlap_links([a, b, c, d, e])
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == [(0, 1), (0, 4)]
    assert overlap_links([a])[0].size == 0


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
