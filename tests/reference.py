"""Independent references for tests: whole scenes read with plain rasterio + numpy.

Nothing here imports the project: band tables, quality rules, reflectance scaling and
index formulas are written out from the products' documentation, so tests that compare
the pipeline with these values can fail.

The rules applied here, written out independently of ``udfs`` (README, "Numbers"):

* Sentinel-2: DN 0 nodata, DN 65535 saturated (the products' ``Special_Values``), SCL
  0 nodata, SCL 1 and codes > 11 invalid, SCL 3/8/9/10/11 masked by default.
* Landsat Collection 2 L2: QA_PIXEL bit 0 fill, bits 0-5 masked by default; SR DN
  outside 7273..43636 invalid (USGS LSDS-1619 valid range); QA_RADSAT (when the file is
  there) bit n-1 set for SR band n (bands 1-7 on OLI) invalid.
* Reflectance keeps the measured (possibly negative) value; an index is NaN where any of
  its inputs is negative or its value leaves its physical range ([-1, 1]; SAVI
  [-1.5, 1.5]).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import from_bounds

# Sentinel-2 L2A: tiles column -> (product band, native resolution in metres).
S2_BANDS = {
    "coastal": ("B01", 60),
    "blue": ("B02", 10),
    "green": ("B03", 10),
    "red": ("B04", 10),
    "rededge1": ("B05", 20),
    "rededge2": ("B06", 20),
    "rededge3": ("B07", 20),
    "nir": ("B08", 10),
    "nir08": ("B8A", 20),
    "nir09": ("B09", 60),
    "swir16": ("B11", 20),
    "swir22": ("B12", 20),
}
# ESA's band_id order of the L2A metadata (BOA_ADD_OFFSET band_id="n").
ESA_BAND_IDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10",
                "B11", "B12")  # fmt: skip
# Landsat 8/9 OLI Collection 2 L2: tiles column (STAC eo common name) -> product band.
LANDSAT_BANDS = {
    "coastal": "SR_B1",
    "blue": "SR_B2",
    "green": "SR_B3",
    "red": "SR_B4",
    "nir08": "SR_B5",
    "swir16": "SR_B6",
    "swir22": "SR_B7",
}
SCL_MASKED = [0, 1, 3, 8, 9, 10, 11]  # no data, saturated, shadow, cloud med/high, cirrus, snow
SCL_CLOUD = [3, 8, 9, 10]
QA_FILL = 1 << 0
QA_MASKED = 0b111111  # bits 0..5: fill, dilated cloud, cirrus, cloud, shadow, snow
QA_CLOUD = 0b011110  # bits 1..4
SATURATED = 65535  # Sentinel-2 Special_Values SATURATED
LANDSAT_VALID = (7273, 43636)  # Landsat C2 L2 SR valid DN range, inclusive
OLI_RADSAT_BITS = 0b1111111  # QA_RADSAT bits 0-6: SR bands 1-7 saturated (Collection 2)
#: Physical range of each index (Rouse; Huete 1988 SAVI L = 0.5; Huete 2002 EVI).
INDEX_RANGES = {"ndvi": (-1, 1), "evi": (-1, 1), "savi": (-1.5, 1.5), "ndwi": (-1, 1),
                "mndwi": (-1, 1), "ndbi": (-1, 1), "nbr": (-1, 1), "ndmi": (-1, 1)}  # fmt: skip


def one_file(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, (folder, pattern, found)
    return found[0]


def s2_radiometry(mtd: Path) -> tuple[str, float, dict[str, float]]:
    """Processing baseline, BOA_QUANTIFICATION_VALUE and BOA_ADD_OFFSET per band of an L2A
    MTD_MSIL2A.xml (bands without an offset element have none)."""
    baseline, quantification, offsets = None, None, {}
    for el in ET.parse(mtd).getroot().iter():
        tag = el.tag.rsplit("}", 1)[-1]
        if tag == "PROCESSING_BASELINE":
            baseline = el.text.strip()
        elif tag == "BOA_QUANTIFICATION_VALUE":
            quantification = float(el.text)
        elif tag == "BOA_ADD_OFFSET":
            offsets[ESA_BAND_IDS[int(el.get("band_id"))]] = float(el.text)
    assert baseline and quantification, mtd
    return baseline, quantification, offsets


def mtl_reflectance(mtl: Path) -> dict[str, tuple[float, float]]:
    """``SR_Bn -> (REFLECTANCE_MULT, REFLECTANCE_ADD)`` of the MTL's surface reflectance group
    (the Level-1 group has TOA factors under the same key names)."""
    groups: list[str] = []
    found: dict[str, dict[str, float]] = {}
    for line in mtl.read_text().splitlines():
        key, _, value = (s.strip() for s in line.partition("="))
        if key == "GROUP":
            groups.append(value)
        elif key == "END_GROUP":
            groups.pop()
        elif groups and groups[-1] == "LEVEL2_SURFACE_REFLECTANCE_PARAMETERS":
            if m := re.fullmatch(r"REFLECTANCE_(MULT|ADD)_BAND_(\d+)", key):
                found.setdefault(f"SR_B{m[2]}", {})[m[1]] = float(value)
    return {band: (v["MULT"], v["ADD"]) for band, v in found.items()}


def read_on_grid(path: Path, ref: rasterio.DatasetReader) -> np.ndarray:
    """The file's band 1 on the grid of ``ref``: rasterio's own nearest resampled read."""
    with rasterio.open(path) as src:
        if src.transform == ref.transform and src.shape == ref.shape:
            return src.read(1)
        win = from_bounds(*ref.bounds, transform=src.transform)
        return src.read(1, window=win, out_shape=ref.shape, resampling=Resampling.nearest)


@dataclass
class Scene:
    """A whole scene on its reference grid, with masks and reflectance computed here."""

    sensor: str  # "s2" or "landsat"
    dn: dict[str, np.ndarray]  # tiles column -> DN (reflectance bands only)
    quality: np.ndarray  # SCL or QA_PIXEL
    refl: dict[str, np.ndarray]  # tiles column -> float32 reflectance, NaN where DN 0
    nodata: np.ndarray
    masked: np.ndarray
    cloud: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.quality.shape

    @property
    def nir(self) -> str:
        return "nir" if self.sensor == "s2" else "nir08"

    def indices(self) -> dict[str, np.ndarray]:
        return textbook_indices(self.refl, self.nir)


def build_scene(
    sensor: str,
    ref: Path,
    files: dict[str, Path],
    quality: Path,
    to_reflectance: dict[str, Callable[[np.ndarray], np.ndarray]],
    radsat: Path | None = None,
) -> Scene:
    """Read every band onto ``ref``'s grid and apply the products' quality rules.

    ``to_reflectance`` maps a column to its DN -> reflectance (float64) function;
    ``radsat`` is the Landsat QA_RADSAT file, if the product has one.
    """
    with rasterio.open(ref) as r:
        dn = {col: read_on_grid(path, r) for col, path in files.items()}
        q = read_on_grid(quality, r)
        rs = read_on_grid(radsat, r) if radsat is not None else None
    stack = np.stack(list(dn.values()))
    nodata = (stack == 0).any(axis=0)
    if sensor == "s2":
        invalid = (stack >= SATURATED).any(axis=0) | (q == 1) | (q > 11)
        nodata |= q == 0
        masked = nodata | invalid | np.isin(q, SCL_MASKED)
        cloud = np.isin(q, SCL_CLOUD)
    else:
        lo, hi = LANDSAT_VALID
        invalid = ((stack < lo) | (stack > hi)).any(axis=0)
        if rs is not None:
            invalid |= (rs & OLI_RADSAT_BITS) != 0
        nodata |= (q & QA_FILL) != 0
        masked = nodata | invalid | ((q & QA_MASKED) != 0)
        cloud = (q & QA_CLOUD) != 0
    refl = {}
    for col, arr in dn.items():
        r32 = to_reflectance[col](arr.astype(np.float64)).astype(np.float32)
        r32[arr == 0] = np.nan
        refl[col] = r32
    return Scene(sensor, dn, q, refl, nodata, masked, cloud)


def s2_boa(offset: float, quantification: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda dn: (dn + offset) / quantification


def linear(scale: float, offset: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda dn: dn * scale + offset


def demo_s2_scene(folder: Path) -> Scene:
    _, q, offsets = s2_radiometry(folder / "MTD_MSIL2A.xml")
    files = {col: one_file(folder, f"GRANULE/*/IMG_DATA/R{res}m/*_{band}_{res}m.tif")
             for col, (band, res) in S2_BANDS.items()}  # fmt: skip
    # (DN + BOA_ADD_OFFSET) / QUANTIFICATION_VALUE, ESA's L2A definition
    scaling = {col: s2_boa(offsets.get(band, 0.0), q) for col, (band, _) in S2_BANDS.items()}
    scl = one_file(folder, "GRANULE/*/IMG_DATA/R20m/*_SCL_20m.tif")
    return build_scene("s2", files["blue"], files, scl, scaling)


def demo_landsat_scene(folder: Path) -> Scene:
    factors = mtl_reflectance(one_file(folder, "*_MTL.txt"))
    files = {col: one_file(folder, f"*_{band}.TIF") for col, band in LANDSAT_BANDS.items()}
    scaling = {col: linear(*factors[band]) for col, band in LANDSAT_BANDS.items()}
    qa = one_file(folder, "*_QA_PIXEL.TIF")
    radsat = sorted(folder.glob("*_QA_RADSAT.TIF"))
    return build_scene("landsat", files["blue"], files, qa, scaling, *radsat[:1])


def textbook_indices(refl: dict[str, np.ndarray], nir: str) -> dict[str, np.ndarray]:
    """The indices by their published formulas, from float32 reflectance, rounded to float32;
    NaN where an input is negative or the value leaves the index's physical range."""
    b, g, r, n, s1, s2 = (
        refl[c].astype(np.float64) for c in ("blue", "green", "red", nir, "swir16", "swir22")
    )
    inputs = {"ndvi": (n, r), "evi": (n, r, b), "savi": (n, r), "ndwi": (g, n),
              "mndwi": (g, s1), "ndbi": (s1, n), "nbr": (n, s2), "ndmi": (n, s1)}  # fmt: skip
    with np.errstate(all="ignore"):
        raw = {
            "ndvi": (n - r) / (n + r),  # Rouse 1974
            "evi": 2.5 * (n - r) / (n + 6 * r - 7.5 * b + 1),  # Huete 2002
            "savi": 1.5 * (n - r) / (n + r + 0.5),  # Huete 1988, L = 0.5
            "ndwi": (g - n) / (g + n),  # McFeeters 1996
            "mndwi": (g - s1) / (g + s1),  # Xu 2006
            "ndbi": (s1 - n) / (s1 + n),  # Zha 2003
            "nbr": (n - s2) / (n + s2),  # Key & Benson
            "ndmi": (n - s1) / (n + s1),  # Gao 1996 / Wilson & Sader
        }
        out = {}
        for name, v in raw.items():
            lo, hi = INDEX_RANGES[name]
            bad = ~(np.isfinite(v) & (v >= lo) & (v <= hi))
            for band in inputs[name]:
                bad |= ~(band >= 0)  # negative or NaN reflectance
            v32 = v.astype(np.float32)
            v32[bad] = np.nan
            out[name] = v32
    return out
