"""Demo data: one synthetic landscape seen by Sentinel-2 L2A and Landsat 8/9 C2 L2.

A seeded land-cover map (water, forest, cropland, grassland, urban, bare soil) on a 10 m
grid in UTM 31N is "observed" on three Sentinel-2 L2A and two Landsat Collection 2
Level-2 dates, with plausible surface reflectance spectra, crop phenology, clouds, cloud
shadows, cirrus and no-data borders, written in the products' own layouts (GeoTIFF
instead of JPEG2000 for Sentinel-2). Labels, the land-cover raster and a STAC catalogue
of the same scenes come with them. Layout under ``out_dir``::

    landcover_10m.tif            uint8 class codes (nodata 0), 10 m grid
    landcover_classes.json       {"1": "water", ...}
    labels.geojson               polygons inside homogeneous land cover, EPSG:4326
    manifest.json                what was written (also returned by :func:`generate`)
    scenes/sentinel2/<PRODUCT>.SAFE/MTD_MSIL2A.xml
    scenes/sentinel2/<PRODUCT>.SAFE/GRANULE/<GRANULE>/IMG_DATA/R10m/T31UFS_<time>_B02_10m.tif
                                                         .../R20m/..._B05_20m.tif, _SCL_20m.tif
                                                         .../R60m/..._B01_60m.tif
    scenes/landsat/<ID>/<ID>_SR_B1.TIF .. _SR_B7.TIF, <ID>_QA_PIXEL.TIF, <ID>_QA_RADSAT.TIF,
                        <ID>_MTL.txt
    stac/catalog.json            -> <collection>/collection.json -> <collection>/<id>/<id>.json

Every raster is a pure function of ``(size, seed)``: pixels are computed from their
coordinates and seeded parameters, in row blocks, so any size up to a full 10980 x 10980
Sentinel-2 tile stays within bounded memory, and the same seed gives byte-identical files.
Run as ``python -m pipelines.demo --out data/demo --size 512``.

Decisions
---------
* Metadata follow the real products (checked against real ``MTD_MSIL2A.xml`` of baselines
  02.12, 04.00, 05.09 and a real Landsat 8 C2 L2SP MTL): same element names, nesting and
  order, a subset of the elements (nothing the real files lack). Omitted: Spectral_Response
  curves, PHYSICAL_GAINS, Auxiliary_Data_Info and the quality-check lists (S2); the
  surface-temperature bands and groups and the Level-1 radiance groups (Landsat: the demo
  writes no ST_B10, although an L2SP product has one).
* Sentinel-2 DN (ESA L2A product definition): reflectance = (DN + BOA_ADD_OFFSET) /
  BOA_QUANTIFICATION_VALUE with quantification 10000 and, from baseline 04.00, offset
  -1000, so DN = round(reflectance * 10000) + 1000. Valid pixels are clamped to 1..65534:
  0 is NODATA and 65535 SATURATED (``Special_Values``). Before 04.00 a negative
  reflectance cannot be encoded and ends at DN 1.
* Sen2Cor over-corrects dark water in the SWIR (:data:`S2_WATER_OVERCORRECTION`), so part
  of the water pixels of the 04.00+ scenes have DN < 1000, i.e. negative reflectance, as
  real products show.
* Landsat DN (USGS LSDS-1619): reflectance = DN * 2.75e-5 - 0.2; clear surfaces stay in
  the documented valid range 7273..43636 (reflectance 0..1).
* Saturation: a few bright roofs (:attr:`Layout.roof_units`) saturate the visible bands.
  Sentinel-2 writes DN 65535 there and SCL class 1 (saturated or defective); Landsat sets
  QA_RADSAT bit n-1 for each saturated SR band n (LSDS-1619) and writes that band's
  QUANTIZE_CAL_MAX (65535). QA_RADSAT is 0 elsewhere, fill included, without a nodata tag
  (as the real file).
* STAC: platform names in STAC form (``sentinel-2a``, ``landsat-8``). ``raster:bands``
  describe the DNs as written (value = DN * scale + offset): Sentinel-2 offset
  BOA_ADD_OFFSET / 10000 (-0.1 from baseline 04.00, 0 before) with
  ``earthsearch:boa_offset_applied: false``, Earth Search v1's flag for DNs left as ESA
  wrote them; Landsat the MTL's REFLECTANCE_MULT / ADD. Landsat items carry
  ``landsat:correction`` (the processing level, USGS items), Sentinel-2 items
  ``processing:level`` and ``s2:processing_baseline``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import rasterio
from numpy.typing import NDArray
from rasterio.features import shapes
from rasterio.transform import Affine
from rasterio.warp import transform as transform_points
from rasterio.warp import transform_geom
from rasterio.windows import Window
from shapely.geometry import MultiPolygon, Polygon, mapping, shape
from shapely.geometry.polygon import orient

from udfs.sensors import (
    LANDSAT_C2L2,
    QA_PIXEL_BITS,
    QA_PIXEL_CONFIDENCE,
    SCL_CLASSES,
    SENTINEL2_L2A,
    Band,
    Sensor,
)

# ----------------------------------------------------------------------------- the area

CRS = "EPSG:32631"
X0, Y0 = 600000.0, 5700000.0  # upper-left corner of every grid (the UL of tile 31UFS)
PIXEL = 10.0  # metres per pixel of the land-cover grid
MAX_SIZE = 10980  # a full Sentinel-2 tile
MIN_SIZE = 60  # one 60 m pixel needs six 10 m pixels
MGRS_TILE = "31UFS"  # the 100 km square whose tile has its upper-left corner at (X0, Y0)
BLOCK_ROWS = 1024  # rows rendered at once: a multiple of the 512 px GeoTIFF tiles

# Land-cover classes (uint8 codes of landcover_10m.tif; 0 = nodata).
WATER, FOREST, CROPLAND, GRASSLAND, URBAN, BARE = 1, 2, 3, 4, 5, 6
CLASSES: dict[int, str] = {
    WATER: "water",
    FOREST: "forest",
    CROPLAND: "cropland",
    GRASSLAND: "grassland",
    URBAN: "urban",
    BARE: "bare_soil",
}
N_CLASSES = 7  # including 0

# ----------------------------------------------------------------------------- spectra

#: STAC eo common names of the bands spectra are given for (Sentinel-2 order).
COMMON_NAMES = (
    "coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3",
    "nir", "nir08", "nir09", "swir16", "swir22",
)  # fmt: skip

#: Surface reflectance (0..1) of pure materials, per band of :data:`COMMON_NAMES`.
ENDMEMBERS: dict[str, tuple[float, ...]] = {
    #        coast  blue  green  red   re1   re2   re3   nir  nir08 nir09 sw16  sw22
    "water":  (0.060, 0.055, 0.050, 0.030, 0.025, 0.020, 0.018, 0.018, 0.016, 0.010, 0.008, 0.005),
    "forest": (0.025, 0.025, 0.050, 0.028, 0.080, 0.200, 0.270, 0.300, 0.310, 0.300, 0.150, 0.070),
    "green":  (0.030, 0.035, 0.080, 0.035, 0.120, 0.320, 0.420, 0.450, 0.460, 0.440, 0.220, 0.100),
    "dry":    (0.060, 0.070, 0.100, 0.130, 0.160, 0.200, 0.230, 0.250, 0.260, 0.260, 0.330, 0.250),
    "soil":   (0.060, 0.080, 0.110, 0.150, 0.170, 0.190, 0.210, 0.230, 0.240, 0.250, 0.320, 0.280),
    "urban":  (0.120, 0.130, 0.150, 0.170, 0.180, 0.190, 0.200, 0.210, 0.210, 0.200, 0.250, 0.220),
    "cloud":  (0.620, 0.600, 0.600, 0.600, 0.600, 0.600, 0.600, 0.600, 0.600, 0.480, 0.450, 0.320),
}  # fmt: skip
_MIX = ("water", "forest", "green", "dry", "soil", "urban")  # endmembers surfaces mix

#: Cover fractions (green vegetation, dry vegetation, bare soil) by day of year.
PHENOLOGY: dict[int, tuple[tuple[int, ...], tuple[tuple[float, float, float], ...]]] = {
    # bare-ish in April, green peak in June, senescent / harvested in August
    CROPLAND: (
        (95, 130, 172, 215, 245),
        ((0.10, 0.05, 0.85), (0.45, 0.05, 0.50), (0.92, 0.05, 0.03),
         (0.45, 0.45, 0.10), (0.12, 0.63, 0.25)),
    ),
    GRASSLAND: (
        (95, 172, 245),
        ((0.55, 0.25, 0.20), (0.78, 0.14, 0.08), (0.50, 0.38, 0.12)),
    ),
}  # fmt: skip
#: Forest: fraction of full canopy by day of year (the rest is dry vegetation / bare twigs).
FOREST_CANOPY = ((95, 140, 245), (0.82, 1.0, 0.97))

#: Standard deviation of the multiplicative per-pixel texture of each class (index = code).
TEXTURE = np.array([0.0, 0.02, 0.07, 0.03, 0.04, 0.10, 0.04], dtype=np.float32)
NOISE_SD = 0.0025  # additive per-band sensor noise, reflectance units
SHADOW_DARKENING = 0.7  # a full cloud shadow keeps 30 % of the surface signal
CIRRUS_MAX = 0.15  # opacity of the densest cirrus
#: Sen2Cor's over-correction of dark water (reflectance subtracted from clear water), which
#: makes some water pixels negative in the SWIR, as in real L2A products. Sentinel-2 only.
S2_WATER_OVERCORRECTION: dict[str, float] = {"swir16": 0.003, "swir22": 0.003}
ROOF_SHARE = 0.12  # share of built-up blocks with a roof bright enough to saturate
#: Bands a saturating roof saturates (visible bands; Landsat OLI bands 1-4).
SATURATING_BANDS = ("B02", "B03", "B04", "SR_B1", "SR_B2", "SR_B3", "SR_B4")
SATURATED_DN = 65535  # S2 Special_Values SATURATED; Landsat QUANTIZE_CAL_MAX_BAND_n

#: Centre wavelength and FWHM (micrometres) of every reflectance band, for STAC eo:bands.
WAVELENGTHS: dict[str, tuple[float, float]] = {
    "B01": (0.443, 0.027), "B02": (0.490, 0.098), "B03": (0.560, 0.045),
    "B04": (0.665, 0.038), "B05": (0.704, 0.019), "B06": (0.740, 0.018),
    "B07": (0.783, 0.028), "B08": (0.842, 0.145), "B8A": (0.865, 0.033),
    "B09": (0.945, 0.026), "B11": (1.610, 0.143), "B12": (2.190, 0.242),
    "SR_B1": (0.44, 0.02), "SR_B2": (0.48, 0.06), "SR_B3": (0.56, 0.06),
    "SR_B4": (0.65, 0.04), "SR_B5": (0.86, 0.03), "SR_B6": (1.60, 0.08),
    "SR_B7": (2.20, 0.18),
}  # fmt: skip

# ----------------------------------------------------------------------------- the scenes


@dataclass(frozen=True)
class SceneSpec:
    """One acquisition to synthesise.

    Attributes
    ----------
    index : int
        Stable number of the scene; seeds its clouds and noise (a subset run writes the
        same bytes for a scene as a full run).
    scene_id : str
        Product id: SAFE name without ``.SAFE``, or the Landsat product id.
    sensor : Sensor
        Entry of :data:`udfs.sensors.SENSORS`.
    platform : str
        STAC platform (``sentinel-2a``, ``landsat-9``).
    sensing : datetime
        Sensing (start) time, UTC.
    cloud, cirrus : float
        Target fraction of the scene under cloud and under thin cirrus.
    nodata : str
        ``"none"``, ``"orbit-edge"`` (a slanted swath edge) or ``"footprint"`` (the
        rotated Landsat scene footprint cuts the corners).
    baseline : str
        Sentinel-2 processing baseline (``"05.10"``); ``"L2SP"`` for Landsat.
    boa_offset : float
        Sentinel-2 ``BOA_ADD_OFFSET`` in DN (0 before baseline 04.00, -1000 after).
    orbit : int
        Sentinel-2 absolute orbit (granule name); unused for Landsat.
    processed : str
        Processing time (S2 product name, ``YYYYMMDDTHHMMSS``) or date (Landsat, ``YYYYMMDD``).
    """

    index: int
    scene_id: str
    sensor: Sensor
    platform: str
    sensing: datetime
    cloud: float
    cirrus: float
    nodata: str
    baseline: str
    boa_offset: float = 0.0
    orbit: int = 0
    processed: str = ""

    @property
    def doy(self) -> int:
        return self.sensing.timetuple().tm_yday

    @property
    def scaling(self) -> tuple[float, float]:
        """``(scale, offset)`` with reflectance = DN * scale + offset."""
        if self.sensor is SENTINEL2_L2A:
            return 1e-4, self.boa_offset * 1e-4
        return LANDSAT_C2L2.default_scale, LANDSAT_C2L2.default_offset


def _utc(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=timezone.utc)


#: The five demo acquisitions. Sentinel-2 names sort by date within a platform, and the
#: baseline-03.00 scene (no BOA offset) sorts first.
SCENES: tuple[SceneSpec, ...] = (
    SceneSpec(0, "S2A_MSIL2A_20240412T103621_N0300_R008_T31UFS_20240412T165012",
              SENTINEL2_L2A, "sentinel-2a", _utc("2024-04-12T10:36:21.024"),
              cloud=0.08, cirrus=0.06, nodata="none", baseline="03.00", boa_offset=0.0,
              orbit=45929, processed="20240412T165012"),
    SceneSpec(1, "S2B_MSIL2A_20240621T103629_N0510_R008_T31UFS_20240621T133010",
              SENTINEL2_L2A, "sentinel-2b", _utc("2024-06-21T10:36:29.024"),
              cloud=0.15, cirrus=0.0, nodata="none", baseline="05.10", boa_offset=-1000.0,
              orbit=37967, processed="20240621T133010"),
    SceneSpec(2, "S2A_MSIL2A_20240830T103631_N0510_R008_T31UFS_20240830T151502",
              SENTINEL2_L2A, "sentinel-2a", _utc("2024-08-30T10:36:31.024"),
              cloud=0.06, cirrus=0.0, nodata="orbit-edge", baseline="05.10",
              boa_offset=-1000.0, orbit=47788, processed="20240830T151502"),
    SceneSpec(3, "LC08_L2SP_198025_20240515_20240521_02_T1",
              LANDSAT_C2L2, "landsat-8", _utc("2024-05-15T10:31:12.543218"),
              cloud=0.12, cirrus=0.0, nodata="footprint", baseline="L2SP",
              processed="20240521"),
    SceneSpec(4, "LC09_L2SP_198025_20240726_20240801_02_T1",
              LANDSAT_C2L2, "landsat-9", _utc("2024-07-26T10:31:47.808399"),
              cloud=0.07, cirrus=0.0, nodata="footprint", baseline="L2SP",
              processed="20240801"),
)  # fmt: skip


@dataclass(frozen=True)
class Grid:
    """A raster grid sharing the upper-left corner (X0, Y0).

    Attributes
    ----------
    factor : int
        Pixel size in 10 m pixels (1, 2, 3 or 6).
    width, height : int
        Pixels: ``ceil(size / factor)``.
    """

    factor: int
    width: int
    height: int

    @property
    def res(self) -> float:
        return PIXEL * self.factor

    @property
    def transform(self) -> Affine:
        return Affine(self.res, 0.0, X0, 0.0, -self.res, Y0)


def grid_for(size: int, res: float) -> Grid:
    """The grid of pixel size ``res`` metres over a ``size`` x ``size`` 10 m area (ceil)."""
    k = round(res / PIXEL)
    n = math.ceil(size / k)
    return Grid(k, n, n)


# ----------------------------------------------------------------------------- noise


@dataclass(frozen=True)
class Noise:
    """Smooth random field: a sum of value-noise octaves (N(0, 1) lattices, smoothstep).

    Attributes
    ----------
    lattices : tuple of ndarray
        ``(ny, nx)`` float32 node values of each octave.
    spacings : tuple of float
        Node spacing of each octave, in 10 m pixels.
    weights : tuple of float
        Weight of each octave in the sum.
    margin : float
        Node ``[0, 0]`` sits at coordinate ``(-margin, -margin)``.
    """

    lattices: tuple[NDArray[np.float32], ...]
    spacings: tuple[float, ...]
    weights: tuple[float, ...]
    margin: float


def make_noise(
    rng: np.random.Generator, extent: float, spacings: Sequence[float], weights: Sequence[float]
) -> Noise:
    """Draw a :class:`Noise` covering ``[-margin, extent + margin]`` in both directions."""
    margin = 2.0 * max(spacings) + 200.0
    lattices = []
    for s in spacings:
        n = math.ceil((extent + 2 * margin) / s) + 3
        lattices.append(rng.standard_normal((n, n), dtype=np.float32))
    return Noise(tuple(lattices), tuple(float(s) for s in spacings), tuple(weights), margin)


def _axis(coord: NDArray[np.floating], spacing: float, margin: float, n: int):
    f = (np.asarray(coord, dtype=np.float64) + margin) / spacing
    i = np.clip(np.floor(f).astype(np.intp), 0, n - 2)
    t = np.clip(f - i, 0.0, 1.0)
    t = (t * t * (3.0 - 2.0 * t)).astype(np.float32)  # smoothstep: no lattice creases
    return i, t


def sample_noise(noise: Noise, y: NDArray[np.floating], x: NDArray[np.floating]) -> NDArray:
    """Evaluate ``noise`` on the outer grid of coordinates ``y`` (rows) x ``x`` (cols).

    Parameters
    ----------
    y, x : ndarray
        1-D coordinates in 10 m pixel units from the upper-left corner.

    Returns
    -------
    ndarray
        ``(len(y), len(x))`` float32.
    """
    out = np.zeros((len(y), len(x)), dtype=np.float32)
    for lat, s, w in zip(noise.lattices, noise.spacings, noise.weights, strict=True):
        iy, ty = _axis(y, s, noise.margin, lat.shape[0])
        ix, tx = _axis(x, s, noise.margin, lat.shape[1])
        # separable: interpolate the few lattice rows first, then gather columns
        rows = lat[iy] * (1 - ty)[:, None] + lat[iy + 1] * ty[:, None]
        out += w * (rows[:, ix] * (1 - tx) + rows[:, ix + 1] * tx)
    return out


def noise_threshold(noise: Noise, size: int, fraction: float) -> tuple[float, float]:
    """Level above which ``fraction`` of the area lies, and the field's spread.

    Estimated on at most 200 x 200 evenly spaced points, so it is exact enough and cheap
    for any size. Returns ``(threshold, standard deviation)``.
    """
    pts = (np.arange(min(size, 200)) + 0.5) * (size / min(size, 200))
    values = sample_noise(noise, pts, pts)
    return float(np.quantile(values, 1.0 - fraction)), float(values.std())


# ----------------------------------------------------------------------------- land cover


@dataclass(frozen=True)
class Town:
    """A built-up rectangle with a street grid; blocks are numbered units.

    All lengths in 10 m pixels; block ``(bi, bj)`` is unit ``first_unit + bi * n_cols + bj``.
    """

    row: int
    col: int
    height: int
    width: int
    spacing: int
    street: int
    first_unit: int

    @property
    def n_cols(self) -> int:
        return math.ceil(self.width / self.spacing)

    @property
    def n_blocks(self) -> int:
        return math.ceil(self.height / self.spacing) * self.n_cols


@dataclass(frozen=True)
class Lake:
    """A lobed lake: radius ``radius * (1 + 0.18 sin(2t + p0) + 0.08 sin(5t + p1))``."""

    row: float
    col: float
    radius: float
    phases: tuple[float, float]


@dataclass(frozen=True)
class River:
    """A meandering band: centre column = ``col + sum(a * sin(2 pi row / l + p))``."""

    col: float
    width: float
    amplitudes: tuple[float, ...]
    wavelengths: tuple[float, ...]
    phases: tuple[float, ...]


@dataclass(frozen=True)
class Layout:
    """Seeded parameters of the landscape; :func:`landcover_at` turns them into pixels.

    Parcels are rectangles in row bands: band ``b`` spans rows ``row_edges[b] ..
    row_edges[b + 1]`` and its own column edges; parcel ``(b, c)`` is unit
    ``b * parcels_per_band + c``. Town blocks and the street surface follow as further
    units. Every unit has a class (parcels and town blocks), a brightness factor, a
    phenology shift in days and a vegetated fraction (town blocks). ``roof_units`` are the
    built-up blocks whose bright roofs saturate the visible bands (sorted unit ids).
    """

    size: int
    row_edges: NDArray[np.int64]
    col_lut: NDArray[np.int32]
    parcels_per_band: int
    unit_class: NDArray[np.uint8]
    unit_bright: NDArray[np.float32]
    unit_shift: NDArray[np.float32]
    unit_green: NDArray[np.float32]
    street_unit: int
    forest: Noise
    forest_threshold: float
    towns: tuple[Town, ...]
    lakes: tuple[Lake, ...]
    river: River
    roof_units: NDArray[np.int32]

    @property
    def n_units(self) -> int:
        return len(self.unit_class)


def _parcels(rng: np.random.Generator, canvas: int):
    """Row-band edges and, per band, a column -> parcel index lookup table."""
    heights = rng.integers(18, 50, canvas // 18 + 2)
    row_edges = np.concatenate([[0], np.cumsum(heights)]) - int(rng.integers(0, 18))
    n_bands = int(np.searchsorted(row_edges, canvas, side="right"))
    row_edges = row_edges[: n_bands + 1]
    per_band = canvas // 20 + 2
    widths = rng.integers(20, 70, (n_bands, per_band))
    offsets = rng.integers(0, 20, n_bands)
    col_edges = np.cumsum(widths, axis=1) - offsets[:, None]
    cols = np.arange(canvas)
    # one vectorised searchsorted per parcel row band (a few hundred at most)
    lut = np.stack([np.searchsorted(e, cols, side="right") for e in col_edges])
    return row_edges.astype(np.int64), lut.astype(np.int32), per_band + 1


def _phases(rng: np.random.Generator) -> tuple[float, float]:
    a, b = rng.uniform(0, 2 * np.pi, 2)
    return float(a), float(b)


def make_layout(size: int, seed: int) -> Layout:
    """Draw the landscape of a ``size`` x ``size`` 10 m area from ``seed``.

    Sizes of fields, blocks and the river are in metres (pixels), so a larger area holds
    more of them (and more towns and lakes) rather than bigger ones.
    """
    rng = np.random.default_rng([seed, 0])
    canvas = math.ceil(size / 6) * 6 + 6
    row_edges, col_lut, per_band = _parcels(rng, canvas)
    n_parcels = (len(row_edges) - 1) * per_band
    parcel_class = rng.choice(
        np.array([CROPLAND, GRASSLAND, BARE], dtype=np.uint8), n_parcels, p=[0.58, 0.30, 0.12]
    )
    # winter crops green up ~5 weeks earlier than summer crops
    shift = np.where(rng.random(n_parcels) < 0.4, -35.0, 0.0) + rng.normal(0, 8, n_parcels)

    towns: list[Town] = []
    first = n_parcels
    n_towns = 1 + int(size * size / 2500**2)
    for t in range(n_towns):
        if t == 0:
            row, col = int(0.58 * size), int(0.10 * size)
            h, w = int(np.clip(0.22 * size, 24, 260)), int(np.clip(0.26 * size, 24, 300))
        else:
            h, w = (int(v) for v in rng.integers(60, 250, 2))
            row, col = (int(v) for v in rng.integers(0, max(1, size - 60), 2))
        town = Town(row, col, h, w, spacing=int(rng.integers(11, 15)), street=2, first_unit=first)
        towns.append(town)
        first += town.n_blocks
    n_blocks = first - n_parcels
    block_class = np.where(rng.random(n_blocks) < 0.15, GRASSLAND, URBAN).astype(np.uint8)

    n_units = first + 1  # + the street surface
    unit_class = np.concatenate([parcel_class, block_class, [URBAN]]).astype(np.uint8)
    bright = rng.uniform(0.9, 1.1, n_units)
    bright[unit_class == BARE] = rng.uniform(0.75, 1.2, int((unit_class == BARE).sum()))
    bright[n_parcels:first] = rng.uniform(0.85, 1.15, n_blocks)
    bright[-1] = 0.55  # asphalt
    green = np.zeros(n_units)
    green[n_parcels:first] = rng.uniform(0.0, 0.3, n_blocks)  # gardens, street trees
    unit_shift = np.concatenate([shift, rng.normal(0, 8, n_blocks), [0.0]])

    forest = make_noise(rng, canvas, (160, 48, 16), (1.0, 0.6, 0.3))
    forest_threshold, _ = noise_threshold(forest, size, 0.24)

    lakes = [
        Lake(
            0.22 * size,
            0.22 * size,
            float(np.clip(0.09 * size, 8, 90)),
            _phases(rng),
        )
    ]
    for _ in range(int(size * size / 3000**2)):
        r, c = (float(v) for v in rng.uniform(0, size, 2))
        lakes.append(Lake(r, c, float(rng.uniform(12, 60)), _phases(rng)))
    river = River(
        col=0.64 * size,
        width=float(np.clip(0.022 * size, 4, 14)),
        amplitudes=(
            0.07 * size,
            float(np.clip(0.04 * size, 4, 40)),
            float(np.clip(0.012 * size, 1, 10)),
        ),
        wavelengths=(
            1.6 * size,
            float(np.clip(0.45 * size, 60, 600)),
            float(np.clip(0.13 * size, 20, 150)),
        ),
        phases=tuple(float(p) for p in rng.uniform(0, 2 * np.pi, 3)),
    )
    # a stream of its own, so the landscape drawn above does not depend on it
    urban_blocks = np.flatnonzero(unit_class[n_parcels:first] == URBAN) + n_parcels
    n_roofs = min(len(urban_blocks), max(1, round(ROOF_SHARE * len(urban_blocks))))
    roofs = np.random.default_rng([seed, 4]).choice(urban_blocks, n_roofs, replace=False)
    return Layout(
        size=size,
        row_edges=row_edges,
        col_lut=col_lut,
        parcels_per_band=per_band,
        unit_class=unit_class,
        unit_bright=bright.astype(np.float32),
        unit_shift=unit_shift.astype(np.float32),
        unit_green=green.astype(np.float32),
        street_unit=n_units - 1,
        forest=forest,
        forest_threshold=forest_threshold,
        towns=tuple(towns),
        lakes=tuple(lakes),
        river=river,
        roof_units=np.sort(roofs).astype(np.int32),
    )


def _span(idx: NDArray[np.integer], lo: float, hi: float) -> slice:
    """Positions of the sorted indices ``idx`` that fall in ``[lo, hi)``."""
    return slice(int(np.searchsorted(idx, lo)), int(np.searchsorted(idx, hi)))


def landcover_at(
    layout: Layout, rows: NDArray[np.integer], cols: NDArray[np.integer]
) -> tuple[NDArray[np.uint8], NDArray[np.int32]]:
    """Land-cover class and unit of the 10 m pixels ``rows`` x ``cols``.

    Parameters
    ----------
    rows, cols : ndarray
        Sorted 1-D 10 m pixel indices (row 0 / col 0 at the upper-left corner); they may
        run past ``layout.size`` (coarser grids cover a little more ground).

    Returns
    -------
    classes : ndarray
        ``(len(rows), len(cols))`` uint8 codes of :data:`CLASSES`.
    units : ndarray
        ``(len(rows), len(cols))`` int32 unit (parcel, town block, street) ids.
    """
    band = np.searchsorted(layout.row_edges, rows, side="right") - 1
    units = (band * layout.parcels_per_band)[:, None] + layout.col_lut[band[:, None], cols]
    units = units.astype(np.int32)
    classes = layout.unit_class[units]
    forest = sample_noise(layout.forest, rows + 0.5, cols + 0.5) > layout.forest_threshold
    classes[forest] = FOREST
    for town in layout.towns:
        rs, cs = (
            _span(rows, town.row, town.row + town.height),
            _span(cols, town.col, town.col + town.width),
        )
        if rs.start == rs.stop or cs.start == cs.stop:
            continue
        di = (rows[rs] - town.row)[:, None]
        dj = (cols[cs] - town.col)[None, :]
        block = town.first_unit + (di // town.spacing) * town.n_cols + dj // town.spacing
        street = (di % town.spacing < town.street) | (dj % town.spacing < town.street)
        block = np.where(street, layout.street_unit, block).astype(np.int32)
        units[rs, cs] = block
        classes[rs, cs] = layout.unit_class[block]
    for lake in layout.lakes:
        reach = lake.radius * 1.3
        rs, cs = (
            _span(rows, lake.row - reach, lake.row + reach),
            _span(cols, lake.col - reach, lake.col + reach),
        )
        if rs.start == rs.stop or cs.start == cs.stop:
            continue
        dy = (rows[rs] + 0.5 - lake.row)[:, None]
        dx = (cols[cs] + 0.5 - lake.col)[None, :]
        theta = np.arctan2(dy, dx)
        radius = lake.radius * (
            1
            + 0.18 * np.sin(2 * theta + lake.phases[0])
            + 0.08 * np.sin(5 * theta + lake.phases[1])
        )
        sub = classes[rs, cs]
        sub[np.hypot(dy, dx) < radius] = WATER
    river = layout.river
    centre = np.full(len(rows), river.col)
    for a, wl, p in zip(river.amplitudes, river.wavelengths, river.phases, strict=True):
        centre = centre + a * np.sin(2 * np.pi * (rows + 0.5) / wl + p)
    classes[np.abs((cols + 0.5)[None, :] - centre[:, None]) < river.width / 2] = WATER
    return classes, units


# ----------------------------------------------------------------------------- reflectance


def reflectance_table(layout: Layout, doy: float, names: Sequence[str]) -> NDArray[np.float32]:
    """Surface reflectance of every unit seen as every class on one day.

    Parameters
    ----------
    doy : float
        Day of year of the acquisition (drives phenology).
    names : sequence of str
        Common names of the bands (subset of :data:`COMMON_NAMES`).

    Returns
    -------
    ndarray
        ``(band, class, unit)`` float32 reflectance (0..1); class 0 (nodata) is all 0.
        A pixel's surface reflectance in band ``b`` is ``table[b, class, unit]``.
    """
    em = np.array([[ENDMEMBERS[m][COMMON_NAMES.index(n)] for n in names] for m in _MIX])
    n = layout.n_units
    bright, shift = layout.unit_bright, layout.unit_shift
    cover = np.zeros((N_CLASSES, n, len(_MIX)), dtype=np.float64)
    cover[WATER, :, 0] = 1 + 0.3 * (bright - 1)
    days, canopy = FOREST_CANOPY
    leaf = np.interp(doy + 0.3 * shift, days, canopy)
    cover[FOREST, :, 1] = leaf * (1 + 0.5 * (bright - 1))
    cover[FOREST, :, 3] = 1 - leaf
    for cls, spread in ((CROPLAND, 1.0), (GRASSLAND, 0.5)):
        stages, fractions = PHENOLOGY[cls]
        f = np.asarray(fractions)
        for k, member in enumerate((2, 3, 4)):  # green, dry, soil
            cover[cls, :, member] = np.interp(doy + spread * shift, stages, f[:, k]) * bright
    cover[URBAN, :, 5] = (1 - layout.unit_green) * bright
    cover[URBAN, :, 2] = layout.unit_green * bright
    cover[BARE, :, 4] = bright
    return np.ascontiguousarray(np.einsum("cum,mb->bcu", cover, em), dtype=np.float32)


# ----------------------------------------------------------------------------- the sky


@dataclass(frozen=True)
class Sky:
    """Clouds, their shadows, cirrus and the data footprint of one acquisition.

    Opacity of cloud = ``clip((n - threshold) / soft, 0, 1)`` of a noise field ``n``;
    a pixel is shadowed by the cloud ``shadow_shift`` (rows, cols; 10 m pixels) away
    towards the sun.
    """

    cloud: Noise
    cloud_threshold: float
    cloud_soft: float
    cirrus: Noise | None
    cirrus_threshold: float
    cirrus_soft: float
    shadow_shift: tuple[float, float]
    nodata: str
    size: int
    index: int


def make_sky(spec: SceneSpec, size: int, seed: int) -> Sky:
    """Draw the clouds of ``spec`` (about ``spec.cloud`` of the area under cloud)."""
    rng = np.random.default_rng([seed, 1, spec.index])
    canvas = math.ceil(size / 6) * 6 + 6
    cloud = make_noise(rng, canvas + 100, (110, 36, 12), (1.0, 0.5, 0.25))
    thr, sd = noise_threshold(cloud, size, spec.cloud)
    cirrus, c_thr, c_sd = None, 0.0, 1.0
    if spec.cirrus > 0:
        cirrus = make_noise(rng, canvas, (200, 60), (1.0, 0.4))
        c_thr, c_sd = noise_threshold(cirrus, size, spec.cirrus)
    # sun in the south-south-east at ~10:30 local time: shadows fall north-north-west
    d = float(np.clip(0.08 * size, 6, 80))
    azimuth = np.deg2rad(rng.uniform(20, 35))
    return Sky(
        cloud=cloud,
        cloud_threshold=thr,
        cloud_soft=0.1 * sd,
        cirrus=cirrus,
        cirrus_threshold=c_thr,
        cirrus_soft=0.5 * c_sd,
        shadow_shift=(d * float(np.cos(azimuth)), d * float(np.sin(azimuth))),
        nodata=spec.nodata,
        size=size,
        index=spec.index,
    )


def valid_at(sky: Sky, y: NDArray[np.floating], x: NDArray[np.floating]) -> NDArray[np.bool_]:
    """True where the acquisition has data, at pixel centres ``y`` x ``x`` (10 m units)."""
    size = sky.size
    if sky.nodata == "orbit-edge":
        # the swath's eastern edge, slanted like a descending orbit track
        return x[None, :] < 0.80 * size + 0.12 * y[:, None]
    if sky.nodata == "footprint":
        # the rotated WRS-2 scene footprint clips the corners of the map grid
        angle = np.deg2rad(12.0)
        shift = 0.02 * size * (sky.index - 3)
        dy = (y - size / 2 + shift)[:, None]
        dx = (x - size / 2 - shift)[None, :]
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        half = 0.53 * size
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    return np.ones((len(y), len(x)), dtype=bool)


@dataclass
class Pixels:
    """What one block of a grid sees; all arrays ``(rows, cols)``.

    Attributes
    ----------
    classes : uint8 land-cover codes.  index : intp ``class * n_units + unit`` into the
    flattened ``(class, unit)`` planes of :func:`reflectance_table`.  valid : bool data
    footprint.  cloud, cirrus, shadow : float32 opacities / shadow strength 0..1.
    saturated : bool, a saturating roof seen clear (the visible bands saturate).
    """

    classes: NDArray[np.uint8]
    index: NDArray[np.intp]
    valid: NDArray[np.bool_]
    cloud: NDArray[np.float32]
    cirrus: NDArray[np.float32]
    shadow: NDArray[np.float32]
    saturated: NDArray[np.bool_]


def pixels_at(layout: Layout, sky: Sky, grid: Grid, r0: int, r1: int) -> Pixels:
    """Land cover and sky of rows ``r0 .. r1`` of ``grid``.

    A coarse pixel takes the land cover of the 10 m pixel at its centre; clouds and the
    footprint are evaluated at its centre, so 10, 20, 30 and 60 m grids agree.
    """
    k = grid.factor
    r = np.arange(r0, r1)
    c = np.arange(grid.width)
    classes, units = landcover_at(layout, r * k + k // 2, c * k + k // 2)
    y, x = (r + 0.5) * k, (c + 0.5) * k
    cloud = np.clip((sample_noise(sky.cloud, y, x) - sky.cloud_threshold) / sky.cloud_soft, 0, 1)
    dy, dx = sky.shadow_shift
    shadow = np.clip(
        (sample_noise(sky.cloud, y + dy, x + dx) - sky.cloud_threshold) / sky.cloud_soft, 0, 1
    )
    if sky.cirrus is not None:
        cirrus = CIRRUS_MAX * np.clip(
            (sample_noise(sky.cirrus, y, x) - sky.cirrus_threshold) / sky.cirrus_soft, 0, 1
        )
    else:
        cirrus = np.zeros_like(cloud)
    index = classes.astype(np.intp) * layout.n_units + units
    valid = valid_at(sky, y, x)
    roof = np.isin(units, layout.roof_units) & (classes == URBAN)
    saturated = roof & valid & (cloud < 0.1) & (shadow < 0.4)
    return Pixels(
        classes,
        index,
        valid,
        cloud.astype(np.float32, copy=False),
        cirrus.astype(np.float32, copy=False),
        shadow.astype(np.float32, copy=False),
        saturated,
    )


def to_dn(
    reflectance: NDArray[np.float32], valid: NDArray[np.bool_], scale: float, offset: float
) -> NDArray[np.uint16]:
    """DN = round((reflectance - offset) / scale), clipped to 1..65534; 0 outside ``valid``.

    0 is the products' no-data DN and 65535 their saturated one, so a valid pixel never
    gets either by accident (Sentinel-2 ``Special_Values``; Landsat QUANTIZE_CAL_MIN/MAX).
    """
    dn = (reflectance - np.float32(offset)) / np.float32(scale)
    np.rint(dn, out=dn)
    np.clip(dn, 1, SATURATED_DN - 1, out=dn)
    out = dn.astype(np.uint16)
    out[~valid] = 0
    return out


def scl_codes(px: Pixels, red: NDArray[np.float32], nir: NDArray[np.float32]) -> NDArray:
    """Sentinel-2 L2A scene classification (SCL codes) from the sky and the surface.

    ``red`` and ``nir`` are cloud-free surface reflectance (for the vegetation test).
    Returns a uint8 array: 0 no data, 1 saturated, 3 cloud shadow, 4 vegetation, 5 not
    vegetated, 6 water, 8/9 cloud medium/high probability, 10 thin cirrus.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        ndvi = (nir - red) / (nir + red)
    scl = np.where(ndvi >= 0.4, 4, 5).astype(np.uint8)
    scl[px.classes == WATER] = 6
    scl[px.shadow >= 0.4] = 3
    scl[px.cirrus >= 0.03] = 10
    scl[px.cloud >= 0.1] = 8
    scl[px.cloud >= 0.5] = 9
    scl[px.saturated] = 1
    scl[~px.valid] = 0
    return scl


def qa_pixel_values(px: Pixels) -> NDArray[np.uint16]:
    """Landsat Collection 2 QA_PIXEL bit words (uint16) from the sky and land cover.

    Fill pixels are exactly 1. Cloud: opacity >= 0.5 (confidence high); dilated cloud:
    the cloud's soft edge (confidence medium); clear = neither (a shadowed pixel is
    clear too, as in USGS products); water only where clear. Unflagged confidences
    are "low" (1), so a clear land pixel is 21824 and a clear water pixel 21952.
    """
    cloud = px.cloud >= 0.5
    dilated = (px.cloud >= 0.1) & ~cloud
    cirrus = px.cirrus >= 0.03
    shadow = (px.shadow >= 0.4) & ~cloud
    clear = ~(cloud | dilated)
    water = (px.classes == WATER) & clear
    bit, conf = QA_PIXEL_BITS, QA_PIXEL_CONFIDENCE
    qa = np.zeros(px.classes.shape, dtype=np.uint16)
    for flag, name in (
        (cloud, "cloud"),
        (dilated, "dilated_cloud"),
        (cirrus, "cirrus"),
        (shadow, "cloud_shadow"),
        (clear, "clear"),
        (water, "water"),
    ):
        qa |= flag.astype(np.uint16) << bit[name]
    levels = {
        "cloud_confidence": np.where(cloud, 3, np.where(dilated, 2, 1)),
        "cloud_shadow_confidence": np.where(shadow, 3, 1),
        "snow_ice_confidence": np.ones_like(qa),
        "cirrus_confidence": np.where(cirrus, 3, 1),
    }
    for name, level in levels.items():
        qa |= level.astype(np.uint16) << conf[name]
    qa[~px.valid] = 1 << bit["fill"]
    return qa


def qa_radsat_values(px: Pixels, bits: Sequence[int]) -> NDArray[np.uint16]:
    """Landsat Collection 2 QA_RADSAT words (uint16): ``bits`` set where ``px.saturated``.

    ``bits`` are the QA_RADSAT bits of the saturated bands (OLI band n -> bit n - 1,
    LSDS-1619). Every other pixel, fill included, is 0, as in USGS products.
    """
    word = sum(1 << b for b in bits)
    return np.where(px.saturated, word, 0).astype(np.uint16)


def render_grid(
    layout: Layout,
    spec: SceneSpec,
    sky: Sky,
    table: NDArray[np.float32],
    names: Sequence[str],
    grid: Grid,
    bands: Sequence[Band],
    seed: int,
) -> Iterator[tuple[int, dict[str, NDArray]]]:
    """Yield ``(first row, {band name: DN array})`` for each row block of ``grid``.

    Reflectance = surface * texture * (1 - 0.7 shadow) * (1 - haze) + haze * cloud + noise,
    with haze the combined cloud and cirrus opacity; converted to DN with the product's
    scaling. Sentinel-2 water loses :data:`S2_WATER_OVERCORRECTION` in the SWIR. Saturating
    roofs get :data:`SATURATED_DN` in :data:`SATURATING_BANDS`. Quality bands (SCL,
    QA_PIXEL, QA_RADSAT) come from the same fields.
    """
    scale, offset = spec.scaling
    s2 = spec.sensor is SENTINEL2_L2A
    cloud_em = dict(zip(COMMON_NAMES, ENDMEMBERS["cloud"], strict=True))
    radsat_bits = [
        spec.sensor.saturation_bits[b.name]
        for b in spec.sensor.reflectance_bands
        if b.name in SATURATING_BANDS and b.name in spec.sensor.saturation_bits
    ]
    planes = table.reshape(table.shape[0], -1)
    for block, r0 in enumerate(range(0, grid.height, BLOCK_ROWS)):
        r1 = min(grid.height, r0 + BLOCK_ROWS)
        px = pixels_at(layout, sky, grid, r0, r1)
        rng = np.random.default_rng([seed, 2, spec.index, grid.factor, block])
        texture = 1 + TEXTURE[px.classes] / np.float32(math.sqrt(grid.factor)) * (
            rng.standard_normal(px.classes.shape, dtype=np.float32)
        )
        haze = 1 - (1 - px.cloud) * (1 - px.cirrus)
        weight = texture * (1 - SHADOW_DARKENING * px.shadow) * (1 - haze)
        out: dict[str, NDArray] = {}
        for band in bands:
            if band.name == "SCL":
                red, nir = (planes[names.index(n)][px.index] for n in ("red", "nir08"))
                out[band.name] = scl_codes(px, red, nir)
            elif band.name == "QA_PIXEL":
                out[band.name] = qa_pixel_values(px)
            elif band.name == "QA_RADSAT":
                out[band.name] = qa_radsat_values(px, radsat_bits)
            else:
                refl = planes[names.index(band.common)][px.index] * weight
                refl += haze * np.float32(cloud_em[band.common])
                refl += (rng.random(refl.shape, dtype=np.float32) - np.float32(0.5)) * np.float32(
                    NOISE_SD * math.sqrt(12)
                )
                if s2 and band.common in S2_WATER_OVERCORRECTION:
                    water = (px.classes == WATER) * (1 - haze)
                    refl -= np.float32(S2_WATER_OVERCORRECTION[band.common]) * water
                dn = to_dn(refl, px.valid, scale, offset)
                if band.name in SATURATING_BANDS:
                    dn[px.saturated] = SATURATED_DN
                out[band.name] = dn
        yield r0, out


# ----------------------------------------------------------------------------- writers


def geotiff_profile(grid: Grid, dtype: str, nodata: int | None) -> dict[str, Any]:
    """Creation options of every demo raster: tiled, DEFLATE + horizontal predictor."""
    block = 512 if min(grid.width, grid.height) >= 512 else 256
    return {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "count": 1,
        "dtype": dtype,
        "crs": CRS,
        "transform": grid.transform,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "compress": "deflate",
        "predictor": 2,
    }


@contextmanager
def create_rasters(files: dict[str, tuple[Path, dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    """Open ``{name: (path, profile)}`` for writing; yield ``{name: dataset}``."""
    with ExitStack() as stack:
        out = {}
        for name, (path, profile) in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            out[name] = stack.enter_context(rasterio.open(path, "w", **profile))
        yield out


def write_landcover(layout: Layout, path: Path) -> Path:
    """Write ``landcover_10m.tif`` (uint8 class codes, nodata 0) in row blocks."""
    grid = grid_for(layout.size, PIXEL)
    cols = np.arange(grid.width)
    with create_rasters({"lc": (path, geotiff_profile(grid, "uint8", 0))}) as dst:
        for r0 in range(0, grid.height, BLOCK_ROWS):
            r1 = min(grid.height, r0 + BLOCK_ROWS)
            classes, _ = landcover_at(layout, np.arange(r0, r1), cols)
            dst["lc"].write(classes, 1, window=Window(0, r0, grid.width, r1 - r0))
    return path


@dataclass(frozen=True)
class SceneRecord:
    """What was written for one scene (for the catalogue and the manifest)."""

    spec: SceneSpec
    folder: Path
    metadata: Path
    files: dict[str, Path]
    grids: dict[str, Grid]
    cloud_cover: float


def _band_names(sensor: Sensor) -> list[str]:
    return [b.common for b in sensor.reflectance_bands]


def _write_bands(
    layout: Layout, spec: SceneSpec, files: dict[str, Path], seed: int
) -> tuple[dict[str, Grid], NDArray[np.int64], int]:
    """Render and write every band of ``spec``, grid by grid.

    Returns the grid of each band, the histogram of the quality band's values (SCL
    codes, QA_PIXEL words; 0..65535) and the bitwise OR of all QA_RADSAT words (0 for a
    product without that band): bit n - 1 set = band n saturated somewhere.
    """
    sky = make_sky(spec, layout.size, seed)
    names = _band_names(spec.sensor)
    table = reflectance_table(layout, spec.doy, names)
    grids: dict[str, Grid] = {}
    counts = np.zeros(1 << 16, dtype=np.int64)
    radsat = 0
    for res in sorted({b.resolution for b in spec.sensor.bands}):
        grid = grid_for(layout.size, res)
        bands = [b for b in spec.sensor.bands if b.resolution == res]
        specs = {}
        for b in bands:
            grids[b.name] = grid
            dtype = "uint8" if b.name == "SCL" else "uint16"
            # QA_PIXEL fill is 1, as USGS writes it; QA_RADSAT has no nodata (0 = fine)
            nodata = {"QA_PIXEL": 1, "QA_RADSAT": None}.get(b.name, 0)
            specs[b.name] = (files[b.name], geotiff_profile(grid, dtype, nodata))
        with create_rasters(specs) as dst:
            for r0, arrays in render_grid(layout, spec, sky, table, names, grid, bands, seed):
                for name, arr in arrays.items():
                    dst[name].write(arr, 1, window=Window(0, r0, grid.width, arr.shape[0]))
                    if name == "QA_RADSAT":
                        radsat |= int(np.bitwise_or.reduce(arr, axis=None))
                    elif spec.sensor.band(name).role == "quality":
                        counts += np.bincount(arr.ravel(), minlength=1 << 16)
    return grids, counts, radsat


def _percent(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole else 0.0


def write_sentinel2(root: Path, layout: Layout, spec: SceneSpec, seed: int) -> SceneRecord:
    """Write one Sentinel-2 L2A product in the SAFE layout (GeoTIFF bands) under ``root``."""
    safe = root / f"{spec.scene_id}.SAFE"
    shutil.rmtree(safe, ignore_errors=True)
    stamp = spec.sensing.strftime("%Y%m%dT%H%M%S")
    granule = f"L2A_T{MGRS_TILE}_A{spec.orbit:06d}_{stamp}"
    img = safe / "GRANULE" / granule / "IMG_DATA"
    files = {
        b.name: img
        / f"R{b.resolution:.0f}m"
        / f"T{MGRS_TILE}_{stamp}_{b.name}_{b.resolution:.0f}m.tif"
        for b in spec.sensor.bands
    }
    grids, counts, _ = _write_bands(layout, spec, files, seed)
    scl = counts[: len(SCL_CLASSES)]
    mtd = safe / "MTD_MSIL2A.xml"
    tree = s2_mtd_xml(spec, {k: v.relative_to(safe) for k, v in files.items()}, scl, layout.size)
    tree.write(mtd, encoding="UTF-8", xml_declaration=True)
    valid = scl[1:].sum()
    return SceneRecord(spec, safe, mtd, files, grids, _percent(scl[[8, 9, 10]].sum(), valid))


def write_landsat(root: Path, layout: Layout, spec: SceneSpec, seed: int) -> SceneRecord:
    """Write one Landsat C2 L2 product in the USGS layout (``<ID>_SR_B4.TIF`` ...)."""
    folder = root / spec.scene_id
    shutil.rmtree(folder, ignore_errors=True)
    files = {b.name: folder / f"{spec.scene_id}_{b.name}.TIF" for b in spec.sensor.bands}
    grids, counts, radsat = _write_bands(layout, spec, files, seed)
    values = np.nonzero(counts)[0]
    n = counts[values]
    fill = n[values == 1].sum()
    cloud = n[(values & (1 << QA_PIXEL_BITS["cloud"])) > 0].sum()
    land = (values & (1 << QA_PIXEL_BITS["water"])) == 0
    cloud_land = n[land & ((values & (1 << QA_PIXEL_BITS["cloud"])) > 0)].sum()
    cover = _percent(cloud, n.sum() - fill)
    cover_land = _percent(cloud_land, n[land].sum() - fill)
    mtl = folder / f"{spec.scene_id}_MTL.txt"
    text = landsat_mtl(spec, files, grids["SR_B2"], cover, cover_land, radsat)
    mtl.write_text(text, encoding="utf-8")
    return SceneRecord(spec, folder, mtl, files, grids, cover)


# ----------------------------------------------------------------------------- metadata


def _sub(parent: ET.Element, tag: str, text: object = None, **attrib: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrib)
    if text is not None:
        el.text = str(text)
    return el


def _iso_ms(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _corners_lonlat(grid: Grid) -> list[tuple[float, float]]:
    """(lon, lat) of the UL, UR, LR, LL corners of ``grid``."""
    x1, y1 = X0 + grid.width * grid.res, Y0 - grid.height * grid.res
    lon, lat = transform_points(CRS, "EPSG:4326", [X0, x1, x1, X0], [Y0, Y0, y1, y1])
    return list(zip(lon, lat, strict=True))


#: ESA ``band_id`` order of the L2A metadata (BOA_ADD_OFFSET, SOLAR_IRRADIANCE, ...).
S2_BAND_IDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10",
               "B11", "B12")  # fmt: skip
S2_RESOLUTIONS = (60, 10, 10, 10, 20, 20, 20, 10, 20, 60, 60, 20, 20)
#: Per unit: solar irradiance (W/m2/um) of every band_id, as real S2A / S2B products write it.
S2_SOLAR_IRRADIANCE: dict[str, tuple[float, ...]] = {
    "A": (1884.69, 1959.66, 1823.24, 1512.06, 1424.64, 1287.61, 1162.08, 1041.63, 955.32,
          812.92, 367.15, 245.59, 85.25),
    "B": (1874.3, 1959.75, 1824.93, 1512.79, 1425.78, 1291.13, 1175.57, 1041.28, 953.93,
          817.58, 365.41, 247.08, 87.75),
}  # fmt: skip
#: Per unit: (min, max, central) wavelength in nm of every band_id (real S2A / S2B products).
S2_WAVELENGTHS_NM: dict[str, tuple[tuple[int, int, float], ...]] = {
    "A": ((412, 456, 442.7), (456, 533, 492.7), (538, 583, 559.8), (646, 684, 664.6),
          (695, 714, 704.1), (731, 749, 740.5), (769, 797, 782.8), (760, 907, 832.8),
          (837, 881, 864.7), (932, 958, 945.1), (1337, 1412, 1373.5), (1539, 1682, 1613.7),
          (2078, 2320, 2202.4)),
    "B": ((411, 456, 442.3), (456, 532, 492.3), (536, 582, 559.0), (646, 685, 665.0),
          (694, 714, 703.8), (730, 748, 739.1), (766, 794, 779.7), (774, 907, 833.0),
          (848, 880, 864.0), (930, 957, 943.2), (1339, 1415, 1376.9), (1538, 1679, 1610.4),
          (2065, 2303, 2185.7)),
}  # fmt: skip
#: SCENE_CLASSIFICATION_TEXT of SCL codes 0..11, as the real MTD_MSIL2A.xml spells them.
S2_SCL_TEXT = (
    "SC_NODATA", "SC_SATURATED_DEFECTIVE", "SC_DARK_FEATURE_SHADOW", "SC_CLOUD_SHADOW",
    "SC_VEGETATION", "SC_NOT_VEGETATED", "SC_WATER", "SC_UNCLASSIFIED",
    "SC_CLOUD_MEDIUM_PROBA", "SC_CLOUD_HIGH_PROBA", "SC_THIN_CIRRUS", "SC_SNOW_ICE",
)  # fmt: skip
S2_L2A_DOI = "https://doi.org/10.5270/S2_-znk9xsj"  # PRODUCT_DOI, from baseline 04.00
LANDSAT_L2_DOI = "https://doi.org/10.5066/P9OGBGM6"  # Landsat 8-9 OLI/TIRS C2 L2
LANDSAT_L1_DOI = "https://doi.org/10.5066/P975CC9B"  # Landsat 8-9 OLI/TIRS C2 L1


def _sun_distance(doy: int) -> float:
    """Earth-Sun distance in astronomical units on day of year ``doy`` (first order)."""
    return 1.0 - 0.01672 * math.cos(math.radians(0.9856 * (doy - 4)))


def _s2_ids(spec: SceneSpec) -> dict[str, str]:
    """ESA identifiers of the datatake, datastrip and granule of a Sentinel-2 product."""
    unit = spec.platform[-1].upper()
    sensing = f"{spec.sensing:%Y%m%dT%H%M%S}"
    n = f"N{spec.baseline}"
    return {
        "datatake": f"GS2{unit}_{sensing}_{spec.orbit:06d}_{n}",
        "datastrip": f"S2{unit}_OPER_MSI_L2A_DS_2APS_{spec.processed}_S{sensing}_{n}",
        "granule": f"S2{unit}_OPER_MSI_L2A_TL_2APS_{spec.processed}_A{spec.orbit:06d}_"
        f"T{MGRS_TILE}_{n}",
    }


def s2_mtd_xml(
    spec: SceneSpec, images: dict[str, Path], scl: NDArray[np.int64], size: int
) -> ET.ElementTree:
    """``MTD_MSIL2A.xml`` shaped like the real product's: same names, nesting and order.

    A subset of the real elements (see the module's Decisions). ``scl`` is the histogram
    of SCL codes 0..11: NODATA_PIXEL_PERCENTAGE is relative to all pixels, the class
    percentages to the valid ones, and Cloud_Coverage_Assessment is the sum of the
    medium, high probability cloud and thin cirrus percentages (as in real products).
    Products before baseline 04.00 carry no ``BOA_ADD_OFFSET_VALUES_LIST`` and no
    ``PRODUCT_DOI``.
    """
    uri = "https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd"
    # Literal "n1:" tags plus the xmlns:n1 attribute serialise as the real file's prefix
    # without registering a prefix in ElementTree's global namespace map.
    root = ET.Element(
        "n1:Level-2A_User_Product",
        {
            "xmlns:n1": uri,
            "xmlns:xsi": "http://www.w3.org/2001/XMLSchema-instance",
            "xsi:schemaLocation": uri,
        },
    )
    modern = float(spec.baseline) >= 4.0
    unit = spec.platform[-1].upper()
    ids = _s2_ids(spec)
    general = _sub(root, "n1:General_Info")
    info = _sub(general, "Product_Info")
    start = _iso_ms(spec.sensing)
    processed = datetime.strptime(spec.processed, "%Y%m%dT%H%M%S")
    _sub(info, "PRODUCT_START_TIME", start)
    _sub(info, "PRODUCT_STOP_TIME", start)
    _sub(info, "PRODUCT_URI", f"{spec.scene_id}.SAFE")
    _sub(info, "PROCESSING_LEVEL", "Level-2A")
    _sub(info, "PRODUCT_TYPE", "S2MSI2A")
    _sub(info, "PROCESSING_BASELINE", spec.baseline)
    if modern:
        _sub(info, "PRODUCT_DOI", S2_L2A_DOI)
    _sub(info, "GENERATION_TIME", processed.strftime("%Y-%m-%dT%H:%M:%S.000000Z"))
    _sub(info, "PREVIEW_IMAGE_URL", "Not applicable")
    _sub(info, "PREVIEW_GEO_INFO", "Not applicable")
    take = _sub(info, "Datatake", datatakeIdentifier=ids["datatake"])
    _sub(take, "SPACECRAFT_NAME", f"Sentinel-2{unit}")
    _sub(take, "DATATAKE_TYPE", "INS-NOBS")
    _sub(take, "DATATAKE_SENSING_START", start)
    _sub(take, "SENSING_ORBIT_NUMBER", spec.scene_id.split("_")[4][1:].lstrip("0"))
    _sub(take, "SENSING_ORBIT_DIRECTION", "DESCENDING")
    _sub(_sub(info, "Query_Options", completeSingleTile="true"), "PRODUCT_FORMAT", "SAFE_COMPACT")
    granules = _sub(_sub(info, "Product_Organisation"), "Granule_List")
    granule = _sub(
        granules,
        "Granule",
        datastripIdentifier=ids["datastrip"],
        granuleIdentifier=ids["granule"],
        imageFormat="GeoTIFF",  # as the real products ESA reprocessed to GeoTIFF say
    )
    # by resolution folder (R10m, R20m, R60m), band order within one, as real products list
    for path in sorted(images.values(), key=lambda p: int(p.parent.name[1:-1])):
        _sub(granule, "IMAGE_FILE", path.with_suffix("").as_posix())

    chars = _sub(general, "Product_Image_Characteristics")
    for text, index in (("NODATA", 0), ("SATURATED", SATURATED_DN)):
        special = _sub(chars, "Special_Values")
        _sub(special, "SPECIAL_VALUE_TEXT", text)
        _sub(special, "SPECIAL_VALUE_INDEX", index)
    order = _sub(chars, "Image_Display_Order")
    for tag, channel in (("RED_CHANNEL", 3), ("GREEN_CHANNEL", 2), ("BLUE_CHANNEL", 1)):
        _sub(order, tag, channel)
    quant = _sub(chars, "QUANTIFICATION_VALUES_LIST")
    _sub(quant, "BOA_QUANTIFICATION_VALUE", 10000, unit="none")
    _sub(quant, "AOT_QUANTIFICATION_VALUE", "1000.0", unit="none")
    _sub(quant, "WVP_QUANTIFICATION_VALUE", "1000.0", unit="cm")
    if modern:
        offsets = _sub(chars, "BOA_ADD_OFFSET_VALUES_LIST")
        for i in range(len(S2_BAND_IDS)):
            _sub(offsets, "BOA_ADD_OFFSET", f"{spec.boa_offset:.0f}", band_id=str(i))
    conversion = _sub(chars, "Reflectance_Conversion")
    _sub(conversion, "U", f"{_sun_distance(spec.doy) ** -2:.14f}")
    irradiance = _sub(conversion, "Solar_Irradiance_List")
    for i, value in enumerate(S2_SOLAR_IRRADIANCE.get(unit, S2_SOLAR_IRRADIANCE["A"])):
        _sub(irradiance, "SOLAR_IRRADIANCE", f"{value:g}", bandId=str(i), unit="W/m²/µm")
    spectral = _sub(chars, "Spectral_Information_List")
    waves = S2_WAVELENGTHS_NM.get(unit, S2_WAVELENGTHS_NM["A"])
    for i, (name, res, (lo, hi, mid)) in enumerate(
        zip(S2_BAND_IDS, S2_RESOLUTIONS, waves, strict=True)
    ):
        band = _sub(
            spectral,
            "Spectral_Information",
            bandId=str(i),
            physicalBand=name[0] + name[1:].lstrip("0"),
        )
        _sub(band, "RESOLUTION", res)
        wave = _sub(band, "Wavelength")
        _sub(wave, "MIN", lo, unit="nm")
        _sub(wave, "MAX", hi, unit="nm")
        _sub(wave, "CENTRAL", f"{mid:g}", unit="nm")
    classes = _sub(chars, "Scene_Classification_List")
    for code, text in enumerate(S2_SCL_TEXT):
        sc = _sub(classes, "Scene_Classification_ID")
        _sub(sc, "SCENE_CLASSIFICATION_TEXT", text)
        _sub(sc, "SCENE_CLASSIFICATION_INDEX", code)

    geo = _sub(root, "n1:Geometric_Info")
    product_footprint = _sub(geo, "Product_Footprint")
    footprint = _sub(product_footprint, "Product_Footprint")
    ring = _corners_lonlat(grid_for(size, PIXEL))
    ring.append(ring[0])
    _sub(
        _sub(footprint, "Global_Footprint"),
        "EXT_POS_LIST",
        " ".join(f"{lat:.8f} {lon:.8f}" for lon, lat in ring),
    )
    _sub(product_footprint, "RASTER_CS_TYPE", "POINT")
    _sub(product_footprint, "PIXEL_ORIGIN", 1)
    crs = _sub(geo, "Coordinate_Reference_System")
    _sub(crs, "GEO_TABLES", "EPSG", version="1")
    _sub(crs, "HORIZONTAL_CS_TYPE", "GEOGRAPHIC")

    quality = _sub(root, "n1:Quality_Indicators_Info")
    valid = int(scl[1:].sum())
    cloudy = scl[[8, 9, 10]].sum()
    _sub(quality, "Cloud_Coverage_Assessment", f"{_percent(cloudy, valid):.6f}")
    technical = _sub(quality, "Technical_Quality_Assessment")
    _sub(technical, "DEGRADED_ANC_DATA_PERCENTAGE", "0.0")
    _sub(technical, "DEGRADED_MSI_DATA_PERCENTAGE", 0)
    qi = _sub(quality, "Image_Content_QI")
    if modern:
        # the demo's reading: cloudy pixels among those not classified water
        _sub(qi, "CLOUDY_PIXEL_OVER_LAND_PERCENTAGE", f"{_percent(cloudy, valid - scl[6]):.6f}")
    _sub(qi, "NODATA_PIXEL_PERCENTAGE", f"{_percent(scl[0], scl.sum()):.6f}")
    for tag, code in (
        ("SATURATED_DEFECTIVE_PIXEL_PERCENTAGE", 1),
        ("DARK_FEATURES_PERCENTAGE", 2),
        ("CLOUD_SHADOW_PERCENTAGE", 3),
        ("VEGETATION_PERCENTAGE", 4),
        ("NOT_VEGETATED_PERCENTAGE", 5),
        ("WATER_PERCENTAGE", 6),
        ("UNCLASSIFIED_PERCENTAGE", 7),
        ("MEDIUM_PROBA_CLOUDS_PERCENTAGE", 8),
        ("HIGH_PROBA_CLOUDS_PERCENTAGE", 9),
        ("THIN_CIRRUS_PERCENTAGE", 10),
        ("SNOW_ICE_PERCENTAGE", 11),
    ):
        _sub(qi, tag, f"{_percent(scl[code], valid):.6f}")
    tree = ET.ElementTree(root)
    ET.indent(tree, space="  ")
    return tree


def _odl(groups: list[tuple[str, list[tuple[str, str]]]]) -> str:
    """USGS ODL text: ``GROUP = LANDSAT_METADATA_FILE`` holding the given groups, ``END``."""
    lines = ["GROUP = LANDSAT_METADATA_FILE"]
    for name, items in groups:
        lines.append(f"  GROUP = {name}")
        lines += [f"    {key} = {value}" for key, value in items]
        lines.append(f"  END_GROUP = {name}")
    lines += ["END_GROUP = LANDSAT_METADATA_FILE", "END", ""]
    return "\n".join(lines)


def landsat_scene_id(spec: SceneSpec) -> str:
    """The Landsat scene id (``LC81980252024136LGN00``) of a product id and sensing date."""
    pid = spec.scene_id
    return f"{pid[:2]}{int(pid[2:4])}{pid[10:16]}{spec.sensing:%Y}{spec.doy:03d}LGN00"


def landsat_mtl(
    spec: SceneSpec,
    files: dict[str, Path],
    grid: Grid,
    cover: float,
    cover_land: float,
    radsat: int = 0,
) -> str:
    """``<ID>_MTL.txt`` in the Collection 2 ODL format, groups and keys as USGS writes them.

    A subset of the real groups (see the module's Decisions). ``radsat`` is the bitwise OR
    of the QA_RADSAT words: SATURATION_BAND_n is ``"Y"`` where bit n - 1 is set.
    """

    def q(text: object) -> str:
        return f'"{text}"'

    pid = spec.scene_id
    level = pid.split("_")[1]  # L2SP / L2SR: what the product id says
    origin = q("Image courtesy of the U.S. Geological Survey (synthetic demo data)")
    sr = [b for b in spec.sensor.bands if b.role == "reflectance"]
    contents = [
        ("ORIGIN", origin),
        ("DIGITAL_OBJECT_IDENTIFIER", q(LANDSAT_L2_DOI)),
        ("LANDSAT_PRODUCT_ID", q(pid)),
        ("PROCESSING_LEVEL", q(level)),
        ("COLLECTION_NUMBER", pid.split("_")[5]),
        ("COLLECTION_CATEGORY", q(pid.rsplit("_", 1)[1])),
        ("OUTPUT_FORMAT", q("GEOTIFF")),
        *[(f"FILE_NAME_BAND_{b.name[-1]}", q(files[b.name].name)) for b in sr],
        ("FILE_NAME_QUALITY_L1_PIXEL", q(files["QA_PIXEL"].name)),
        ("FILE_NAME_QUALITY_L1_RADIOMETRIC_SATURATION", q(files["QA_RADSAT"].name)),
        ("FILE_NAME_METADATA_ODL", q(f"{pid}_MTL.txt")),
        *[(f"DATA_TYPE_BAND_{b.name[-1]}", q("UINT16")) for b in sr],
        ("DATA_TYPE_QUALITY_L1_PIXEL", q("UINT16")),
        ("DATA_TYPE_QUALITY_L1_RADIOMETRIC_SATURATION", q("UINT16")),
    ]
    t = spec.sensing
    path, row = str(int(pid[10:13])), str(int(pid[13:16]))
    attributes = [
        ("SPACECRAFT_ID", q(spec.platform.upper().replace("-", "_"))),
        ("SENSOR_ID", q("OLI_TIRS")),
        ("WRS_TYPE", "2"),
        ("WRS_PATH", path),
        ("WRS_ROW", row),
        ("NADIR_OFFNADIR", q("NADIR")),
        ("TARGET_WRS_PATH", path),
        ("TARGET_WRS_ROW", row),
        ("DATE_ACQUIRED", t.strftime("%Y-%m-%d")),
        ("SCENE_CENTER_TIME", q(t.strftime("%H:%M:%S.") + f"{t.microsecond:06d}0Z")),
        ("STATION_ID", q("LGN")),
        ("CLOUD_COVER", f"{cover:.2f}"),
        ("CLOUD_COVER_LAND", f"{cover_land:.2f}"),
        ("IMAGE_QUALITY_OLI", "9"),
        ("IMAGE_QUALITY_TIRS", "9"),
        *[(f"SATURATION_BAND_{n}", q("Y" if radsat >> (n - 1) & 1 else "N")) for n in range(1, 10)],
        ("ROLL_ANGLE", "-0.001"),
        ("SUN_AZIMUTH", "148.51234567"),
        ("SUN_ELEVATION", "52.34567890"),
        ("EARTH_SUN_DISTANCE", f"{_sun_distance(spec.doy):.7f}"),
        ("TRUNCATION_OLI", q("UPPER")),
    ]
    x1, y1 = X0 + grid.width * grid.res, Y0 - grid.height * grid.res
    corners = dict(zip(("UL", "UR", "LR", "LL"), _corners_lonlat(grid), strict=True))
    xy = {"UL": (X0, Y0), "UR": (x1, Y0), "LR": (x1, y1), "LL": (X0, y1)}
    projection = [
        ("MAP_PROJECTION", q("UTM")),
        ("DATUM", q("WGS84")),
        ("ELLIPSOID", q("WGS84")),
        ("UTM_ZONE", "31"),
        ("GRID_CELL_SIZE_REFLECTIVE", f"{grid.res:.2f}"),
        ("REFLECTIVE_LINES", str(grid.height)),
        ("REFLECTIVE_SAMPLES", str(grid.width)),
        ("ORIENTATION", q("NORTH_UP")),
    ]
    order = ("UL", "UR", "LL", "LR")  # the real file's order
    for corner in order:
        lon, lat = corners[corner]
        projection += [
            (f"CORNER_{corner}_LAT_PRODUCT", f"{lat:.5f}"),
            (f"CORNER_{corner}_LON_PRODUCT", f"{lon:.5f}"),
        ]
    for corner in order:
        x, y = xy[corner]
        projection += [
            (f"CORNER_{corner}_PROJECTION_X_PRODUCT", f"{x:.3f}"),
            (f"CORNER_{corner}_PROJECTION_Y_PRODUCT", f"{y:.3f}"),
        ]
    day = f"{spec.processed[:4]}-{spec.processed[4:6]}-{spec.processed[6:]}"
    record = [
        ("ORIGIN", origin),
        ("DIGITAL_OBJECT_IDENTIFIER", q(LANDSAT_L2_DOI)),
        ("LANDSAT_PRODUCT_ID", q(pid)),
        ("PROCESSING_LEVEL", q(level)),
        ("OUTPUT_FORMAT", q("GEOTIFF")),
        ("DATE_PRODUCT_GENERATED", f"{day}T12:00:00Z"),
        ("PROCESSING_SOFTWARE_VERSION", q("LPGS_16.4.0")),
        ("ALGORITHM_SOURCE_SURFACE_REFLECTANCE", q("LaSRC_1.6.0")),
    ]
    scale, offset = spec.scaling
    params: list[tuple[str, str]] = []
    for b in sr:
        n = b.name[-1]
        params += [
            (f"REFLECTANCE_MAXIMUM_BAND_{n}", f"{SATURATED_DN * scale + offset:.6f}"),
            (f"REFLECTANCE_MINIMUM_BAND_{n}", f"{scale + offset:.6f}"),
        ]
    for b in sr:
        params += [
            (f"QUANTIZE_CAL_MAX_BAND_{b.name[-1]}", str(SATURATED_DN)),
            (f"QUANTIZE_CAL_MIN_BAND_{b.name[-1]}", "1"),
        ]
    params += [(f"REFLECTANCE_MULT_BAND_{b.name[-1]}", f"{scale:.2e}") for b in sr]
    params += [(f"REFLECTANCE_ADD_BAND_{b.name[-1]}", f"{offset:g}") for b in sr]
    l1_id = pid.replace(f"_{level}_", "_L1TP_" if pid.endswith("_T1") else "_L1GT_")
    level1 = [
        ("ORIGIN", origin),
        ("DIGITAL_OBJECT_IDENTIFIER", q(LANDSAT_L1_DOI)),
        ("LANDSAT_SCENE_ID", q(landsat_scene_id(spec))),
        ("LANDSAT_PRODUCT_ID", q(l1_id)),
        ("PROCESSING_LEVEL", q(l1_id.split("_")[1])),
        ("COLLECTION_CATEGORY", q(pid.rsplit("_", 1)[1])),
        ("OUTPUT_FORMAT", q("GEOTIFF")),
        ("DATE_PRODUCT_GENERATED", f"{day}T11:00:00Z"),
        ("PROCESSING_SOFTWARE_VERSION", q("LPGS_16.4.0")),
    ]
    return _odl(
        [
            ("PRODUCT_CONTENTS", contents),
            ("IMAGE_ATTRIBUTES", attributes),
            ("PROJECTION_ATTRIBUTES", projection),
            ("LEVEL2_PROCESSING_RECORD", record),
            ("LEVEL2_SURFACE_REFLECTANCE_PARAMETERS", params),
            ("LEVEL1_PROCESSING_RECORD", level1),
        ]
    )


# ----------------------------------------------------------------------------- STAC

EO = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"
RASTER = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
PROJECTION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
PROCESSING = "https://stac-extensions.github.io/processing/v1.1.0/schema.json"
#: What the quality assets hold and their roles, as Earth Search v1 / USGS items give them.
QUALITY_ASSETS: dict[str, tuple[str, list[str]]] = {
    "SCL": ("Scene classification map (SCL)", ["data"]),
    "QA_PIXEL": (
        "Pixel Quality Assessment Band",
        ["cloud", "cloud-shadow", "snow-ice", "water-mask"],
    ),
    "QA_RADSAT": ("Radiometric Saturation Quality Assessment Band", ["saturation"]),
}
COLLECTIONS = {
    SENTINEL2_L2A.key: ("sentinel-2-l2a", "Sentinel-2 L2A (synthetic demo scenes)"),
    LANDSAT_C2L2.key: ("landsat-c2-l2", "Landsat 8/9 Collection 2 Level-2 (synthetic demo)"),
}


def _footprint(grid: Grid) -> dict[str, Any]:
    ring = [[round(lon, 8), round(lat, 8)] for lon, lat in _corners_lonlat(grid)]
    ring = ring[::-1]  # UL, LL, LR, UR: counter-clockwise as RFC 7946 wants
    return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}


def stac_item(record: SceneRecord) -> pystac.Item:
    """STAC Item of one scene; asset keys as Earth Search v1 (S2) / Planetary Computer."""
    spec = record.spec
    s2 = spec.sensor is SENTINEL2_L2A
    ref = record.grids[spec.sensor.reference_band]
    geometry = _footprint(ref)
    lons = [p[0] for p in geometry["coordinates"][0]]
    lats = [p[1] for p in geometry["coordinates"][0]]
    props: dict[str, Any] = {
        "platform": spec.platform,
        "instruments": ["msi"] if s2 else ["oli", "tirs"],
        "eo:cloud_cover": round(record.cloud_cover, 4),
        "proj:code": CRS,
    }
    if s2:
        ids = _s2_ids(spec)
        props.update(
            {
                "constellation": "sentinel-2",
                "processing:level": "L2A",
                "s2:processing_baseline": spec.baseline,
                # DNs as ESA wrote them; raster:bands offset carries BOA_ADD_OFFSET
                "earthsearch:boa_offset_applied": False,
                "s2:datatake_id": ids["datatake"],
                "s2:datastrip_id": ids["datastrip"],
                "s2:granule_id": ids["granule"],
                "s2:product_type": "S2MSI2A",
                "s2:product_uri": f"{spec.scene_id}.SAFE",
                "s2:mgrs_tile": MGRS_TILE,
                "mgrs:utm_zone": 31,
                "mgrs:latitude_band": "U",
                "mgrs:grid_square": "FS",
            }
        )
    else:
        props.update(
            {
                "landsat:wrs_type": "2",
                "landsat:wrs_path": spec.scene_id[10:13],
                "landsat:wrs_row": spec.scene_id[13:16],
                "landsat:collection_category": spec.scene_id.rsplit("_", 1)[1],
                "landsat:collection_number": spec.scene_id.split("_")[5],
                "landsat:correction": spec.scene_id.split("_")[1],  # L2SP / L2SR
                "landsat:scene_id": landsat_scene_id(spec),
            }
        )
    item = pystac.Item(
        id=spec.scene_id,
        geometry=geometry,
        bbox=[min(lons), min(lats), max(lons), max(lats)],
        datetime=spec.sensing,
        properties=props,
        stac_extensions=[EO, RASTER, PROJECTION, *([PROCESSING] if s2 else [])],
    )
    scale, offset = spec.scaling
    for band in spec.sensor.bands:
        grid = record.grids[band.name]
        eo: dict[str, Any] = {"name": band.name}
        raster: dict[str, Any] = {"spatial_resolution": grid.res}
        if band.role == "reflectance":
            key = band.common
            eo["common_name"] = band.common
            eo["center_wavelength"], eo["full_width_half_max"] = WAVELENGTHS[band.name]
            raster.update(nodata=0, data_type="uint16", scale=scale, offset=offset)
            roles = ["data", "reflectance"]
        else:
            key = band.name.lower()  # scl, qa_pixel, qa_radsat
            eo["description"], roles = QUALITY_ASSETS[band.name]
            nodata = {"SCL": 0, "QA_PIXEL": 1}.get(band.name)
            raster.update(data_type="uint8" if s2 else "uint16")
            if nodata is not None:
                raster["nodata"] = nodata
        item.add_asset(
            key,
            pystac.Asset(
                href=str(record.files[band.name].resolve()),
                media_type=pystac.MediaType.GEOTIFF,
                title=f"{band.name} ({grid.res:.0f} m)",
                roles=roles,
                extra_fields={
                    "eo:bands": [eo],
                    "raster:bands": [raster],
                    "proj:shape": [grid.height, grid.width],
                    "proj:transform": list(grid.transform)[:6],
                },
            ),
        )
    meta_key, media = (
        ("product_metadata", pystac.MediaType.XML) if s2 else ("mtl.txt", pystac.MediaType.TEXT)
    )
    item.add_asset(
        meta_key,
        pystac.Asset(
            href=str(record.metadata.resolve()),
            media_type=media,
            roles=["metadata"],
            title="Product metadata",
        ),
    )
    return item


def write_catalog(stac_dir: Path, records: Sequence[SceneRecord]) -> Path:
    """Self-contained STAC catalogue (relative hrefs): catalog -> collection -> items."""
    shutil.rmtree(stac_dir, ignore_errors=True)
    catalog = pystac.Catalog(
        id="eo-lakehouse-demo",
        title="eo-lakehouse demo scenes",
        description="Synthetic Sentinel-2 L2A and Landsat C2 L2 scenes of one landscape "
        "(pipelines/demo.py).",
    )
    for sensor_key, (cid, title) in COLLECTIONS.items():
        items = [stac_item(r) for r in records if r.spec.sensor.key == sensor_key]
        if not items:
            continue
        boxes = np.array([i.bbox for i in items], dtype=np.float64)
        bbox = [*boxes[:, :2].min(axis=0).tolist(), *boxes[:, 2:].max(axis=0).tolist()]
        times = sorted(i.datetime for i in items if i.datetime is not None)
        collection = pystac.Collection(
            id=cid,
            title=title,
            description=title,
            license="other",
            extent=pystac.Extent(
                pystac.SpatialExtent([bbox]), pystac.TemporalExtent([[times[0], times[-1]]])
            ),
        )
        for item in items:
            collection.add_item(item)
        catalog.add_child(collection)
    catalog.normalize_hrefs(str(stac_dir))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return stac_dir / "catalog.json"


# ----------------------------------------------------------------------------- labels


def _round(obj: Any, digits: int) -> Any:
    if isinstance(obj, (list, tuple)):
        return [_round(v, digits) for v in obj]
    return round(float(obj), digits)


def label_candidates(
    landcover: NDArray[np.uint8], transform: Affine, shrink: float = 2 * PIXEL
) -> list[tuple[int, Polygon]]:
    """Polygons of the homogeneous regions of one window, shrunk by ``shrink`` metres.

    The regions are vectorised with :func:`rasterio.features.shapes` (map coordinates) and
    shrunk with square corners, so a polygon's edges stay on pixel edges and every pixel
    it covers belongs to its class. Pieces smaller than 4 x 4 pixels are dropped.
    """
    out = []
    for geom, value in shapes(landcover, transform=transform):
        if int(value) == 0:
            continue
        shrunk = shape(geom).buffer(-shrink, join_style="mitre")
        parts = shrunk.geoms if isinstance(shrunk, MultiPolygon) else [shrunk]
        for part in parts:
            if isinstance(part, Polygon) and part.area >= 16 * PIXEL * PIXEL:
                out.append((int(value), part.simplify(0)))
    return out


def window_class_counts(ds: Any, window: int) -> NDArray[np.int64]:
    """Pixels of each class in each ``window`` x ``window`` square of a land-cover raster.

    Returns ``(window rows, window cols, N_CLASSES)`` int64; read in strips of rows.
    """
    n_r, n_c = math.ceil(ds.height / window), math.ceil(ds.width / window)
    counts = np.zeros((n_r, n_c, N_CLASSES), dtype=np.int64)
    strip = max(1, BLOCK_ROWS // window)  # window rows per read
    for wr in range(0, n_r, strip):
        r0 = wr * window
        h = min(ds.height - r0, strip * window)
        arr = np.zeros((math.ceil(h / window) * window, n_c * window), dtype=np.uint8)
        arr[:h, : ds.width] = ds.read(1, window=Window(0, r0, ds.width, h))
        blocks = arr.reshape(-1, window, n_c, window)
        for code in range(N_CLASSES):
            counts[wr : wr + blocks.shape[0], :, code] = (blocks == code).sum(axis=(1, 3))
    return counts


def write_labels(
    landcover_path: Path,
    out_path: Path,
    seed: int,
    window: int = 40,
    max_windows: int = 600,
    per_class: int | None = None,
) -> dict[str, int]:
    """Write ``labels.geojson``: polygons inside homogeneous land cover, lon/lat.

    The map is cut into ``window``-pixel squares, which keeps polygons field-sized. Small
    maps use every square; larger ones (more than ``max_windows`` squares) use, for each
    class, up to ``per_class`` random squares that class covers by at least a fifth, so
    rare classes are found too. Each class keeps up to ``per_class`` polygons, taken
    round-robin over the squares in random order (largest first within a square), so they
    spread over the area. Returns the number of polygons per class name.
    """
    rng = np.random.default_rng([seed, 3])
    with rasterio.open(landcover_path) as ds:
        per_class = per_class or int(np.clip(20 * (ds.width // 512), 40, 400))
        n_c = math.ceil(ds.width / window)
        counts = window_class_counts(ds, window).reshape(-1, N_CLASSES)
        if len(counts) <= max_windows:
            picked = np.arange(len(counts))
        else:
            picked = np.unique(
                np.concatenate(
                    [
                        rng.permutation(np.flatnonzero(counts[:, code] >= window * window // 5))[
                            :per_class
                        ]
                        for code in CLASSES
                    ]
                )
            )
        ranked: dict[int, list[tuple[int, int, Polygon]]] = {c: [] for c in CLASSES}
        for rank, i in enumerate(rng.permutation(picked)):
            r, c = (int(i) // n_c) * window, (int(i) % n_c) * window
            win = Window(c, r, min(window, ds.width - c), min(window, ds.height - r))
            transform = Affine(PIXEL, 0.0, X0 + c * PIXEL, 0.0, -PIXEL, Y0 - r * PIXEL)
            found = label_candidates(ds.read(1, window=win), transform)
            for code in CLASSES:
                polys = sorted((p for v, p in found if v == code), key=lambda p: -p.area)
                ranked[code] += [(k, rank, p) for k, p in enumerate(polys)]
    features = []
    per_name = {}
    for code, name in CLASSES.items():
        chosen = sorted(ranked[code], key=lambda t: (t[0], t[1]))[:per_class]
        per_name[name] = len(chosen)
        for n, (_, _, poly) in enumerate(chosen):
            geom = transform_geom(CRS, "EPSG:4326", mapping(orient(poly, 1.0)))
            features.append(
                {
                    "type": "Feature",
                    "id": f"{name}-{n:04d}",
                    "properties": {"class_code": code, "class_name": name},
                    "geometry": {"type": "Polygon", "coordinates": _round(geom["coordinates"], 8)},
                }
            )
    doc = {"type": "FeatureCollection", "features": features}
    out_path.write_text(json.dumps(doc, separators=(",", ":")) + "\n", encoding="utf-8")
    return per_name


# ----------------------------------------------------------------------------- entry points


def select_scenes(wanted: Sequence[str] | None) -> list[SceneSpec]:
    """Scenes whose id equals or contains one of ``wanted`` (all when None or empty).

    Raises ``ValueError`` naming a token that matches no scene.
    """
    if not wanted:
        return list(SCENES)
    chosen = []
    for token in wanted:
        hits = [s for s in SCENES if token == s.scene_id or token in s.scene_id]
        if not hits:
            known = ", ".join(s.scene_id for s in SCENES)
            raise ValueError(f"--scenes: {token!r} matches no demo scene (known: {known})")
        chosen += [s for s in hits if s not in chosen]
    return sorted(chosen, key=lambda s: s.index)


def generate(
    out_dir: Path, size: int = 512, seed: int = 7, scenes: Sequence[str] | None = None
) -> dict[str, Any]:
    """Write the demo land cover, labels, scenes and STAC catalogue under ``out_dir``.

    Parameters
    ----------
    out_dir : Path
        Output folder (created; files of the scenes written are replaced).
    size : int
        Pixels per side of the 10 m grid, ``MIN_SIZE`` .. 10980 (a full S2 tile).
    seed : int
        Same seed and size -> byte-identical rasters.
    scenes : sequence of str, optional
        Scene ids (or parts of them, e.g. ``"20240621"``, ``"LC09"``) to write; all five
        when omitted. The catalogue lists the scenes written by this call.

    Returns
    -------
    dict
        The manifest, also written to ``out_dir/manifest.json``. Paths are
        ``out_dir / <relative path>`` as strings.
    """
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be {MIN_SIZE}..{MAX_SIZE} pixels, got {size}")
    specs = select_scenes(scenes)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    layout = make_layout(size, seed)
    with rasterio.Env(GDAL_CACHEMAX=512):
        landcover = write_landcover(layout, out_dir / "landcover_10m.tif")
        classes = out_dir / "landcover_classes.json"
        classes.write_text(json.dumps({str(k): v for k, v in CLASSES.items()}, indent=2) + "\n")
        labels = out_dir / "labels.geojson"
        label_counts = write_labels(landcover, labels, seed)
        records = []
        for spec in specs:
            if spec.sensor is SENTINEL2_L2A:
                records.append(
                    write_sentinel2(out_dir / "scenes" / "sentinel2", layout, spec, seed)
                )
            else:
                records.append(write_landsat(out_dir / "scenes" / "landsat", layout, spec, seed))
    catalog = write_catalog(out_dir / "stac", records)
    manifest = {
        "size": size,
        "seed": seed,
        "crs": CRS,
        "origin": [X0, Y0],
        "resolution": PIXEL,
        "landcover": str(landcover),
        "landcover_classes": str(classes),
        "labels": str(labels),
        "labels_per_class": label_counts,
        "catalog": str(catalog),
        "scenes_root": str(out_dir / "scenes"),
        "scene_ids": [r.spec.scene_id for r in records],
        "scenes": [
            {
                "id": r.spec.scene_id,
                "sensor": r.spec.sensor.key,
                "platform": r.spec.platform,
                "datetime": r.spec.sensing.isoformat().replace("+00:00", "Z"),
                "path": str(r.folder),
                "metadata": str(r.metadata),
                "cloud_cover": round(r.cloud_cover, 4),
            }
            for r in records
        ],
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m pipelines.demo --out data/demo --size 512``."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("data/demo"), help="output folder")
    parser.add_argument(
        "--size",
        type=int,
        default=512,
        help=f"pixels per side of the 10 m grid ({MIN_SIZE}..{MAX_SIZE})",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--scenes",
        nargs="+",
        metavar="ID",
        help="only these scenes (ids or parts of ids, e.g. 20240621 LC09)",
    )
    args = parser.parse_args(argv)
    if not MIN_SIZE <= args.size <= MAX_SIZE:
        parser.error(f"--size must be {MIN_SIZE}..{MAX_SIZE}, got {args.size}")
    try:
        select_scenes(args.scenes)
    except ValueError as e:
        parser.error(str(e))
    start = time.perf_counter()
    manifest = generate(args.out, size=args.size, seed=args.seed, scenes=args.scenes)
    for scene in manifest["scenes"]:
        print(f"{scene['id']}  cloud {scene['cloud_cover']:5.1f} %  {scene['path']}")
    print(f"labels: {manifest['labels_per_class']}")
    print(f"catalog: {manifest['catalog']}")
    print(f"{args.size} x {args.size} px in {time.perf_counter() - start:.1f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
