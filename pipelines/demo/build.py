""":func:`generate`: the whole demo run (land cover, labels, scenes, STAC) and its manifest."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import rasterio

from pipelines.demo.grid import CRS, MAX_SIZE, MIN_SIZE, PIXEL, X0, Y0
from pipelines.demo.labels import write_labels
from pipelines.demo.landsat import write_landsat
from pipelines.demo.landscape import CLASSES, make_layout, write_landcover
from pipelines.demo.regions import write_regions
from pipelines.demo.scenes import select_scenes
from pipelines.demo.sentinel2 import write_sentinel2
from pipelines.demo.stac import write_catalog
from udfs.sensors import SENTINEL2_L2A


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
        regions = out_dir / "regions.geojson"
        write_regions(regions, size)
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
        "regions": str(regions),
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
