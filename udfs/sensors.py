"""Sensor knowledge as data: bands, resolutions, common names, scaling and quality bits.

Everything the pipeline knows about a product family lives in :data:`SENSORS`. A new
sensor is a new entry here, not a new code path. This module is imported on the driver
and inside executor Python workers, so it must stay free of pyspark and I/O.

Band columns of the ``tiles`` table are named by the STAC ``eo`` common band names
(``blue``, ``red``, ``nir``, ``nir08`` ...) plus ``qa`` for the product's quality band
(Sentinel-2 L2A ``SCL``, Landsat Collection 2 ``QA_PIXEL``). Common names follow the
STAC eo extension, so Landsat 8/9 band 5 is ``nir08`` (0.85-0.88 um) while Sentinel-2
B08 is ``nir`` and B8A is ``nir08``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True)
class Band:
    """One band of a product.

    Attributes
    ----------
    name : str
        The product's own band name (``B02``, ``SR_B4``, ``SCL``, ``QA_PIXEL``).
    common : str
        Column name in ``tiles`` (STAC eo common name, or ``qa``).
    resolution : float
        Native ground sampling distance in metres of the full-resolution product.
    role : str
        ``"reflectance"`` (scaled to surface/TOA reflectance) or ``"quality"``
        (categorical or bit-packed; always resampled with ``nearest``).
    aliases : tuple of str
        Other keys under which the band appears (STAC asset keys of public catalogues).
    optional : bool
        The product may lack this band (some catalogues omit Landsat ``QA_RADSAT``): a
        scene without it is ingested with a null column, and what depends on it (the
        saturation flags) is unknown there, never assumed clear.
    """

    name: str
    common: str
    resolution: float
    role: str = "reflectance"
    aliases: tuple[str, ...] = ()
    optional: bool = False

    @property
    def keys(self) -> tuple[str, ...]:
        """All lower-case keys that identify this band in a catalogue or file name."""
        return tuple(k.lower() for k in (self.name, self.common, *self.aliases))


@dataclass(frozen=True)
class Sensor:
    """A product family (sensor + processing level) and how to read it.

    Attributes
    ----------
    key : str
        Stable identifier stored in the ``sensor`` column (``sentinel2-l2a``).
    bands : tuple of Band
        Every band the pipeline ingests, in ``tiles`` column order.
    reference_band : str
        Band whose grid (CRS, transform, shape) defines the scene grid: the finest one.
    processing_level : str
        ``L2A``, ``L1C``, ``L2SP`` ...
    default_scale, default_offset : float
        Reflectance = DN * scale + offset, used only when the product's own metadata
        gives no value (ingest records the value actually used in ``scenes.scaling``).
    nodata : int
        DN that marks "no data" in the reflectance bands.
    platforms : tuple of str
        STAC ``platform`` names (lower case, ``sentinel-2a``, ``landsat-8``) of this family.
    radiometry : str
        ``"surface"`` (bottom-of-atmosphere surface reflectance: S2 L2A, Landsat C2 L2) or
        ``"toa"`` (top-of-atmosphere reflectance: S2 L1C). Models never mix the two.
    saturated_dn : int or None
        DN the product writes for a saturated pixel in a reflectance band (Sentinel-2
        ``Special_Values`` ``SATURATED`` = 65535); None where saturation is flagged
        elsewhere (Landsat ``QA_RADSAT``).
    valid_range : (int, int) or None
        Documented valid DN range of the reflectance bands, inclusive (Landsat C2 L2 SR:
        7273..43636, i.e. reflectance 0..1); DNs outside it are masked. None: any DN other
        than nodata and saturated is valid.
    saturation_bits : mapping of str to int
        Product band name -> bit of the ``QA_RADSAT`` word that flags its saturation
        (Landsat Collection 2); empty for sensors without such a band.
    """

    key: str
    bands: tuple[Band, ...]
    reference_band: str
    processing_level: str
    default_scale: float
    default_offset: float
    nodata: int = 0
    platforms: tuple[str, ...] = field(default_factory=tuple)
    radiometry: str = "surface"
    saturated_dn: int | None = None
    valid_range: tuple[int, int] | None = None
    saturation_bits: Mapping[str, int] = field(default_factory=dict)

    def band(self, name: str) -> Band:
        """Return the band whose product name, common name or alias is ``name``."""
        low = name.lower()
        for b in self.bands:
            if low in b.keys:
                return b
        raise KeyError(f"{self.key} has no band {name!r}")

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.bands)

    @property
    def reflectance_bands(self) -> tuple[Band, ...]:
        return tuple(b for b in self.bands if b.role == "reflectance")

    @property
    def required_bands(self) -> tuple[Band, ...]:
        return tuple(b for b in self.bands if not b.optional)


_S2_REFLECTANCE = (
    Band("B01", "coastal", 60.0),
    Band("B02", "blue", 10.0),
    Band("B03", "green", 10.0),
    Band("B04", "red", 10.0),
    Band("B05", "rededge1", 20.0),
    Band("B06", "rededge2", 20.0),
    Band("B07", "rededge3", 20.0),
    Band("B08", "nir", 10.0),
    Band("B8A", "nir08", 20.0),
    Band("B09", "nir09", 60.0),
    Band("B11", "swir16", 20.0),
    Band("B12", "swir22", 20.0),
)

SENTINEL2_L2A = Sensor(
    key="sentinel2-l2a",
    bands=(*_S2_REFLECTANCE, Band("SCL", "qa", 20.0, role="quality", aliases=("scl",))),
    reference_band="B02",
    processing_level="L2A",
    # QUANTIFICATION_VALUE 10000; BOA_ADD_OFFSET is read from the product (0 before
    # processing baseline 04.00, -1000 from 04.00 on).
    default_scale=1.0 / 10000.0,
    default_offset=0.0,
    platforms=("sentinel-2a", "sentinel-2b", "sentinel-2c"),
    radiometry="surface",
    saturated_dn=65535,
)

SENTINEL2_L1C = Sensor(
    key="sentinel2-l1c",
    bands=(*_S2_REFLECTANCE[:10], Band("B10", "cirrus", 60.0), *_S2_REFLECTANCE[10:]),
    reference_band="B02",
    processing_level="L1C",
    default_scale=1.0 / 10000.0,
    default_offset=0.0,
    platforms=("sentinel-2a", "sentinel-2b", "sentinel-2c"),
    radiometry="toa",
    saturated_dn=65535,
)

#: Landsat Collection 2 Level-2 SR valid DN range (USGS LSDS-1619 / LSDS-1618 product
#: guides: 7273..43636, reflectance 0.0000075..1.0 after DN * 2.75e-5 - 0.2).
LANDSAT_SR_VALID_RANGE = (7273, 43636)

LANDSAT_C2L2 = Sensor(
    key="landsat-c2l2",
    bands=(
        Band("SR_B1", "coastal", 30.0),
        Band("SR_B2", "blue", 30.0),
        Band("SR_B3", "green", 30.0),
        Band("SR_B4", "red", 30.0),
        Band("SR_B5", "nir08", 30.0),
        Band("SR_B6", "swir16", 30.0),
        Band("SR_B7", "swir22", 30.0),
        Band("QA_PIXEL", "qa", 30.0, role="quality", aliases=("qa_pixel",)),
        Band("QA_RADSAT", "radsat", 30.0, role="quality", aliases=("qa_radsat",), optional=True),
    ),
    reference_band="SR_B2",
    processing_level="L2SP",
    # Collection 2 Level-2 surface reflectance: DN * 2.75e-5 - 0.2 (USGS); the MTL's
    # REFLECTANCE_MULT_BAND_n / REFLECTANCE_ADD_BAND_n override these when present.
    default_scale=2.75e-5,
    default_offset=-0.2,
    platforms=("landsat-8", "landsat-9"),
    valid_range=LANDSAT_SR_VALID_RANGE,
    # QA_RADSAT of OLI (LSDS-1619, Landsat 8-9 C2 L2 product guide): bit n-1 = band n
    # saturated for bands 1-7 (bit 8 is band 9, bit 11 terrain occlusion: not SR bands).
    saturation_bits=MappingProxyType({f"SR_B{n}": n - 1 for n in range(1, 8)}),
)

LANDSAT_C2L2_TM = Sensor(
    key="landsat-c2l2-tm",
    # Landsat 4/5 TM and 7 ETM+ number their bands differently from OLI.
    bands=(
        Band("SR_B1", "blue", 30.0),
        Band("SR_B2", "green", 30.0),
        Band("SR_B3", "red", 30.0),
        Band("SR_B4", "nir08", 30.0),
        Band("SR_B5", "swir16", 30.0),
        Band("SR_B7", "swir22", 30.0),
        Band("QA_PIXEL", "qa", 30.0, role="quality", aliases=("qa_pixel",)),
        Band("QA_RADSAT", "radsat", 30.0, role="quality", aliases=("qa_radsat",), optional=True),
    ),
    reference_band="SR_B1",
    processing_level="L2SP",
    default_scale=2.75e-5,
    default_offset=-0.2,
    platforms=("landsat-4", "landsat-5", "landsat-7"),
    valid_range=LANDSAT_SR_VALID_RANGE,
    # QA_RADSAT of TM/ETM+ (LSDS-1618, Landsat 4-7 C2 L2 product guide): bit n-1 = band n
    # saturated (bands 1-5 and 7; bit 5 is thermal band 6).
    saturation_bits=MappingProxyType({f"SR_B{n}": n - 1 for n in (1, 2, 3, 4, 5, 7)}),
)

SENSORS: Mapping[str, Sensor] = MappingProxyType(
    {s.key: s for s in (SENTINEL2_L2A, SENTINEL2_L1C, LANDSAT_C2L2, LANDSAT_C2L2_TM)}
)

#: Band columns of the ``tiles`` table, in order: the union of all sensors' common names.
BAND_COLUMNS: tuple[str, ...] = (
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
    "cirrus",
    "swir16",
    "swir22",
    "qa",
    "radsat",
)

assert all(b.common in BAND_COLUMNS for s in SENSORS.values() for b in s.bands)

#: Sentinel-2 L2A Scene Classification (SCL) classes (ESA L2A product definition).
SCL_CLASSES: Mapping[int, str] = MappingProxyType(
    {
        0: "no_data",
        1: "saturated_or_defective",
        2: "dark_area_pixels",  # "topographic casted shadows" from baseline 04.00
        3: "cloud_shadows",
        4: "vegetation",
        5: "not_vegetated",
        6: "water",
        7: "unclassified",
        8: "cloud_medium_probability",
        9: "cloud_high_probability",
        10: "thin_cirrus",
        11: "snow",
    }
)

#: Landsat Collection 2 QA_PIXEL single-bit flags (USGS LSDS-1619 / LSDS-1328).
QA_PIXEL_BITS: Mapping[str, int] = MappingProxyType(
    {
        "fill": 0,
        "dilated_cloud": 1,
        "cirrus": 2,
        "cloud": 3,
        "cloud_shadow": 4,
        "snow": 5,
        "clear": 6,
        "water": 7,
    }
)

#: Landsat Collection 2 QA_PIXEL two-bit confidence fields: name -> lowest bit.
#: Values: 0 none, 1 low, 2 medium, 3 high.
QA_PIXEL_CONFIDENCE: Mapping[str, int] = MappingProxyType(
    {
        "cloud_confidence": 8,
        "cloud_shadow_confidence": 10,
        "snow_ice_confidence": 12,
        "cirrus_confidence": 14,
    }
)
