"""Regions on the tile grid: which pixels a polygon holds, and what they add up to.

Pure numpy + rasterio.features / shapely kernels (no pyspark, no file I/O): the
aggregate job (:mod:`pipelines.aggregate`) calls them on the executors, tile by tile,
and combines their partial results by region.

Decisions
---------
* **Membership**: a pixel belongs to a region when its *centre* lies inside the polygon
  (``rasterio.features.rasterize`` with ``all_touched=False``); a hole's pixels are out.
  Overlapping regions each get the pixel (each region is burnt on its own).
* **Overlap counted once**: only a tile's core (:func:`udfs.tiling.core_slices`) counts,
  so sums over tiles count every scene pixel once whatever ``ingest.overlap``.
* **Cost follows the region**: a polygon is burnt only into the window of the tile its
  bounding box covers (:func:`region_window`), never into the whole tile.
* **Area**: one pixel covers ``|a*e - b*d|`` square CRS units of the scene grid's affine
  transform (:func:`pixel_area_m2`); in a projected CRS in metres, hectares =
  pixels x that / 10 000, so 10 m and 30 m grids are measured alike. A geographic CRS
  (degrees) is refused: its pixels have no single area.
* **Statistics** of index values pool every valid pixel of a region in one place
  (:func:`value_statistics`): percentiles of a region that spans several tiles cannot be
  combined from per-tile percentiles, so the values themselves are gathered per region
  and scene (or per region and month) and sorted once. Conventions are those of
  :mod:`udfs.stats`: linear percentiles (numpy's default), ``std`` with ``ddof=0``, and
  with no valid value ``count`` 0 and NaN for the rest.
* **Change** (:func:`period_classes`, :func:`transition_counts`): per pixel, a period's
  class is its *latest* observation (the newest scene of the period in which the pixel
  has a class); a pixel counts in the transition matrix only when both periods observed
  it. Only rasters of one grid are ever compared pixel by pixel.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from rasterio.features import rasterize
from rasterio.transform import Affine

from udfs.errors import PipelineError
from udfs.stats import PERCENTILES

#: Statistics of :func:`value_statistics`, in column order.
VALUE_STATS = ("count", "mean", "std", "p10", "p50", "p90")
NO_CLASS = 0


class RegionError(PipelineError, ValueError):
    """A region, a regions file or a grid cannot be used; the message says which and why."""


def pixel_area_m2(transform: Sequence[float], crs_is_geographic: bool = False) -> float:
    """Area of one pixel of a grid with affine ``(a, b, c, d, e, f)``, in CRS units squared.

    Raises :class:`RegionError` for a geographic CRS (degrees) or a degenerate transform.
    """
    if crs_is_geographic:
        raise RegionError(
            "the scene grid is in a geographic CRS (degrees): pixel areas are not constant; "
            "areas need a projected CRS in metres"
        )
    a, b, _, d, e, _ = (float(v) for v in transform[:6])
    area = abs(a * e - b * d)
    if not area > 0:
        raise RegionError(f"degenerate grid transform {tuple(transform[:6])}: pixel area 0")
    return area


def region_window(
    bounds: Sequence[float],
    tile_transform: Sequence[float],
    rows: slice,
    cols: slice,
) -> tuple[int, int, int, int] | None:
    """Pixel window of a tile whose centres may lie inside ``bounds``, within a core.

    Parameters
    ----------
    bounds : (minx, miny, maxx, maxy)
        Bounding box of the region, in the tile's CRS.
    tile_transform : sequence of 6 float
        North-up affine of the tile's upper-left pixel (``b == d == 0``, ``a > 0``,
        ``e < 0``).
    rows, cols : slice
        The tile's core (:func:`udfs.tiling.core_slices`), in tile pixels.

    Returns
    -------
    (r0, r1, c0, c1) or None
        Half-open pixel ranges inside the core; None when no centre can be inside.
    """
    a, b, c, d, e, f = (float(v) for v in tile_transform[:6])
    if b != 0 or d != 0 or a <= 0 or e >= 0:
        raise RegionError(f"tile grid is not north-up: transform {tuple(tile_transform[:6])}")
    minx, miny, maxx, maxy = (float(v) for v in bounds)
    # Pixel j's centre is at c + a * (j + 0.5): inside [minx, maxx] for j in [lo, hi].
    c0 = max(cols.start, math.ceil((minx - c) / a - 0.5))
    c1 = min(cols.stop, math.floor((maxx - c) / a - 0.5) + 1)
    r0 = max(rows.start, math.ceil((f - maxy) / -e - 0.5))
    r1 = min(rows.stop, math.floor((f - miny) / -e - 0.5) + 1)
    if r0 >= r1 or c0 >= c1:
        return None
    return r0, r1, c0, c1


def region_pixels(
    geom: Mapping[str, Any] | None,
    bounds: Sequence[float] | None,
    tile_transform: Sequence[float],
    height: int,
    width: int,
    core: tuple[slice, slice] | None = None,
) -> NDArray[np.int64]:
    """Flat indices (row * width + col) of a tile's core pixels whose centre is in a region.

    Parameters
    ----------
    geom : GeoJSON-like mapping or None
        The region polygon in the tile's CRS; None: the whole core (a scene footprint).
    bounds : (minx, miny, maxx, maxy) or None
        The polygon's bounding box (ignored when ``geom`` is None).
    tile_transform, height, width
        The stored tile's grid (``tiles.transform``, ``height``, ``width``).
    core : (slice, slice), optional
        The tile's core; None: the whole tile.

    Returns
    -------
    ndarray of int64, sorted ascending
    """
    rows, cols = core if core is not None else (slice(0, height), slice(0, width))
    if geom is None:
        r, c = np.mgrid[rows, cols]
        return (r * width + c).ravel().astype(np.int64)
    assert bounds is not None
    win = region_window(bounds, tile_transform, rows, cols)
    if win is None:
        return np.zeros(0, np.int64)
    r0, r1, c0, c1 = win
    a, _, c, _, e, f = (float(v) for v in tile_transform[:6])
    burnt = rasterize(
        [(geom, 1)],
        out_shape=(r1 - r0, c1 - c0),
        transform=Affine(a, 0.0, c + a * c0, 0.0, e, f + e * r0),
        fill=0,
        all_touched=False,
        dtype="uint8",
    )
    rr, cc = np.nonzero(burnt)
    return ((rr + r0) * width + (cc + c0)).astype(np.int64)


def class_counts(classes: NDArray[np.integer], idx: NDArray[np.int64], n_codes: int) -> NDArray:
    """Pixels of each class code ``0 .. n_codes-1`` among ``classes.ravel()[idx]``.

    Code 0 (:data:`NO_CLASS`) counts the region's pixels without a class (masked: cloud,
    shadow, snow, nodata, saturated). Returns int64 of shape ``(n_codes,)``.
    """
    vals = classes.ravel()[idx].astype(np.int64, copy=False)
    if len(vals) and (vals.min() < 0 or vals.max() >= n_codes):
        raise RegionError(f"class codes outside 0..{n_codes - 1}: {int(vals.max())}")
    return np.bincount(vals, minlength=n_codes).astype(np.int64)


def value_statistics(values: NDArray[np.floating]) -> dict[str, float | int]:
    """``count, mean, std, p10, p50, p90`` of the finite values of a 1-D array.

    Conventions of :mod:`udfs.stats` (float64, ddof 0, linear percentiles; no finite
    value: count 0 and NaN for the rest).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if not len(v):
        return {k: (0 if k == "count" else math.nan) for k in VALUE_STATS}
    # One array: numpy's own reductions (called once per region, index and scene, so the
    # general stack kernel's set-up would cost more than the work).
    p10, p50, p90 = np.percentile(v, PERCENTILES)
    return {"count": len(v), "mean": float(v.mean()), "std": float(v.std()),
            "p10": float(p10), "p50": float(p50), "p90": float(p90)}  # fmt: skip


def period_classes(stack: Sequence[NDArray[np.integer]]) -> NDArray[np.int64]:
    """Per pixel, the class of the latest observation in a period.

    ``stack`` holds class rasters of one grid (same shape) in time order, oldest first,
    with 0 where a scene did not classify the pixel. Returns int64 of that shape, 0 where
    no scene of the period observed the pixel.
    """
    if not stack:
        raise RegionError("a period needs at least one class raster")
    out = np.zeros(np.shape(stack[0]), np.int64)
    for arr in stack:
        a = np.asarray(arr)
        if a.shape != out.shape:
            raise RegionError(f"class rasters of one grid differ in shape: {a.shape}, {out.shape}")
        seen = a != NO_CLASS
        out[seen] = a[seen]
    return out


def transition_counts(
    before: NDArray[np.integer], after: NDArray[np.integer], idx: NDArray[np.int64], n_codes: int
) -> NDArray[np.int64]:
    """``(n_codes, n_codes)`` counts of (from, to) classes among pixels ``idx`` observed in
    both periods (class != 0 in ``before`` and ``after``); row = from, column = to."""
    b = np.asarray(before).ravel()[idx].astype(np.int64)
    a = np.asarray(after).ravel()[idx].astype(np.int64)
    both = (b != NO_CLASS) & (a != NO_CLASS)
    flat = b[both] * n_codes + a[both]
    return np.bincount(flat, minlength=n_codes * n_codes).reshape(n_codes, n_codes)
