"""The demo-data generator: layout, grids, product metadata, pixel content, STAC, labels.

Every expected value is computed here from the written files with plain rasterio, numpy,
ElementTree and json (no Spark, no udfs parsers).
"""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from rasterio.features import rasterize
from rasterio.warp import transform_geom

from pipelines import demo

SIZE = 120
S2_BANDS = {
    10: ["B02", "B03", "B04", "B08"],
    20: ["B05", "B06", "B07", "B8A", "B11", "B12", "SCL"],
    60: ["B01", "B09"],
}
S2_KEYS = {
    "coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08",
    "nir09", "swir16", "swir22", "scl", "product_metadata",
}  # fmt: skip
LANDSAT_KEYS = {
    "coastal",
    "blue",
    "green",
    "red",
    "nir08",
    "swir16",
    "swir22",
    "qa_pixel",
    "mtl.txt",
}
SCL_ALLOWED = {0, 3, 4, 5, 6, 8, 9, 10, 11}


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    demo.generate(root, size=SIZE, seed=7)
    return root


def s2_scenes(root: Path) -> list[Path]:
    return sorted((root / "scenes" / "sentinel2").glob("*.SAFE"))


def landsat_scenes(root: Path) -> list[Path]:
    return sorted(p for p in (root / "scenes" / "landsat").iterdir() if p.is_dir())


def s2_band(safe: Path, band: str) -> Path:
    found = sorted(safe.glob(f"GRANULE/*/IMG_DATA/R*m/*_{band}_*m.tif"))
    assert len(found) == 1, (band, found)
    return found[0]


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def mtd(safe: Path) -> ET.Element:
    return ET.parse(safe / "MTD_MSIL2A.xml").getroot()


def find_all(root: ET.Element, name: str) -> list[ET.Element]:
    return [el for el in root.iter() if local(el.tag) == name]


def text(root: ET.Element, name: str) -> str:
    (el,) = find_all(root, name)
    return (el.text or "").strip()


def s2_scaling(safe: Path) -> tuple[float, float]:
    """(scale, offset) of B04 from the MTD: (DN + BOA_ADD_OFFSET) / QUANTIFICATION."""
    root = mtd(safe)
    q = float(text(root, "BOA_QUANTIFICATION_VALUE"))
    offsets = {el.get("band_id"): float(el.text or 0) for el in find_all(root, "BOA_ADD_OFFSET")}
    return 1 / q, offsets.get("3", 0.0) / q


def odl(path: Path) -> dict:
    """A small independent ODL reader: nested dicts of raw value strings."""
    root: dict = {}
    stack = [root]
    lines = path.read_text().splitlines()
    assert lines[-1] == "END"
    for line in lines[:-1]:
        key, value = (s.strip() for s in line.split("=", 1))
        if key == "GROUP":
            stack[-1][value] = {}
            stack.append(stack[-1][value])
        elif key == "END_GROUP":
            stack.pop()
        else:
            stack[-1][key] = value.strip('"')
    assert len(stack) == 1, "unbalanced GROUP / END_GROUP"
    return root


def ndvi(red: np.ndarray, nir: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return (nir - red) / (nir + red)


def block_all(mask: np.ndarray, k: int) -> np.ndarray:
    """True for each k x k block of ``mask`` that is all True (cropped to whole blocks)."""
    h, w = (s // k * k for s in mask.shape)
    return mask[:h, :w].reshape(h // k, k, w // k, k).all(axis=(1, 3))


# ----------------------------------------------------------------------------- layout


def test_files_are_written_in_the_product_layouts(out):
    for name in (
        "landcover_10m.tif",
        "landcover_classes.json",
        "labels.geojson",
        "manifest.json",
        "stac/catalog.json",
    ):
        assert (out / name).is_file(), name
    safes = s2_scenes(out)
    assert [s.name.split("_")[2][:8] for s in safes] == ["20240412", "20240830", "20240621"]
    for safe in safes:
        assert re.fullmatch(
            r"S2[AB]_MSIL2A_\d{8}T\d{6}_N\d{4}_R\d{3}_T31UFS_\d{8}T\d{6}\.SAFE", safe.name
        )
        assert (safe / "MTD_MSIL2A.xml").is_file()
        (granule,) = (safe / "GRANULE").iterdir()
        assert re.fullmatch(r"L2A_T31UFS_A0\d{5}_\d{8}T\d{6}", granule.name)
        stamp = safe.name.split("_")[2]
        for res, bands in S2_BANDS.items():
            folder = granule / "IMG_DATA" / f"R{res}m"
            expected = {f"T31UFS_{stamp}_{b}_{res}m.tif" for b in bands}
            assert {p.name for p in folder.iterdir()} == expected
    ids = [p.name for p in landsat_scenes(out)]
    assert ids == [
        "LC08_L2SP_198025_20240515_20240521_02_T1",
        "LC09_L2SP_198025_20240726_20240801_02_T1",
    ]
    for scene in landsat_scenes(out):
        expected = {f"{scene.name}_SR_B{n}.TIF" for n in range(1, 8)}
        expected |= {f"{scene.name}_QA_PIXEL.TIF", f"{scene.name}_MTL.txt"}
        assert {p.name for p in scene.iterdir()} == expected


def test_manifest_names_what_was_written(out):
    manifest = json.loads((out / "manifest.json").read_text())
    expected_ids = [s.name.removesuffix(".SAFE") for s in s2_scenes(out)]
    expected_ids += [p.name for p in landsat_scenes(out)]
    assert sorted(manifest["scene_ids"]) == sorted(expected_ids)
    for key in ("landcover", "landcover_classes", "labels", "catalog"):
        assert Path(manifest[key]).is_file(), key
    assert all(Path(s["path"]).is_dir() for s in manifest["scenes"])
    assert json.loads((out / "landcover_classes.json").read_text()) == {
        "1": "water",
        "2": "forest",
        "3": "cropland",
        "4": "grassland",
        "5": "urban",
        "6": "bare_soil",
    }


def test_rasters_share_the_upper_left_corner_at_their_native_resolution(out):
    def check(path: Path, res: int, dtype: str, nodata: int) -> None:
        n = math.ceil(SIZE * 10 / res)
        with rasterio.open(path) as src:
            assert src.crs.to_epsg() == 32631, path
            assert tuple(src.transform)[:6] == (res, 0.0, 600000.0, 0.0, -res, 5700000.0), path
            assert (src.height, src.width) == (n, n), path
            assert src.dtypes[0] == dtype and src.nodata == nodata, path
            assert src.profile["tiled"] and src.block_shapes[0] == (256, 256), path
            assert src.compression.value == "DEFLATE", path

    check(out / "landcover_10m.tif", 10, "uint8", 0)
    for safe in s2_scenes(out):
        for res, bands in S2_BANDS.items():
            for b in bands:
                check(s2_band(safe, b), res, "uint8" if b == "SCL" else "uint16", 0)
    for scene in landsat_scenes(out):
        for n in range(1, 8):
            check(scene / f"{scene.name}_SR_B{n}.TIF", 30, "uint16", 0)
        check(scene / f"{scene.name}_QA_PIXEL.TIF", 30, "uint16", 1)


# ----------------------------------------------------------------------------- metadata


def test_mtd_carries_time_platform_baseline_and_offsets(out):
    baselines = []
    for safe in s2_scenes(out):
        root = mtd(safe)
        assert local(root.tag) == "Level-2A_User_Product"
        sensing = safe.name.split("_")[2]
        start = text(root, "PRODUCT_START_TIME")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", start)
        assert start[:19].replace("-", "").replace(":", "") == sensing
        assert text(root, "PRODUCT_TYPE") == "S2MSI2A"
        assert text(root, "PROCESSING_LEVEL") == "Level-2A"
        assert text(root, "SPACECRAFT_NAME") == f"Sentinel-2{safe.name[2]}"
        assert float(text(root, "BOA_QUANTIFICATION_VALUE")) == 10000
        baseline = text(root, "PROCESSING_BASELINE")
        assert safe.name.split("_")[3] == "N" + baseline.replace(".", "")
        offsets = find_all(root, "BOA_ADD_OFFSET")
        if baseline == "03.00":
            assert offsets == [] and find_all(root, "BOA_ADD_OFFSET_VALUES_LIST") == []
        else:
            assert [el.get("band_id") for el in offsets] == [str(i) for i in range(13)]
            assert {float(el.text or "nan") for el in offsets} == {-1000.0}
        baselines.append(baseline)
        scl = read(s2_band(safe, "SCL"))
        valid = np.count_nonzero(scl)
        expected = 100 * np.isin(scl, [8, 9, 10]).sum() / valid
        assert float(text(root, "Cloud_Coverage_Assessment")) == pytest.approx(expected, abs=1e-5)
        assert 1.0 < expected < 30.0
    assert baselines == ["03.00", "05.10", "05.10"]  # sorted by name: the old one first


def test_mtl_parses_and_carries_the_level2_scaling(out):
    for scene, craft, date in zip(
        landsat_scenes(out), ("LANDSAT_8", "LANDSAT_9"), ("2024-05-15", "2024-07-26"), strict=True
    ):
        doc = odl(scene / f"{scene.name}_MTL.txt")["LANDSAT_METADATA_FILE"]
        assert doc["PRODUCT_CONTENTS"]["LANDSAT_PRODUCT_ID"] == scene.name
        assert doc["PRODUCT_CONTENTS"]["PROCESSING_LEVEL"] == "L2SP"
        attrs = doc["IMAGE_ATTRIBUTES"]
        assert attrs["SPACECRAFT_ID"] == craft and attrs["DATE_ACQUIRED"] == date
        assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{7}Z", attrs["SCENE_CENTER_TIME"])
        assert doc["PROJECTION_ATTRIBUTES"]["UTM_ZONE"] == "31"
        params = doc["LEVEL2_SURFACE_REFLECTANCE_PARAMETERS"]
        for n in range(1, 8):
            assert float(params[f"REFLECTANCE_MULT_BAND_{n}"]) == 2.75e-05
            assert float(params[f"REFLECTANCE_ADD_BAND_{n}"]) == -0.2
        qa = read(scene / f"{scene.name}_QA_PIXEL.TIF")
        cloudy = ((qa >> 3) & 1).astype(bool) & (qa != 1)
        expected = 100 * cloudy.sum() / np.count_nonzero(qa != 1)
        assert float(attrs["CLOUD_COVER"]) == pytest.approx(expected, abs=0.006)
        text_ = (scene / f"{scene.name}_MTL.txt").read_text()
        assert re.search(r"^    CLOUD_COVER = \d+\.\d\d$", text_, re.M)


# ----------------------------------------------------------------------------- pixels


def test_scl_codes_are_real_classes_and_cloudy_pixels_are_bright(out):
    for safe in s2_scenes(out):
        scale, offset = s2_scaling(safe)
        scl = read(s2_band(safe, "SCL"))
        assert set(np.unique(scl).tolist()) <= SCL_ALLOWED
        assert {4, 5, 6, 9} <= set(np.unique(scl).tolist())
        blue = read(s2_band(safe, "B02")) * scale + offset
        h, w = (s // 2 for s in blue.shape)
        blue20 = blue.reshape(h, 2, w, 2).mean(axis=(1, 3))  # 10 m -> 20 m
        high = blue20[scl == 9]
        clear = blue20[np.isin(scl, [4, 5])]
        assert (high > 0.2).mean() > 0.99 and np.median(high) > 0.4
        assert np.median(clear) < 0.15
        shadow = blue20[scl == 3]
        if shadow.size:
            assert np.median(shadow) < np.median(clear)


def test_nodata_is_zero_in_every_band_where_scl_is_zero(out):
    with_edge = 0
    for safe in s2_scenes(out):
        scl = read(s2_band(safe, "SCL"))
        for band in ("B05", "B8A", "B11", "B12"):
            np.testing.assert_array_equal(read(s2_band(safe, band)) == 0, scl == 0, band)
        b02, b08 = read(s2_band(safe, "B02")), read(s2_band(safe, "B08"))
        np.testing.assert_array_equal(b02 == 0, b08 == 0)
        with_edge += int((scl == 0).any())
    assert with_edge == 1, "one Sentinel-2 date has an orbit-edge no-data strip"


def test_qa_pixel_fill_matches_zero_surface_reflectance(out):
    for scene in landsat_scenes(out):
        qa = read(scene / f"{scene.name}_QA_PIXEL.TIF")
        sr = np.stack([read(scene / f"{scene.name}_SR_B{n}.TIF") for n in range(1, 8)])
        fill = (qa & 1).astype(bool)
        assert fill.any() and not fill.all()
        assert (qa[fill] == 1).all()
        np.testing.assert_array_equal(fill, (sr == 0).all(axis=0))
        assert (sr[:, ~fill] >= 1).all()
        # decode the bits: clear <=> neither cloud nor dilated cloud; cloud <=> high conf
        bit = {
            name: ((qa >> b) & 1).astype(bool)
            for name, b in (("dilated", 1), ("cloud", 3), ("shadow", 4), ("clear", 6), ("water", 7))
        }
        conf = (qa >> 8) & 3
        valid = ~fill
        np.testing.assert_array_equal(bit["clear"][valid], ~(bit["cloud"] | bit["dilated"])[valid])
        np.testing.assert_array_equal(bit["cloud"][valid], (conf == 3)[valid])
        assert {21824, 21952, 22280} <= set(np.unique(qa).tolist())
        blue = sr[1] * 2.75e-5 - 0.2
        assert np.median(blue[bit["cloud"]]) > 0.4
        assert np.median(blue[bit["clear"] & ~bit["shadow"]]) < 0.15


def test_qa_pixel_words_follow_the_usgs_bit_layout():
    # clear land, clear water, cloud (high confidence), fill; values from LSDS-1619
    px = demo.Pixels(
        classes=np.array([[demo.CROPLAND, demo.WATER, demo.FOREST, demo.FOREST]], np.uint8),
        index=np.zeros((1, 4), np.intp),
        valid=np.array([[True, True, True, False]]),
        cloud=np.array([[0.0, 0.0, 1.0, 0.0]], np.float32),
        cirrus=np.zeros((1, 4), np.float32),
        shadow=np.zeros((1, 4), np.float32),
    )
    assert demo.qa_pixel_values(px).tolist() == [[21824, 21952, 22280, 1]]


def test_forest_is_green_and_water_dark_in_near_infrared(out):
    lc = read(out / "landcover_10m.tif")
    for safe in s2_scenes(out):
        scale, offset = s2_scaling(safe)
        red = read(s2_band(safe, "B04")) * scale + offset
        nir = read(s2_band(safe, "B08")) * scale + offset
        scl = np.repeat(np.repeat(read(s2_band(safe, "SCL")), 2, 0), 2, 1)
        v = ndvi(red, nir)
        forest = v[(lc == demo.FOREST) & (scl == 4)]
        water = v[(lc == demo.WATER) & (scl == 6)]
        assert forest.size > 100 and water.size > 20
        assert np.median(forest) > 0.7 and (forest > 0.6).mean() > 0.9, safe.name
        assert np.median(water) < 0 and (water < 0).mean() > 0.95, safe.name
    for scene in landsat_scenes(out):
        red, nir = (read(scene / f"{scene.name}_SR_B{n}.TIF") * 2.75e-5 - 0.2 for n in (4, 5))
        qa = read(scene / f"{scene.name}_QA_PIXEL.TIF")
        clear = ((qa >> 6) & 1).astype(bool) & ~((qa >> 4) & 1).astype(bool)
        v = ndvi(red, nir)
        n = min(v.shape[0], SIZE // 3)
        v, clear = v[:n, :n], clear[:n, :n]
        forest = v[block_all(lc == demo.FOREST, 3) & clear]
        water = v[block_all(lc == demo.WATER, 3) & clear]
        assert np.median(forest) > 0.7 and np.median(water) < 0, scene.name


def test_cropland_greens_up_in_june_and_senesces_in_august(out):
    lc = read(out / "landcover_10m.tif")
    medians = {}
    for safe in s2_scenes(out):
        scale, offset = s2_scaling(safe)
        red = read(s2_band(safe, "B04")) * scale + offset
        nir = read(s2_band(safe, "B08")) * scale + offset
        scl = np.repeat(np.repeat(read(s2_band(safe, "SCL")), 2, 0), 2, 1)
        crop = (lc == demo.CROPLAND) & np.isin(scl, [4, 5])
        medians[safe.name.split("_")[2][4:8]] = float(np.median(ndvi(red, nir)[crop]))
    assert medians["0621"] > 0.6
    assert medians["0621"] > medians["0412"] + 0.2 and medians["0621"] > medians["0830"] + 0.2


def test_same_seed_writes_the_same_bytes(out, tmp_path):
    again = tmp_path / "again"
    demo.generate(again, size=SIZE, seed=7)
    files = sorted(
        p.relative_to(out) for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"
    )
    assert len(files) > 60
    for rel in files:
        assert (again / rel).read_bytes() == (out / rel).read_bytes(), rel
    other = tmp_path / "other"
    demo.generate(other, size=SIZE, seed=8, scenes=["LC09"])
    assert read(other / "landcover_10m.tif").tobytes() != read(out / "landcover_10m.tif").tobytes()


# ----------------------------------------------------------------------------- STAC


def test_stac_catalog_lists_every_scene_with_resolvable_assets(out):
    catalog = pystac.Catalog.from_file(str(out / "stac" / "catalog.json"))
    assert catalog.catalog_type == pystac.CatalogType.SELF_CONTAINED
    items = {i.id: i for i in catalog.get_items(recursive=True)}
    expected = {s.name.removesuffix(".SAFE") for s in s2_scenes(out)}
    expected |= {p.name for p in landsat_scenes(out)}
    assert set(items) == expected
    for safe in s2_scenes(out):
        item = items[safe.name.removesuffix(".SAFE")]
        root = mtd(safe)
        assert set(item.assets) == S2_KEYS
        assert item.properties["platform"] == f"sentinel-2{safe.name[2].lower()}"
        assert item.properties["s2:processing_baseline"] == text(root, "PROCESSING_BASELINE")
        assert item.properties["eo:cloud_cover"] == pytest.approx(
            float(text(root, "Cloud_Coverage_Assessment")), abs=1e-3
        )
        scale, offset = s2_scaling(safe)
        for key, asset in item.assets.items():
            href = asset.get_absolute_href()
            assert href and Path(href).is_file(), key
            assert not Path(asset.href).is_absolute()
            if key in ("scl", "product_metadata"):
                continue
            (rb,) = asset.extra_fields["raster:bands"]
            assert rb["scale"] == pytest.approx(scale) and rb["offset"] == pytest.approx(offset)
            assert rb["nodata"] == 0 and rb["data_type"] == "uint16"
            (eo,) = asset.extra_fields["eo:bands"]
            assert eo["common_name"] == key and Path(href).name.split("_")[2] == eo["name"]
        assert Path(item.assets["product_metadata"].get_absolute_href()).name == "MTD_MSIL2A.xml"
    for scene in landsat_scenes(out):
        item = items[scene.name]
        assert set(item.assets) == LANDSAT_KEYS
        assert item.properties["platform"] == f"landsat-{scene.name[3]}"
        params = odl(scene / f"{scene.name}_MTL.txt")["LANDSAT_METADATA_FILE"][
            "LEVEL2_SURFACE_REFLECTANCE_PARAMETERS"
        ]
        for key, asset in item.assets.items():
            assert Path(asset.get_absolute_href() or "").is_file(), key
            if key in ("qa_pixel", "mtl.txt"):
                continue
            n = asset.extra_fields["eo:bands"][0]["name"][-1]
            (rb,) = asset.extra_fields["raster:bands"]
            assert rb["scale"] == float(params[f"REFLECTANCE_MULT_BAND_{n}"])
            assert rb["offset"] == float(params[f"REFLECTANCE_ADD_BAND_{n}"])


# ----------------------------------------------------------------------------- labels


def test_labels_fall_on_their_land_cover_class(out):
    doc = json.loads((out / "labels.geojson").read_text())
    assert doc["type"] == "FeatureCollection"
    with rasterio.open(out / "landcover_10m.tif") as src:
        lc, transform, shape = src.read(1), src.transform, src.shape
    shapes = []
    for f in doc["features"]:
        assert f["geometry"]["type"] == "Polygon"
        code = f["properties"]["class_code"]
        assert demo.CLASSES[code] == f["properties"]["class_name"]
        lon, lat = np.array(f["geometry"]["coordinates"][0]).T
        assert (4.3 < lon).all() and (lon < 4.6).all() and (51.3 < lat).all() and (lat < 51.5).all()
        shapes.append((transform_geom("EPSG:4326", "EPSG:32631", f["geometry"]), code))
    assert {s[1] for s in shapes} == set(demo.CLASSES)
    labelled = rasterize(shapes, out_shape=shape, transform=transform, fill=0, dtype="uint8")
    inside = labelled > 0
    assert inside.sum() > 500
    assert (labelled[inside] == lc[inside]).mean() >= 0.99


def test_default_size_is_fast_and_labels_every_class_ten_times(tmp_path):
    import time

    start = time.perf_counter()
    manifest = demo.generate(tmp_path / "d", size=512, seed=7)
    assert time.perf_counter() - start < 10
    assert min(manifest["labels_per_class"].values()) >= 10
    assert len(manifest["scene_ids"]) == 5


# ----------------------------------------------------------------------------- CLI


def test_cli_writes_a_subset_and_rejects_bad_arguments(tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path / "cli"), "--size", "60", "--scenes", "LC09"]) == 0
    assert [p.name for p in (tmp_path / "cli" / "scenes" / "landsat").iterdir()] == [
        "LC09_L2SP_198025_20240726_20240801_02_T1"
    ]
    assert not (tmp_path / "cli" / "scenes" / "sentinel2").exists()
    catalog = pystac.Catalog.from_file(str(tmp_path / "cli" / "stac" / "catalog.json"))
    assert len(list(catalog.get_items(recursive=True))) == 1
    for bad in (["--size", "20"], ["--size", "10981"], ["--scenes", "S3A"]):
        with pytest.raises(SystemExit):
            demo.main(["--out", str(tmp_path / "bad"), *bad])
    assert "--size" in capsys.readouterr().err
    with pytest.raises(ValueError, match="size"):
        demo.generate(tmp_path / "bad", size=59)
