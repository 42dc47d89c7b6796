"""Sentinel-2 L2A writer: the SAFE layout (GeoTIFF bands) and ``MTD_MSIL2A.xml``."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from pipelines.demo.bands import percent, write_bands
from pipelines.demo.grid import MGRS_TILE, PIXEL, corners_lonlat, grid_for
from pipelines.demo.landscape import Layout
from pipelines.demo.radiometry import SATURATED_DN, sun_distance
from pipelines.demo.scenes import SceneRecord, SceneSpec
from udfs.sensors import SCL_CLASSES

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


def _sub(parent: ET.Element, tag: str, text: object = None, **attrib: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrib)
    if text is not None:
        el.text = str(text)
    return el


def _iso_ms(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def s2_ids(spec: SceneSpec) -> dict[str, str]:
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
    grids, counts, _ = write_bands(layout, spec, files, seed)
    scl = counts[: len(SCL_CLASSES)]
    mtd = safe / "MTD_MSIL2A.xml"
    tree = s2_mtd_xml(spec, {k: v.relative_to(safe) for k, v in files.items()}, scl, layout.size)
    tree.write(mtd, encoding="UTF-8", xml_declaration=True)
    valid = scl[1:].sum()
    return SceneRecord(spec, safe, mtd, files, grids, percent(scl[[8, 9, 10]].sum(), valid))


def s2_mtd_xml(
    spec: SceneSpec, images: dict[str, Path], scl: NDArray[np.int64], size: int
) -> ET.ElementTree:
    """``MTD_MSIL2A.xml`` shaped like the real product's: same names, nesting and order.

    A subset of the real elements (see the package's Decisions). ``scl`` is the histogram
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
    ids = s2_ids(spec)
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
    _sub(conversion, "U", f"{sun_distance(spec.doy) ** -2:.14f}")
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
    ring = corners_lonlat(grid_for(size, PIXEL))
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
    _sub(quality, "Cloud_Coverage_Assessment", f"{percent(cloudy, valid):.6f}")
    technical = _sub(quality, "Technical_Quality_Assessment")
    _sub(technical, "DEGRADED_ANC_DATA_PERCENTAGE", "0.0")
    _sub(technical, "DEGRADED_MSI_DATA_PERCENTAGE", 0)
    qi = _sub(quality, "Image_Content_QI")
    if modern:
        # the demo's reading: cloudy pixels among those not classified water
        _sub(qi, "CLOUDY_PIXEL_OVER_LAND_PERCENTAGE", f"{percent(cloudy, valid - scl[6]):.6f}")
    _sub(qi, "NODATA_PIXEL_PERCENTAGE", f"{percent(scl[0], scl.sum()):.6f}")
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
        _sub(qi, tag, f"{percent(scl[code], valid):.6f}")
    tree = ET.ElementTree(root)
    ET.indent(tree, space="  ")
    return tree
