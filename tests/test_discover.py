"""Discovery: product layouts and STAC items mapped to sensors and bands (no Spark, no pixels)."""

from __future__ import annotations

import json
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from s3server import s3_server  # noqa: F401 (the `s3` fixture, used by name)

from pipelines.discover import discover
from udfs.errors import (
    EmptyCatalogError,
    MissingBandError,
    ProductMismatchError,
    SceneError,
    UnknownLayoutError,
)
from udfs.reader import SceneSource

#: Hosts of the real STAC items' assets: allowed, so their hrefs are mapped (never read:
#: discovery opens no raster, and no test reaches the network).
REMOTE = (
    "https://landsatlook.usgs.gov/",
    "https://sentinel-cogs.s3.us-west-2.amazonaws.com/",
    "https://sentinel2l2a01.blob.core.windows.net/",
)


def by_id(candidates):
    return {c.scene_id: c for c in candidates if isinstance(c, SceneSource)}


def test_real_sample_folders_are_recognised(shared_data):
    found = discover(str(shared_data))
    scenes = by_id(found)
    assert scenes["S2A_29RKH_20200219_0_L2A"].sensor == "sentinel2-l2a"
    assert scenes["S2A_29RKH_20200219_0_L2A"].bands["B8A"].endswith("B8A.tif")
    assert scenes["S2A_MSIL1C_20170729_T19UDP"].sensor == "sentinel2-l1c"
    assert scenes["S2A_MSIL1C_20170729_T19UDP"].bands["B10"].endswith("B10.jp2")
    ls = scenes["LC08_L2SP_001062_20201031_20201106_02_T2"]
    assert ls.sensor == "landsat-c2l2" and ls.metadata_kind == "mtl"
    assert ls.bands["QA_PIXEL"].endswith("_QA_PIXEL.TIF")
    assert ls.bands["QA_RADSAT"].endswith("_QA_RADSAT.TIF")  # optional band, present here
    errors = {Path(c.href).name: c for c in found if isinstance(c, SceneError)}
    # the loose RGB file in the top folder, and the metadata-only SAFEs of s2-metadata/
    assert isinstance(errors.pop("data"), UnknownLayoutError)
    assert sorted(errors) == sorted(p.name for p in (shared_data / "s2-metadata").iterdir())
    assert all(isinstance(e, MissingBandError) and "B02" in e.reason for e in errors.values())


@pytest.mark.parametrize(
    "name, sensor, band, href_end",
    [
        (
            "S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json",
            "sentinel2-l2a",
            "B04",
            "_B04_10m.tif",
        ),
        ("S2A_28QCH_20200714_0_L2A.json", "sentinel2-l2a", "B8A", "B8A.tif"),
        ("LC08_L2SP_028030_20200114_20200824_02_T1_SR.json", "landsat-c2l2", "SR_B4", "_SR_B4.TIF"),
        (
            "LE07_L2SP_044033_20210329_20210424_02_T1_SR.json",
            "landsat-c2l2-tm",
            "SR_B3",
            "_SR_B3.TIF",
        ),
        ("LC08_L2SR_081119_20200101_20200823_02_T2.json", "landsat-c2l2", "SR_B5", "_SR_B5.TIF"),
    ],
)
def test_real_stac_items_map_assets_to_bands(shared_data, name, sensor, band, href_end):
    found = discover(str(shared_data / "stac" / "odc-stac" / name), REMOTE)
    assert len(found) == 1
    scene = found[0]
    assert isinstance(scene, SceneSource), scene
    assert scene.sensor == sensor
    assert scene.bands[band].endswith(href_end)


def test_stac_item_of_an_unsupported_product_is_rejected(shared_data):
    found = discover(
        str(
            shared_data
            / "stac"
            / "odc-stac"
            / "ga_ls8c_ard_3-1-0_088080_2020-05-25_final.stac-item.json"
        )
    )
    assert len(found) == 1 and isinstance(found[0], SceneError)


def test_missing_source_is_an_input_error(tmp_path):
    (err,) = discover(str(tmp_path / "nope"))
    assert isinstance(err, UnknownLayoutError) and str(tmp_path / "nope") in str(err)


def test_folder_without_rasters_is_ignored(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    assert discover(str(tmp_path)) == []


def test_cog_folder_missing_a_band(tmp_path, raster_factory):
    import numpy as np

    scene = tmp_path / "S2A_31UFU_20240101_0_L2A"
    for b in ("B02", "B03", "B04", "SCL"):
        raster_factory(scene / f"{b}.tif", np.ones((8, 8), np.uint16))
    (err,) = discover(str(tmp_path))
    assert isinstance(err, MissingBandError)
    assert "B08" in err.reason and err.href == str(scene)


LANDSAT = "LC08_L2SP_001062_20201031_20201106_02_T2"


def link_folder(src: Path, dst: Path, skip: tuple[str, ...] = (), rename=None) -> Path:
    """``dst`` holding symlinks to the files of ``src`` (except names ending in ``skip``)."""
    dst.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        if not f.name.endswith(skip):
            (dst / (rename(f.name) if rename else f.name)).symlink_to(f)
    return dst


def test_qa_radsat_is_picked_up_and_optional(shared_data, tmp_path):
    from udfs.reader import inspect_scene

    folder = link_folder(shared_data / LANDSAT, tmp_path / LANDSAT, skip=("_QA_RADSAT.TIF",))
    (scene,) = discover(str(tmp_path), [str(shared_data)])  # the links lead there
    assert isinstance(scene, SceneSource), scene
    assert "QA_RADSAT" not in scene.bands and "QA_PIXEL" in scene.bands
    info = inspect_scene(scene)
    assert [b["name"] for b in info["bands"]] == [f"SR_B{n}" for n in range(1, 8)] + ["QA_PIXEL"]
    assert folder.is_dir()


def test_qa_radsat_asset_of_a_stac_item_is_picked_up(shared_data):
    item = shared_data / "stac" / "odc-stac" / "LE07_L2SP_044033_20210329_20210424_02_T1_SR.json"
    (scene,) = discover(str(item), REMOTE)
    assert scene.bands["QA_RADSAT"].endswith("_QA_RADSAT.TIF")


def test_spacecraft_in_the_mtl_decides_and_a_disagreeing_name_is_rejected(shared_data, tmp_path):
    folder = link_folder(shared_data / LANDSAT, tmp_path / LANDSAT, skip=("_MTL.txt",))
    mtl = (shared_data / LANDSAT / f"{LANDSAT}_MTL.txt").read_text()
    assert mtl.count('SPACECRAFT_ID = "LANDSAT_8"') == 1
    (folder / f"{LANDSAT}_MTL.txt").write_text(mtl.replace('"LANDSAT_8"', '"LANDSAT_7"'))
    (err,) = discover(str(tmp_path), [str(shared_data)])
    assert isinstance(err, ProductMismatchError) and err.error_class == "ProductMismatch"
    assert "'landsat-8'" in err.reason and "'landsat-7'" in err.reason
    assert err.scene_id == LANDSAT and err.href.endswith("_MTL.txt")


def test_stac_item_whose_id_disagrees_with_its_platform_is_rejected(shared_data, tmp_path):
    src = shared_data / "stac" / "odc-stac" / "LC08_L2SP_028030_20200114_20200824_02_T1_SR.json"
    doc = json.loads(src.read_text())
    doc["properties"]["platform"] = "LANDSAT_9"
    path = tmp_path / "item.json"
    path.write_text(json.dumps(doc))
    (err,) = discover(str(path), REMOTE)
    assert isinstance(err, ProductMismatchError)
    assert "'landsat-8'" in err.reason and "'landsat-9'" in err.reason


def test_empty_stac_catalog_and_collection_are_rejected_with_a_reason(shared_data, tmp_path):
    import pystac

    cat = pystac.Catalog(id="nothing-here", description="no items")
    cat.normalize_hrefs(str(tmp_path / "cat"))
    cat.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    (err,) = discover(str(tmp_path / "cat" / "catalog.json"))
    assert isinstance(err, EmptyCatalogError) and err.error_class == "EmptyCatalog"
    assert "STAC Catalog 'nothing-here'" in err.reason and "holds no items" in err.reason
    collection = shared_data / "stac" / "odc-stac" / "sentinel-2-l2a.collection.json"
    (err,) = discover(str(collection))
    assert isinstance(err, EmptyCatalogError)
    assert "STAC Collection 'sentinel-2-l2a'" in err.reason and err.href == str(collection)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    (err,) = discover(str(empty))
    assert isinstance(err, EmptyCatalogError) and "ItemCollection" in err.reason


def test_a_single_raster_file_source_is_refused_as_such(shared_data):
    (err,) = discover(str(shared_data / "RGB.byte.tif"))
    assert isinstance(err, UnknownLayoutError)
    assert "single raster file" in err.reason and "does not exist" not in err.reason
    assert "folder" in err.reason and err.href == str(shared_data / "RGB.byte.tif")


def test_l2a_bands_without_scl_and_metadata_are_named_for_what_they_are(shared_data, tmp_path):
    # The real L2A COG bands, without SCL and without the STAC item: L2A-like (no B10).
    folder = link_folder(
        shared_data / "S2A_29RKH_20200219_0_L2A",
        tmp_path / "some_bands",
        skip=("SCL.tif", ".json", "AOT.tif", "WVP.tif", "TCI.tif", "PVI.tif"),
    )
    (err,) = discover(str(tmp_path))
    assert isinstance(err, MissingBandError) and err.href == str(folder)
    assert "Sentinel-2 band files (L2A-like: B10 is absent)" in err.reason
    assert "lacking SCL, product metadata" in err.reason
    assert "L1C" not in err.reason and "lacks band(s) B10" not in err.reason


def test_l1c_bands_without_metadata_lack_only_the_metadata(shared_data, tmp_path):
    link_folder(
        shared_data / "S2A_MSIL1C_20170729_T19UDP", tmp_path / "bands", skip=("tileInfo.json",)
    )
    (err,) = discover(str(tmp_path))
    assert isinstance(err, UnknownLayoutError) and not isinstance(err, MissingBandError)
    assert "(L1C-like: B10 is present) lacking product metadata" in err.reason


# ----------------------------------------------------------------------------- windows


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory) -> Path:
    """The five demo scenes, small: folders under scenes/, a STAC catalogue under stac/."""
    from pipelines.demo import generate

    out = tmp_path_factory.mktemp("window_demo")
    generate(out, size=120, seed=3)
    return out


#: The demo's scene ids by acquisition (pipelines/demo/scenes.py), before / from July 2024.
JUNE_AND_BEFORE = {
    "S2A_MSIL2A_20240412T103621_N0300_R008_T31UFS_20240412T165012",
    "LC08_L2SP_198025_20240515_20240521_02_T1",
    "S2B_MSIL2A_20240621T103629_N0510_R008_T31UFS_20240621T133010",
}
JULY_ON = {
    "LC09_L2SP_198025_20240726_20240801_02_T1",
    "S2A_MSIL2A_20240830T103631_N0510_R008_T31UFS_20240830T151502",
}


def emptied(folder: Path) -> None:
    """Every file under ``folder`` truncated to 0 bytes: reading one fails."""
    for p in folder.rglob("*"):
        if p.is_file():
            p.write_bytes(b"")


def test_a_window_passes_old_product_folders_without_reading_them(small_demo, tmp_path):
    from pipelines.discover import discover_window
    from pipelines.incremental import BEFORE, Window

    src = tmp_path / "scenes"
    shutil.copytree(small_demo / "scenes", src)
    old = [p for p in src.glob("*/*") if p.name.removesuffix(".SAFE") in JUNE_AND_BEFORE]
    assert len(old) == 3
    for p in old:
        emptied(p)
    # Read, the emptied products are rejected (so a read of them cannot go unnoticed) ...
    errors = [c for c in discover(str(src)) if isinstance(c, SceneError)]
    assert {e.scene_id for e in errors} == JUNE_AND_BEFORE
    # ... under the window they are passed from their listing, unread.
    window = Window("acquired", datetime(2024, 7, 1, tzinfo=timezone.utc))
    found, passed = discover_window(str(src), (), window)
    assert all(isinstance(c, SceneSource) for c in found)
    assert set(by_id(found)) == JULY_ON
    assert {(p.scene_id, p.why) for p in passed} == {(i, BEFORE) for i in JUNE_AND_BEFORE}
    assert {Path(p.href).name for p in passed} == {p.name for p in old}


def test_a_scene_dated_the_day_before_the_cutoff_is_still_read(small_demo, tmp_path):
    from pipelines.discover import discover_window
    from pipelines.incremental import Window

    # S2B ... 20240621T103629: a name's day counts to the end of the next day (margin).
    src = small_demo / "scenes"
    for cutoff, read in ((datetime(2024, 6, 23, tzinfo=timezone.utc), True),
                         (datetime(2024, 6, 23, 0, 0, 1, tzinfo=timezone.utc), False)):  # fmt: skip
        found, _ = discover_window(str(src), (), Window("acquired", cutoff))
        assert (
            "S2B_MSIL2A_20240621T103629_N0510_R008_T31UFS_20240621T133010" in by_id(found)
        ) is read


def test_already_ingested_ids_are_passed_from_their_listing(small_demo, tmp_path):
    from pipelines.discover import discover_window
    from pipelines.incremental import KNOWN, Window

    src = tmp_path / "scenes"
    shutil.copytree(small_demo / "scenes", src)
    ls = "LC09_L2SP_198025_20240726_20240801_02_T1"
    emptied(src / "landsat" / ls)
    found, passed = discover_window(str(src), (), Window("acquired", None, frozenset({ls})))
    assert [(p.scene_id, p.why) for p in passed] == [(ls, KNOWN)]
    assert set(by_id(found)) == (JUNE_AND_BEFORE | JULY_ON) - {ls}
    assert not [c for c in found if isinstance(c, SceneError)]


def test_a_window_passes_old_stac_items_by_their_datetime(small_demo):
    from pipelines.discover import discover_window
    from pipelines.incremental import BEFORE, Window

    catalog = small_demo / "stac" / "catalog.json"
    window = Window("acquired", datetime(2024, 7, 1, tzinfo=timezone.utc))
    found, passed = discover_window(str(catalog), (str(small_demo),), window)
    assert set(by_id(found)) == JULY_ON
    assert {(p.scene_id, p.why) for p in passed} == {(i, BEFORE) for i in JUNE_AND_BEFORE}


def test_arrival_is_the_change_time_so_a_copy_keeping_old_mtimes_still_arrives(
    small_demo, tmp_path
):
    from pipelines.discover import discover_window
    from pipelines.incremental import BEFORE, Window

    src = tmp_path / "scenes"
    src.mkdir()
    folders = {p.name.removesuffix(".SAFE"): p for p in (small_demo / "scenes").glob("*/*")}
    for i in JUNE_AND_BEFORE:
        shutil.copytree(folders[i], src / folders[i].name)
    time.sleep(0.05)
    cutoff = datetime.now(timezone.utc)  # the day-1 run's start
    time.sleep(0.05)
    for i in JULY_ON:  # copy2: the files keep the generator's (older) modification times
        shutil.copytree(folders[i], src / folders[i].name)
    newest_mtime = max(
        p.stat().st_mtime for i in JULY_ON for p in (src / folders[i].name).rglob("*")
    )
    assert newest_mtime < cutoff.timestamp()  # by mtime they would look old
    found, passed = discover_window(str(src), (), Window("arrival", cutoff))
    assert set(by_id(found)) == JULY_ON
    assert {(p.scene_id, p.why) for p in passed} == {(i, BEFORE) for i in JUNE_AND_BEFORE}
    # A file rewritten in an old product makes it arrive again: it is read.
    mtl = next((src / "LC08_L2SP_198025_20240515_20240521_02_T1").glob("*_MTL.txt"))
    mtl.write_bytes(mtl.read_bytes())
    found, passed = discover_window(str(src), (), Window("arrival", cutoff))
    assert set(by_id(found)) == JULY_ON | {"LC08_L2SP_198025_20240515_20240521_02_T1"}
    assert len(passed) == 2


@pytest.mark.slow
def test_arrival_on_s3_is_last_modified(s3, small_demo):
    from s3server import upload_tree

    from pipelines.discover import discover_window
    from pipelines.incremental import BEFORE, Window

    client = s3.client()
    client.create_bucket(Bucket="arrivals")
    folders = {p.name.removesuffix(".SAFE"): p for p in (small_demo / "scenes").glob("*/*")}
    for i in sorted(JUNE_AND_BEFORE):
        upload_tree(client, folders[i], "arrivals", f"scenes/{folders[i].name}")
    time.sleep(1.1)  # LastModified may be kept to the second
    cutoff = datetime.now(timezone.utc)
    time.sleep(1.1)
    for i in sorted(JULY_ON):
        upload_tree(client, folders[i], "arrivals", f"scenes/{folders[i].name}")
    found, passed = discover_window("s3://arrivals/scenes", (), Window("arrival", cutoff))
    assert set(by_id(found)) == JULY_ON
    assert {(p.scene_id, p.why) for p in passed} == {(i, BEFORE) for i in JUNE_AND_BEFORE}
