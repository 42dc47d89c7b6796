"""Discovery: product layouts and STAC items mapped to sensors and bands (no Spark, no pixels)."""

from __future__ import annotations

import pytest

from pipelines.discover import discover
from udfs.errors import MissingBandError, SceneError, UnknownLayoutError
from udfs.reader import SceneSource


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
    errors = [c for c in found if isinstance(c, SceneError)]
    assert len(errors) == 1 and isinstance(errors[0], UnknownLayoutError)
    assert "RGB.byte.tif" in errors[0].reason


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
    found = discover(str(shared_data / "stac" / "odc-stac" / name))
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
