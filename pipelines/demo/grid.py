"""The map grid: CRS, origin, pixel sizes and the GeoTIFF profile of every demo raster.

Every grid shares the upper-left corner (:data:`X0`, :data:`Y0`) of MGRS tile 31UFS; a
:class:`Grid` of 10, 20, 30 or 60 m covers the same ``size`` x ``size`` 10 m area (rounded
up). Rasters are written in blocks of :data:`BLOCK_ROWS` rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rasterio
from rasterio.transform import Affine
from rasterio.warp import transform as transform_points

CRS = "EPSG:32631"
X0, Y0 = 600000.0, 5700000.0  # upper-left corner of every grid (the UL of tile 31UFS)
PIXEL = 10.0  # metres per pixel of the land-cover grid
MAX_SIZE = 10980  # a full Sentinel-2 tile
MIN_SIZE = 60  # one 60 m pixel needs six 10 m pixels
MGRS_TILE = "31UFS"  # the 100 km square whose tile has its upper-left corner at (X0, Y0)
BLOCK_ROWS = 1024  # rows rendered at once: a multiple of the 512 px GeoTIFF tiles


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


def corners_lonlat(grid: Grid) -> list[tuple[float, float]]:
    """(lon, lat) of the UL, UR, LR, LL corners of ``grid``."""
    x1, y1 = X0 + grid.width * grid.res, Y0 - grid.height * grid.res
    lon, lat = transform_points(CRS, "EPSG:4326", [X0, x1, x1, X0], [Y0, Y0, y1, y1])
    return list(zip(lon, lat, strict=True))


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
