"""Parse the products' own metadata into one small, sensor-neutral record.

Pure functions over text (no I/O): Sentinel-2 ``MTD_MSIL2A.xml`` / ``MTD_MSIL1C.xml``,
Landsat Collection 2 ``*_MTL.txt`` (ODL) and ``*_MTL.json``, STAC Item properties and the
``tileInfo.json`` of the former AWS Sentinel-2 buckets. Reflectance scaling, the platform,
the processing level and the processing baseline always come from here, i.e. from the
product, with a documented rule only where the product says nothing. Over 500 lines on
purpose: one section per route (names, Sentinel-2, Landsat, STAC), all filling the one
:class:`ProductInfo` record under the rules of the Decisions below.

Decisions
---------
- **Sensor from metadata.** The sensor (and so the band mapping) is decided by the
  product's metadata: Sentinel-2 ``PROCESSING_LEVEL``/``PRODUCT_TYPE`` (or the root tag of
  the MTD), Landsat MTL ``SPACECRAFT_ID``, STAC ``platform`` (``eo:platform`` in STAC
  < 1.0) with ``s2:product_type``/``landsat:correction``/collection. A name (folder name,
  SAFE name, product id in file names, STAC item id) is only a cross-check:
  :func:`check_name` rejects a disagreement with both values in the reason.
- **Platform.** One convention on every route: the STAC ``platform`` name, lower case
  with a hyphen: ``sentinel-2a``, ``sentinel-2b``, ``landsat-8``, ``landsat-7``
  (MTD ``SPACECRAFT_NAME`` "Sentinel-2A", MTL ``SPACECRAFT_ID`` "LANDSAT_8" and USGS STAC
  "LANDSAT_8" are normalised by :func:`normalize_platform`).
- **Processing level.** As the product states it: Sentinel-2 ``L2A`` / ``L1C``
  (``Level-2A``, ``S2MSI2A``, ``MSIL2A`` in a name); Landsat ``L2SP`` (SR + ST) or ``L2SR``
  (SR only) from MTL ``PRODUCT_CONTENTS/PROCESSING_LEVEL``, STAC ``landsat:correction``,
  else the product id's second field.
- **Processing baseline.** Sentinel-2: ``NN.NN`` from MTD ``PROCESSING_BASELINE`` (L1C
  too), STAC ``s2:processing_baseline``, else the ``_Nxxxx_`` field of a product name
  (``s2:product_uri``, ``sentinel:product_id``, tileInfo.json ``productName``):
  ``N0205`` -> ``02.05``. Landsat: the Collection number (``02``) from MTL
  ``COLLECTION_NUMBER``, STAC ``landsat:collection_number``, else the product id's sixth
  field. None where the product gives none.
- **Scaling.** reflectance = DN * scale + offset. Sentinel-2: scale = 1 /
  QUANTIFICATION_VALUE (10000 where not stated), offset = ADD_OFFSET / Q where ADD_OFFSET is
  the band's ``BOA_ADD_OFFSET`` (L2A) or ``RADIO_ADD_OFFSET`` (L1C). Where the product
  lists no offset, ESA's rule for the baseline applies: -1000 DN from baseline 04.00 on,
  0 before (Sentinel-2 L2A/L1C product specification, "Processing baseline 04.00"). STAC
  ``raster:bands`` scale/offset, where given, are the product's own values. Landsat C2 L2:
  MTL ``REFLECTANCE_MULT_BAND_n`` / ``REFLECTANCE_ADD_BAND_n``, else the documented
  2.75e-5 / -0.2. :attr:`ProductInfo.scaling_source` records which rule gave the numbers
  (:data:`SCALING_SOURCES`); the numbers are the same for one product on every route.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from udfs.errors import MetadataError, ProductMismatchError
from udfs.sensors import SENSORS, Sensor

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

#: ESA: from processing baseline 04.00 (25 January 2022) L1C and L2A DNs carry an added
#: offset of 1000 (``RADIO_ADD_OFFSET`` / ``BOA_ADD_OFFSET`` = -1000).
S2_OFFSET_BASELINE = "04.00"
S2_OFFSET_DN = -1000.0
#: First day of baseline 04.00 products: the rule for a product whose baseline is unknown.
S2_OFFSET_SINCE = datetime(2022, 1, 25, tzinfo=timezone.utc)

#: Words of ``scenes.scaling_source`` (what gave the scale and offset).
SCALING_SOURCES = {
    "metadata": "scale and offsets stated in the product's metadata file (MTD, MTL)",
    "baseline rule": "S2 scale from the metadata or 1e-4; offset by ESA's baseline rule "
    "(-1000 DN from 04.00, 0 before) because the product lists no offset",
    "date rule": "S2 without any baseline: offset -1000 DN for products sensed from "
    "2022-01-25 (first baseline 04.00 day), 0 before",
    "stac raster:bands": "scale and offset of the STAC assets' raster:bands",
    "stac offset applied": "STAC earthsearch:boa_offset_applied = true: offset 0",
    "sensor default": "the sensor's documented default (udfs.sensors), metadata silent",
}

_S2_NAME = re.compile(r"^S2([ABCD])_(?:MSI(L1C|L2A)_|\d{1,2}[A-Z]{3}_\d{8}_\d+_(L1C|L2A)$)")
_LANDSAT_NAME = re.compile(r"^L([COTEM])0(\d)_(L\w{3})_\d{6}_\d{8}_\d{8}_(\d\d)_(T1|T2|RT)")
_BASELINE_IN_NAME = re.compile(r"_N(\d\d)(\d\d)(?:_|\.|$)")


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
        Cloud cover of the whole scene in percent, from the product.
    scaling : dict
        ``band name -> (scale, offset)`` with reflectance = DN * scale + offset.
    processing_baseline : str or None
        Sentinel-2 processing baseline (``05.10``) or Landsat Collection number (``02``).
    processing_level : str or None
        ``L2A``, ``L1C``, ``L2SP``, ``L2SR``.
    sensor : str or None
        Key of :data:`udfs.sensors.SENSORS` the metadata describes.
    scaling_source : str
        Key of :data:`SCALING_SOURCES`, or several joined by ``" + "``.
    """

    acquired: datetime
    platform: str
    cloud_cover: float | None
    scaling: dict[str, tuple[float, float]] = field(default_factory=dict)
    processing_baseline: str | None = None
    processing_level: str | None = None
    sensor: str | None = None
    scaling_source: str = "sensor default"


@dataclass(frozen=True)
class NameInfo:
    """What a product name says (a cross-check only, never the source of truth)."""

    platform: str | None = None
    processing_level: str | None = None
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


# ----------------------------------------------------------------------------- names


def normalize_platform(text: str) -> str:
    """STAC platform convention: ``Sentinel-2A``/``LANDSAT_8``/``landsat 8`` -> ``sentinel-2a``
    / ``landsat-8``."""
    return re.sub(r"[\s_-]+", "-", text.strip().lower())


def baseline_from_name(name: str) -> str | None:
    """``NN.NN`` from the ``_Nxxxx_`` field of a Sentinel-2 product name, else None."""
    m = _BASELINE_IN_NAME.search(name)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def name_info(name: str) -> NameInfo:
    """Platform, level and baseline as a product name states them (empty if not a product
    name): ``S2B_MSIL2A_..._N0510_...``, ``S2A_29RKH_20200219_0_L2A`` (Earth Search),
    ``LC08_L2SP_198025_20240515_20240521_02_T1``."""
    base = name.rsplit("/", 1)[-1].removesuffix(".SAFE")
    if m := _S2_NAME.match(base):
        return NameInfo(
            f"sentinel-2{m.group(1).lower()}", m.group(2) or m.group(3), baseline_from_name(base)
        )
    if m := _LANDSAT_NAME.match(base):
        return NameInfo(f"landsat-{m.group(2)}", m.group(3), m.group(4))
    return NameInfo()


def check_name(info: ProductInfo, name: str, what: str, said: NameInfo | None = None) -> None:
    """Reject a product whose name disagrees with its metadata (platform or level).

    ``said`` is what the name states (default: :func:`name_info` of ``name``). Raises
    :class:`ProductMismatchError` naming both values; ``what`` says which name
    (``SAFE folder name``, ``product id in the file names``, ``STAC item id``).
    """
    said = said if said is not None else name_info(name)
    for label, by_name, by_meta in (
        ("platform", said.platform, info.platform),
        ("processing level", said.processing_level, info.processing_level),
    ):
        if by_name is not None and by_meta is not None and by_name != by_meta:
            raise ProductMismatchError(
                f"the {what} {name!r} says {label} {by_name!r} but the product metadata says "
                f"{by_meta!r}; the metadata decides the band mapping, so the name is wrong or "
                f"the files belong to another product"
            )


def sensor_key_for(platform: str, level: str | None) -> str:
    """Sensor key for a platform and processing level; :class:`MetadataError` if unsupported."""
    if platform.startswith("sentinel-2"):
        if level in ("L2A", "L1C"):
            return "sentinel2-l2a" if level == "L2A" else "sentinel2-l1c"
    elif m := re.fullmatch(r"landsat-([45789])", platform):
        if level in ("L2SP", "L2SR"):
            return "landsat-c2l2" if m.group(1) in ("8", "9") else "landsat-c2l2-tm"
    raise MetadataError(
        f"platform {platform!r} at processing level {level!r} is not a supported product "
        f"(Sentinel-2 L2A/L1C, Landsat 4-9 Collection 2 Level-2 L2SP/L2SR)"
    )


def s2_level(text: str | None) -> str | None:
    """``L2A``/``L1C`` from ``Level-2A``, ``S2MSI2A``, ``Level-2A_User_Product``, ``MSIL1C``."""
    if not text:
        return None
    t = text.upper().replace("-", "").replace("_", "")
    if "LEVEL2A" in t or "MSI2A" in t or "MSIL2A" in t or t.endswith("L2A"):
        return "L2A"
    if "LEVEL1C" in t or "MSI1C" in t or "MSIL1C" in t or t.endswith("L1C"):
        return "L1C"
    return None


def _s2_scaling(
    sensor: Sensor, q: float, offsets: dict[str, float], baseline: str | None, acquired: datetime
) -> tuple[dict[str, tuple[float, float]], str]:
    """Scaling of every reflectance band: listed offsets, else the baseline (or date) rule."""
    if offsets:
        source = "metadata"
        default = 0.0
    elif baseline is not None:
        source = "baseline rule"
        default = s2_default_offset(baseline)
    else:
        source = "date rule"
        default = S2_OFFSET_DN if acquired >= S2_OFFSET_SINCE else 0.0
    scaling = {
        b.name: (1.0 / q, offsets.get(b.name, default) / q) for b in sensor.reflectance_bands
    }
    return scaling, source


def s2_default_offset(baseline: str | None) -> float:
    """ADD_OFFSET in DN implied by the processing baseline: -1000 from 04.00, else 0."""
    if baseline is None:
        return 0.0
    try:
        return S2_OFFSET_DN if float(baseline) >= float(S2_OFFSET_BASELINE) else 0.0
    except ValueError:
        return 0.0


# ----------------------------------------------------------------------------- Sentinel-2


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _find_text(root: ET.Element, name: str) -> str | None:
    for el in root.iter():
        if _local(el.tag) == name and el.text is not None:
            return el.text.strip()
    return None


def parse_s2_mtd(xml_text: str) -> ProductInfo:
    """Parse ``MTD_MSIL2A.xml`` (or ``MTD_MSIL1C.xml``).

    The level comes from ``PROCESSING_LEVEL`` (``Level-2A``), else ``PRODUCT_TYPE``
    (``S2MSI2A``), else the root element (``Level-2A_User_Product``); the sensor follows.
    Offsets: ``BOA_ADD_OFFSET`` (L2A) or ``RADIO_ADD_OFFSET`` (L1C) per ``band_id``; a band
    missing from a present list has offset 0; without any list the baseline rule applies
    (module Decisions).
    """
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as e:
        raise MetadataError(f"not well-formed XML: {e}") from e
    start = _find_text(root, "PRODUCT_START_TIME") or _find_text(root, "DATATAKE_SENSING_START")
    if start is None:
        raise MetadataError("no PRODUCT_START_TIME in the product metadata")
    acquired = parse_time(start)
    level = (
        s2_level(_find_text(root, "PROCESSING_LEVEL"))
        or s2_level(_find_text(root, "PRODUCT_TYPE"))
        or s2_level(_local(root.tag).removesuffix("_User_Product"))
    )
    spacecraft = _find_text(root, "SPACECRAFT_NAME")
    if spacecraft is None:
        raise MetadataError("no SPACECRAFT_NAME in the product metadata")
    platform = normalize_platform(spacecraft)
    sensor = SENSORS[sensor_key_for(platform, level)]
    baseline = _find_text(root, "PROCESSING_BASELINE")
    q_text = (
        _find_text(root, "BOA_QUANTIFICATION_VALUE")
        or _find_text(root, "QUANTIFICATION_VALUE")
        or "10000"
    )
    offsets: dict[str, float] = {}
    for el in root.iter():
        if _local(el.tag) in ("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET") and el.text:
            idx = int(el.attrib.get("band_id", "-1"))
            if 0 <= idx < len(S2_BAND_IDS):
                offsets[S2_BAND_IDS[idx]] = float(el.text)
    if offsets:  # a band left out of a present list has no offset
        offsets = {b: offsets.get(b, 0.0) for b in S2_BAND_IDS}
    scaling, source = _s2_scaling(sensor, float(q_text), offsets, baseline, acquired)
    cloud = _find_text(root, "Cloud_Coverage_Assessment") or _find_text(
        root, "CLOUDY_PIXEL_PERCENTAGE"
    )
    return ProductInfo(
        acquired=acquired,
        platform=platform,
        cloud_cover=float(cloud) if cloud is not None else None,
        scaling=scaling,
        processing_baseline=baseline,
        processing_level=level,
        sensor=sensor.key,
        scaling_source=source,
    )


def parse_s2_tileinfo(text: str) -> ProductInfo:
    """Parse the ``tileInfo.json`` of the former AWS Sentinel-2 buckets.

    Platform, level and baseline come from ``productName`` (``S2A_MSIL1C_..._N0205_...``,
    else ``productPath`` or the datastrip id); tileInfo.json lists no offset, so the
    baseline rule gives it (the date rule where no baseline is found).
    """
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise MetadataError(f"tileInfo.json is not valid JSON: {e}") from e
    if "timestamp" not in doc:
        raise MetadataError("tileInfo.json has no timestamp")
    product = str(doc.get("productName") or str(doc.get("productPath", "")).rsplit("/", 1)[-1])
    said = name_info(product)
    if said.platform is None:
        raise MetadataError(
            f"tileInfo.json productName {product!r} is not a Sentinel-2 product name"
        )
    datastrip = str((doc.get("datastrip") or {}).get("id", ""))
    baseline = said.processing_baseline or baseline_from_name(datastrip.replace(".", ""))
    sensor = SENSORS[sensor_key_for(said.platform, said.processing_level)]
    acquired = parse_time(doc["timestamp"])
    scaling, source = _s2_scaling(sensor, 10000.0, {}, baseline, acquired)
    cloud = doc.get("cloudyPixelPercentage")
    return ProductInfo(
        acquired=acquired,
        platform=said.platform,
        cloud_cover=float(cloud) if cloud is not None else None,
        scaling=scaling,
        processing_baseline=baseline,
        processing_level=said.processing_level,
        sensor=sensor.key,
        scaling_source=source,
    )


# ----------------------------------------------------------------------------- Landsat

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


def parse_landsat_mtl(text: str) -> ProductInfo:
    """Parse a Landsat C2 ``*_MTL.txt`` (ODL) or ``*_MTL.json`` file.

    Sensor from ``IMAGE_ATTRIBUTES/SPACECRAFT_ID`` (OLI ``LANDSAT_8``/``9`` vs TM/ETM+
    ``LANDSAT_4``/``5``/``7``), level and Collection number from ``PRODUCT_CONTENTS``.
    Scaling from ``LEVEL2_SURFACE_REFLECTANCE_PARAMETERS`` (``REFLECTANCE_MULT_BAND_n``,
    ``REFLECTANCE_ADD_BAND_n``), else the sensor's documented default.
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
    if not attrs.get("SPACECRAFT_ID"):
        raise MetadataError("MTL has no IMAGE_ATTRIBUTES/SPACECRAFT_ID")
    when = attrs["DATE_ACQUIRED"] + "T" + attrs.get("SCENE_CENTER_TIME", "00:00:00Z")
    platform = normalize_platform(attrs["SPACECRAFT_ID"])
    contents = top.get("PRODUCT_CONTENTS", {})
    product_id = str(contents.get("LANDSAT_PRODUCT_ID", ""))
    said = name_info(product_id)
    level = contents.get("PROCESSING_LEVEL") or said.processing_level
    collection = contents.get("COLLECTION_NUMBER") or said.processing_baseline
    sensor = SENSORS[sensor_key_for(platform, level)]
    params = top.get("LEVEL2_SURFACE_REFLECTANCE_PARAMETERS", {})
    scaling: dict[str, tuple[float, float]] = {}
    stated = 0
    for b in sensor.reflectance_bands:
        n = b.name.rsplit("B", 1)[-1]
        mult = params.get(f"REFLECTANCE_MULT_BAND_{n}")
        add = params.get(f"REFLECTANCE_ADD_BAND_{n}")
        stated += mult is not None and add is not None
        scaling[b.name] = (
            float(mult) if mult is not None else sensor.default_scale,
            float(add) if add is not None else sensor.default_offset,
        )
    if stated == len(scaling):
        source = "metadata"
    else:
        source = "metadata + sensor default" if stated else "sensor default"
    cloud = attrs.get("CLOUD_COVER")
    return ProductInfo(
        acquired=parse_time(when),
        platform=platform,
        cloud_cover=float(cloud) if cloud not in (None, "") else None,
        scaling=scaling,
        processing_baseline=str(int(collection)).zfill(2) if collection else None,
        processing_level=level,
        sensor=sensor.key,
        scaling_source=source,
    )


# ----------------------------------------------------------------------------- STAC


def stac_platform(props: dict[str, Any], item_id: str = "") -> str | None:
    """Normalised platform of STAC properties (``platform``, ``eo:platform``), else the id's."""
    raw = props.get("platform") or props.get("eo:platform")
    if raw:
        return normalize_platform(str(raw))
    return name_info(item_id).platform


def stac_level(
    props: dict[str, Any], item_id: str = "", collection: str | None = None
) -> str | None:
    """Processing level of a STAC item (module Decisions)."""
    platform = stac_platform(props, item_id) or ""
    said = name_info(item_id)
    if platform.startswith("sentinel-2"):
        for text in (
            props.get("s2:product_type"),
            props.get("s2:product_uri"),
            props.get("sentinel:product_id"),
            said.processing_level,
            collection,
        ):
            if level := s2_level(str(text) if text else None):
                return level
        return None
    correction = props.get("landsat:correction")
    if correction:
        return str(correction).upper()
    return said.processing_level


def stac_baseline(props: dict[str, Any], item_id: str = "") -> str | None:
    """Processing baseline of a STAC item (module Decisions)."""
    if props.get("s2:processing_baseline"):
        return str(props["s2:processing_baseline"])
    if props.get("landsat:collection_number"):
        return str(int(props["landsat:collection_number"])).zfill(2)
    for text in (props.get("s2:product_uri"), props.get("sentinel:product_id"), item_id):
        if text and (b := baseline_from_name(str(text))):
            return b
    return name_info(item_id).processing_baseline


def parse_stac_properties(
    props: dict[str, Any],
    asset_scaling: dict[str, tuple[float, float]] | None = None,
    item_id: str = "",
    collection: str | None = None,
) -> ProductInfo:
    """Product info from STAC Item properties (and ``raster:bands`` scale/offset if given).

    For Sentinel-2 bands without ``raster:bands``, the offset follows the baseline rule
    unless ``earthsearch:boa_offset_applied`` says it is already applied.
    """
    when = props.get("datetime") or props.get("start_datetime")
    if not when:
        raise MetadataError("STAC item has no datetime")
    acquired = parse_time(str(when)) if "T" in str(when) else parse_time(f"{when}T00:00:00Z")
    platform = stac_platform(props, item_id)
    if platform is None:
        raise MetadataError("STAC item has no platform (nor a product id that names one)")
    level = stac_level(props, item_id, collection)
    sensor = SENSORS[sensor_key_for(platform, level)]
    baseline = stac_baseline(props, item_id)
    scaling: dict[str, tuple[float, float]] = {}
    sources = set()
    s2 = sensor.key.startswith("sentinel2")
    if s2:
        rule, rule_source = _s2_scaling(sensor, 10000.0, {}, baseline, acquired)
    for b in sensor.reflectance_bands:
        if asset_scaling and b.name in asset_scaling:
            scaling[b.name] = asset_scaling[b.name]
            sources.add("stac raster:bands")
        elif s2 and bool(props.get("earthsearch:boa_offset_applied", False)):
            scaling[b.name] = (sensor.default_scale, 0.0)
            sources.add("stac offset applied")
        elif s2:
            scaling[b.name] = rule[b.name]
            sources.add(rule_source)
        else:
            scaling[b.name] = (sensor.default_scale, sensor.default_offset)
            sources.add("sensor default")
    cloud = props.get("eo:cloud_cover")
    return ProductInfo(
        acquired=acquired,
        platform=platform,
        cloud_cover=float(cloud) if cloud is not None else None,
        scaling=scaling,
        processing_baseline=baseline,
        processing_level=level,
        sensor=sensor.key,
        scaling_source=" + ".join(sorted(sources)),
    )
