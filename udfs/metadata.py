"""Parse the products' own metadata into one small, sensor-neutral record.

Pure functions over text (no I/O): Sentinel-2 ``MTD_MSIL2A.xml`` / ``MTD_MSIL1C.xml``,
Landsat Collection 2 ``*_MTL.txt`` (ODL) and ``*_MTL.json``, and STAC Item properties.
Reflectance scaling always comes from here, i.e. from the product, with the sensor's
documented default only where the product says nothing.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from udfs.errors import MetadataError
from udfs.sensors import SENSORS

#: Sentinel-2 ``band_id`` order used by ``BOA_ADD_OFFSET`` and ``RADIO_ADD_OFFSET``.
S2_BAND_IDS = (
    "B01",
    "B02",
    "B03",
    "B04",
    "B05",
    "B06",
    "B07",
    "B08",
    "B8A",
    "B09",
    "B10",
    "B11",
    "B12",
)


@dataclass(frozen=True)
class ProductInfo:
    """What ingest needs from a product's metadata.

    Attributes
    ----------
    acquired : datetime
        Acquisition (sensing start) time, UTC.
    platform : str
        Lower-case STAC platform name (``sentinel-2a``, ``landsat-8``).
    cloud_cover : float or None
        Cloud cover in percent, from the product.
    scaling : dict
        ``band name -> (scale, offset)`` with reflectance = DN * scale + offset.
    processing_baseline : str or None
        Sentinel-2 processing baseline (``05.10``) or Landsat collection/level string.
    """

    acquired: datetime
    platform: str
    cloud_cover: float | None
    scaling: dict[str, tuple[float, float]] = field(default_factory=dict)
    processing_baseline: str | None = None


def parse_time(text: str) -> datetime:
    """Parse an ISO-8601 time (``Z`` or offset, any fraction digits) to an aware UTC datetime."""
    t = text.strip().replace("Z", "+00:00")
    # Python < 3.11 accepts only 3 or 6 fraction digits: normalise to 6.
    m = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(.*)$", t)
    if m:
        frac = (m.group(2) or ".0")[1:7].ljust(6, "0")
        t = f"{m.group(1)}.{frac}{m.group(3) or '+00:00'}"
    dt = datetime.fromisoformat(t)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _find_text(root: ET.Element, name: str) -> str | None:
    for el in root.iter():
        if _local(el.tag) == name and el.text is not None:
            return el.text.strip()
    return None


def s2_default_offset(baseline: str | None) -> float:
    """BOA/RADIO add offset implied by the processing baseline: -1000 from 04.00, else 0."""
    if baseline is None:
        return 0.0
    try:
        return -1000.0 if float(baseline) >= 4.0 else 0.0
    except ValueError:
        return 0.0


def parse_s2_mtd(xml_text: str, sensor_key: str = "sentinel2-l2a") -> ProductInfo:
    """Parse ``MTD_MSIL2A.xml`` (or ``MTD_MSIL1C.xml``).

    Scaling: reflectance = (DN + ADD_OFFSET) / QUANTIFICATION_VALUE, so
    ``scale = 1 / Q`` and ``offset = ADD_OFFSET / Q``. ``BOA_ADD_OFFSET`` (L2A) or
    ``RADIO_ADD_OFFSET`` (L1C) per ``band_id``; when the list is absent (baselines before
    04.00) the offset is 0.
    """
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as e:
        raise MetadataError(f"not well-formed XML: {e}") from e
    start = _find_text(root, "PRODUCT_START_TIME") or _find_text(root, "DATATAKE_SENSING_START")
    if start is None:
        raise MetadataError("no PRODUCT_START_TIME in the product metadata")
    baseline = _find_text(root, "PROCESSING_BASELINE")
    q_text = (
        _find_text(root, "BOA_QUANTIFICATION_VALUE")
        or _find_text(root, "QUANTIFICATION_VALUE")
        or "10000"
    )
    q = float(q_text)
    offsets: dict[str, float] = {}
    for el in root.iter():
        if _local(el.tag) in ("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET") and el.text:
            idx = int(el.attrib.get("band_id", "-1"))
            if 0 <= idx < len(S2_BAND_IDS):
                offsets[S2_BAND_IDS[idx]] = float(el.text)
    sensor = SENSORS[sensor_key]
    scaling = {b.name: (1.0 / q, offsets.get(b.name, 0.0) / q) for b in sensor.reflectance_bands}
    spacecraft = _find_text(root, "SPACECRAFT_NAME") or "Sentinel-2"
    cloud = _find_text(root, "Cloud_Coverage_Assessment") or _find_text(
        root, "CLOUDY_PIXEL_PERCENTAGE"
    )
    return ProductInfo(
        acquired=parse_time(start),
        platform=spacecraft.lower(),
        cloud_cover=float(cloud) if cloud is not None else None,
        scaling=scaling,
        processing_baseline=baseline,
    )


_ODL_LINE = re.compile(r'^\s*([A-Z0-9_]+)\s*=\s*"?([^"]*)"?\s*$')


def parse_odl(text: str) -> dict[str, Any]:
    """Parse USGS ODL (``GROUP = ... END_GROUP``) text into nested dicts of strings."""
    root: dict[str, Any] = {}
    stack = [root]
    for line in text.splitlines():
        if line.strip() in ("END", ""):
            continue
        m = _ODL_LINE.match(line)
        if not m:
            raise MetadataError(f"unreadable MTL line: {line.strip()[:80]!r}")
        key, value = m.group(1), m.group(2).strip()
        if key == "GROUP":
            child: dict[str, Any] = {}
            stack[-1][value] = child
            stack.append(child)
        elif key == "END_GROUP":
            if len(stack) == 1:
                raise MetadataError(f"END_GROUP {value} without GROUP")
            stack.pop()
        else:
            stack[-1][key] = value
    return root


def parse_landsat_mtl(text: str, sensor_key: str = "landsat-c2l2") -> ProductInfo:
    """Parse a Landsat C2 ``*_MTL.txt`` (ODL) or ``*_MTL.json`` file.

    Scaling comes from ``LEVEL2_SURFACE_REFLECTANCE_PARAMETERS``
    (``REFLECTANCE_MULT_BAND_n``, ``REFLECTANCE_ADD_BAND_n``).
    """
    stripped = text.lstrip()
    try:
        doc = json.loads(text) if stripped.startswith("{") else parse_odl(text)
    except json.JSONDecodeError as e:
        raise MetadataError(f"MTL JSON is not valid: {e}") from e
    top = doc.get("LANDSAT_METADATA_FILE", doc)
    attrs = top.get("IMAGE_ATTRIBUTES")
    if not isinstance(attrs, dict) or "DATE_ACQUIRED" not in attrs:
        raise MetadataError("MTL has no IMAGE_ATTRIBUTES/DATE_ACQUIRED")
    when = attrs["DATE_ACQUIRED"] + "T" + attrs.get("SCENE_CENTER_TIME", "00:00:00Z")
    spacecraft = attrs.get("SPACECRAFT_ID", "LANDSAT")
    params = top.get("LEVEL2_SURFACE_REFLECTANCE_PARAMETERS", {})
    sensor = SENSORS[sensor_key]
    scaling: dict[str, tuple[float, float]] = {}
    for b in sensor.reflectance_bands:
        n = b.name.rsplit("B", 1)[-1]
        mult = params.get(f"REFLECTANCE_MULT_BAND_{n}")
        add = params.get(f"REFLECTANCE_ADD_BAND_{n}")
        scaling[b.name] = (
            float(mult) if mult is not None else sensor.default_scale,
            float(add) if add is not None else sensor.default_offset,
        )
    cloud = attrs.get("CLOUD_COVER")
    level = top.get("PRODUCT_CONTENTS", {}).get("PROCESSING_LEVEL")
    return ProductInfo(
        acquired=parse_time(when),
        platform=spacecraft.lower().replace("_", "-"),
        cloud_cover=float(cloud) if cloud not in (None, "") else None,
        scaling=scaling,
        processing_baseline=level,
    )


def parse_stac_properties(
    props: dict[str, Any],
    sensor_key: str,
    asset_scaling: dict[str, tuple[float, float]] | None = None,
) -> ProductInfo:
    """Product info from STAC Item properties (and ``raster:bands`` scale/offset if given).

    For Sentinel-2 without ``raster:bands``, the offset follows
    ``s2:processing_baseline`` unless ``earthsearch:boa_offset_applied`` says it is
    already applied.
    """
    when = props.get("datetime") or props.get("start_datetime")
    if not when:
        raise MetadataError("STAC item has no datetime")
    sensor = SENSORS[sensor_key]
    baseline = props.get("s2:processing_baseline")
    scaling: dict[str, tuple[float, float]] = {}
    for b in sensor.reflectance_bands:
        if asset_scaling and b.name in asset_scaling:
            scaling[b.name] = asset_scaling[b.name]
        elif sensor_key.startswith("sentinel2"):
            applied = bool(props.get("earthsearch:boa_offset_applied", False))
            off = 0.0 if applied else s2_default_offset(baseline)
            scaling[b.name] = (sensor.default_scale, off * sensor.default_scale)
        else:
            scaling[b.name] = (sensor.default_scale, sensor.default_offset)
    cloud = props.get("eo:cloud_cover")
    return ProductInfo(
        acquired=parse_time(str(when)),
        platform=str(props.get("platform", "unknown")).lower(),
        cloud_cover=float(cloud) if cloud is not None else None,
        scaling=scaling,
        processing_baseline=str(baseline) if baseline is not None else None,
    )


def parse_s2_tileinfo(text: str, sensor_key: str = "sentinel2-l1c") -> ProductInfo:
    """Parse the ``tileInfo.json`` of the former AWS Sentinel-2 buckets."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise MetadataError(f"tileInfo.json is not valid JSON: {e}") from e
    if "timestamp" not in doc:
        raise MetadataError("tileInfo.json has no timestamp")
    path = str(doc.get("productPath", ""))
    platform = "sentinel-2b" if "S2B" in path else "sentinel-2a"
    sensor = SENSORS[sensor_key]
    # tileInfo.json carries no baseline; products before 2022-01-25 (baseline < 04.00)
    # have no offset, later ones -1000. Decide by the acquisition date.
    acquired = parse_time(doc["timestamp"])
    off = -1000.0 if acquired >= datetime(2022, 1, 25, tzinfo=timezone.utc) else 0.0
    scaling = {
        b.name: (sensor.default_scale, off * sensor.default_scale) for b in sensor.reflectance_bands
    }
    cloud = doc.get("cloudyPixelPercentage")
    return ProductInfo(
        acquired=acquired,
        platform=platform,
        cloud_cover=float(cloud) if cloud is not None else None,
        scaling=scaling,
        processing_baseline=None,
    )
