"""Find scenes in a source: a folder of products or a STAC catalog / ItemCollection / Item.

Discovery lists files, parses catalogue JSON and reads the products' small metadata files
(MTD, MTL, tileInfo.json, a STAC item beside a COG folder); it opens no raster. The sensor,
and so the band mapping, comes from that metadata (:mod:`udfs.metadata`); a product name
that disagrees is rejected. Each candidate becomes a :class:`~udfs.reader.SceneSource` or a
:class:`~udfs.errors.SceneError` (unknown layout, missing band, empty catalogue, metadata
that disagrees with the name), so every input is accounted for.

Optional bands (Landsat ``QA_RADSAT``) are picked up when present; only the sensor's
``required_bands`` must be there.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pystac

from udfs import metadata
from udfs.errors import (
    EmptyCatalogError,
    MetadataError,
    MissingBandError,
    SceneError,
    UnknownLayoutError,
)
from udfs.reader import SceneSource
from udfs.sensors import SENSORS, Sensor

RASTER_EXT = (".tif", ".tiff", ".jp2")
# SAFE granule files: T31UFU_20240621T103629_B02_10m.jp2 (L2A) or ..._B02.jp2 (L1C)
_SAFE_BAND = re.compile(r"_(B\d\d|B8A|SCL)(?:_(\d+)m)?\.(?:jp2|tif|tiff)$", re.IGNORECASE)
# USGS Collection 2: LC09_L2SP_198025_20240726_20240801_02_T1_SR_B4.TIF
_USGS_BAND = re.compile(r"_(SR_B\d|QA_PIXEL|QA_RADSAT)\.(?:tif|tiff)$", re.IGNORECASE)
_USGS_ID = re.compile(r"^(L[CTEO]0\d)_(L2SP|L2SR)_\d{6}_\d{8}_\d{8}_02_(T1|T2|RT)")
_NO_METADATA = "product metadata (<folder>.json STAC item, tileInfo.json or MTD_MSIL*.xml)"

Candidate = SceneSource | SceneError


def _require_bands(
    sensor: Sensor, found: dict[str, str], scene_id: str, origin: str
) -> dict[str, str]:
    """The sensor's bands that were found (optional ones only where present), in band order.

    Raises :class:`MissingBandError` when a required band is absent.
    """
    missing = [b.name for b in sensor.required_bands if b.name not in found]
    if missing:
        raise MissingBandError(
            f"{sensor.key} scene lacks band(s) {', '.join(missing)} "
            f"(found: {', '.join(sorted(found)) or 'none'})",
            scene_id=scene_id,
            href=origin,
            stage="discover",
        )
    return {b.name: found[b.name] for b in sensor.bands if b.name in found}


def _identify(
    parse: Callable[[], metadata.ProductInfo],
    scene_id: str,
    href: str,
    names: list[tuple[str, str, metadata.NameInfo | None]],
) -> metadata.ProductInfo:
    """Parse the product's metadata and cross-check it with the names it goes by.

    ``names``: ``(name, what, said)`` as :func:`udfs.metadata.check_name` takes them.
    Re-raises metadata errors with the scene, the file and stage ``discover``.
    """
    try:
        info = parse()
        for name, what, said in names:
            metadata.check_name(info, name, what, said)
    except MetadataError as e:
        raise type(e)(e.reason, scene_id=scene_id, href=href, stage="discover") from e
    except (KeyError, ValueError, TypeError, OSError) as e:
        raise MetadataError(
            f"metadata not readable or not understood: {e!r}",
            scene_id=scene_id,
            href=href,
            stage="discover",
        ) from e
    return info


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


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
    file_level = metadata.NameInfo(processing_level=metadata.s2_level(mtd.stem))
    info = _identify(
        lambda: metadata.parse_s2_mtd(_text(mtd)),
        scene_id,
        str(mtd),
        [(folder.name, "SAFE folder name", None), (mtd.name, "metadata file name", file_level)],
    )
    sensor = SENSORS[str(info.sensor)]
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
    info = _identify(
        lambda: metadata.parse_landsat_mtl(_text(folder / mtl)),
        scene_id,
        str(folder / mtl),
        [(scene_id, "product id in the file names", None)],
    )
    sensor = SENSORS[str(info.sensor)]
    found = {}
    for f in files:
        m = _USGS_BAND.search(f)
        if m:
            found[m.group(1).upper()] = str(folder / f)
    bands = _require_bands(sensor, found, scene_id, str(folder))
    return SceneSource(
        scene_id, sensor.key, "usgs-c2", str(folder), bands, "mtl", str(folder / mtl)
    )


def _no_metadata(folder: Path, stems: set[str]) -> SceneError:
    """The error for Sentinel-2 band files without any product metadata: what they look
    like (L2A- or L1C-like, and why) and everything that is missing."""
    said = metadata.name_info(folder.name)
    if said.processing_level:
        level, why = said.processing_level, f"the folder name says {said.processing_level}"
    elif "B10" in stems:
        level, why = "L1C", "B10 is present"
    else:
        level, why = "L2A", "B10 is absent" + (" and SCL present" if "SCL" in stems else "")
    sensor = SENSORS[metadata.sensor_key_for(said.platform or "sentinel-2a", level)]
    missing = [b.name for b in sensor.required_bands if b.name not in stems]
    lacking = ", ".join([*missing, _NO_METADATA])
    reason = (
        f"Sentinel-2 band files ({level}-like: {why}) lacking {lacking}; "
        f"found {', '.join(sorted(stems))}"
    )
    cls = MissingBandError if missing else UnknownLayoutError
    return cls(reason, scene_id=folder.name, href=str(folder), stage="discover")


def _cog_folder_scene(folder: Path, files: list[str]) -> SceneSource:
    """Earth Search / AWS COG folder: ``B02.tif`` ... beside a STAC item or tileInfo.json."""
    stem = {os.path.splitext(f)[0].upper(): f for f in files if f.lower().endswith(RASTER_EXT)}
    scene_id = folder.name
    item_json = folder / f"{scene_id}.json"
    tileinfo = folder / "tileInfo.json"
    names: list[tuple[str, str, metadata.NameInfo | None]] = [(scene_id, "folder name", None)]
    if item_json.is_file():
        item = _read_item(item_json, scene_id)
        names.append((item.id, "STAC item id", None))
        info = _identify(lambda: _stac_info(item), scene_id, str(item_json), names)
        sensor = SENSORS[str(info.sensor)]
        _, scaling = _stac_assets(item, sensor)
        meta: dict[str, Any] = {
            "metadata_kind": "stac",
            "metadata_href": str(item_json),
            "properties": dict(item.properties),
            "asset_scaling": scaling,
            "item_id": item.id,
            "collection": item.collection_id,
        }
    elif tileinfo.is_file():
        info = _identify(
            lambda: metadata.parse_s2_tileinfo(_text(tileinfo)), scene_id, str(tileinfo), names
        )
        sensor = SENSORS[str(info.sensor)]
        meta = {"metadata_kind": "tileinfo", "metadata_href": str(tileinfo)}
    else:
        raise _no_metadata(folder, set(stem))
    found = {b.name: str(folder / stem[b.name]) for b in sensor.bands if b.name in stem}
    bands = _require_bands(sensor, found, scene_id, str(folder))
    return SceneSource(scene_id, sensor.key, "cog-folder", str(folder), bands, **meta)


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


def _read_item(path: Path, scene_id: str) -> pystac.Item:
    try:
        return pystac.Item.from_dict(json.loads(_text(path)))
    except (OSError, json.JSONDecodeError, pystac.STACError, KeyError, TypeError) as e:
        raise MetadataError(
            f"STAC item beside the band files is not readable: {e}",
            scene_id=scene_id,
            href=str(path),
            stage="discover",
        ) from e


def _stac_info(item: pystac.Item) -> metadata.ProductInfo:
    """Identity and scaling of a STAC item (raster:bands of its mapped assets included)."""
    key = metadata.sensor_key_for(
        metadata.stac_platform(item.properties, item.id) or "unknown",
        metadata.stac_level(item.properties, item.id, item.collection_id),
    )
    _, scaling = _stac_assets(item, SENSORS[key])
    return metadata.parse_stac_properties(
        item.properties,
        {k: (v[0], v[1]) for k, v in scaling.items()},
        item.id,
        item.collection_id,
    )


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


def _stac_assets(
    item: pystac.Item, sensor: Sensor
) -> tuple[dict[str, str], dict[str, list[float]]]:
    """Band -> href and band -> [scale, offset] (``raster:bands``) of the item's assets."""
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
    return found, scaling


def stac_item_scene(item: pystac.Item, origin: str) -> SceneSource:
    """Map a STAC Item's assets to the sensor's bands (by key, eo:bands name or common name).

    The sensor comes from the item's properties (``platform``, ``s2:product_type``,
    ``landsat:correction``), cross-checked with the item id.
    """
    platform = metadata.stac_platform(item.properties, item.id)
    level = metadata.stac_level(item.properties, item.id, item.collection_id)
    try:
        metadata.sensor_key_for(platform or "unknown", level)
    except MetadataError as e:
        raise UnknownLayoutError(
            f"STAC item of platform {platform!r}, level {level!r}, collection "
            f"{item.collection_id!r} is not a supported product (Sentinel-2 L2A/L1C, Landsat "
            f"Collection 2 Level-2)",
            scene_id=item.id,
            href=origin,
            stage="discover",
        ) from e
    info = _identify(lambda: _stac_info(item), item.id, origin, [(item.id, "STAC item id", None)])
    sensor = SENSORS[str(info.sensor)]
    found, scaling = _stac_assets(item, sensor)
    bands = _require_bands(sensor, found, item.id, origin)
    return SceneSource(
        item.id,
        sensor.key,
        "stac",
        origin,
        bands,
        "stac",
        None,
        dict(item.properties),
        scaling,
        item.id,
        item.collection_id,
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
        if not out:
            raise EmptyCatalogError(
                f"STAC ItemCollection at {path} holds no items", href=path, stage="discover"
            )
        return out
    cat = pystac.read_file(path)
    if not isinstance(cat, pystac.Catalog):
        raise UnknownLayoutError(
            f"STAC {kind} is neither Catalog, Collection nor Item", href=path, stage="discover"
        )
    items = [(it, it.get_self_href() or path) for it in cat.get_items(recursive=True)]
    if not items:
        what = "Collection" if isinstance(cat, pystac.Collection) else "Catalog"
        raise EmptyCatalogError(
            f"STAC {what} {cat.id!r} at {path} holds no items (no item links, also not in "
            f"its child catalogues)",
            href=path,
            stage="discover",
        )
    return items


def discover_stac(path: str) -> list[Candidate]:
    """Scenes of a local STAC Catalog/Collection, ItemCollection or Item JSON file."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        items = _items_of(doc, path)
    except SceneError as e:
        return [e]
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


def _not_a_source(part: str) -> SceneError:
    """The error for a ``--source`` entry that is neither a folder nor a STAC .json."""
    if os.path.isfile(part) and part.lower().endswith(RASTER_EXT):
        reason = (
            "source is a single raster file, not a product: give the folder that holds the "
            "product's band files and metadata (Sentinel-2 SAFE or COG folder, Landsat "
            "Collection 2 folder), or a STAC Item / Catalog .json"
        )
    elif os.path.exists(part):
        reason = "source is neither a folder nor a STAC .json file"
    else:
        reason = "source does not exist"
    return UnknownLayoutError(reason, href=part, stage="discover")


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
            out.append(_not_a_source(part))
    return out
