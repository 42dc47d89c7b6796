"""Areas of interest for the aggregate job: ``regions.geojson`` (lon/lat, ``id`` + ``name``).

Five regions placed relative to the demo grid, so every size gets the same story: a small
field, a large park, a district crossing the tile borders at 256 px (when the scene is
larger than 256 px), a lake shore with a hole (the open water) and a region outside every
scene (it must get explicit zero observed area). Vertices sit a fraction of a pixel off
pixel centres, so the pixel-centre rule never meets a tie.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rasterio.warp import transform_geom
from shapely.geometry import Polygon, mapping
from shapely.geometry.polygon import orient

from pipelines.demo.grid import CRS, PIXEL, X0, Y0

#: Tile size of the default profile: the district crosses its borders.
TILE = 256


def _xy(col: float, row: float) -> tuple[float, float]:
    """Map coordinates of a (col, row) position of the 10 m grid, nudged off centres."""
    return X0 + (col + 0.13) * PIXEL, Y0 - (row + 0.21) * PIXEL


def region_polygons(size: int) -> list[tuple[str, str, Polygon]]:
    """``(id, name, polygon in the grid CRS)`` of the demo regions for a ``size`` px grid."""
    s = float(size)
    c = min(float(TILE), s / 2)  # the tile corner, or the centre of a small grid
    r = min(s / 5, 60.0)
    district = [(c - r, c - 0.6 * r), (c + 0.8 * r, c - r), (c + r, c + 0.4 * r),
                (c + 0.1 * r, c + r), (c - 0.9 * r, c + 0.5 * r)]  # fmt: skip
    shore = [(0.62 * s, 0.08 * s), (0.92 * s, 0.08 * s), (0.92 * s, 0.3 * s), (0.62 * s, 0.3 * s)]
    water = [(0.7 * s, 0.14 * s), (0.84 * s, 0.14 * s), (0.84 * s, 0.24 * s), (0.7 * s, 0.24 * s)]
    park = [(0.05 * s, 0.55 * s), (0.45 * s, 0.52 * s), (0.48 * s, 0.95 * s), (0.08 * s, 0.92 * s)]
    field = [(0.1 * s, 0.1 * s), (0.1 * s + 9, 0.1 * s), (0.1 * s + 9, 0.1 * s + 7),
             (0.1 * s, 0.1 * s + 7)]  # fmt: skip
    away = [(s + 3000, 0.2 * s), (s + 3100, 0.2 * s), (s + 3100, 0.3 * s), (s + 3000, 0.3 * s)]

    def poly(ring: list[tuple[float, float]], holes: Sequence[list[tuple[float, float]]] = ()):
        return orient(Polygon([_xy(*p) for p in ring], [[_xy(*p) for p in h] for h in holes]))

    return [
        ("field-01", "small field", poly(field)),
        ("park", "large park", poly(park)),
        ("district", "district across tile borders", poly(district)),
        ("shore", "lake shore (the water is a hole)", poly(shore, [water])),
        ("elsewhere", "outside every scene", poly(away)),
    ]


def write_regions(out_path: Path, size: int) -> dict[str, Any]:
    """Write ``regions.geojson`` (EPSG:4326, RFC 7946) and return ``{id: area in m2}``
    (areas in the grid CRS, before the lon/lat rounding of 1e-9 degree, about 0.1 mm)."""
    features = []
    areas = {}
    for rid, name, poly in region_polygons(size):
        geom = transform_geom(CRS, "EPSG:4326", mapping(poly), precision=9)
        features.append(
            {"type": "Feature", "properties": {"id": rid, "name": name}, "geometry": geom}
        )
        areas[rid] = poly.area
    doc = {"type": "FeatureCollection", "features": features}
    out_path.write_text(json.dumps(doc, separators=(",", ":")) + "\n", encoding="utf-8")
    return areas
