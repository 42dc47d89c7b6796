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
    "qa_radsat",
    "mtl.txt",
}
SCL_ALLOWED = {0, 1, 3, 4, 5, 6, 8, 9, 10, 11}
# ESA L2A product definition: reflectance = (DN + BOA_ADD_OFFSET) / BOA_QUANTIFICATION_VALUE,
# offsets per band_id in this order from baseline 04.00 on; DN 0 NODATA, 65535 SATURATED.
ESA_BAND_IDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10",
                "B11", "B12")  # fmt: skip
# USGS LSDS-1619 (Landsat 8-9 C2 L2): SR = DN * 2.75e-5 - 0.2, valid DN 7273..43636,
# QA_RADSAT bit n-1 = band n saturated (bands 1-7), QUANTIZE_CAL_MAX 65535.
LANDSAT_VALID = (7273, 43636)
SATURATED = 65535


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
        expected |= {f"{scene.name}_{n}" for n in ("QA_PIXEL.TIF", "QA_RADSAT.TIF", "MTL.txt")}
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
    def check(path: Path, res: int, dtype: str, nodata: int | None) -> None:
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
        check(scene / f"{scene.name}_QA_RADSAT.TIF", 30, "uint16", None)  # as the real file


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


def test_mtd_follows_the_documented_l2a_radiometry_rules(out):
    for safe in s2_scenes(out):
        root = mtd(safe)
        baseline = text(root, "PROCESSING_BASELINE")
        modern = float(baseline) >= 4.0
        special = {
            text(el, "SPECIAL_VALUE_TEXT"): int(text(el, "SPECIAL_VALUE_INDEX"))
            for el in find_all(root, "Special_Values")
        }
        assert special == {"NODATA": 0, "SATURATED": 65535}
        (quant,) = find_all(root, "BOA_QUANTIFICATION_VALUE")
        assert quant.text == "10000" and quant.get("unit") == "none"
        # the offset list sits in Product_Image_Characteristics, one entry per band_id
        chars = find_all(root, "Product_Image_Characteristics")[0]
        lists = [el for el in chars if local(el.tag) == "BOA_ADD_OFFSET_VALUES_LIST"]
        assert len(lists) == int(modern), safe.name
        if modern:
            ids = [el.get("band_id") for el in lists[0]]
            assert ids == [str(i) for i in range(len(ESA_BAND_IDS))]
        assert bool(find_all(root, "PRODUCT_DOI")) == modern
        bands = {
            el.get("physicalBand"): el.get("bandId")
            for el in find_all(root, "Spectral_Information")
        }
        assert bands == {b[0] + b[1:].lstrip("0"): str(i) for i, b in enumerate(ESA_BAND_IDS)}
        granule = find_all(root, "Granule")[0]
        assert granule.get("granuleIdentifier", "").endswith(f"_T31UFS_N{baseline}")
        for image in find_all(root, "IMAGE_FILE"):
            assert (safe / f"{image.text}.tif").is_file(), image.text
        # Cloud_Coverage_Assessment = medium + high probability clouds + thin cirrus
        parts = sum(
            float(text(root, t))
            for t in (
                "MEDIUM_PROBA_CLOUDS_PERCENTAGE",
                "HIGH_PROBA_CLOUDS_PERCENTAGE",
                "THIN_CIRRUS_PERCENTAGE",
            )
        )
        assert float(text(root, "Cloud_Coverage_Assessment")) == pytest.approx(parts, abs=1e-5)
        scl = read(s2_band(safe, "SCL"))
        expected = 100 * np.count_nonzero(scl == 1) / np.count_nonzero(scl)
        got = float(text(root, "SATURATED_DEFECTIVE_PIXEL_PERCENTAGE"))
        assert got == pytest.approx(expected, abs=1e-5)


def test_mtl_keys_follow_the_product_id_and_the_documented_scaling(out):
    for scene in landsat_scenes(out):
        doc = odl(scene / f"{scene.name}_MTL.txt")["LANDSAT_METADATA_FILE"]
        contents, attrs = doc["PRODUCT_CONTENTS"], doc["IMAGE_ATTRIBUTES"]
        sensor, level, path_row, _, _, collection, category = scene.name.split("_")
        assert attrs["SPACECRAFT_ID"] == f"LANDSAT_{int(sensor[2:])}"  # LC08 -> LANDSAT_8
        assert attrs["SENSOR_ID"] == "OLI_TIRS" and sensor[1] == "C"
        assert (
            contents["PROCESSING_LEVEL"]
            == level
            == doc["LEVEL2_PROCESSING_RECORD"]["PROCESSING_LEVEL"]
        )
        assert contents["COLLECTION_NUMBER"] == collection
        assert contents["COLLECTION_CATEGORY"] == category
        assert (attrs["WRS_PATH"], attrs["WRS_ROW"]) == (
            str(int(path_row[:3])),
            str(int(path_row[3:])),
        )
        for key, name in contents.items():
            if key.startswith("FILE_NAME_"):
                assert (scene / name).is_file(), key
        assert contents["FILE_NAME_QUALITY_L1_RADIOMETRIC_SATURATION"] == (
            f"{scene.name}_QA_RADSAT.TIF"
        )
        params = doc["LEVEL2_SURFACE_REFLECTANCE_PARAMETERS"]
        for n in range(1, 8):
            mult = float(params[f"REFLECTANCE_MULT_BAND_{n}"])
            add = float(params[f"REFLECTANCE_ADD_BAND_{n}"])
            assert (mult, add) == (2.75e-05, -0.2)
            qmax = int(params[f"QUANTIZE_CAL_MAX_BAND_{n}"])
            qmin = int(params[f"QUANTIZE_CAL_MIN_BAND_{n}"])
            assert (qmin, qmax) == (1, 65535)
            # reflectance range = the quantisation range through the scaling (rounded to 6)
            assert float(params[f"REFLECTANCE_MAXIMUM_BAND_{n}"]) == round(qmax * mult + add, 6)
            assert float(params[f"REFLECTANCE_MINIMUM_BAND_{n}"]) == round(qmin * mult + add, 6)
        l1 = doc["LEVEL1_PROCESSING_RECORD"]
        assert l1["LANDSAT_PRODUCT_ID"].split("_")[1] == l1["PROCESSING_LEVEL"] == "L1TP"
        assert l1["LANDSAT_SCENE_ID"].startswith(f"LC{int(sensor[2:])}{path_row}")


# ----------------------------------------------------------------------------- real layouts


def element_paths(root: ET.Element) -> set[str]:
    """Every element path (local names, '/'-joined) of an XML tree."""
    out: set[str] = set()

    def walk(el: ET.Element, prefix: str) -> None:
        path = f"{prefix}/{local(el.tag)}"
        out.add(path)
        for child in el:
            walk(child, path)

    walk(root, "")
    return out


# Element paths that readers of L2A metadata use (acquisition time, level, baseline,
# platform, radiometry, cloud cover); they must exist in the demo and in real products.
READ_PATHS = (
    {
        "/Level-2A_User_Product/General_Info/Product_Info/" + p
        for p in (
            "PRODUCT_START_TIME",
            "PROCESSING_LEVEL",
            "PRODUCT_TYPE",
            "PROCESSING_BASELINE",
            "Datatake/SPACECRAFT_NAME",
        )
    }
    | {
        "/Level-2A_User_Product/General_Info/Product_Image_Characteristics/" + p
        for p in (
            "QUANTIFICATION_VALUES_LIST/BOA_QUANTIFICATION_VALUE",
            "Special_Values/SPECIAL_VALUE_TEXT",
            "Special_Values/SPECIAL_VALUE_INDEX",
            "Reflectance_Conversion/U",
            "Scene_Classification_List/Scene_Classification_ID/SCENE_CLASSIFICATION_TEXT",
        )
    }
    | {"/Level-2A_User_Product/Quality_Indicators_Info/Cloud_Coverage_Assessment"}
)
OFFSET_PATH = (
    "/Level-2A_User_Product/General_Info/Product_Image_Characteristics/"
    "BOA_ADD_OFFSET_VALUES_LIST/BOA_ADD_OFFSET"
)


def real_l2a(shared_data: Path) -> dict[str, ET.Element]:
    found = sorted((shared_data / "s2-metadata").glob("*MSIL2A*.SAFE/MTD_MSIL2A.xml"))
    if not found:
        pytest.skip("no real MTD_MSIL2A.xml under s2-metadata/")
    return {f.parent.name.split("_")[3]: ET.parse(f).getroot() for f in found}


def test_mtd_elements_are_those_of_real_products(out, shared_data):
    real = real_l2a(shared_data)
    for safe in s2_scenes(out):
        root = mtd(safe)
        modern = float(text(root, "PROCESSING_BASELINE")) >= 4.0
        # compare with the real products of the same side of baseline 04.00
        peers = [r for n, r in real.items() if (int(n[1:]) >= 400) == modern]
        assert peers, "no real product of a comparable baseline"
        real_paths = set.union(*(element_paths(r) for r in peers))
        mine = element_paths(root)
        assert mine <= real_paths, sorted(mine - real_paths)
        wanted = READ_PATHS | ({OFFSET_PATH} if modern else set())
        assert wanted <= mine and all(wanted <= element_paths(r) for r in peers)
        assert (OFFSET_PATH in mine) == modern
        # children in the real products' order (the demo omits some)
        for parent in ("Product_Info", "Product_Image_Characteristics", "Image_Content_QI"):
            mine_order = [local(c.tag) for c in find_all(root, parent)[0]]
            ref_order = list(dict.fromkeys(local(c.tag) for c in find_all(peers[-1], parent)[0]))
            kept = [t for t in ref_order if t in mine_order]
            assert list(dict.fromkeys(mine_order)) == kept, parent
        # the scene classification texts are ESA's
        texts = [e.text for e in find_all(root, "SCENE_CLASSIFICATION_TEXT")]
        assert texts == [e.text for e in find_all(peers[-1], "SCENE_CLASSIFICATION_TEXT")]
        irradiance_units = {e.get("unit") for e in find_all(root, "SOLAR_IRRADIANCE")}
        assert irradiance_units == {e.get("unit") for e in find_all(peers[-1], "SOLAR_IRRADIANCE")}


def test_mtl_groups_and_keys_are_those_of_the_real_product(out, shared_data):
    real_mtl = sorted(shared_data.glob("LC08_L2SP_*/*_MTL.txt"))
    if not real_mtl:
        pytest.skip("no real Landsat C2 L2 MTL.txt in the shared data")
    real = odl(real_mtl[0])["LANDSAT_METADATA_FILE"]
    for scene in landsat_scenes(out):
        doc = odl(scene / f"{scene.name}_MTL.txt")["LANDSAT_METADATA_FILE"]
        groups = list(doc)
        assert groups == [g for g in real if g in doc], "groups missing or out of order"
        for group, items in doc.items():
            extra = set(items) - set(real[group])
            assert not extra, (group, sorted(extra))
            keys = [k for k in real[group] if k in items]
            assert list(items) == keys, f"{group}: keys in another order than the real file"
        for group in (
            "PRODUCT_CONTENTS",
            "IMAGE_ATTRIBUTES",
            "LEVEL2_SURFACE_REFLECTANCE_PARAMETERS",
        ):
            for key in ("PROCESSING_LEVEL", "COLLECTION_NUMBER", "SPACECRAFT_ID", "CLOUD_COVER",
                        "DATE_ACQUIRED", "SCENE_CENTER_TIME", "REFLECTANCE_MULT_BAND_4",
                        "FILE_NAME_QUALITY_L1_RADIOMETRIC_SATURATION"):  # fmt: skip
                assert (key in real[group]) == (key in doc[group]), (group, key)
        # value formats: the same shape as the real values
        for group, key in (
            ("IMAGE_ATTRIBUTES", "SCENE_CENTER_TIME"),
            ("IMAGE_ATTRIBUTES", "DATE_ACQUIRED"),
            ("PRODUCT_CONTENTS", "COLLECTION_NUMBER"),
            ("LEVEL2_SURFACE_REFLECTANCE_PARAMETERS", "REFLECTANCE_MULT_BAND_1"),
            ("LEVEL2_SURFACE_REFLECTANCE_PARAMETERS", "REFLECTANCE_MAXIMUM_BAND_1"),
            ("LEVEL2_SURFACE_REFLECTANCE_PARAMETERS", "REFLECTANCE_MINIMUM_BAND_1"),
        ):
            shape = re.sub(r"\d", "9", doc[group][key])
            assert shape == re.sub(r"\d", "9", real[group][key]), (group, key)


def test_stac_conventions_match_real_catalogues(out, shared_data):
    es = shared_data / "S2A_29RKH_20200219_0_L2A" / "S2A_29RKH_20200219_0_L2A.json"
    usgs = shared_data / "stac" / "odc-stac" / "LC08_L2SP_028030_20200114_20200824_02_T1_SR.json"
    if not (es.is_file() and usgs.is_file()):
        pytest.skip("real Earth Search / USGS STAC items not in the shared data")
    es_item, usgs_item = json.loads(es.read_text()), json.loads(usgs.read_text())
    # Earth Search v1: lower-case STAC platform; raster:bands of DNs not harmonised
    assert es_item["properties"]["platform"] == "sentinel-2a"
    assert es_item["properties"]["earthsearch:boa_offset_applied"] is False
    assert es_item["properties"]["s2:processing_baseline"] < "04.00"
    (rb,) = es_item["assets"]["red"]["raster:bands"]
    assert (rb["scale"], rb["offset"]) == (0.0001, 0)
    assert "qa_radsat" in usgs_item["assets"] and "landsat:correction" in usgs_item["properties"]
    catalog = pystac.Catalog.from_file(str(out / "stac" / "catalog.json"))
    for item in catalog.get_items(recursive=True):
        props = item.properties
        if item.id.startswith("S2"):
            assert props["platform"] == f"sentinel-2{item.id[2].lower()}"
            assert props["earthsearch:boa_offset_applied"] is False
            baseline = props["s2:processing_baseline"]
            (rb,) = item.assets["red"].extra_fields["raster:bands"]
            # value = DN * scale + offset with ESA's DNs: offset = BOA_ADD_OFFSET / 10000
            assert rb["scale"] == 0.0001
            assert rb["offset"] == (-0.1 if baseline >= "04.00" else 0.0)
            assert props["processing:level"] == "L2A"
        else:
            assert props["platform"] == f"landsat-{int(item.id[2:4])}"
            assert props["landsat:correction"] == item.id.split("_")[1]
            assert item.assets["qa_radsat"].roles == usgs_item["assets"]["qa_radsat"]["roles"]


# ----------------------------------------------------------------------------- pixels


def test_dns_decode_to_the_intended_water_reflectance(out):
    """Documented formulas applied to the DNs give back the landscape's water spectrum."""
    lc = read(out / "landcover_10m.tif")
    water_green = demo.ENDMEMBERS["water"][demo.COMMON_NAMES.index("green")]
    for safe in s2_scenes(out):
        root = mtd(safe)
        q = float(text(root, "BOA_QUANTIFICATION_VALUE"))
        offsets = {
            ESA_BAND_IDS[int(el.get("band_id") or -1)]: float(el.text or "nan")
            for el in find_all(root, "BOA_ADD_OFFSET")
        }
        scl = np.repeat(np.repeat(read(s2_band(safe, "SCL")), 2, 0), 2, 1)
        green = (read(s2_band(safe, "B03")) + offsets.get("B03", 0.0)) / q
        clear_water = (lc == demo.WATER) & (scl == 6)
        assert np.median(green[clear_water]) == pytest.approx(water_green, abs=0.005), safe.name
        dn12 = read(s2_band(safe, "B12"))
        scl20 = read(s2_band(safe, "SCL"))
        water12 = dn12[scl20 == 6]
        if offsets:
            # baseline >= 04.00: dark water has negative SWIR reflectance, i.e. DN < 1000
            assert offsets["B12"] == -1000
            assert (water12 < 1000).sum() >= 5, safe.name
            assert (water12 >= 1).all()
            refl = (water12.astype(float) + offsets["B12"]) / q
            assert refl.min() < 0 and refl.min() > -0.02
        else:
            assert (water12 >= 1).all()  # negatives cannot be encoded before 04.00
    for scene in landsat_scenes(out):
        qa = read(scene / f"{scene.name}_QA_PIXEL.TIF")
        clear_water = ((qa >> 7) & 1).astype(bool) & ~((qa >> 4) & 1).astype(bool) & (qa != 1)
        green = read(scene / f"{scene.name}_SR_B3.TIF") * 2.75e-5 - 0.2
        assert np.median(green[clear_water]) == pytest.approx(water_green, abs=0.005)


def test_landsat_clear_surface_dns_are_in_the_documented_valid_range(out):
    for scene in landsat_scenes(out):
        qa = read(scene / f"{scene.name}_QA_PIXEL.TIF")
        radsat = read(scene / f"{scene.name}_QA_RADSAT.TIF")
        clear = ((qa >> 6) & 1).astype(bool) & ~((qa >> 4) & 1).astype(bool) & (qa != 1)
        assert clear.mean() > 0.5
        for n in range(1, 8):
            dn = read(scene / f"{scene.name}_SR_B{n}.TIF")[clear & (radsat == 0)]
            assert dn.min() >= LANDSAT_VALID[0] and dn.max() <= LANDSAT_VALID[1], (scene.name, n)


def test_saturation_flags_match_saturated_dns(out):
    saturated_somewhere = 0
    for scene in landsat_scenes(out):
        radsat = read(scene / f"{scene.name}_QA_RADSAT.TIF")
        qa = read(scene / f"{scene.name}_QA_PIXEL.TIF")
        assert (radsat[qa == 1] == 0).all()  # fill is not saturated
        assert (radsat & ~np.uint16(0b1111111)).max() == 0  # only SR bands 1-7 (bits 0-6)
        attrs = odl(scene / f"{scene.name}_MTL.txt")["LANDSAT_METADATA_FILE"]["IMAGE_ATTRIBUTES"]
        for n in range(1, 8):
            dn = read(scene / f"{scene.name}_SR_B{n}.TIF")
            flagged = ((radsat >> (n - 1)) & 1).astype(bool)
            # a flagged band looks saturated (the quantisation maximum, above the valid range)
            assert (dn[flagged] == SATURATED).all(), (scene.name, n)
            np.testing.assert_array_equal(dn > LANDSAT_VALID[1], flagged)
            assert attrs[f"SATURATION_BAND_{n}"] == ("Y" if flagged.any() else "N")
        saturated_somewhere += int((radsat > 0).sum())
    assert 0 < saturated_somewhere
    for safe in s2_scenes(out):
        scl = read(s2_band(safe, "SCL"))
        sat = {b: read(s2_band(safe, b)) == SATURATED for b in ("B02", "B03", "B04", "B08")}
        assert sat["B02"].any() and not sat["B08"].any()
        np.testing.assert_array_equal(sat["B02"], sat["B04"])
        # SCL 1 (saturated or defective) at 20 m lies on saturated 10 m pixels
        h, w = scl.shape
        blocks = sat["B02"][: 2 * h, : 2 * w].reshape(h, 2, w, 2).any(axis=(1, 3))
        assert (scl == 1).any() and blocks[scl == 1].mean() > 0.9, safe.name
        for band in ("B05", "B11", "B12"):
            assert read(s2_band(safe, band)).max() < SATURATED
        sat_share = 100 * sat["B02"].mean()
        assert 0 < sat_share < 2


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
        saturated=np.zeros((1, 4), bool),
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
            if key in ("qa_pixel", "qa_radsat", "mtl.txt"):
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
