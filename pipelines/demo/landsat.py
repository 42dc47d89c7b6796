"""Landsat Collection 2 Level-2 writer: the USGS layout and ``<ID>_MTL.txt`` (ODL)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from pipelines.demo.bands import percent, write_bands
from pipelines.demo.grid import X0, Y0, Grid, corners_lonlat
from pipelines.demo.landscape import Layout
from pipelines.demo.radiometry import SATURATED_DN, sun_distance
from pipelines.demo.scenes import SceneRecord, SceneSpec
from udfs.sensors import QA_PIXEL_BITS

LANDSAT_L2_DOI = "https://doi.org/10.5066/P9OGBGM6"  # Landsat 8-9 OLI/TIRS C2 L2
LANDSAT_L1_DOI = "https://doi.org/10.5066/P975CC9B"  # Landsat 8-9 OLI/TIRS C2 L1


def write_landsat(root: Path, layout: Layout, spec: SceneSpec, seed: int) -> SceneRecord:
    """Write one Landsat C2 L2 product in the USGS layout (``<ID>_SR_B4.TIF`` ...)."""
    folder = root / spec.scene_id
    shutil.rmtree(folder, ignore_errors=True)
    files = {b.name: folder / f"{spec.scene_id}_{b.name}.TIF" for b in spec.sensor.bands}
    grids, counts, radsat = write_bands(layout, spec, files, seed)
    values = np.nonzero(counts)[0]
    n = counts[values]
    fill = n[values == 1].sum()
    cloud = n[(values & (1 << QA_PIXEL_BITS["cloud"])) > 0].sum()
    land = (values & (1 << QA_PIXEL_BITS["water"])) == 0
    cloud_land = n[land & ((values & (1 << QA_PIXEL_BITS["cloud"])) > 0)].sum()
    cover = percent(cloud, n.sum() - fill)
    cover_land = percent(cloud_land, n[land].sum() - fill)
    mtl = folder / f"{spec.scene_id}_MTL.txt"
    text = landsat_mtl(spec, files, grids["SR_B2"], cover, cover_land, radsat)
    mtl.write_text(text, encoding="utf-8")
    return SceneRecord(spec, folder, mtl, files, grids, cover)


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

    A subset of the real groups (see the package's Decisions). ``radsat`` is the bitwise OR
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
        ("EARTH_SUN_DISTANCE", f"{sun_distance(spec.doy):.7f}"),
        ("TRUNCATION_OLI", q("UPPER")),
    ]
    x1, y1 = X0 + grid.width * grid.res, Y0 - grid.height * grid.res
    corners = dict(zip(("UL", "UR", "LR", "LL"), corners_lonlat(grid), strict=True))
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
