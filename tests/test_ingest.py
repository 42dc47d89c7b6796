"""Ingest on the demo scenes: pixels, geometry, idempotence, incremental adds, tiling changes.

Every expected value is computed here with plain rasterio + numpy over the whole file.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyspark.sql import functions as F
from rasterio.enums import Resampling
from rasterio.windows import from_bounds

from pipelines.config import load_config
from pipelines.ingest import ingest, tiled_bands
from pipelines.lakehouse import Lakehouse
from pipelines.runs import Run
from udfs.errors import ConfigError
from udfs.ingest_udfs import check_tiled_bands
from udfs.sensors import SENSORS

pytestmark = pytest.mark.slow


def scenes_dir(root: Path) -> Path:
    return root / "scenes"


def run_ingest(spark, source, root, *extra):
    config = load_config("local", [f"ingest.source={source}", f"storage.root={root}", *extra])
    lake = Lakehouse(spark, config.storage)
    run = ingest(spark, lake, Run(config))
    return run, lake


def expected_tiles(h: int, w: int, t: int = 256) -> int:
    return math.ceil(h / t) * math.ceil(w / t)


def mosaic(rows, column: str, height: int, width: int, dtype="<u2") -> np.ndarray:
    """Place decoded tiles back into the scene grid (independent of udfs.tiling)."""
    out = np.full((height, width), -1, dtype=np.int64)
    for r in rows:
        arr = np.frombuffer(r[column], dtype=dtype).reshape(r["height"], r["width"])
        out[r["row_off"] : r["row_off"] + r["height"], r["col_off"] : r["col_off"] + r["width"]] = (
            arr
        )
    assert (out >= 0).all(), "tiles do not cover the scene grid"
    return out


def on_grid(path: Path, ref: rasterio.DatasetReader, method=Resampling.nearest) -> np.ndarray:
    """rasterio's own resampled read of ``path`` onto the grid of ``ref``."""
    with rasterio.open(path) as src:
        win = from_bounds(*ref.bounds, transform=src.transform)
        return src.read(1, window=win, out_shape=(ref.height, ref.width), resampling=method)


@pytest.fixture(scope="module")
def ingested(spark, demo_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("lake")
    run, lake = run_ingest(spark, scenes_dir(demo_root), root)
    return run, lake


def s2_scenes(demo_root: Path) -> list[Path]:
    return sorted(scenes_dir(demo_root).glob("sentinel2/*.SAFE"))


def landsat_scenes(demo_root: Path) -> list[Path]:
    return sorted(p for p in scenes_dir(demo_root).glob("landsat/*") if p.is_dir())


def band_file(scene: Path, pattern: str) -> Path:
    found = sorted(scene.glob(f"**/*{pattern}"))
    assert len(found) == 1, (scene, pattern, found)
    return found[0]


def test_every_demo_scene_is_ingested(ingested, demo_root):
    run, lake = ingested
    folders = s2_scenes(demo_root) + landsat_scenes(demo_root)
    assert len(folders) == 5
    assert run.rejected == []
    assert sorted(run.ingested) == sorted(p.name.removesuffix(".SAFE") for p in folders)
    assert lake.read("scenes").count() == 5


def test_sentinel2_tiles_equal_source_pixels_and_rasterio_resampling(ingested, demo_root):
    _, lake = ingested
    scene = s2_scenes(demo_root)[1]
    sid = scene.name.removesuffix(".SAFE")
    rows = [r.asDict() for r in lake.read("tiles").filter(F.col("scene_id") == sid).collect()]
    with rasterio.open(band_file(scene, "_B02_10m.tif")) as ref:
        assert len(rows) == expected_tiles(ref.height, ref.width)
        np.testing.assert_array_equal(mosaic(rows, "blue", ref.height, ref.width), ref.read(1))
        for column, pattern in [("nir", "_B08_10m.tif"), ("red", "_B04_10m.tif")]:
            with rasterio.open(band_file(scene, pattern)) as src:
                np.testing.assert_array_equal(
                    mosaic(rows, column, ref.height, ref.width), src.read(1)
                )
        for column, pattern in [
            ("swir16", "_B11_20m.tif"),
            ("rededge1", "_B05_20m.tif"),
            ("coastal", "_B01_60m.tif"),
            ("nir09", "_B09_60m.tif"),
            ("qa", "_SCL_20m.tif"),
        ]:
            expected = on_grid(band_file(scene, pattern), ref)
            np.testing.assert_array_equal(
                mosaic(rows, column, ref.height, ref.width), expected, err_msg=column
            )


def test_landsat_tiles_equal_source_pixels(ingested, demo_root):
    _, lake = ingested
    scene = landsat_scenes(demo_root)[0]
    rows = [
        r.asDict() for r in lake.read("tiles").filter(F.col("scene_id") == scene.name).collect()
    ]
    with rasterio.open(band_file(scene, "_SR_B2.TIF")) as ref:
        assert len(rows) == expected_tiles(ref.height, ref.width)
        for column, pattern in [
            ("red", "_SR_B4.TIF"),
            ("nir08", "_SR_B5.TIF"),
            ("qa", "_QA_PIXEL.TIF"),
            ("radsat", "_QA_RADSAT.TIF"),
        ]:
            with rasterio.open(band_file(scene, pattern)) as src:
                np.testing.assert_array_equal(
                    mosaic(rows, column, ref.height, ref.width), src.read(1), err_msg=column
                )
    assert all(r["rededge1"] is None and r["nir"] is None for r in rows)


def test_valid_mask_marks_pixels_with_data_in_every_band(ingested, demo_root):
    _, lake = ingested
    scene = landsat_scenes(demo_root)[0]
    rows = lake.read("tiles").filter(F.col("scene_id") == scene.name).collect()
    stack = []
    for b in range(1, 8):
        with rasterio.open(band_file(scene, f"_SR_B{b}.TIF")) as src:
            stack.append(src.read(1))
            h, w = src.height, src.width
    expected = np.all(np.stack(stack) != 0, axis=0)
    got = np.zeros((h, w), dtype=bool)
    for r in rows:
        bits = np.unpackbits(np.frombuffer(r["valid"], np.uint8), count=r["height"] * r["width"])
        got[r["row_off"] : r["row_off"] + r["height"], r["col_off"] : r["col_off"] + r["width"]] = (
            bits.reshape(r["height"], r["width"]).astype(bool)
        )
        assert r["valid_fraction"] == pytest.approx(bits.mean())
    np.testing.assert_array_equal(got, expected)
    assert not expected.all(), "demo Landsat scenes have fill pixels"


def test_tile_geometry_is_consistent_with_the_scene_grid(ingested):
    _, lake = ingested
    scenes = {r.scene_id: r for r in lake.read("scenes").collect()}
    for t in (
        lake.read("tiles")
        .select(
            "scene_id",
            "tile_row",
            "tile_col",
            "row_off",
            "col_off",
            "width",
            "height",
            "transform",
            "bounds",
            "bbox_wgs84",
            "crs_epsg",
        )
        .collect()
    ):
        s = scenes[t.scene_id]
        a, _, c, _, e, f = s.transform
        assert t.row_off == t.tile_row * 256 and t.col_off == t.tile_col * 256
        assert t.width == min(256, s.width - t.col_off) and t.height == min(
            256, s.height - t.row_off
        )
        assert t.transform == [a, 0.0, c + a * t.col_off, 0.0, e, f + e * t.row_off]
        assert t.bounds == pytest.approx(
            [
                c + a * t.col_off,
                f + e * (t.row_off + t.height),
                c + a * (t.col_off + t.width),
                f + e * t.row_off,
            ]
        )
        assert t.crs_epsg == s.crs_epsg == 32631
        lon0, lat0, lon1, lat1 = t.bbox_wgs84
        assert s.bbox_wgs84[0] - 1e-9 <= lon0 < lon1 <= s.bbox_wgs84[2] + 1e-9
        assert s.bbox_wgs84[1] - 1e-9 <= lat0 < lat1 <= s.bbox_wgs84[3] + 1e-9


def test_scene_records_carry_metadata_and_scaling(ingested, demo_root):
    _, lake = ingested
    rows = {r.scene_id: r for r in lake.read("scenes").collect()}
    first, *later = s2_scenes(demo_root)
    old = rows[first.name.removesuffix(".SAFE")]
    assert old.processing_baseline == "03.00"
    assert old.scaling["B04"].offset == 0.0
    for scene in later:
        new = rows[scene.name.removesuffix(".SAFE")]
        assert new.scaling["B04"].scale == pytest.approx(1e-4)
        assert new.scaling["B04"].offset == pytest.approx(-0.1)
        assert new.sensor == "sentinel2-l2a" and new.processing_level == "L2A"
        # S2B_MSIL2A_20240621T103629_...: the sensing date is the third field
        assert new.acquired_date.strftime("%Y%m%d") == new.scene_id.split("_")[2][:8]
        assert {b.name for b in new.bands} >= {"B02", "B8A", "SCL"}
        assert 0.0 <= new.cloud_cover <= 100.0
    for sid, r in rows.items():
        # one platform convention (STAC): the product name's S2A / LC08 -> sentinel-2a /
        # landsat-8; level and baseline as the product states them
        unit = sid[2].lower() if sid.startswith("S2") else sid[3]
        platform = f"sentinel-2{unit}" if sid.startswith("S2") else f"landsat-{unit}"
        assert r.platform == platform, sid
        assert r.processing_level == sid.split("_")[1].removeprefix("MSI"), sid
        assert r.radiometry == "surface", sid
    ls = rows[landsat_scenes(demo_root)[0].name]
    assert ls.sensor == "landsat-c2l2" and ls.processing_baseline == "02"
    assert ls.scaling_source == "metadata"
    assert (ls.scaling["SR_B4"].scale, ls.scaling["SR_B4"].offset) == (2.75e-05, -0.2)
    assert ls.resolution == 30.0 and old.resolution == 10.0


def test_running_twice_changes_nothing(ingested, spark, demo_root):
    _, lake = ingested
    before = {n: lake.read(n).count() for n in ("scenes", "tiles")}
    run, _ = run_ingest(spark, scenes_dir(demo_root), lake.root)
    assert run.ingested == [] and len(run.skipped) == 5
    assert {n: lake.read(n).count() for n in ("scenes", "tiles")} == before
    tiles = lake.read("tiles")
    assert tiles.select("scene_id", "tile_row", "tile_col").distinct().count() == before["tiles"]


def test_adding_a_scene_adds_exactly_its_tiles(spark, demo_copy, tmp_path):
    landsat = landsat_scenes(demo_copy)
    held_back = landsat[-1]
    parked = tmp_path / "parked"
    shutil.move(str(held_back), parked)
    root = tmp_path / "lake"
    run_ingest(spark, scenes_dir(demo_copy) / "landsat", root)
    lake_tiles = Lakehouse(spark, load_config("local", [f"storage.root={root}"]).storage).read(
        "tiles"
    )
    before = lake_tiles.count()
    shutil.move(str(parked), held_back)
    run, lake = run_ingest(spark, scenes_dir(demo_copy) / "landsat", root)
    assert run.ingested == [held_back.name]
    with rasterio.open(band_file(held_back, "_SR_B2.TIF")) as ref:
        added = expected_tiles(ref.height, ref.width)
    assert lake.read("tiles").count() == before + added
    assert lake.read("tiles").filter(F.col("scene_id") == held_back.name).count() == added


def test_changed_tiling_is_refused_unless_rebuild(spark, demo_root, tmp_path):
    source = landsat_scenes(demo_root)[0]
    root = tmp_path / "lake"
    run_ingest(spark, source.parent, root)
    with pytest.raises(ConfigError, match="--rebuild"):
        run_ingest(spark, source.parent, root, "ingest.tile_size=64")
    run, lake = run_ingest(spark, source.parent, root, "ingest.tile_size=64", "ingest.rebuild=true")
    assert sorted(run.ingested) == sorted(p.name for p in landsat_scenes(demo_root))
    with rasterio.open(band_file(source, "_SR_B2.TIF")) as ref:
        n = expected_tiles(ref.height, ref.width, 64)
    assert lake.read("tiles").filter(F.col("scene_id") == source.name).count() == n
    assert lake.read("scenes").filter(F.col("tile_size") != 64).count() == 0


def test_overlap_tiles_share_their_border_pixels(spark, demo_root, tmp_path):
    scene = landsat_scenes(demo_root)[0]
    run, lake = run_ingest(
        spark, scene.parent, tmp_path / "lake", "ingest.tile_size=64", "ingest.overlap=8"
    )
    rows = [
        r.asDict() for r in lake.read("tiles").filter(F.col("scene_id") == scene.name).collect()
    ]
    with rasterio.open(band_file(scene, "_SR_B4.TIF")) as src:
        full = src.read(1)
    for r in rows:
        assert r["row_off"] == max(0, r["tile_row"] * 64 - 8)
        arr = np.frombuffer(r["red"], "<u2").reshape(r["height"], r["width"])
        np.testing.assert_array_equal(
            arr,
            full[
                r["row_off"] : r["row_off"] + r["height"], r["col_off"] : r["col_off"] + r["width"]
            ],
        )


def test_parquet_format_is_idempotent_too(spark, demo_root, tmp_path):
    source = scenes_dir(demo_root) / "landsat"
    run, lake = run_ingest(spark, source, tmp_path / "pq", "storage.format=parquet")
    n = lake.read("tiles").count()
    assert n > 0 and len(run.ingested) == 2
    run2, lake = run_ingest(spark, source, tmp_path / "pq", "storage.format=parquet")
    assert run2.ingested == [] and lake.read("tiles").count() == n
    assert not (tmp_path / "pq" / "tiles" / "_delta_log").exists()


def test_spark_writer_gives_the_same_tiles_as_the_arrow_writer(spark, demo_root, tmp_path):
    source = scenes_dir(demo_root) / "landsat"
    cols = [
        "scene_id",
        "tile_row",
        "tile_col",
        "row_off",
        "col_off",
        "width",
        "height",
        "valid",
        "red",
        "qa",
    ]
    _, arrow_lake = run_ingest(spark, source, tmp_path / "a", "ingest.writer=arrow")
    _, spark_lake = run_ingest(spark, source, tmp_path / "s", "ingest.writer=spark")
    a = sorted(tuple(r) for r in arrow_lake.read("tiles").select(*cols).collect())
    s = sorted(tuple(r) for r in spark_lake.read("tiles").select(*cols).collect())
    assert a == s and len(a) > 0


# ----------------------------------------------------------------------------- ingest.bands


def test_band_list_names_columns_of_each_sensor_and_always_keeps_quality_bands():
    c = load_config("local", ["ingest.bands=red,B08"])
    assert c.ingest.band_columns("sentinel2-l2a") == ("red", "nir", "qa")
    # B08 is a Sentinel-2 name: Landsat keeps red and its two quality bands.
    assert c.ingest.band_columns("landsat-c2l2") == ("red", "qa", "radsat")
    every = load_config("local").ingest
    assert every.band_columns("sentinel2-l2a") == tuple(
        b.common for b in SENSORS["sentinel2-l2a"].bands
    )


def test_unknown_band_in_the_band_list_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="ingest.bands: unknown band 'rde'"):
        load_config("local", ["ingest.bands=red,rde"])


def test_band_list_is_part_of_the_tiling_digest_but_not_when_empty():
    base = load_config("local").ingest
    # The digest of "every band" is what tables ingested before ingest.bands hold.
    assert base.tiling_digest() == "9df9e17b8df324c6"
    a = load_config("local", ["ingest.bands=red,nir"]).ingest
    b = load_config("local", ["ingest.bands=NIR,Red"]).ingest
    assert a.tiling_digest() == b.tiling_digest() != base.tiling_digest()


def test_missing_tiled_band_is_refused_naming_the_band_and_the_key():
    tiled = {"s1": ["red", "nir", "qa"], "s2": ["blue", "red", "nir", "qa"]}
    check_tiled_bands(tiled, {"s1": {"red", "nir"}, "s2": {"blue"}}, "model m")
    with pytest.raises(ConfigError, match=r"model m needs band\(s\) blue, swir16 but scene s1"):
        check_tiled_bands(tiled, {"s1": {"blue", "swir16", "red"}, "s2": {"blue"}}, "model m")
    with pytest.raises(ConfigError, match="ingest.bands"):
        check_tiled_bands({}, {"s3": {"red"}}, "features.indices")


def test_only_listed_bands_are_tiled_and_the_others_are_null(spark, demo_root, tmp_path):
    scene = s2_scenes(demo_root)[0]
    sid = scene.name.removesuffix(".SAFE")
    run, lake = run_ingest(spark, scene.parent, tmp_path / "lake", "ingest.bands=red,nir")
    assert run.rejected == [] and sid in run.ingested
    rows = [r.asDict() for r in lake.read("tiles").filter(F.col("scene_id") == sid).collect()]
    with rasterio.open(band_file(scene, "_B04_10m.tif")) as ref:
        red = ref.read(1)
        h, w = ref.height, ref.width
        qa = on_grid(band_file(scene, "_SCL_20m.tif"), ref)
    with rasterio.open(band_file(scene, "_B08_10m.tif")) as src:
        nir = src.read(1)
    np.testing.assert_array_equal(mosaic(rows, "red", h, w), red)
    np.testing.assert_array_equal(mosaic(rows, "nir", h, w), nir)
    np.testing.assert_array_equal(mosaic(rows, "qa", h, w), qa)
    for column in ("coastal", "blue", "green", "rededge1", "nir08", "swir16", "swir22"):
        assert all(r[column] is None for r in rows), column
    # valid: data in every tiled reflectance band (here red and nir).
    got = np.zeros((h, w), dtype=bool)
    for r in rows:
        bits = np.unpackbits(np.frombuffer(r["valid"], np.uint8), count=r["height"] * r["width"])
        got[r["row_off"] : r["row_off"] + r["height"], r["col_off"] : r["col_off"] + r["width"]] = (
            bits.reshape(r["height"], r["width"]).astype(bool)
        )
    np.testing.assert_array_equal(got, (red != 0) & (nir != 0))
    bands = lake.read("scenes").filter(F.col("scene_id") == sid).first().bands
    assert [b.column for b in bands] == ["red", "nir", "qa"]
    assert tiled_bands(lake, [sid]) == {sid: ["red", "nir", "qa"]}
    # A changed band list changes the tiles: refused unless --rebuild, then re-tiled.
    with pytest.raises(ConfigError, match="bands=red,nir,swir16; refusing"):
        run_ingest(spark, scene.parent, tmp_path / "lake", "ingest.bands=red,nir,swir16")
    run_ingest(
        spark, scene.parent, tmp_path / "lake", "ingest.bands=red,nir,swir16", "ingest.rebuild=true"
    )
    assert tiled_bands(lake, [sid]) == {sid: ["red", "nir", "swir16", "qa"]}
    n = lake.read("tiles").filter(F.col("scene_id") == sid).count()
    assert n == len(rows)
    assert (
        lake.read("tiles").filter((F.col("scene_id") == sid) & F.col("swir16").isNull()).count()
        == 0
    )
