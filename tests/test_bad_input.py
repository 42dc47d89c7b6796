"""Bad input: each case lands in ``rejected`` with its reason; good scenes of the run go on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import rasterio
from pyspark.sql import functions as F

from pipelines.config import load_config
from pipelines.ingest import ingest, main
from pipelines.lakehouse import Lakehouse
from pipelines.runs import Run, record_run
from udfs.errors import SceneError

pytestmark = pytest.mark.slow


def landsat_folder(demo_root: Path) -> Path:
    return sorted(p for p in (demo_root / "scenes" / "landsat").iterdir() if p.is_dir())[0]


def clone(scene: Path, dst_root: Path, new_id: str) -> Path:
    """Copy a Landsat scene folder under a new product id (file names renamed too)."""
    dst = dst_root / new_id
    dst.mkdir(parents=True)
    for f in scene.iterdir():
        (dst / f.name.replace(scene.name, new_id)).write_bytes(f.read_bytes())
    return dst


def one(scene: Path, suffix: str) -> Path:
    return next(scene.glob(f"*{suffix}"))


def rewrite(path: Path, **changes) -> None:
    with rasterio.open(path) as src:
        profile = src.profile
        data = src.read()
    profile.update(changes)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


@pytest.fixture(scope="module")
def bad_run(spark, demo_root, tmp_path_factory):
    base = tmp_path_factory.mktemp("bad")
    src = base / "scenes"
    good = landsat_folder(demo_root)
    shutil.copytree(good, src / good.name)
    pid = "LC08_L2SP_198025_20240101_20240102_02_T1"
    ids = {}

    s = clone(good, src, pid.replace("0101", "0201"))  # truncated band file
    f = one(s, "_SR_B3.TIF")
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    ids["truncated"] = s.name

    s = clone(good, src, pid.replace("0101", "0301"))  # zero-byte band file
    one(s, "_SR_B5.TIF").write_bytes(b"")
    ids["empty"] = s.name

    s = clone(good, src, pid.replace("0101", "0401"))  # missing band
    one(s, "_QA_PIXEL.TIF").unlink()
    ids["missing"] = s.name

    s = clone(good, src, pid.replace("0101", "0501"))  # band in another CRS
    rewrite(one(s, "_SR_B6.TIF"), crs="EPSG:32632")
    ids["crs"] = s.name

    s = clone(good, src, pid.replace("0101", "0601"))  # band shifted by 10 pixels
    with rasterio.open(one(s, "_SR_B7.TIF")) as ds:
        t = ds.transform
    rewrite(one(s, "_SR_B7.TIF"), transform=rasterio.Affine(t.a, 0, t.c + 300, 0, t.e, t.f))
    ids["extent"] = s.name

    s = clone(good, src, pid.replace("0101", "0701"))  # band file that is not a raster
    one(s, "_SR_B1.TIF").write_text("this is not a GeoTIFF")
    ids["garbage"] = s.name

    s = clone(good, src, pid.replace("0101", "0801"))  # corrupt metadata
    one(s, "_MTL.txt").write_text("GROUP = LANDSAT_METADATA_FILE\n  what is this\n")
    ids["mtl"] = s.name

    s = clone(good, src, pid.replace("0101", "0901"))  # names say LC08, MTL says LANDSAT_7
    mtl = one(s, "_MTL.txt")
    assert mtl.read_text().count('SPACECRAFT_ID = "LANDSAT_8"') == 1
    mtl.write_text(mtl.read_text().replace('"LANDSAT_8"', '"LANDSAT_7"'))
    ids["mismatch"] = s.name

    # Sentinel-2 L2A-like band files (no B10) without SCL and without any metadata
    bands = src / "S2_bands_only"
    bands.mkdir()
    for b in ("B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B11 B12").split():
        shutil.copyfile(one(good, "_SR_B1.TIF"), bands / f"{b}.tif")
    extra = {"bands_only": str(bands)}

    odd = src / "holiday_photos"  # rasters in no known layout
    odd.mkdir()
    with rasterio.open(one(good, "_SR_B1.TIF")) as ds:
        profile, data = ds.profile, ds.read()
    with rasterio.open(odd / "IMG_0001.tif", "w", **profile) as dst:
        dst.write(data)

    # STAC: one item with an unreadable href, one without the needed assets
    stac = base / "items.json"
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": "S2A_MSIL2A_20240101T000000_N0510_R000_T31UFU",
        "geometry": None,
        "properties": {"datetime": "2024-01-01T00:00:00Z", "platform": "sentinel-2a"},
        "links": [],
        "assets": {
            k: {"href": f"{base}/nowhere/{k.upper()}.tif"}
            for k in (
                "coastal",
                "blue",
                "green",
                "red",
                "rededge1",
                "rededge2",
                "rededge3",
                "nir",
                "nir08",
                "nir09",
                "swir16",
                "swir22",
                "scl",
            )
        },
    }
    partial = dict(
        item,
        id="S2B_MSIL2A_20240102T000000_N0510_R000_T31UFU",
        properties={"datetime": "2024-01-02T00:00:00Z", "platform": "sentinel-2b"},
        assets={"red": item["assets"]["red"], "nir": item["assets"]["nir"]},
    )
    stac.write_text(json.dumps({"type": "FeatureCollection", "features": [item, partial]}))
    ids["unreadable"] = item["id"]
    ids["stac_assets"] = partial["id"]

    empty = base / "empty_catalog.json"  # a STAC Catalog without items
    empty.write_text(
        json.dumps(
            {"type": "Catalog", "stac_version": "1.0.0", "id": "empty", "description": "none",
             "links": []}
        )
    )  # fmt: skip
    extra["empty_catalog"] = str(empty)
    single = one(good, "_SR_B4.TIF")  # one band file given as a source of its own
    extra["single_raster"] = str(single)

    sources = ",".join(str(p) for p in (src, stac, empty, single))
    config = load_config("local", [f"ingest.source={sources}", f"storage.root={base / 'lake'}"])
    lake = Lakehouse(spark, config.storage)
    run = ingest(spark, lake, Run(config))
    record_run(spark, lake, run, "succeeded")
    return run, lake, ids, good.name, odd, extra


def reason_of(run: Run, scene_id: str) -> dict:
    found = [r for r in run.rejected if r["scene_id"] == scene_id]
    assert len(found) == 1, (scene_id, run.rejected)
    return found[0]


@pytest.mark.parametrize(
    "case, error_class, words",
    [
        ("truncated", "RasterRead", ["SR_B3", "cannot decode"]),
        ("empty", "RasterRead", ["SR_B5", "empty (0 bytes)"]),
        ("missing", "MissingBand", ["QA_PIXEL"]),
        ("crs", "GridMismatch", ["SR_B6", "EPSG:32632"]),
        ("extent", "GridMismatch", ["SR_B7", "covers"]),
        ("garbage", "RasterRead", ["SR_B1", "not a readable raster"]),
        ("mtl", "BadMetadata", ["MTL"]),
        ("unreadable", "RasterRead", ["does not exist"]),
        ("stac_assets", "MissingBand", ["B02", "lacks"]),
        ("mismatch", "ProductMismatch", ["'landsat-8'", "'landsat-7'", "_MTL.txt"]),
    ],
)
def test_each_bad_input_is_rejected_with_its_reason(bad_run, case, error_class, words):
    run, _, ids, _, _, _ = bad_run
    r = reason_of(run, ids[case])
    assert r["error_class"] == error_class, r
    for w in words:
        assert w in r["reason"] or w in (r["href"] or ""), r
    assert r["href"], r


@pytest.mark.parametrize(
    "case, error_class, words",
    [
        ("bands_only", "MissingBand", ["Sentinel-2 band files (L2A-like: B10 is absent)",
                                        "lacking SCL, product metadata"]),
        ("empty_catalog", "EmptyCatalog", ["STAC Catalog 'empty'", "holds no items"]),
        ("single_raster", "UnknownLayout", ["single raster file"]),
    ],
)  # fmt: skip
def test_inputs_without_a_scene_id_are_rejected_with_the_right_words(
    bad_run, case, error_class, words
):
    run, _, _, _, _, extra = bad_run
    (r,) = [r for r in run.rejected if r["href"] == extra[case]]
    assert r["error_class"] == error_class, r
    for w in words:
        assert w in r["reason"], r
    assert "does not exist" not in r["reason"]


def test_truncated_file_is_named_and_its_tiles_removed(bad_run):
    run, lake, ids, _, _, _ = bad_run
    r = reason_of(run, ids["truncated"])
    assert r["href"].endswith("_SR_B3.TIF") and r["stage"] == "read"
    assert lake.read("tiles").filter(F.col("scene_id") == ids["truncated"]).count() == 0


def test_unknown_layout_names_the_folder(bad_run):
    run, _, _, _, odd, _ = bad_run
    r = [r for r in run.rejected if r["href"] == str(odd)]
    assert (
        len(r) == 1 and r[0]["error_class"] == "UnknownLayout" and "IMG_0001.tif" in r[0]["reason"]
    )


def test_good_scene_of_the_same_run_is_ingested(bad_run):
    run, lake, _, good, _, _ = bad_run
    assert run.ingested == [good]
    assert [r.scene_id for r in lake.read("scenes").collect()] == [good]
    assert lake.read("tiles").select("scene_id").distinct().collect()[0].scene_id == good


def test_every_input_is_accounted_for_exactly_once(bad_run):
    run, lake, ids, good, _, extra = bad_run
    # + the good scene + the unknown-layout folder + the inputs without a scene id
    assert run.seen == len(ids) + 2 + len(extra)
    assert len(run.ingested) + len(run.rejected) == run.seen
    rejected = lake.read("rejected").filter(F.col("run_id") == run.run_id)
    assert rejected.count() == len(run.rejected)
    assert rejected.filter(F.col("reason").isNull() | (F.col("reason") == "")).count() == 0


def test_strict_mode_fails_the_run_and_still_records_the_rejection(
    spark, demo_root, tmp_path, capsys
):
    src = tmp_path / "src"
    s = clone(landsat_folder(demo_root), src, "LC08_L2SP_198025_20240909_20240910_02_T1")
    one(s, "_SR_B5.TIF").write_bytes(b"")
    root = tmp_path / "lake"
    code = main(["--source", str(src), "--root", str(root), "--strict"])
    assert code == 1
    assert "empty (0 bytes)" in capsys.readouterr().err
    lake = Lakehouse(spark, load_config("local", [f"storage.root={root}"]).storage)
    assert lake.read("rejected").count() == 1
    assert lake.read("runs").collect()[0].status == "failed"
    assert not lake.exists("tiles") or lake.read("tiles").count() == 0


def test_scene_error_message_names_scene_and_file():
    e = SceneError(
        "band SR_B5: file is empty (0 bytes)", scene_id="LC08_X", href="/data/LC08_X_SR_B5.TIF"
    )
    assert (
        str(e) == "scene LC08_X, file /data/LC08_X_SR_B5.TIF: band SR_B5: file is empty (0 bytes)"
    )
