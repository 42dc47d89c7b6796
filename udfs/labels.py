"""Training labels on the tile grid: rasterize polygons, spatial blocks, capped sampling.

Pure numpy + rasterio.features / shapely kernels (no pyspark, no file I/O): the training
job (:mod:`pipelines.train`) calls them on the executors, tile by tile.

Conventions
-----------
* A label raster is a ``(height, width)`` array on one tile's own grid; ``0`` means
  *no label* (outside every polygon, or covered by polygons of different classes).
  Class codes are integers ``1 .. 32767``; the array is ``uint8`` when every code fits
  (<= 255), else ``int16``.
* A pixel is labelled when its *centre* lies inside a polygon (``all_touched=False``), so
  a polygon drawn inside homogeneous land cover never labels a mixed edge pixel.
* Spatial blocks are squares of ``block_px`` pixels of the *scene* grid. The held-out
  split assigns whole blocks (never single pixels) to train or test by a deterministic
  hash of the block, so neighbouring, strongly correlated pixels never end up on both
  sides, and the same blocks are held out in every scene that shares the grid.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.transform import Affine
from rasterio.warp import transform_geom
from shapely import from_wkb
from shapely.geometry import mapping
from shapely.geometry.base import BaseGeometry

from udfs.errors import PipelineError

MAX_CODE = 32767  # int16
NO_LABEL = 0


class LabelError(PipelineError, ValueError):
    """Label polygons or class codes cannot be used (bad code, geometry or CRS)."""


def _as_mapping(geom: Any) -> Mapping[str, Any]:
    """GeoJSON-like mapping of a shapely geometry, WKB bytes or a mapping."""
    if isinstance(geom, (bytes, bytearray, memoryview)):
        geom = from_wkb(bytes(geom))
    if isinstance(geom, BaseGeometry):
        return mapping(geom)
    if isinstance(geom, Mapping) and "type" in geom:
        return geom
    raise LabelError(f"label geometry must be shapely, WKB or GeoJSON, got {type(geom).__name__}")


def label_dtype(max_code: int) -> np.dtype:
    """``uint8`` when every code fits in it, else ``int16``."""
    return np.dtype(np.uint8) if max_code <= 255 else np.dtype(np.int16)


def rasterize_labels(
    geoms_with_codes: Iterable[tuple[Any, int]],
    tile_transform: Sequence[float],
    height: int,
    width: int,
    tile_crs_epsg: int | str | None,
    src_crs: Any = "EPSG:4326",
) -> NDArray[np.integer]:
    """Burn label polygons into one tile's grid.

    Parameters
    ----------
    geoms_with_codes : iterable of (geometry, int)
        Polygons (shapely geometry, WKB bytes or GeoJSON mapping) in ``src_crs`` with their
        class code, ``1 .. 32767``.
    tile_transform : sequence of 6 float
        Affine ``(a, b, c, d, e, f)`` of the tile's upper-left pixel (``tiles.transform``).
    height, width : int
        Tile size in pixels.
    tile_crs_epsg : int, str or None
        EPSG code of the tile (``tiles.crs_epsg``); polygons are reprojected from
        ``src_crs`` to it (:func:`rasterio.warp.transform_geom`). ``None`` means the
        polygons are already in the tile's CRS.
    src_crs : str, int or CRS
        CRS of the polygons: ``EPSG:4326`` for GeoJSON, the file's CRS for GeoParquet.

    Returns
    -------
    ndarray, shape (height, width), uint8 (codes <= 255) or int16
        Class code of every pixel whose centre lies inside a polygon; ``0`` elsewhere and
        where polygons of *different* classes overlap (an ambiguous label is no label).
    """
    if height <= 0 or width <= 0:
        raise LabelError(f"tile size must be positive, got {height}x{width}")
    items = list(geoms_with_codes)
    by_code: dict[int, list[Mapping[str, Any]]] = {}
    for geom, code in items:
        code_int = int(code)
        if code_int != code or not 1 <= code_int <= MAX_CODE:
            raise LabelError(f"class codes must be integers 1..{MAX_CODE}, got {code!r}")
        by_code.setdefault(code_int, []).append(_as_mapping(geom))
    dtype = label_dtype(max(by_code, default=0))
    out = np.zeros((height, width), dtype=dtype)
    if not by_code:
        return out
    dst = _crs(tile_crs_epsg) if tile_crs_epsg is not None else None
    src = _crs(src_crs)
    reproject = dst is not None and src != dst
    transform = Affine(*tile_transform[:6])
    n_classes = np.zeros((height, width), dtype=np.uint16)
    for code, geoms in sorted(by_code.items()):
        shapes = [transform_geom(src, dst, g) if reproject else g for g in geoms]
        burnt = rasterize(
            ((g, 1) for g in shapes),
            out_shape=(height, width),
            transform=transform,
            fill=0,
            all_touched=False,
            dtype="uint8",
        ).astype(bool)
        n_classes += burnt
        out[burnt] = code
    out[n_classes > 1] = NO_LABEL
    return out


def _crs(value: Any) -> CRS:
    try:
        if isinstance(value, CRS):
            return value
        if isinstance(value, (int, np.integer)):
            return CRS.from_epsg(int(value))
        return CRS.from_user_input(value)
    except Exception as e:  # rasterio raises CRSError, a subclass of several bases
        raise LabelError(f"unknown CRS {value!r}: {e}") from e


# ----------------------------------------------------------------------------- spatial split


def spatial_block(scene_row: ArrayLike, scene_col: ArrayLike, block_px: int) -> NDArray[np.int64]:
    """Id of the ``block_px`` x ``block_px`` block of the scene grid holding each pixel.

    Parameters
    ----------
    scene_row, scene_col : int or array of int
        Pixel position in the scene grid (``tiles.row_off + row``, ``tiles.col_off + col``).
    block_px : int
        Block side in pixels of the scene grid (512 px = 5.12 km on a 10 m grid).

    Returns
    -------
    ndarray of int64, broadcast shape of the inputs
        ``block_row * 2**32 + block_col``: unique per block, identical for every pixel of
        the block and for the same block in every scene with the same grid.
    """
    if int(block_px) <= 0:
        raise LabelError(f"block size must be > 0 pixels, got {block_px}")
    r = np.asarray(scene_row, dtype=np.int64)
    c = np.asarray(scene_col, dtype=np.int64)
    if (r < 0).any() or (c < 0).any():
        raise LabelError("scene rows and columns must be >= 0")
    return (r // int(block_px)) * (1 << 32) + (c // int(block_px))


def _splitmix64(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """SplitMix64 finaliser: a well-mixed, platform-independent 64-bit hash."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def held_out(block_ids: ArrayLike, test_fraction: float, seed: int = 0) -> NDArray[np.bool_]:
    """True for blocks assigned to the test (held-out) set.

    The assignment is a pure function of ``(block id, seed)``: a SplitMix64 hash mapped to
    ``[0, 1)`` and compared with ``test_fraction``. It does not depend on the data, the
    partitioning or the order of pixels, so every executor agrees without a shuffle and a
    re-run holds out the same blocks.
    """
    if not 0.0 < test_fraction < 1.0:
        raise LabelError(f"test fraction must be within (0, 1), got {test_fraction}")
    ids = np.atleast_1d(np.asarray(block_ids, dtype=np.int64)).view(np.uint64)
    key = _splitmix64(np.asarray([seed], dtype=np.int64).view(np.uint64))
    h = _splitmix64(ids ^ key)
    u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    out = u < test_fraction
    return out if np.ndim(block_ids) else out[:1].reshape(())


# ----------------------------------------------------------------------------- sampling


def stratified_cap(labels: ArrayLike, cap: int, seed: int = 0) -> NDArray[np.int64]:
    """Indices of a per-class capped random sample: at most ``cap`` rows of each class.

    Classes with ``cap`` rows or fewer are kept whole. The draw is seeded and depends only
    on ``labels`` (classes are visited in sorted order). Returns sorted int64 indices.
    """
    if int(cap) <= 0:
        raise LabelError(f"cap per class must be > 0, got {cap}")
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keep = []
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        if len(idx) > cap:
            idx = rng.choice(idx, size=int(cap), replace=False)
        keep.append(idx)
    if not keep:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(keep)).astype(np.int64)


def sample_fractions(counts: Mapping[Hashable, int], cap: int, sigmas: float = 4.0):
    """Bernoulli fractions per stratum so a distributed sample keeps >= ``cap`` rows w.h.p.

    For Spark's ``sampleBy``: a stratum of ``n`` rows is sampled with fraction
    ``min(1, (cap + sigmas * sqrt(cap) + 10) / n)``, enough to hold ``cap`` rows except with
    probability ~1e-5 (``sigmas`` = 4), while the collected sample stays near
    ``cap`` per stratum; :func:`stratified_cap` then trims it to exactly ``cap``.
    """
    if int(cap) <= 0:
        raise LabelError(f"cap per class must be > 0, got {cap}")
    want = cap + sigmas * math.sqrt(cap) + 10
    return {k: (1.0 if n <= want else want / n) for k, n in counts.items() if n > 0}
