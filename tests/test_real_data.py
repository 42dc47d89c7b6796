"""Real products from ../shared/data ingest with CRS, transform and pixel values preserved."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from pyspark.sql import functions as F
from rasterio.enums import Resampling
from rasterio.windows import from_bounds

from pipelines.config import load_config
from pipelines.ingest import ingest
from pipelines.lakehouse import Lakehouse
from pipelines.runs import Run

pytestmark = pytest.mark.slow

S2_L2A = "S2A_29RKH_20200219_0_L2A"
S2_L1C = "S2A_MSIL1C_20170729_T19UDP"
LANDSAT = "LC08_L2SP_001062_20201031_20201106_02_T2"


@pytest.fixture(scope="module")
def real(spark, shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    # The three products, and the loose RGB file given as a source of its own
    # (s2-metadata/ holds metadata files only, stac/ items with remote hrefs).
    source = ",".join(str(shared_data / p) for p in (S2_L2A, S2_L1C, LANDSAT, "RGB.byte.tif"))
    config = load_config("local", [f"ingest.source={source}", f"storage.root={root}"])
    lake = Lakehouse(spark, config.storage)
    run = ingest(spark, lake, Run(config))
    return run, lake, shared_data


def mosaic(rows, column, h, w):
    out = np.full((h, w), -1, dtype=np.int64)
    for r in rows:
        a = np.frombuffer(r[column], "<u2").reshape(r["height"], r["width"])
        out[r["row_off"] : r["row_off"] + r["height"], r["col_off"] : r["col_off"] + r["width"]] = a
    assert (out >= 0).all()
    return out


def test_all_three_products_ingest_and_the_loose_rgb_file_is_rejected(real):
    run, _, shared = real
    assert sorted(run.ingested) == sorted([S2_L2A, S2_L1C, LANDSAT])
    (r,) = run.rejected
    assert r["href"] == str(shared / "RGB.byte.tif") and r["error_class"] == "UnknownLayout"
    assert "single raster file" in r["reason"] and "does not exist" not in r["reason"]


@pytest.mark.parametrize(
    "scene, ref_file, checks",
    [
        (S2_L2A, "B02.tif", [("red", "B04.tif"), ("nir", "B08.tif")]),
        (S2_L1C, "B02.jp2", [("red", "B04.jp2"), ("cirrus", "B10.jp2")]),
        (
            LANDSAT,
            f"{LANDSAT}_SR_B2.TIF",
            [
                ("red", f"{LANDSAT}_SR_B4.TIF"),
                ("qa", f"{LANDSAT}_QA_PIXEL.TIF"),
                ("radsat", f"{LANDSAT}_QA_RADSAT.TIF"),
            ],
        ),
    ],
)
def test_crs_transform_and_pixels_are_preserved(real, scene, ref_file, checks):
    _, lake, shared = real
    folder = shared / scene
    s = lake.read("scenes").filter(F.col("scene_id") == scene).collect()[0]
    rows = [r.asDict() for r in lake.read("tiles").filter(F.col("scene_id") == scene).collect()]
    with rasterio.open(folder / ref_file) as ref:
        assert s.crs_epsg == ref.crs.to_epsg()
        assert s.transform == pytest.approx(list(ref.transform)[:6])
        assert (s.width, s.height) == (ref.width, ref.height)
        for column, name in checks:
            with rasterio.open(folder / name) as src:
                if src.transform == ref.transform:
                    expected = src.read(1)
                else:
                    win = from_bounds(*ref.bounds, transform=src.transform)
                    expected = src.read(
                        1, window=win, out_shape=ref.shape, resampling=Resampling.nearest
                    )
            np.testing.assert_array_equal(
                mosaic(rows, column, ref.height, ref.width), expected, err_msg=column
            )


def test_real_scaling_and_metadata(real):
    _, lake, _ = real
    s = {r.scene_id: r for r in lake.read("scenes").collect()}
    # Baseline 02.14: no BOA offset. Landsat C2 L2: 2.75e-5 and -0.2 from the MTL.
    assert s[S2_L2A].processing_baseline == "02.14"
    assert (s[S2_L2A].scaling["B04"].scale, s[S2_L2A].scaling["B04"].offset) == (1e-4, 0.0)
    assert (s[LANDSAT].scaling["SR_B4"].scale, s[LANDSAT].scaling["SR_B4"].offset) == (
        2.75e-05,
        -0.2,
    )
    assert s[LANDSAT].cloud_cover == 99.94 and s[LANDSAT].platform == "landsat-8"
    # USGS keeps this southern-hemisphere scene in the northern UTM zone: negative northings.
    assert s[LANDSAT].bounds[1] < 0 and s[LANDSAT].crs_epsg == 32620
    lon0, lat0, lon1, lat1 = s[LANDSAT].bbox_wgs84
    assert -67 < lon0 < lon1 < -63 and -5 < lat0 < lat1 < 0
    assert s[S2_L1C].processing_level == "L1C"
    # One platform convention (STAC), the level and baseline as each product states them:
    # item s2:processing_baseline 02.14; tileInfo productName ..._N0205_...; MTL
    # PROCESSING_LEVEL L2SP, COLLECTION_NUMBER 02.
    got = {
        k: (r.platform, r.processing_level, r.processing_baseline, r.radiometry)
        for k, r in s.items()
    }
    assert got == {
        S2_L2A: ("sentinel-2a", "L2A", "02.14", "surface"),
        S2_L1C: ("sentinel-2a", "L1C", "02.05", "toa"),
        LANDSAT: ("landsat-8", "L2SP", "02", "surface"),
    }
    assert s[S2_L2A].scaling_source == "stac raster:bands"
    assert s[S2_L1C].scaling_source == "baseline rule"
    assert s[LANDSAT].scaling_source == "metadata"
    assert [b.name for b in s[LANDSAT].bands][-2:] == ["QA_PIXEL", "QA_RADSAT"]


def test_remote_stac_hrefs_are_refused_unless_allowed_then_unreadable(spark, shared_data, tmp_path):
    item = (
        shared_data
        / "stac"
        / "odc-stac"
        / "S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json"
    )
    # Default input policy: https hrefs are not followed at all (nothing is requested).
    config = load_config("local", [f"ingest.source={item}", f"storage.root={tmp_path / 'a'}"])
    run = ingest(spark, Lakehouse(spark, config.storage), Run(config))
    assert run.ingested == []
    (r,) = run.rejected
    assert r["error_class"] == "NotAllowed" and r["href"].startswith("https://")
    assert "https:// URLs are not read" in r["reason"]
    # Allowed: they are followed, and this machine cannot reach them.
    allowed = "ingest.allowed_roots=https://sentinel2l2a01.blob.core.windows.net/"
    config = load_config(
        "local", [f"ingest.source={item}", f"storage.root={tmp_path / 'b'}", allowed]
    )
    run = ingest(spark, Lakehouse(spark, config.storage), Run(config))
    assert run.ingested == []
    (r,) = run.rejected
    assert r["error_class"] == "RasterRead" and r["href"].startswith("https://")
