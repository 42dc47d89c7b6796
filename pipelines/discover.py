"""Find scenes in a source: a folder of products or a STAC catalog / ItemCollection / Item.

Discovery only lists files and parses catalogue JSON; it opens no raster. Each candidate
becomes a :class:`~udfs.reader.SceneSource` or a :class:`~udfs.errors.SceneError` (unknown
layout, missing band, STAC item without the needed assets), so every input is accounted
for.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pystac

from udfs.errors import MissingBandError, SceneError, UnknownLayoutError
from udfs.reader import SceneSource
from udfs.sensors import SENSORS, Sensor

RASTER_EXT = (".tif", ".tiff", ".jp2")
# SAFE granule files: T31UFU_20240621T103629_B02_10m.jp2 (L2A) or ..._B02.jp2 (L1C)
_SAFE_BAND = re.compile(r"_(B\d\d|B8A|SCL)(?:_(\d+)m)?\.(?:jp2|tif|tiff)$", re.IGNORECASE)
# USGS Collection 2: LC09_L2SP_198025_20240726_20240801_02_T1_SR_B4.TIF
_USGS_BAND = re.compile(r"_(SR_B\d|QA_PIXEL)\.(?:tif|tiff)$", re.IGNORECASE)
_USGS_ID = re.compile(r"^(L[CTEO]0\d)_(L2SP|L2SR)_\d{6}_\d{8}_\d{8}_02_(T1|T2|RT)")

Candidate = SceneSource | SceneError


def landsat_sensor(product_id: str) -> str:
    """Sensor key for a Landsat product id: OLI (LC08/LC09) or TM/ETM+ (LT04/LT05/LE07)."""
    return (
        "landsat-c2l2"
        if product_id[:4] in ("LC08", "LC09", "LO08", "LO09")
        else ("landsat-c2l2-tm")
    )


def _require_bands(
    sensor: Sensor, found: dict[str, str], scene_id: str, origin: str
) -> dict[str, str]:
    missing = [b.name for b in sensor.bands if b.name not in found]
    if missing:
        raise MissingBandError(
            f"{sensor.key} scene lacks band(s) {', '.join(missing)} "
            f"(found: {', '.join(sorted(found)) or 'none'})",
            scene_id=scene_id,
            href=origin,
            stage="discover",
        )
    return {b.name: found[b.name] for b in sensor.bands}


def _safe_scene(folder: Path) -> SceneSource:
    mtd = next(iter(sorted(folder.glob("MTD_MSIL*.xml"))), None)
    scene_id = folder.name.removesuffix(".SAFE")
    if mtd is None:
        raise UnknownLayoutError(
            "SAFE folder without MTD_MSIL2A.xml / MTD_MSIL1C.xml",
            scene_id=scene_id,
            href=str(folder),
            stage="discover",
        )
    sensor = SENSORS["sentinel2-l2a" if "L2A" in mtd.name else "sentinel2-l1c"]
    found: dict[str, tuple[int, str]] = {}
    for path in sorted((folder / "GRANULE").glob("*/IMG_DATA/**/*")):
        m = _SAFE_BAND.search(path.name)
        if not m:
            continue
        band = m.group(1).upper()
        res = int(m.group(2) or 0)
        # A band may be present at several resolutions (R10m/R20m/R60m): keep the finest.
        if band not in found or res < found[band][0]:
            found[band] = (res, str(path))
    bands = _require_bands(sensor, {k: v[1] for k, v in found.items()}, scene_id, str(folder))
    return SceneSource(scene_id, sensor.key, "safe", str(folder), bands, "s2-mtd", str(mtd))


def _usgs_scene(folder: Path, files: list[str]) -> SceneSource:
    mtl = next((f for f in sorted(files) if f.upper().endswith("_MTL.TXT")), None) or next(
        (f for f in sorted(files) if f.upper().endswith("_MTL.JSON")), None
    )
    ids = [m.group(0) for f in files if (m := _USGS_ID.match(f))]
    scene_id = ids[0] if ids else folder.name
    if mtl is None:
        raise UnknownLayoutError(
            "Landsat band files without an *_MTL.txt / *_MTL.json metadata file",
            scene_id=scene_id,
            href=str(folder),
            stage="discover",
        )
    sensor = SENSORS[landsat_sensor(scene_id)]
    found = {}
    for f in files:
        m = _USGS_BAND.search(f)
        if m:
            found[m.group(1).upper()] = str(folder / f)
    bands = _require_bands(sensor, found, scene_id, str(folder))
    return SceneSource(
        scene_id, sensor.key, "usgs-c2", str(folder), bands, "mtl", str(folder / mtl)
    )


def _cog_folder_scene(folder: Path, files: list[str]) -> SceneSource:
    """Earth Search / AWS COG folder: ``B02.tif`` ... beside a STAC item or tileInfo.json."""
    stem = {os.path.splitext(f)[0].upper(): f for f in files if f.lower().endswith(RASTER_EXT)}
    key = "sentinel2-l2a" if "SCL" in stem else "sentinel2-l1c"
    sensor = SENSORS[key]
    scene_id = folder.name
    found = {b.name: str(folder / stem[b.name]) for b in sensor.bands if b.name in stem}
    bands = _require_bands(sensor, found, scene_id, str(folder))
    item_json = folder / f"{scene_id}.json"
    if item_json.is_file():
        item = json.loads(item_json.read_text())
        return SceneSource(
            scene_id,
            key,
            "cog-folder",
            str(folder),
            bands,
            "stac",
            None,
            item.get("properties", {}),
        )
    if (folder / "tileInfo.json").is_file():
        return SceneSource(
            scene_id,
            key,
            "cog-folder",
            str(folder),
            bands,
            "tileinfo",
            str(folder / "tileInfo.json"),
        )
    raise UnknownLayoutError(
        "Sentinel-2 band files without product metadata (no <scene>.json STAC item, "
        "tileInfo.json or MTD_MSIL*.xml)",
        scene_id=scene_id,
        href=str(folder),
        stage="discover",
    )


def classify_folder(folder: Path, files: list[str]) -> SceneSource | None:
    """Recognise the product layout of one folder; None when it holds no raster at all.

    Raises :class:`SceneError` for a folder that holds rasters but is no usable product.
    """
    if folder.name.upper().endswith(".SAFE") or any(f.startswith("MTD_MSIL") for f in files):
        return _safe_scene(folder)
    if any(_USGS_BAND.search(f) for f in files):
        return _usgs_scene(folder, files)
    rasters = [f for f in files if f.lower().endswith(RASTER_EXT)]
    if not rasters:
        return None
    stems = {os.path.splitext(f)[0].upper() for f in rasters}
    if {"B02", "B04"} <= stems:
        return _cog_folder_scene(folder, files)
    raise UnknownLayoutError(
        f"no known product layout (Sentinel-2 SAFE or COG folder, Landsat Collection 2): "
        f"found {', '.join(sorted(rasters)[:5])}{' ...' if len(rasters) > 5 else ''}",
        scene_id=None,
        href=str(folder),
        stage="discover",
    )


def discover_folder(root: Path) -> list[Candidate]:
    """Walk ``root``; every product folder and every folder of unrecognised rasters."""
    out: list[Candidate] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        folder = Path(dirpath)
        try:
            found = classify_folder(folder, sorted(filenames))
        except SceneError as e:
            out.append(e)
            dirnames[:] = [] if folder.name.upper().endswith(".SAFE") else dirnames
            continue
        if found is not None:
            out.append(found)
            dirnames[:] = []  # a product folder's subfolders belong to it
    return out


# ----------------------------------------------------------------------------- STAC


def _stac_sensor(item: pystac.Item) -> str | None:
    props = item.properties
    platform = str(props.get("platform", "")).lower().replace("_", "-")
    if not platform:  # older catalogues: the product id tells the platform
        if m := re.match(r"^L[COTE]0(\d)_", item.id):
            platform = f"landsat-{m.group(1)}"
        elif m := re.match(r"^S2([ABC])_", item.id):
            platform = f"sentinel-2{m.group(1).lower()}"
    text = " ".join(
        str(x).lower() for x in (item.collection_id, props.get("s2:product_type"), item.id)
    )
    if platform.startswith("sentinel-2"):
        return "sentinel2-l1c" if ("l1c" in text or "msi1c" in text) else "sentinel2-l2a"
    if platform.startswith("landsat"):
        if "l2" not in text and "sr" not in text:
            return None
        return "landsat-c2l2" if platform in ("landsat-8", "landsat-9") else "landsat-c2l2-tm"
    return None


def _asset_band(key: str, asset: pystac.Asset, sensor: Sensor) -> str | None:
    eo = asset.extra_fields.get("eo:bands") or []
    names = [key]
    for b in eo:
        if isinstance(b, dict):  # STAC 1.0.0-beta items list band indices here instead
            names += [b.get("name", ""), b.get("common_name", "")]
    for name in names:
        n = str(name).lower().removesuffix(".tif")
        for band in sensor.bands:
            if n in band.keys or n == band.name.lower().replace("sr_", ""):
                # Landsat eo:bands name "B4" must not match Sentinel-2-style names.
                return band.name
    return None


def stac_item_scene(item: pystac.Item, origin: str) -> SceneSource:
    """Map a STAC Item's assets to the sensor's bands (by key, eo:bands name or common name)."""
    key = _stac_sensor(item)
    if key is None:
        raise UnknownLayoutError(
            f"STAC item of platform {item.properties.get('platform')!r}, collection "
            f"{item.collection_id!r} is not a supported product (Sentinel-2 L2A/L1C, Landsat "
            f"Collection 2 Level-2)",
            scene_id=item.id,
            href=origin,
            stage="discover",
        )
    sensor = SENSORS[key]
    found: dict[str, str] = {}
    scaling: dict[str, list[float]] = {}
    for akey, asset in item.assets.items():
        if akey.endswith("-jp2"):
            continue  # Earth Search duplicates every COG as JPEG2000
        band = _asset_band(akey, asset, sensor)
        if band is None or band in found:
            continue
        found[band] = asset.get_absolute_href() or asset.href
        rb = (asset.extra_fields.get("raster:bands") or [{}])[0]
        if "scale" in rb or "offset" in rb:
            scaling[band] = [float(rb.get("scale", 1.0)), float(rb.get("offset", 0.0))]
    bands = _require_bands(sensor, found, item.id, origin)
    return SceneSource(
        item.id, key, "stac", origin, bands, "stac", None, dict(item.properties), scaling
    )


def _items_of(doc: dict[str, Any], path: str) -> list[tuple[pystac.Item, str]]:
    kind = doc.get("type")
    if kind == "Feature":
        item = pystac.Item.from_dict(doc, href=path)
        item.set_self_href(path)
        return [(item, path)]
    if kind == "FeatureCollection":
        ic = pystac.ItemCollection.from_dict(doc)
        base = os.path.dirname(os.path.abspath(path))
        out = []
        for i, item in enumerate(ic.items):
            for asset in item.assets.values():
                if "://" not in asset.href and not os.path.isabs(asset.href):
                    asset.href = os.path.join(base, asset.href)
            out.append((item, f"{path}#{i}"))
        return out
    cat = pystac.read_file(path)
    if not isinstance(cat, pystac.Catalog):
        raise UnknownLayoutError(
            f"STAC {kind} is neither Catalog, Collection nor Item", href=path, stage="discover"
        )
    return [(it, it.get_self_href() or path) for it in cat.get_items(recursive=True)]


def discover_stac(path: str) -> list[Candidate]:
    """Scenes of a local STAC Catalog/Collection, ItemCollection or Item JSON file."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        items = _items_of(doc, path)
    except (OSError, json.JSONDecodeError, pystac.STACError, KeyError, TypeError) as e:
        return [
            UnknownLayoutError(f"not a readable STAC document: {e}", href=path, stage="discover")
        ]
    out: list[Candidate] = []
    for item, origin in items:
        try:
            out.append(stac_item_scene(item, origin))
        except SceneError as e:
            out.append(e)
    return out


def discover(source: str) -> list[Candidate]:
    """All scene candidates of ``source`` (a folder, or a ``.json`` STAC file).

    Several sources may be given separated by commas.
    """
    out: list[Candidate] = []
    for part in (s.strip() for s in source.split(",") if s.strip()):
        if part.lower().endswith(".json"):
            out += discover_stac(part)
        elif os.path.isdir(part):
            out += discover_folder(Path(part))
        else:
            out.append(
                UnknownLayoutError(
                    "source does not exist or is neither a folder nor a STAC .json file",
                    href=part,
                    stage="discover",
                )
            )
    return out
