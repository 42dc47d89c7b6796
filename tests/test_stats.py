"""Tile statistics and valid / cloud fractions: hand-worked 3x3 values and edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from udfs.stats import STAT_NAMES, fractions, stack_statistics, tile_statistics

T, F = True, False
NAN, INF = np.nan, np.inf
ALL = np.ones((3, 3), bool)

# 1..9: mean 5, var 60/9, p10 at position 0.8 -> 1.8, p90 at 7.2 -> 8.2
ONE_TO_NINE = {
    "count": 9,
    "mean": 5.0,
    "std": 2.5819889,
    "min": 1.0,
    "max": 9.0,
    "p10": 1.8,
    "p50": 5.0,
    "p90": 8.2,
}
# valid finite values 1, 2, 3, 5, 7: mean 3.6, var 23.2/5, p10 at 0.4 -> 1.4, p90 at 3.6 -> 6.2
MIXED_VALUES = [[1.0, NAN, 3.0], [INF, 5.0, -INF], [7.0, 100.0, 2.0]]
MIXED_VALID = [[T, T, T], [T, T, T], [T, F, T]]
MIXED = {
    "count": 5,
    "mean": 3.6,
    "std": 2.1540659,
    "min": 1.0,
    "max": 7.0,
    "p10": 1.4,
    "p50": 3.0,
    "p90": 6.2,
}


def _check(stats, expected):
    assert list(stats) == list(STAT_NAMES)
    assert type(stats["count"]) is int and stats["count"] == expected["count"]
    for k in STAT_NAMES[1:]:
        assert isinstance(stats[k], float)
        if math.isnan(expected[k]):
            assert math.isnan(stats[k]), k
        else:
            assert stats[k] == pytest.approx(expected[k], rel=1e-6, abs=1e-9), k


def test_one_to_nine_by_hand():
    values = np.arange(1, 10, dtype=np.float32).reshape(3, 3)
    _check(tile_statistics(values, ALL), ONE_TO_NINE)


def test_nan_inf_and_masked_pixels_are_ignored():
    values = np.array(MIXED_VALUES, dtype=np.float32)
    _check(tile_statistics(values, np.array(MIXED_VALID)), MIXED)


def test_two_values_interpolate_linearly():
    values = np.full((3, 3), 9.0)
    values[0, 0], values[2, 2] = 0.2, 0.4
    valid = np.zeros((3, 3), bool)
    valid[0, 0] = valid[2, 2] = True
    expected = {"count": 2, "mean": 0.3, "std": 0.1, "min": 0.2, "max": 0.4}
    _check(tile_statistics(values, valid), expected | {"p10": 0.22, "p50": 0.3, "p90": 0.38})


def test_single_valid_pixel_has_zero_std():
    values = np.full((3, 3), NAN, np.float32)
    values[1, 1] = 0.5
    one = {"count": 1, "mean": 0.5, "std": 0.0, "min": 0.5, "max": 0.5}
    _check(tile_statistics(values, ALL), one | {"p10": 0.5, "p50": 0.5, "p90": 0.5})


EMPTY = {"count": 0} | {k: NAN for k in STAT_NAMES[1:]}


def test_all_masked_gives_count_0_and_nan():
    values = np.arange(9, dtype=np.float32).reshape(3, 3)
    _check(tile_statistics(values, np.zeros((3, 3), bool)), EMPTY)


def test_all_nan_or_inf_gives_count_0_and_nan():
    values = np.array([[NAN, INF, -INF]] * 3, dtype=np.float32)
    _check(tile_statistics(values, ALL), EMPTY)


def test_empty_tile_gives_count_0_and_nan():
    _check(tile_statistics(np.zeros((0, 0), np.float32), np.zeros((0, 0), bool)), EMPTY)


def test_uint16_values_are_accepted():
    values = np.arange(1, 10, dtype=np.uint16).reshape(3, 3)
    _check(tile_statistics(values, ALL), ONE_TO_NINE)


def test_stack_with_2d_and_3d_masks():
    stack = np.stack(
        [
            np.arange(1, 10, dtype=np.float32).reshape(3, 3),
            np.array(MIXED_VALUES, dtype=np.float32),
            np.full((3, 3), NAN, np.float32),
        ]
    )
    valid3 = np.stack([ALL, np.array(MIXED_VALID), ALL])
    got = stack_statistics(stack, valid3)
    assert got["count"].dtype == np.int64
    np.testing.assert_array_equal(got["count"], [9, 5, 0])
    for k in STAT_NAMES[1:]:
        assert got[k].shape == (3,)
        np.testing.assert_allclose(got[k], [ONE_TO_NINE[k], MIXED[k], NAN], rtol=1e-6)

    # a 2-D mask applies to every layer: drop pixel (2, 1) everywhere
    got2 = stack_statistics(stack[:2], np.array(MIXED_VALID))
    np.testing.assert_array_equal(got2["count"], [8, 5])
    # 1..9 without 8: mean 37/8
    assert got2["mean"][0] == pytest.approx(4.625)


def test_stack_matches_numpy_on_random_data():
    rng = np.random.default_rng(7)
    stack = rng.normal(0.3, 0.2, (4, 50, 40)).astype(np.float32)
    stack[rng.random(stack.shape) < 0.05] = NAN
    valid = rng.random((4, 50, 40)) < 0.7
    valid[3] = False
    got = stack_statistics(stack, valid)
    for i in range(3):
        x = stack[i][valid[i] & np.isfinite(stack[i])].astype(np.float64)
        assert got["count"][i] == x.size
        np.testing.assert_allclose(got["mean"][i], x.mean(), rtol=1e-10)
        np.testing.assert_allclose(got["std"][i], x.std(), rtol=1e-10)
        np.testing.assert_allclose(got["min"][i], x.min())
        np.testing.assert_allclose(got["max"][i], x.max())
        for q in (10, 50, 90):
            np.testing.assert_allclose(got[f"p{q}"][i], np.percentile(x, q), rtol=1e-12)
    assert got["count"][3] == 0 and np.isnan(got["p50"][3])


@pytest.mark.parametrize(
    ("values", "valid", "error"),
    [
        (np.zeros((3, 3)), np.ones((3, 3), np.uint8), TypeError),
        (np.zeros((3, 3)), np.ones((2, 3), bool), ValueError),
        (np.zeros(9), np.ones(9, bool), ValueError),
    ],
)
def test_tile_statistics_rejects_bad_input(values, valid, error):
    with pytest.raises(error):
        tile_statistics(values, valid)


def test_stack_statistics_rejects_2d_values():
    with pytest.raises(ValueError, match="n, rows, cols"):
        stack_statistics(np.zeros((3, 3)), ALL)


# --------------------------------------------------------------------------- fractions

NODATA = np.array([[T, F, F], [F, F, F], [F, F, T]])
CLOUD = np.array([[T, T, T], [F, F, F], [F, F, F]])  # (0, 0) is cloud on a nodata pixel
MASKED = np.array([[T, T, T], [F, T, F], [F, F, T]])


def test_fractions_by_hand():
    # valid: 4 of 9 pixels; cloud: (0, 1), (0, 2) of the 7 pixels with data
    assert fractions(NODATA, CLOUD, MASKED) == pytest.approx((4 / 9, 2 / 7))


def test_fractions_default_masked_is_nodata_or_cloud():
    # masked = (0,0) (0,1) (0,2) (2,2): 5 of 9 valid
    assert fractions(NODATA, CLOUD) == pytest.approx((5 / 9, 2 / 7))


def test_fractions_nodata_always_counts_as_masked():
    nothing = np.zeros((3, 3), bool)
    assert fractions(NODATA, nothing, nothing) == pytest.approx((7 / 9, 0.0))


def test_fractions_all_nodata_cloud_fraction_is_nan():
    valid_fraction, cloud_fraction = fractions(ALL, np.zeros((3, 3), bool))
    assert valid_fraction == 0.0
    assert math.isnan(cloud_fraction)


def test_fractions_all_cloud():
    assert fractions(~ALL, ALL) == (0.0, 1.0)


def test_fractions_clear_tile():
    assert fractions(~ALL, ~ALL) == (1.0, 0.0)


def test_fractions_empty_tile_is_nan():
    e = np.zeros((0, 0), bool)
    valid_fraction, cloud_fraction = fractions(e, e)
    assert math.isnan(valid_fraction) and math.isnan(cloud_fraction)


@pytest.mark.parametrize(
    ("nodata", "cloud", "error"),
    [
        (np.zeros((3, 3), np.uint8), np.zeros((3, 3), bool), TypeError),
        (np.zeros((3, 3), bool), np.zeros((3, 3), np.float32), TypeError),
        (np.zeros((3, 3), bool), np.zeros((3, 2), bool), ValueError),
    ],
)
def test_fractions_rejects_bad_masks(nodata, cloud, error):
    with pytest.raises(error):
        fractions(nodata, cloud)


def test_fractions_unknown_cloud_cover_is_nan_not_zero():
    no = np.array([[True, False], [False, False]])
    cloud = np.zeros((2, 2), bool)
    valid, cloud_fraction = fractions(no, cloud, no, cloud_known=False)
    assert valid == 0.75 and np.isnan(cloud_fraction)


# --------------------------------------------------------------------------- tile kernels


def _l1c_tile() -> dict[str, np.ndarray]:
    from udfs.sensors import SENSORS

    dn = {b.common: np.full((2, 3), 2000, np.uint16) for b in SENSORS["sentinel2-l1c"].bands}
    dn["red"][0, 0] = 0  # nodata
    dn["nir"][0, 1] = 65535  # saturated
    return dn


def test_l1c_tile_has_unknown_cloud_fraction_and_is_never_usable():
    from udfs.feature_udfs import feature_rows

    f = tile_features_kernel("sentinel2-l1c", _l1c_tile(), {}, ["NDVI"])
    assert f["pixel_count"] == 6 and f["valid_count"] == 4
    assert np.isnan(f["cloud_fraction"])  # unknown, not 0.0
    row = {"scene_id": "s", "tile_row": 0, "tile_col": 0, "height": 2, "width": 3,
           "dtype": "uint16", "row_off": 0, "col_off": 0,
           **{k: v.astype("<u2").tobytes() for k, v in _l1c_tile().items()}}  # fmt: skip
    scene = {"sensor": "sentinel2-l1c", "scaling": {}, "acquired_date": None, "tile_size": 256}
    (out,) = feature_rows([row], {"s": scene}, ["NDVI"], 1.0, {}, lambda e: None)
    assert np.isnan(out["cloud_fraction"]) and out["usable"] is False
    assert out["radiometry"] == "toa" and out["valid_count"] == 4


def test_core_only_statistics_count_each_scene_pixel_once():
    from udfs.tiling import core_slices

    # Tile (0, 1) of a tile_size 2 grid with overlap 1 is stored at columns 1..3 of a
    # 2 x 4 scene: its core is columns 2..3, i.e. stored columns 1..2.
    core = core_slices(0, 1, 0, 1, 2, 3, 2)
    assert core == (slice(0, 2), slice(1, 3))
    dn = {"red": np.array([[1100, 1200, 1300], [1400, 1500, 1600]], np.uint16),
          "nir": np.full((2, 3), 3000, np.uint16), "qa": np.full((2, 3), 4, np.uint8)}  # fmt: skip
    from udfs.sensors import SENSORS

    for b in SENSORS["sentinel2-l2a"].reflectance_bands:
        dn.setdefault(b.common, np.full((2, 3), 2000, np.uint16))
    whole = tile_features_kernel("sentinel2-l2a", dn, {}, ["NDVI"])
    part = tile_features_kernel("sentinel2-l2a", dn, {}, ["NDVI"], core=core)
    assert whole["pixel_count"] == 6 and part["pixel_count"] == 4
    # core red DN 1200, 1300, 1500, 1600 -> mean 1400 / 10000
    assert part["stats"]["red"]["mean"] == pytest.approx(0.14)
    assert part["stats"]["red"]["count"] == 4


def tile_features_kernel(*args, **kwargs):
    from udfs.features import tile_features

    return tile_features(*args, **kwargs)


def test_decode_tile_skips_a_null_optional_band_but_not_a_required_one():
    from udfs.features import TileDataError, decode_tile

    arr = np.full((1, 2), 10000, np.uint16).astype("<u2").tobytes()
    row = {"height": 1, "width": 2, "dtype": "uint16",
           **{c: arr for c in ("coastal", "blue", "green", "red", "nir08", "swir16", "swir22",
                               "qa")}, "radsat": None}  # fmt: skip
    out = decode_tile(row, "landsat-c2l2")
    assert "radsat" not in out and set(out) == {"coastal", "blue", "green", "red", "nir08",
                                                "swir16", "swir22", "qa"}  # fmt: skip
    row["radsat"] = arr
    assert "radsat" in decode_tile(row, "landsat-c2l2")
    row["qa"] = None
    with pytest.raises(TileDataError, match="QA_PIXEL"):
        decode_tile(row, "landsat-c2l2")


def test_radsat_is_never_a_reflectance_layer():
    from udfs.features import pixel_table, tile_features

    qa = np.full((1, 2), 21824, np.uint16)
    dn = {c: np.full((1, 2), 10000, np.uint16)
          for c in ("coastal", "blue", "green", "red", "nir08", "swir16", "swir22")}  # fmt: skip
    dn["qa"] = qa
    dn["radsat"] = np.array([[0, 1 << 3]], np.uint16)  # pixel 2: SR_B4 saturated
    f = tile_features("landsat-c2l2", dn, {}, ["NDVI"])
    assert "radsat" not in f["stats"] and "qa" not in f["stats"]
    assert f["valid_count"] == 1
    cols = pixel_table("landsat-c2l2", dn, {}, ["NDVI"])
    assert "radsat" not in cols and cols["col"].tolist() == [0]


@pytest.mark.parametrize("n", [1, 2, 3, 9, 10, 11, 101, 1000, 4097])
def test_layer_statistics_equal_numpy_percentiles_exactly_at_every_size(n):
    from udfs.stats import layer_statistics

    rng = np.random.default_rng(n)
    # Ties and a narrow value set too: selection must not depend on distinct values.
    for x in (rng.normal(0.3, 0.2, n), rng.integers(0, 4, n)):
        x32 = x.astype(np.float32)
        got = layer_statistics(x32)
        x64 = x32.astype(np.float64)
        want = np.percentile(x64, [10, 50, 90])
        assert [got["p10"], got["p50"], got["p90"]] == pytest.approx(list(want), rel=1e-15)
        assert got["min"] == x64.min() and got["max"] == x64.max() and got["count"] == n
        assert got["mean"] == pytest.approx(x64.mean(), rel=1e-12)
        assert got["std"] == pytest.approx(x64.std(), rel=1e-9, abs=1e-12)


def test_layer_statistics_computes_only_the_statistics_asked_for():
    from udfs.stats import check_statistics, layer_statistics

    x = np.arange(1, 10, dtype=np.float32)
    assert layer_statistics(x, ("count", "mean")) == {"count": 9, "mean": 5.0}
    assert check_statistics(["std", "mean"]) == ("count", "mean", "std")
    with pytest.raises(ValueError, match="'median'"):
        check_statistics(["median"])
    # An empty layer still reports NaN for what was asked.
    got = layer_statistics(np.zeros(0, np.float32), ("count", "p50"))
    assert got["count"] == 0 and math.isnan(got["p50"]) and set(got) == {"count", "p50"}


def test_stack_statistics_does_not_modify_its_input():
    stack = np.array([[[3.0, 1.0, 2.0]]], np.float32)
    stack_statistics(stack, np.ones((1, 3), bool))
    np.testing.assert_array_equal(stack, [[[3.0, 1.0, 2.0]]])


@pytest.mark.parametrize("n", [1, 2, 5, 10, 999, 5000])
def test_counted_statistics_equal_layer_statistics_of_the_pixels(n):
    from udfs.stats import counted_statistics, layer_statistics

    rng = np.random.default_rng(n)
    dn = rng.integers(1, 400, n).astype(np.uint16)
    table = (np.arange(65536) * 1e-4 - 0.1).astype(np.float32)
    table[0] = np.nan  # nodata DN: never counted
    dn[0] = 0
    got = counted_statistics(np.bincount(dn), table)
    want = layer_statistics(finite_of(table[dn]))
    assert got["count"] == want["count"] == n - 1
    for k in STAT_NAMES[1:]:
        if n == 1:
            assert math.isnan(got[k]) and math.isnan(want[k])
        elif k in ("mean", "std"):
            assert got[k] == pytest.approx(want[k], rel=1e-12, abs=1e-15), k
        else:
            assert got[k] == want[k], k
    assert set(counted_statistics(np.bincount(dn), table, ("count", "p50"))) == {"count", "p50"}


def finite_of(x):
    return x[np.isfinite(x)]


@pytest.mark.parametrize("n", [1, 2, 3, 9, 10, 11, 1000, 65536])
@pytest.mark.parametrize("overwrite", [False, True])
def test_layer_statistics_equal_numpy_and_reorder_only_when_allowed(n, overwrite):
    """min / max come from the parts the percentile selection leaves; with
    ``overwrite_input`` the values are reordered in place, never changed."""
    from udfs.stats import layer_statistics

    rng = np.random.default_rng(n)
    x = rng.normal(0.3, 0.2, n).astype(np.float32)
    x[: n // 3] = x[-1]  # ties
    before = x.copy()
    got = layer_statistics(x, STAT_NAMES, overwrite_input=overwrite)
    v = before.astype(np.float64)
    want = {"count": n, "mean": v.mean(), "std": v.std(), "min": v.min(), "max": v.max(),
            "p10": np.percentile(v, 10), "p50": np.percentile(v, 50),
            "p90": np.percentile(v, 90)}  # fmt: skip
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert np.array_equal(np.sort(x), np.sort(before))
    if not overwrite:
        assert np.array_equal(x, before)


@pytest.mark.parametrize("stats", [("min",), ("max",), ("min", "max", "p90"), ("p10", "max")])
def test_layer_statistics_extremes_with_and_without_percentiles(stats):
    from udfs.stats import layer_statistics

    x = np.array([0.5, -2.0, 7.0, 3.0, 3.0, 1.0], np.float32)
    got = layer_statistics(x, stats)
    assert set(got) == {"count", *stats}
    assert got.get("min", -2.0) == -2.0 and got.get("max", 7.0) == 7.0
