"""One product, one ``scenes`` row, whatever the entry route (folder, SAFE, STAC item).

Each real sample of ``../shared/data`` is reached by several routes built in ``tmp_path``
(symlinks to the real band files, never copies in the repository) and inspected with
:func:`udfs.reader.inspect_scene` (no Spark). Platform, processing level, baseline, sensor
and scaling must be equal; the expected values are read from the products' own files with
plain XML/JSON/text parsing here.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pipelines.discover import discover
from udfs.reader import SceneSource, inspect_scene

S2 = "S2A_29RKH_20200219_0_L2A"
LANDSAT = "LC08_L2SP_001062_20201031_20201106_02_T2"
MTD_0212 = (
    "s2-metadata/S2A_MSIL2A_20190212T192651_N0212_R013_T07HFE_20201007T160857.SAFE/MTD_MSIL2A.xml"
)
L2A_BANDS = "B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B11 B12".split()
SAME = ("sensor", "platform", "processing_level", "processing_baseline", "radiometry", "scaling")


def only_scene(source: str, allowed: list[str]) -> SceneSource:
    """The one scene of ``source``; ``allowed``: where its hrefs and symlinks lead."""
    (scene,) = discover(source, allowed)
    assert isinstance(scene, SceneSource), scene
    return scene


def local_item(src: Path, dst: Path, files: dict[str, Path]) -> Path:
    """The STAC item ``src`` with every asset href whose file name is in ``files`` pointing
    at the local file (no network in tests); other assets are dropped."""
    doc = json.loads(src.read_text())
    assets = {}
    for key, asset in doc["assets"].items():
        name = asset["href"].rsplit("/", 1)[-1]
        if name in files and not key.endswith("-jp2"):
            assets[key] = dict(asset, href=str(files[name]))
    doc["assets"] = assets
    dst.write_text(json.dumps(doc))
    return dst


def s2_safe(shared: Path, root: Path, props: dict) -> Path:
    """A SAFE of the real COG bands (symlinks with SAFE file names) and an MTD in the real
    layout (the real 02.12 file's structure, this product's values)."""
    uri = props["s2:product_uri"]  # S2A_MSIL2A_20200219T112111_N0214_R037_T29RKH_...SAFE
    sensing = uri.split("_")[2]
    safe = root / uri
    granule = safe / "GRANULE" / "L2A_T29RKH_A024344_20200219T113105" / "IMG_DATA"
    res = {"B02": 10, "B03": 10, "B04": 10, "B08": 10, "B01": 60, "B09": 60}
    for band in ("B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B11 B12 SCL").split():
        r = res.get(band, 20)
        path = granule / f"R{r}m" / f"T29RKH_{sensing}_{band}_{r}m.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(shared / S2 / f"{band}.tif")
    tree = ET.parse(shared / MTD_0212)
    values = {
        "PRODUCT_START_TIME": "2020-02-19T11:21:11.024Z",
        "PRODUCT_STOP_TIME": "2020-02-19T11:21:11.024Z",
        "PRODUCT_URI": uri,
        "PROCESSING_BASELINE": "02.14",
        "SPACECRAFT_NAME": "Sentinel-2A",
        "Cloud_Coverage_Assessment": str(props["eo:cloud_cover"]),
    }
    seen = set()
    for el in tree.iter():
        tag = el.tag.rsplit("}", 1)[-1]
        if tag in values:
            el.text = values[tag]
            seen.add(tag)
    assert seen == set(values)
    # The 02.12 layout has no BOA_ADD_OFFSET list: neither has this 02.14 product.
    assert not [e for e in tree.iter() if e.tag.endswith("BOA_ADD_OFFSET")]
    tree.write(safe / "MTD_MSIL2A.xml", xml_declaration=True, encoding="UTF-8")
    return safe


@pytest.fixture
def s2_routes(shared_data, tmp_path):
    folder = shared_data / S2
    item_path = folder / f"{S2}.json"
    files = {p.name: p for p in folder.glob("*.tif")}
    stac = local_item(item_path, tmp_path / "item.json", files)
    props = json.loads(item_path.read_text())["properties"]
    safe = s2_safe(shared_data, tmp_path / "safe", props)
    return {
        "cog-folder": only_scene(str(folder), []),
        "stac": only_scene(str(stac), [str(shared_data)]),
        "safe": only_scene(str(safe), [str(shared_data)]),
    }, props


def test_sentinel2_routes_give_one_scenes_row(s2_routes):
    routes, props = s2_routes
    assert [s.layout for s in routes.values()] == ["cog-folder", "stac", "safe"]
    infos = {k: inspect_scene(s) for k, s in routes.items()}
    # By hand from the item: platform "sentinel-2a", s2:product_type S2MSI2A,
    # s2:processing_baseline "02.14" (< 04.00: no BOA offset, DN / 10000).
    assert props["platform"] == "sentinel-2a" and props["s2:product_type"] == "S2MSI2A"
    expected = {
        "sensor": "sentinel2-l2a",
        "platform": "sentinel-2a",
        "processing_level": "L2A",
        "processing_baseline": props["s2:processing_baseline"],
        "radiometry": "surface",
    }
    assert expected["processing_baseline"] == "02.14"
    for route, info in infos.items():
        assert {k: info[k] for k in expected} == expected, route
        assert sorted(info["scaling"]) == sorted(L2A_BANDS), route
        for band, s in info["scaling"].items():
            assert (s["scale"], s["offset"]) == (pytest.approx(1e-4), 0.0), (route, band)
        assert info["acquired"].date().isoformat() == "2020-02-19", route
        assert info["cloud_cover"] == pytest.approx(props["eo:cloud_cover"]), route
        assert [b["name"] for b in info["bands"]] == [b["name"] for b in infos["stac"]["bands"]]
        assert (info["width"], info["height"], info["crs_epsg"]) == (1098, 1098, 32629)
    first = infos["cog-folder"]
    for route, info in infos.items():
        assert {k: info[k] for k in SAME} == {k: first[k] for k in SAME}, route
    # What gave the numbers is recorded: the item's raster:bands, or ESA's baseline rule
    # where the MTD lists no offset.
    assert infos["stac"]["scaling_source"] == "stac raster:bands"
    assert infos["cog-folder"]["scaling_source"] == "stac raster:bands"
    assert infos["safe"]["scaling_source"] == "baseline rule"


def mtl_values(text: str) -> dict[str, str]:
    """Plain ``KEY = "value"`` pairs of an MTL (first occurrence wins)."""
    out: dict[str, str] = {}
    for m in re.finditer(r'^\s*([A-Z0-9_]+) = "?([^"\n]*)"?$', text, re.MULTILINE):
        out.setdefault(m.group(1), m.group(2))
    return out


def test_landsat_folder_and_its_stac_item_give_one_scenes_row(shared_data, tmp_path):
    folder = shared_data / LANDSAT
    item = folder / f"{LANDSAT}_SR_stac.json"
    doc = json.loads(item.read_text())
    assert doc["stac_version"] == "0.7.0"
    files = {p.name: p for p in folder.glob("*.TIF")}
    routes = {
        "usgs-c2": only_scene(str(folder), []),
        "stac": only_scene(
            str(local_item(item, tmp_path / "item.json", files)), [str(shared_data)]
        ),
    }
    mtl = mtl_values((folder / f"{LANDSAT}_MTL.txt").read_text())
    # By hand from the MTL: SPACECRAFT_ID LANDSAT_8, PROCESSING_LEVEL L2SP,
    # COLLECTION_NUMBER 02, REFLECTANCE_MULT_BAND_n 2.75e-05, REFLECTANCE_ADD_BAND_n -0.2.
    assert (mtl["SPACECRAFT_ID"], mtl["PROCESSING_LEVEL"], mtl["COLLECTION_NUMBER"]) == (
        "LANDSAT_8",
        "L2SP",
        "02",
    )
    infos = {k: inspect_scene(s) for k, s in routes.items()}
    for route, info in infos.items():
        assert info["sensor"] == "landsat-c2l2", route
        assert info["platform"] == "landsat-8", route
        assert info["processing_level"] == "L2SP", route
        assert info["processing_baseline"] == "02", route
        for n in range(1, 8):
            s = info["scaling"][f"SR_B{n}"]
            assert (s["scale"], s["offset"]) == (
                float(mtl[f"REFLECTANCE_MULT_BAND_{n}"]),
                float(mtl[f"REFLECTANCE_ADD_BAND_{n}"]),
            ), route
        assert info["acquired"].date().isoformat() == mtl["DATE_ACQUIRED"]
        names = [b["name"] for b in info["bands"]]
        assert names == [f"SR_B{n}" for n in range(1, 8)] + ["QA_PIXEL", "QA_RADSAT"], route
    assert {k: infos["stac"][k] for k in SAME} == {k: infos["usgs-c2"][k] for k in SAME}
    assert infos["usgs-c2"]["scaling_source"] == "metadata"
    assert infos["stac"]["scaling_source"] == "sensor default"  # 0.7.0 item: no raster:bands
