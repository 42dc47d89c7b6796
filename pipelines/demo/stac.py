"""The STAC catalogue of the scenes written: items, collections, catalog.json.

One Item per scene and one Collection per sensor, asset keys and extensions as Earth
Search v1 (Sentinel-2) and the Planetary Computer / USGS (Landsat) give them.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pystac

from pipelines.demo.grid import CRS, MGRS_TILE, Grid, corners_lonlat
from pipelines.demo.landsat import landsat_scene_id
from pipelines.demo.scenes import SceneRecord
from pipelines.demo.sentinel2 import s2_ids
from udfs.sensors import LANDSAT_C2L2, SENTINEL2_L2A

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


def _footprint(grid: Grid) -> dict[str, Any]:
    ring = [[round(lon, 8), round(lat, 8)] for lon, lat in corners_lonlat(grid)]
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
        ids = s2_ids(spec)
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
        "(pipelines/demo/).",
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
