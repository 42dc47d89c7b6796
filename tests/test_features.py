"""Features job: ``tiles`` -> ``tile_features`` and the pixel feature view.

Every expected value is computed here, independently of ``udfs``: plain rasterio + numpy
over the whole scene files, the products' own metadata parsed by the small readers below,
masks from the SCL / QA_PIXEL definitions, and the indices' textbook formulas.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from pyspark.sql import functions as F
from reference import (
    LANDSAT_BANDS,
    QA_CLOUD,
    QA_FILL,
    QA_MASKED,
    S2_BANDS,
    SCL_CLOUD,
    Scene,
    build_scene,
    demo_landsat_scene,
    demo_s2_scene,
    linear,
    one_file,
    read_on_grid,
    s2_radiometry,
)

from pipelines.config import load_config
from pipelines.features import features, pixel_features
from pipelines.ingest import Run, ingest
from pipelines.lakehouse import Lakehouse
from pipelines.runs import record_run
from udfs.errors import ConfigError

pytestmark = pytest.mark.slow

TILE = 256
RTOL, ATOL = 1e-5, 1e-6
STATS = ("count", "mean", "std", "min", "max", "p10", "p50", "p90")

INDEX_NAMES = ("ndvi", "evi", "savi", "ndwi", "mndwi", "ndbi", "nbr", "ndmi")


S2_REAL = "S2A_29RKH_20200219_0_L2A"
LANDSAT_REAL = "LC08_L2SP_001062_20201031_20201106_02_T2"


# ----------------------------------------------------------------------------- job helpers


def run_ingest(spark, source, root, *extra):
    config = load_config("local", [f"ingest.source={source}", f"storage.root={root}", *extra])
    lake = Lakehouse(spark, config.storage)
    run = ingest(spark, lake, Run(config))
    assert run.rejected == [], run.rejected
    return run, lake


def run_features(spark, root, *extra):
    config = load_config("local", [f"storage.root={root}", *extra])
    lake = Lakehouse(spark, config.storage)
    run = features(spark, lake, Run(config, job="features"))
    return run, lake


def copy_without_features(src: Path, dst: Path) -> Path:
    """A private copy of a lake's tables, ``tile_features`` left out."""
    shutil.copytree(src, dst)
    shutil.rmtree(dst / "tile_features")
    return dst


def scene_id(folder: Path) -> str:
    return folder.name.removesuffix(".SAFE")


def demo_folders(demo_root: Path) -> dict[str, list[Path]]:
    scenes = demo_root / "scenes"
    return {
        "sentinel2": sorted(scenes.glob("sentinel2/*.SAFE")),
        "landsat": sorted(p for p in scenes.glob("landsat/*") if p.is_dir()),
    }


def grid_tiles(h: int, w: int, size: int = TILE) -> set[tuple[int, int]]:
    return {(r, c) for r in range(math.ceil(h / size)) for c in range(math.ceil(w / size))}


# ----------------------------------------------------------------------------- metadata


# ----------------------------------------------------------------------------- expected values


def real_s2_scaling(folder: Path) -> dict[str, tuple[float, float]]:
    """Product band -> (scale, offset) from the item's raster:bands."""
    item = json.loads((folder / f"{S2_REAL}.json").read_text())
    out = {}
    for band, _ in S2_BANDS.values():
        asset = next(a for a in item["assets"].values() if a["href"].endswith(f"/{band}.tif"))
        rb = asset["raster:bands"][0]
        out[band] = (rb["scale"], rb["offset"])
    return out


def real_s2_scene(folder: Path, scaling: dict[str, tuple[float, float]]) -> Scene:
    files = {col: folder / f"{band}.tif" for col, (band, _) in S2_BANDS.items()}
    to_refl = {col: linear(*scaling[band]) for col, (band, _) in S2_BANDS.items()}
    return build_scene("s2", folder / "B02.tif", files, folder / "SCL.tif", to_refl)


def stats_of(values: np.ndarray) -> dict[str, float]:
    x = values.astype(np.float64)
    if x.size == 0:
        return {"count": 0, **{k: math.nan for k in STATS[1:]}}
    p10, p50, p90 = np.percentile(x, [10, 50, 90])
    return {
        "count": int(x.size),
        "mean": x.mean(),
        "std": x.std(ddof=0),
        "min": x.min(),
        "max": x.max(),
        "p10": p10,
        "p50": p50,
        "p90": p90,
    }


def expected_tiles(scene: Scene, size: int = TILE) -> dict[tuple[int, int], dict[str, Any]]:
    """tile key -> pixel_count, valid_count, fractions and statistics per layer."""
    layers = {**scene.refl, **scene.indices()}
    out = {}
    for tr, tc in grid_tiles(*scene.shape, size):
        win = np.s_[tr * size : (tr + 1) * size, tc * size : (tc + 1) * size]
        keep = ~scene.masked[win]
        has_data = ~scene.nodata[win]
        n_data = int(has_data.sum())
        out[(tr, tc)] = {
            "pixel_count": keep.size,
            "valid_count": int(keep.sum()),
            "valid_fraction": keep.sum() / keep.size,
            "cloud_fraction": (scene.cloud[win] & has_data).sum() / n_data if n_data else math.nan,
            "stats": {
                name: stats_of(v[win][keep & np.isfinite(v[win])]) for name, v in layers.items()
            },
        }
    return out


def assert_tile_equal(row, exp: dict[str, Any], label: str) -> None:
    assert row.pixel_count == exp["pixel_count"], label
    assert row.valid_count == exp["valid_count"], label
    np.testing.assert_allclose(row.valid_fraction, exp["valid_fraction"], rtol=1e-12)
    np.testing.assert_allclose(row.cloud_fraction, exp["cloud_fraction"], rtol=1e-12)
    assert set(row.stats) == set(exp["stats"]), label
    for layer, want in exp["stats"].items():
        got = row.stats[layer]
        assert got["count"] == want["count"], f"{label} {layer} count"
        for k in STATS[1:]:
            np.testing.assert_allclose(
                got[k], want[k], rtol=RTOL, atol=ATOL, err_msg=f"{label} {layer} {k}"
            )


def _exact(v: Any) -> Any:
    """A value that compares exactly: floats by repr (NaN equals NaN only), maps sorted."""
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, dict):
        return tuple(sorted((k, _exact(x)) for k, x in v.items()))
    if isinstance(v, (tuple, list)):
        return tuple(_exact(x) for x in v)
    return v


def keyed_rows(lake: Lakehouse, drop: tuple[str, ...] = ()) -> dict[tuple, dict[str, Any]]:
    """``tile_features`` as {tile key: row as exactly comparable values}; no duplicate keys.

    (``assertDataFrameEqual`` would be the tool, but it imports pyspark.pandas, which fails
    with pandas 3, and it takes NaN for equal to any number.)
    """
    rows = lake.read("tile_features").drop(*drop).collect()
    out = {(r.scene_id, r.tile_row, r.tile_col): {k: _exact(v) for k, v in r.asDict().items()}
           for r in rows}  # fmt: skip
    assert len(out) == len(rows), "duplicate tile keys"
    return out


def feature_rows(lake: Lakehouse, sid: str) -> dict[tuple[int, int], Any]:
    rows = lake.read("tile_features").filter(F.col("scene_id") == sid).collect()
    return {(r.tile_row, r.tile_col): r for r in rows}


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def demo_scenes(demo_root) -> dict[str, Scene]:
    folders = demo_folders(demo_root)
    out = {scene_id(f): demo_s2_scene(f) for f in folders["sentinel2"]}
    out.update({scene_id(f): demo_landsat_scene(f) for f in folders["landsat"]})
    return out


@pytest.fixture(scope="module")
def demo_expected(demo_scenes) -> dict[str, dict[tuple[int, int], dict[str, Any]]]:
    return {sid: expected_tiles(s) for sid, s in demo_scenes.items()}


@dataclass
class DemoLake:
    root: Path
    lake: Lakehouse
    first: Any  # features run over the first four scenes
    again: Any  # the same, run a second time
    count_first: int
    count_again: int
    keys_again: int
    held_back: str  # the scene ingested after the first two runs
    added: Any  # features run after it was ingested
    count_added: int


@pytest.fixture(scope="module")
def demo(spark, demo_root, tmp_path_factory) -> DemoLake:
    """All demo scenes but one Landsat scene -> features twice -> the last scene -> features."""
    root = tmp_path_factory.mktemp("features_demo")
    folders = demo_folders(demo_root)
    held_back = folders["landsat"][-1]
    first = [f for f in folders["sentinel2"] + folders["landsat"] if f != held_back]
    arrow = "features.reader=arrow"
    run_ingest(spark, ",".join(str(f) for f in first), root)
    run1, lake = run_features(spark, root, arrow)
    n1 = lake.read("tile_features").count()
    run2, _ = run_features(spark, root, arrow)
    tf = lake.read("tile_features")
    n2, keys2 = tf.count(), tf.select("scene_id", "tile_row", "tile_col").distinct().count()
    run_ingest(spark, held_back, root)
    run3, _ = run_features(spark, root, arrow)
    n3 = lake.read("tile_features").count()
    return DemoLake(root, lake, run1, run2, n1, n2, keys2, scene_id(held_back), run3, n3)


@pytest.fixture(scope="module")
def real(spark, shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("features_real")
    source = ",".join(str(shared_data / name) for name in (S2_REAL, LANDSAT_REAL))
    run_ingest(spark, source, root)
    run, lake = run_features(spark, root)
    assert run.rejected == []
    return lake, shared_data


# ----------------------------------------------------------------------------- 1. statistics

DEMO_SCENES = [("sentinel2", 0), ("sentinel2", 1), ("sentinel2", 2), ("landsat", 0), ("landsat", 1)]


@pytest.mark.parametrize("kind, i", DEMO_SCENES, ids=[f"{k}{i}" for k, i in DEMO_SCENES])
def test_tile_features_equal_statistics_of_the_whole_scene_computed_here(
    demo, demo_root, demo_scenes, demo_expected, kind, i
):
    folder = demo_folders(demo_root)[kind][i]
    sid = scene_id(folder)
    scene, expected = demo_scenes[sid], demo_expected[sid]
    rows = feature_rows(demo.lake, sid)
    assert set(rows) == grid_tiles(*scene.shape) == set(expected)
    sensor = "sentinel2-l2a" if kind == "sentinel2" else "landsat-c2l2"
    date = sid.split("_")[2][:8] if kind == "sentinel2" else sid.split("_")[3]
    for key, row in rows.items():
        exp = expected[key]
        assert_tile_equal(row, exp, f"{sid} tile {key}")
        assert row.sensor == sensor
        assert row.acquired_date == datetime.strptime(date, "%Y%m%d").date()
        assert row.usable == (exp["valid_count"] > 0 and exp["cloud_fraction"] <= 0.5)
    # The layers are the sensor's reflectance bands and the configured indices.
    bands = S2_BANDS if kind == "sentinel2" else LANDSAT_BANDS
    assert set(next(iter(rows.values())).stats) == {*bands, *INDEX_NAMES}


def test_demo_covers_both_sentinel2_scalings_and_masked_and_cloudy_pixels(demo_root, demo_scenes):
    """The comparison above means something: offsets differ, pixels are masked and cloudy."""
    s2 = demo_folders(demo_root)["sentinel2"]
    radiometry = [s2_radiometry(f / "MTD_MSIL2A.xml") for f in s2]
    first = min(zip(s2, radiometry, strict=True), key=lambda fr: fr[0].name.split("_")[2])[1]
    assert first[0] == "03.00" and first[2] == {}  # no BOA_ADD_OFFSET before baseline 04.00
    assert sum(r[2].get("B04") == -1000.0 for r in radiometry) == 2
    for sid, s in demo_scenes.items():
        assert s.nodata.any() or s.masked.any(), sid
        assert 0 < s.masked.mean() < 1 and s.cloud.any(), sid


# ----------------------------------------------------------------------------- 4. incremental


def test_running_features_twice_adds_nothing(demo):
    assert demo.first.rejected == [] and demo.first.tiles_written == demo.count_first
    assert demo.first.seen == demo.count_first > 0
    assert demo.again.ingested == []
    assert demo.again.skipped == sorted(demo.first.ingested) and len(demo.again.skipped) == 4
    assert demo.count_again == demo.keys_again == demo.count_first


def test_a_new_scene_adds_exactly_its_tiles(demo, demo_scenes):
    assert demo.added.ingested == [demo.held_back]
    assert demo.added.skipped == sorted(demo.first.ingested)
    new_tiles = len(grid_tiles(*demo_scenes[demo.held_back].shape))
    assert demo.added.seen == new_tiles
    assert demo.count_added == demo.count_first + new_tiles
    tf = demo.lake.read("tile_features")
    assert tf.filter(F.col("scene_id") == demo.held_back).count() == new_tiles
    assert tf.select("scene_id", "tile_row", "tile_col").distinct().count() == demo.count_added
    expected = sum(len(grid_tiles(*s.shape)) for s in demo_scenes.values())
    assert demo.count_added == expected


def test_changed_indices_are_refused_unless_rebuild(spark, demo, tmp_path):
    root = tmp_path / "lake"
    shutil.copytree(demo.root, root)
    lake = Lakehouse(spark, load_config("local", [f"storage.root={root}"]).storage)
    before = lake.read("tile_features").select("features_digest").distinct().collect()
    n = lake.read("tile_features").count()
    with pytest.raises(ConfigError, match="--rebuild"):
        run_features(spark, root, "features.indices=NDVI,NBR")
    assert lake.read("tile_features").select("features_digest").distinct().collect() == before
    assert lake.read("tile_features").count() == n
    run, _ = run_features(spark, root, "features.indices=NDVI,NBR", "features.rebuild=true")
    assert sorted(run.ingested) == sorted(demo.first.ingested + [demo.held_back])
    tf = lake.read("tile_features")
    assert tf.count() == n
    (digest,) = tf.select("features_digest").distinct().collect()
    assert digest != before[0]
    for row in tf.select("sensor", "stats").collect():
        bands = S2_BANDS if row.sensor == "sentinel2-l2a" else LANDSAT_BANDS
        assert set(row.stats) == {*bands, "ndvi", "nbr"}


# ----------------------------------------------------------------------------- 5. cloud limit


def test_max_cloud_fraction_zero_keeps_every_row_and_only_cloud_free_tiles_are_usable(
    spark, demo, demo_expected, tmp_path
):
    root = copy_without_features(demo.root, tmp_path / "lake")
    run, lake = run_features(spark, root, "features.max_cloud_fraction=0.0")
    rows = {(r.scene_id, r.tile_row, r.tile_col): r for r in lake.read("tile_features").collect()}
    expected = {(s, *k): e for s, tiles in demo_expected.items() for k, e in tiles.items()}
    assert set(rows) == set(expected) and run.tiles_written == len(expected)
    for key, exp in expected.items():
        assert rows[key].usable == (exp["valid_count"] > 0 and exp["cloud_fraction"] == 0.0), key
        np.testing.assert_allclose(rows[key].cloud_fraction, exp["cloud_fraction"], rtol=1e-12)
    usable = [k for k, r in rows.items() if r.usable]
    cloudy_but_ok = [k for k, e in expected.items() if 0 < e["cloud_fraction"] <= 0.5]
    assert usable and cloudy_but_ok, "the demo must have cloud-free and lightly cloudy tiles"
    # Only `usable` depends on the threshold: every other value is the default run's.
    assert keyed_rows(lake, drop=("run_id", "usable")) == keyed_rows(
        demo.lake, drop=("run_id", "usable")
    )


# ----------------------------------------------------------------------------- 6. readers


def test_spark_and_arrow_readers_give_identical_features(spark, demo, tmp_path):
    root = copy_without_features(demo.root, tmp_path / "lake")
    run, lake = run_features(spark, root, "features.reader=spark")
    assert run.rejected == []
    got = keyed_rows(lake, drop=("run_id",))
    want = keyed_rows(demo.lake, drop=("run_id",))  # computed with reader=arrow
    assert len(got) == lake.read("tile_features").count() == len(want) > 0
    assert got == want


# ----------------------------------------------------------------------------- 3. bad tiles


def test_bad_tiles_are_rejected_with_a_reason_and_the_others_get_features(
    spark, demo_root, tmp_path
):
    folder = demo_folders(demo_root)["landsat"][0]
    sid = scene_id(folder)
    root = tmp_path / "lake"
    _, lake = run_ingest(spark, folder, root, "ingest.tile_size=64")
    tiles = lake.read("tiles")
    n_tiles = tiles.count()
    at = lambda r, c: (F.col("tile_row") == r) & (F.col("tile_col") == c)  # noqa: E731
    corrupted = tiles.withColumn(
        "red", F.when(at(0, 0), F.lit(None).cast("binary")).otherwise(F.col("red"))
    ).withColumn(
        "nir08",
        F.when(at(1, 1), F.expr("substring(nir08, 1, length(nir08) div 2)")).otherwise(
            F.col("nir08")
        ),
    )
    (
        corrupted.write.format("delta")
        .mode("overwrite")
        .option("overwriteSchema", "true")
        .partitionBy("sensor", "acq_month")
        .save(lake.path("tiles"))
    )
    check = {(r.tile_row, r.tile_col): r for r in lake.read("tiles").collect()}
    assert len(check) == n_tiles == 4
    assert check[(0, 0)].red is None and len(check[(1, 1)].nir08) == 64 * 64  # half of 64x64x2

    run, _ = run_features(spark, root)
    record_run(spark, lake, run, "succeeded")

    by_href = {r["href"]: r for r in run.rejected}
    assert set(by_href) == {f"tiles/{sid}/0/0", f"tiles/{sid}/1/1"}
    missing, short = by_href[f"tiles/{sid}/0/0"], by_href[f"tiles/{sid}/1/1"]
    assert "SR_B4" in missing["reason"] and "red" in missing["reason"]
    assert "missing" in missing["reason"]
    assert "SR_B5" in short["reason"] and "nir08" in short["reason"]
    assert f"expected {64 * 64 * 2}" in short["reason"] and str(64 * 64) in short["reason"]

    table = lake.read("rejected").filter(F.col("run_id") == run.run_id).collect()
    assert sorted(r.href for r in table) == sorted(by_href)
    for r in table:
        assert (r.stage, r.error_class, r.job, r.scene_id) == (
            "features",
            "BadTile",
            "features",
            sid,
        )
        assert r.reason == by_href[r.href]["reason"]

    rows = feature_rows(lake, sid)
    assert set(rows) == {(0, 1), (1, 0)}
    assert len(rows) + len(run.rejected) == run.seen == n_tiles
    (runs_row,) = lake.read("runs").filter(F.col("run_id") == run.run_id).collect()
    assert (runs_row.inputs_seen, runs_row.rejected, runs_row.tiles_written) == (4, 2, 2)
    # The good tiles' features are right, not merely present.
    expected = expected_tiles(demo_landsat_scene(folder), size=64)
    for key, row in rows.items():
        assert_tile_equal(row, expected[key], f"{sid} tile {key}")
    # The pixel view leaves the bad tiles out instead of failing.
    config = load_config("local", [f"storage.root={root}"])
    pix = pixel_features(spark, lake, config, usable_only=False)
    seen = {
        (r.tile_row, r.tile_col) for r in pix.select("tile_row", "tile_col").distinct().collect()
    }
    assert seen == {k for k in rows if expected[k]["valid_count"] > 0}


# ----------------------------------------------------------------------------- 2. pixel view


def test_pixel_ndvi_is_high_over_demo_forest_and_negative_over_water(spark, demo, demo_root):
    june = next(f for f in demo_folders(demo_root)["sentinel2"] if "_20240621T" in f.name)
    config = load_config("local", [f"storage.root={demo.root}"])
    pix = (
        pixel_features(spark, demo.lake, config, [scene_id(june)], usable_only=False)
        .select("tile_row", "tile_col", "row", "col", "ndvi")
        .toPandas()
    )
    with rasterio.open(demo_root / "landcover_10m.tif") as src:
        landcover = src.read(1)
    rows = pix.tile_row.to_numpy() * TILE + pix.row.to_numpy()
    cols = pix.tile_col.to_numpy() * TILE + pix.col.to_numpy()
    cls = landcover[rows, cols]
    ndvi = pix.ndvi.to_numpy()
    forest, water = ndvi[cls == 2], ndvi[cls == 1]
    assert forest.size > 1000 and water.size > 1000
    assert np.median(forest) > 0.7 and (forest > 0.5).mean() > 0.99
    assert np.median(water) < -0.1 and (water < 0).mean() > 0.99


def test_pixel_view_of_a_real_sentinel2_tile_equals_its_valid_pixels(spark, real):
    lake, shared = real
    folder = shared / S2_REAL
    scaling = real_s2_scaling(folder)
    scene = real_s2_scene(folder, scaling)
    tr, tc = 0, 3  # partly cloudy: masked and valid pixels side by side
    config = load_config("local", [f"storage.root={lake.root}"])
    pix = (
        pixel_features(spark, lake, config, [S2_REAL], usable_only=False)
        .filter((F.col("tile_row") == tr) & (F.col("tile_col") == tc))
        .toPandas()
        .sort_values(["row", "col"])
    )
    win = np.s_[tr * TILE : (tr + 1) * TILE, tc * TILE : (tc + 1) * TILE]
    keep = ~scene.masked[win]
    assert 0.2 < keep.mean() < 0.9
    rows, cols = np.nonzero(keep)
    np.testing.assert_array_equal(pix.row.to_numpy(), rows)
    np.testing.assert_array_equal(pix.col.to_numpy(), cols)
    for col in S2_BANDS:
        np.testing.assert_allclose(
            pix[col].to_numpy(), scene.refl[col][win][keep], rtol=1e-6, atol=0, err_msg=col
        )
    ndvi = scene.indices()["ndvi"][win][keep]
    np.testing.assert_allclose(pix.ndvi.to_numpy(), ndvi, rtol=RTOL, atol=ATOL)
    assert pix.cirrus.isna().all()  # an L1C band: null for L2A
    assert set(pix.sensor) == {"sentinel2-l2a"} and set(pix.scene_id) == {S2_REAL}


# ----------------------------------------------------------------------------- 2. real data


def test_real_sentinel2_desert_reflectance_and_ndvi_are_plausible(real):
    lake, _ = real
    rows = [r for r in feature_rows(lake, S2_REAL).values() if r.usable]
    assert len(rows) >= 20
    for r in rows:
        for band in ("red", "nir", "swir16"):
            assert 0.0 < r.stats[band]["p50"] < 1.2, (r.tile_row, r.tile_col, band)
        assert 0.0 < r.stats["ndvi"]["p50"] < 0.2 and abs(r.stats["ndvi"]["mean"]) < 0.2
    # Bright desert: reflectance around 0.3 (red) to 0.5 (swir16).
    for band in ("red", "nir", "swir16"):
        assert 0.25 < np.median([r.stats[band]["p50"] for r in rows]) < 0.6, band


def test_real_sentinel2_cloud_fraction_agrees_with_scl(real):
    lake, shared = real
    folder = shared / S2_REAL
    with rasterio.open(folder / "B02.tif") as ref:
        scl = read_on_grid(folder / "SCL.tif", ref)
    rows = feature_rows(lake, S2_REAL)
    assert set(rows) == grid_tiles(*scl.shape)
    for (tr, tc), row in rows.items():
        w = scl[tr * TILE : (tr + 1) * TILE, tc * TILE : (tc + 1) * TILE]
        expected = np.isin(w, SCL_CLOUD).sum() / (w != 0).sum()
        np.testing.assert_allclose(row.cloud_fraction, expected, rtol=1e-12, err_msg=(tr, tc))
        assert row.usable == (row.valid_count > 0 and expected <= 0.5)
    assert any(r.cloud_fraction > 0.5 for r in rows.values()), "a tile above the default limit"
    assert any(0 < r.cloud_fraction <= 0.5 for r in rows.values())


def test_real_landsat_is_all_cloud_and_its_fill_mask_is_qa_bit_0(real):
    lake, shared = real
    folder = shared / LANDSAT_REAL
    with rasterio.open(one_file(folder, "*_QA_PIXEL.TIF")) as src:
        qa = src.read(1)
        bands = [one_file(folder, f"*_{b}.TIF") for b in LANDSAT_BANDS.values()]
        sr = np.stack([read_on_grid(b, src) for b in bands])
    fill = (qa & QA_FILL) != 0
    zero = (sr == 0).any(axis=0)
    # Some fill pixels have DN in every band: only the QA bit tells them apart.
    assert not (zero & ~fill).any() and (fill & ~zero).any()
    rows = feature_rows(lake, LANDSAT_REAL)
    assert set(rows) == grid_tiles(*qa.shape)
    teeth = []
    for (tr, tc), row in rows.items():
        win = np.s_[tr * TILE : (tr + 1) * TILE, tc * TILE : (tc + 1) * TILE]
        data, cloud = ~fill[win], (qa[win] & QA_CLOUD) != 0
        assert data.any()
        expected = (cloud & data).sum() / data.sum()
        np.testing.assert_allclose(row.cloud_fraction, expected, rtol=1e-12, err_msg=(tr, tc))
        assert row.cloud_fraction > 0.9 and row.usable is False
        assert row.valid_count == int((data & ((qa[win] & QA_MASKED) == 0)).sum())
        # With DN 0 as the only no-data test the fraction would come out different.
        teeth.append((cloud & ~zero[win]).sum() / (~zero[win]).sum() != expected)
    assert any(teeth)


# ----------------------------------------------------------------------------- 7. overlap


@pytest.fixture(scope="module")
def overlap_lake(spark, demo_root, tmp_path_factory):
    """One Sentinel-2 and one Landsat demo scene ingested with ingest.overlap = 16."""
    folders = demo_folders(demo_root)
    picked = [folders["sentinel2"][-1], folders["landsat"][0]]
    root = tmp_path_factory.mktemp("features_overlap")
    run_ingest(spark, ",".join(str(f) for f in picked), root, "ingest.overlap=16")
    run, lake = run_features(spark, root)
    assert run.rejected == []
    return lake, root, [scene_id(f) for f in picked]


def test_with_overlap_each_scene_pixel_is_counted_once(overlap_lake, demo_scenes):
    lake, _, sids = overlap_lake
    tiles = lake.read("tiles").select("scene_id", "tile_row", "tile_col", "width").collect()
    assert any(t.width > TILE for t in tiles), "the stored tiles must really overlap"
    for sid in sids:
        scene = demo_scenes[sid]
        rows = feature_rows(lake, sid)
        expected = expected_tiles(scene)  # core windows of the whole scene, computed here
        assert set(rows) == set(expected)
        for key, row in rows.items():
            assert_tile_equal(row, expected[key], f"{sid} tile {key} (overlap 16)")
        h, w = scene.shape
        assert sum(r.pixel_count for r in rows.values()) == h * w
        assert sum(r.valid_count for r in rows.values()) == int((~scene.masked).sum())
        for name in ("red", "ndvi"):
            n = sum(r.stats[name]["count"] for r in rows.values())
            layer = scene.refl["red"] if name == "red" else scene.indices()["ndvi"]
            assert n == int((~scene.masked & np.isfinite(layer)).sum()), name


def test_with_overlap_the_pixel_view_has_each_scene_pixel_once(spark, overlap_lake, demo_scenes):
    lake, root, sids = overlap_lake
    config = load_config("local", [f"storage.root={root}"])
    pix = pixel_features(spark, lake, config, sids, usable_only=False)
    tiles = lake.read("tiles").select("scene_id", "tile_row", "tile_col", "row_off", "col_off")
    placed = (
        pix.join(tiles, ["scene_id", "tile_row", "tile_col"])
        .select(
            "scene_id",
            "radiometry",
            (F.col("row_off") + F.col("row")).alias("r"),
            (F.col("col_off") + F.col("col")).alias("c"),
        )
        .toPandas()
    )
    assert set(placed.radiometry) == {"surface"}
    for sid in sids:
        mine = placed[placed.scene_id == sid]
        assert not mine.duplicated(["r", "c"]).any()
        got = np.zeros(demo_scenes[sid].shape, bool)
        got[mine.r.to_numpy(), mine.c.to_numpy()] = True
        np.testing.assert_array_equal(got, ~demo_scenes[sid].masked)


# ----------------------------------------------------------------------------- 8. masks


def test_mask_config_changes_the_features(spark, overlap_lake, demo_scenes, tmp_path):
    """scl_masked = 0, 1 and qa_pixel_flags = fill: only invalid pixels are dropped."""
    _, root, sids = overlap_lake
    lake_root = copy_without_features(root, tmp_path / "lake")
    run, lake = run_features(
        spark, lake_root, "features.scl_masked=0,1", "features.qa_pixel_flags=fill"
    )
    assert run.rejected == []
    for sid in sids:
        scene = demo_scenes[sid]
        # invalid only, computed here from the scene's DNs and quality band
        stack = np.stack(list(scene.dn.values()))
        if scene.sensor == "s2":
            bad = scene.nodata | (stack >= 65535).any(0) | (scene.quality == 1)
            bad |= scene.quality > 11
        else:
            bad = scene.nodata | ((stack < 7273) | (stack > 43636)).any(0)
        assert bad.sum() < scene.masked.sum(), "clouds must be masked by default"
        rows = feature_rows(lake, sid)
        assert sum(r.valid_count for r in rows.values()) == int((~bad).sum())
        # the cloud fraction is reported whatever is masked
        default = expected_tiles(scene)
        for key, row in rows.items():
            np.testing.assert_allclose(row.cloud_fraction, default[key]["cloud_fraction"])


# ----------------------------------------------------------------------------- 9. what is computed


def test_configured_bands_and_statistics_are_the_only_ones_computed(
    spark, demo, demo_scenes, demo_expected, tmp_path
):
    """features.bands / features.statistics: the layers and statistics asked for, equal to
    the whole-scene values computed here; the others are absent (layers) or null."""
    lake_root = copy_without_features(demo.root, tmp_path / "lake")
    run, lake = run_features(
        spark,
        lake_root,
        "features.bands=red,nir08",
        "features.indices=NDVI",
        "features.statistics=mean,std",
    )
    assert run.rejected == [] and run.tiles_written > 0
    for sid, expected in demo_expected.items():
        rows = feature_rows(lake, sid)
        assert rows and set(rows) == set(expected)
        for key, row in rows.items():
            exp = expected[key]
            assert row.valid_count == exp["valid_count"]
            assert set(row.stats) == {"red", "nir08", "ndvi"} & set(exp["stats"])
            for layer, got in row.stats.items():
                want = exp["stats"][layer]
                assert got["count"] == want["count"], (sid, key, layer)
                for k in ("min", "max", "p10", "p50", "p90"):
                    assert got[k] is None, (layer, k)
                np.testing.assert_allclose(
                    [got["mean"], got["std"]], [want["mean"], want["std"]], rtol=RTOL, atol=ATOL
                )
    digests = {r.features_digest for r in lake.read("tile_features").collect()}
    assert digests == {load_config("local", ["features.bands=red,nir08", "features.indices=NDVI",
                                              "features.statistics=mean,std"]).features.digest()}  # fmt: skip


def test_features_bands_and_statistics_are_validated_and_part_of_the_digest():
    base = load_config("local").features
    assert base.band_set() is None and base.stat_names() == STATS
    for bad in ("features.bands=reed", "features.bands=all,red", "features.statistics=median"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config("local", [bad])
    none = load_config("local", ["features.bands="]).features
    assert none.band_set() == frozenset()
    digests = {
        load_config("local", [o]).features.digest()
        for o in ("features.bands=red", "features.bands=", "features.statistics=count,mean")
    }
    assert len(digests) == 3 and base.digest() not in digests
    # count is always computed, so listing it or not is the same configuration
    a = load_config("local", ["features.statistics=mean"]).features.digest()
    assert a == load_config("local", ["features.statistics=count,mean"]).features.digest()


def test_feature_rows_read_pixels_from_arrow_buffers_and_reject_a_missing_needed_band():
    """The Arrow wrapper: pixel views of a tiles table, a band not ingested (null column)
    is skipped unless statistics or an index need it."""
    import pyarrow as pa

    from udfs.feature_udfs import feature_rows as kernel_rows
    from udfs.feature_udfs import table_rows

    rng = np.random.default_rng(1)
    red = rng.integers(1, 3000, (4, 4)).astype("<u2")
    nir = rng.integers(1, 6000, (4, 4)).astype("<u2")
    scl = np.full((4, 4), 4, "<u2")
    scl[0, 0] = 9  # cloud: masked
    row = {"scene_id": "s", "tile_row": 0, "tile_col": 0, "width": 4, "height": 4,
           "dtype": "uint16", "red": red.tobytes(), "nir": nir.tobytes(), "qa": scl.tobytes(),
           "green": None}  # fmt: skip
    table = pa.Table.from_pylist([row, row])
    rows = table_rows(table)
    assert isinstance(rows[0]["red"], np.ndarray) and rows[0]["green"] is None
    np.testing.assert_array_equal(rows[1]["nir"].view("<u2").reshape(4, 4), nir)
    scene = {"s": {"sensor": "sentinel2-l2a", "scaling": {}, "acquired_date": None}}
    errors: list = []
    out = kernel_rows(rows[:1], scene, ["NDVI"], 1.0, {}, errors.extend, bands=set(),
                      stats=("count", "mean"))  # fmt: skip
    assert errors == [] and len(out) == 1
    ((name, stats),) = out[0]["stats"]
    keep = scl != 9
    r = (red[keep] * 1e-4).astype(np.float32).astype(np.float64)
    n = (nir[keep] * 1e-4).astype(np.float32).astype(np.float64)
    ndvi = ((n - r) / (n + r)).astype(np.float32).astype(np.float64)
    assert name == "ndvi" and stats["count"] == 15 == out[0]["valid_count"]
    assert stats["mean"] == pytest.approx(ndvi.mean(), rel=1e-12) and set(stats) == {
        "count",
        "mean",
    }
    # green is needed for its statistics but was not ingested: the tile is rejected
    out = kernel_rows(rows[:1], scene, ["NDVI"], 1.0, {}, errors.extend, bands={"green"})
    assert out == [] and len(errors) == 1 and "green" in errors[0]["reason"]


def test_quality_mask_of_many_uint16_bands_by_hand():
    """Nodata / saturation / valid range in any of several uint16 bands (the min / max
    path of udfs.masks) and every SCL class, against tests written pixel by pixel."""
    from udfs.masks import quality_mask

    scl = np.arange(16, dtype="<u2").reshape(4, 4)  # 0..11 and unknown 12..15
    a = np.full((4, 4), 500, "<u2")
    b = a.copy()
    c = a.copy()
    a[2, 2], b[0, 2], c[1, 1] = 0, 65535, 65535  # SCL 10, 2, 5
    q = quality_mask("sentinel2-l2a", scl, {"red": a, "nir": b, "green": c})
    codes = scl.ravel()
    nodata = (codes == 0) | (a.ravel() == 0)
    invalid = nodata | (codes == 1) | (codes > 11) | (b.ravel() == 65535) | (c.ravel() == 65535)
    masked = invalid | np.isin(codes, [3, 8, 9, 10, 11])
    np.testing.assert_array_equal(q.nodata.ravel(), nodata)
    np.testing.assert_array_equal(q.invalid.ravel(), invalid)
    np.testing.assert_array_equal(q.cloud.ravel(), np.isin(codes, [3, 8, 9, 10]))
    np.testing.assert_array_equal(q.masked.ravel(), masked)
    # Landsat: a DN outside 7273..43636 in any band is invalid; 0 is nodata too.
    qa = np.zeros((1, 4), "<u2")
    low = np.array([[7273, 7272, 0, 9000]], "<u2")
    high = np.array([[43636, 9000, 9000, 43637]], "<u2")
    q = quality_mask("landsat-c2l2", qa, {"red": low, "nir08": high})
    np.testing.assert_array_equal(q.nodata, [[False, False, True, False]])
    np.testing.assert_array_equal(q.invalid, [[False, True, True, True]])


def test_workers_keep_freed_memory_on_glibc():
    import platform

    from udfs.feature_udfs import keep_freed_memory

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert keep_freed_memory() is True


def test_feature_tasks_are_one_per_core_and_a_multiple_of_the_cores_when_more():
    """Three tasks on two cores leave one core idle while the third runs: the file
    groups' count is the cores', or a multiple of it past MAX_FILES_PER_TASK files each."""
    from types import SimpleNamespace

    from pipelines.features import MAX_FILES_PER_TASK, file_task_count

    def spark(cores):
        return SimpleNamespace(sparkContext=SimpleNamespace(defaultParallelism=cores))

    assert file_task_count(spark(2), 144) == 2  # four 5490 px scenes: was 3 (64 files each)
    assert file_task_count(spark(2), 1) == 1
    assert file_task_count(spark(4), 3) == 3  # never more tasks than files
    assert file_task_count(spark(2), 2 * MAX_FILES_PER_TASK) == 2
    assert file_task_count(spark(2), 2 * MAX_FILES_PER_TASK + 1) == 4
    assert file_task_count(spark(3), 7 * MAX_FILES_PER_TASK) == 9


def test_task_counts_of_every_job_are_a_multiple_of_the_cores():
    """Ingest's blocks (at most 64 a task) follow the same rule: 144 blocks of four
    5490 px scenes on two cores -> 4 tasks, not 3."""
    from types import SimpleNamespace

    from pipelines.scheduling import task_count

    def spark(cores):
        return SimpleNamespace(sparkContext=SimpleNamespace(defaultParallelism=cores))

    assert task_count(spark(2), 144) == 4
    assert task_count(spark(2), 36) == 2
    assert task_count(spark(2), 1) == 1
    assert task_count(spark(4), 129, max_per_task=64) == 4
    assert task_count(spark(3), 200) == 6
    assert task_count(spark(2), 3, max_per_task=1) == 3  # never more tasks than items


def test_feature_mapper_returns_rejected_tiles_with_the_rows_and_pickles_without_pipelines(
    tmp_path,
):
    """The RDD function yields (True, row) per tile and (False, record) per bad tile; it
    carries no accumulator, so a fresh worker unpickles it importing no driver module."""
    import subprocess
    import sys

    import cloudpickle
    import pyarrow as pa
    import pyarrow.parquet as pq

    from udfs.feature_udfs import make_feature_mapper

    red = np.full((4, 4), 1000, "<u2")
    nir = np.full((4, 4), 3000, "<u2")
    scl = np.full((4, 4), 4, "<u2")
    good = {"scene_id": "s", "tile_row": 0, "tile_col": 0, "width": 4, "height": 4,
            "dtype": "uint16", "row_off": 0, "col_off": 0, "red": red.tobytes(),
            "nir": nir.tobytes(), "qa": scl.tobytes()}  # fmt: skip
    short = {**good, "tile_col": 1, "col_off": 4, "nir": nir.tobytes()[:10]}
    other = {**good, "scene_id": "not asked for"}
    path = tmp_path / "tiles.parquet"
    pq.write_table(pa.Table.from_pylist([good, short, other]), path, row_group_size=1)
    scene = {"s": {"sensor": "sentinel2-l2a", "scaling": {}, "acquired_date": None}}
    mapper = make_feature_mapper(scene, ["NDVI"], 1.0, {"run_id": "r"}, bands=set(),
                                 stats=("count", "mean"))  # fmt: skip
    out = list(mapper([str(path)]))
    assert [ok for ok, _ in out] == [True, False]
    row, bad = out[0][1], out[1][1]
    assert (row["tile_col"], row["run_id"], row["valid_count"]) == (0, "r", 16)
    ((name, stats),) = row["stats"]
    assert name == "ndvi" and stats["mean"] == pytest.approx(0.5, rel=1e-6)
    assert bad["href"] == "tiles/s/0/1" and "nir" in bad["reason"] and "32" in bad["reason"]

    code = (
        "import pickle, sys; f = pickle.loads(sys.stdin.buffer.read()); "
        "print(sorted(m for m in sys.modules if m.startswith(('pipelines', 'pyspark.sql'))))"
    )
    proc = subprocess.run([sys.executable, "-c", code], input=cloudpickle.dumps(mapper),
                          capture_output=True, check=True)  # fmt: skip
    assert proc.stdout.decode().strip() == "[]", proc.stdout
