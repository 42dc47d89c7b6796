"""From surface and sky to DN: spectra, phenology, DN encoding and the quality bands.

Endmember spectra mixed by phenology give every unit's surface reflectance
(:func:`reflectance_table`); :func:`render_grid` adds texture, shadow, haze and sensor
noise and encodes DNs (:func:`to_dn`), SCL (:func:`scl_codes`), QA_PIXEL
(:func:`qa_pixel_values`) and QA_RADSAT (:func:`qa_radsat_values`). Pure numpy: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from numpy.typing import NDArray

from pipelines.demo.grid import BLOCK_ROWS, Grid
from pipelines.demo.landscape import (
    BARE,
    CROPLAND,
    FOREST,
    GRASSLAND,
    N_CLASSES,
    URBAN,
    WATER,
    Layout,
)
from pipelines.demo.scenes import SceneSpec
from pipelines.demo.sky import Pixels, Sky, pixels_at
from udfs.sensors import QA_PIXEL_BITS, QA_PIXEL_CONFIDENCE, SENTINEL2_L2A, Band

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
#: Sen2Cor's over-correction of dark water (reflectance subtracted from clear water), which
#: makes some water pixels negative in the SWIR, as in real L2A products. Sentinel-2 only.
S2_WATER_OVERCORRECTION: dict[str, float] = {"swir16": 0.003, "swir22": 0.003}
#: Bands a saturating roof saturates (visible bands; Landsat OLI bands 1-4).
SATURATING_BANDS = ("B02", "B03", "B04", "SR_B1", "SR_B2", "SR_B3", "SR_B4")
SATURATED_DN = 65535  # S2 Special_Values SATURATED; Landsat QUANTIZE_CAL_MAX_BAND_n


def sun_distance(doy: int) -> float:
    """Earth-Sun distance in astronomical units on day of year ``doy`` (first order)."""
    return 1.0 - 0.01672 * math.cos(math.radians(0.9856 * (doy - 4)))


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
