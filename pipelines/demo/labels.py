"""Training labels: ``labels.geojson``, polygons inside homogeneous land cover (lon/lat)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from numpy.typing import NDArray
from rasterio.features import shapes
from rasterio.transform import Affine
from rasterio.warp import transform_geom
from rasterio.windows import Window
from shapely.geometry import MultiPolygon, Polygon, mapping, shape
from shapely.geometry.polygon import orient

from pipelines.demo.grid import BLOCK_ROWS, CRS, PIXEL, X0, Y0
from pipelines.demo.landscape import CLASSES, N_CLASSES


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
