"""Training labels on the tile grid: rasterize polygons, spatial blocks, the split, sampling.

Pure numpy + rasterio.features / shapely kernels (no pyspark, no file I/O): the training
job (:mod:`pipelines.train`) calls the rasterizers on the executors, tile by tile, and
:func:`assign_split` on the driver over a small (polygon, block, pixels) table. Over 500
lines on purpose: the rasterizers, the map blocks, the split and the sampling share the
conventions and decisions stated here (polygon ids, blocks, groups), read together.
The executors' reader around these kernels is :mod:`udfs.labelled`.

Conventions
-----------
* A label raster is a ``(height, width)`` array on one tile's own grid; ``0`` means
  *no label* (outside every polygon, or covered by polygons of different classes).
  Class codes are integers ``1 .. 32767``; the array is ``uint8`` when every code fits
  (<= 255), else ``int16``.
* A pixel is labelled when its *centre* lies inside a polygon (``all_touched=False``), so
  a polygon drawn inside homogeneous land cover never labels a mixed edge pixel.
* Polygon ids are the polygons' positions in the label file (0-based, features without a
  geometry skipped); ``-1`` means no polygon. A pixel covered by several polygons of one
  class carries the *lowest* id of them (the first in the file); one covered by polygons
  of different classes has no label and no id.

Decisions (the held-out split, issue 9)
---------------------------------------
* **Blocks are squares of the map**, not of one scene's grid: a pixel's block is
  ``(floor(x / block_m), floor(y / block_m))`` of its centre in its CRS (:func:`map_block`),
  with ``block_m = block_px x`` the finest pixel size of the training scenes. The same
  ground seen by two scenes (of any grid or sensor in that CRS) is in the same block.
  Blocks of different CRSs are different blocks; a polygon seen in both joins them.
* **Groups** are the connected components of the bipartite graph polygon <-> block
  (a polygon links every block holding one of its labelled pixels) plus links between
  polygons whose interiors overlap (:func:`overlap_links`). Pixels of one polygon, of
  overlapping polygons and of polygons sharing a block are therefore always on one side.
  A group is named by its smallest polygon id.
* **Whole groups are held out**, visited in the order of a seeded SplitMix64 hash of the
  group name (:func:`hash_unit`); a group goes to the test side when that brings the
  held-out *pixel* count closer to ``test_fraction`` of all labelled pixels (held-out
  pixels + half the group's pixels <= target). A group larger than twice the remaining
  gap is skipped, so one huge group cannot swallow the test set.
* **Every class on both sides when possible**: a class with at least two groups that
  ends up on one side only gets the first (hash order) of its groups moved to the other
  side, unless that move would empty a side for another class. Classes that still miss a
  side (for instance a class drawn as one polygon, or whose polygons all share a block)
  are reported by :class:`Split` (``missing_test``, ``missing_train``, ``one_group``),
  never dropped silently.
* The split depends only on the (polygon, block, pixel count) table and the seed, not on
  partitioning or row order: a re-run over the same data holds out the same polygons.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.transform import Affine
from rasterio.warp import transform_geom
from shapely import STRtree, from_wkb, touches
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
    """Burn label polygons into one tile's grid (class codes only).

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
    items = [(g, c, i) for i, (g, c) in enumerate(geoms_with_codes)]
    return rasterize_polygons(items, tile_transform, height, width, tile_crs_epsg, src_crs)[0]


def rasterize_polygons(
    items: Iterable[tuple[Any, int, int]],
    tile_transform: Sequence[float],
    height: int,
    width: int,
    tile_crs_epsg: int | str | None,
    src_crs: Any = "EPSG:4326",
) -> tuple[NDArray[np.integer], NDArray[np.int32]]:
    """Burn label polygons into one tile's grid: class codes and polygon ids.

    Parameters
    ----------
    items : iterable of (geometry, int, int)
        ``(polygon, class code 1..32767, polygon id >= 0)``; geometry as in
        :func:`rasterize_labels`.
    tile_transform, height, width, tile_crs_epsg, src_crs
        As in :func:`rasterize_labels`.

    Returns
    -------
    labels : ndarray, shape (height, width), uint8 or int16
        As :func:`rasterize_labels` returns.
    polygons : ndarray, shape (height, width), int32
        Id of the polygon each labelled pixel comes from: the lowest id among the
        polygons (all of one class) holding its centre; ``-1`` where ``labels`` is 0.
    """
    if height <= 0 or width <= 0:
        raise LabelError(f"tile size must be positive, got {height}x{width}")
    by_code: dict[int, list[Mapping[str, Any]]] = {}
    ids: list[tuple[int, Mapping[str, Any]]] = []
    for geom, code, pid in items:
        code_int = int(code)
        if code_int != code or not 1 <= code_int <= MAX_CODE:
            raise LabelError(f"class codes must be integers 1..{MAX_CODE}, got {code!r}")
        if int(pid) != pid or not 0 <= int(pid) <= np.iinfo(np.int32).max:
            raise LabelError(f"polygon ids must be integers >= 0, got {pid!r}")
        g = _as_mapping(geom)
        by_code.setdefault(code_int, []).append(g)
        ids.append((int(pid), g))
    out = np.zeros((height, width), dtype=label_dtype(max(by_code, default=0)))
    polygons = np.full((height, width), -1, dtype=np.int32)
    if not by_code:
        return out, polygons
    dst = _crs(tile_crs_epsg) if tile_crs_epsg is not None else None
    src = _crs(src_crs)
    reproject = dst is not None and src != dst
    transform = Affine(*tile_transform[:6])
    cache: dict[int, Mapping[str, Any]] = {}

    def tile_geom(g: Mapping[str, Any]) -> Mapping[str, Any]:
        if not reproject:
            return g
        if id(g) not in cache:
            cache[id(g)] = transform_geom(src, dst, g)
        return cache[id(g)]

    n_classes = np.zeros((height, width), dtype=np.uint16)
    for code, geoms in sorted(by_code.items()):
        burnt = rasterize(
            ((tile_geom(g), 1) for g in geoms),
            out_shape=(height, width),
            transform=transform,
            fill=0,
            all_touched=False,
            dtype="uint8",
        ).astype(bool)
        n_classes += burnt
        out[burnt] = code
    out[n_classes > 1] = NO_LABEL
    # rasterize paints in order (the last shape wins): highest id first, so the lowest wins.
    polygons[:] = rasterize(
        ((tile_geom(g), pid) for pid, g in sorted(ids, key=lambda t: -t[0])),
        out_shape=(height, width),
        transform=transform,
        fill=-1,
        all_touched=False,
        dtype="int32",
    )
    polygons[out == NO_LABEL] = -1
    return out, polygons


def _crs(value: Any) -> CRS:
    try:
        if isinstance(value, CRS):
            return value
        if isinstance(value, (int, np.integer)):
            return CRS.from_epsg(int(value))
        return CRS.from_user_input(value)
    except Exception as e:  # rasterio raises CRSError, a subclass of several bases
        raise LabelError(f"unknown CRS {value!r}: {e}") from e


# ----------------------------------------------------------------------------- spatial blocks


def pixel_centres(
    transform: Sequence[float], rows: ArrayLike, cols: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Map coordinates (x, y) of pixel centres, in the grid's CRS units (metres for UTM).

    ``transform`` is the affine ``(a, b, c, d, e, f)`` of the grid whose pixel
    ``(rows, cols)`` are meant (a tile's own transform with tile rows and columns).
    """
    a, b, c, d, e, f = (float(v) for v in transform[:6])
    col = np.asarray(cols, dtype=np.float64) + 0.5
    row = np.asarray(rows, dtype=np.float64) + 0.5
    return c + a * col + b * row, f + d * col + e * row


_HALF = 1 << 21  # block indices are stored in 22 bits each, offset by 2**21
_EPSG_LIMIT = 1 << 20


def map_block(x: ArrayLike, y: ArrayLike, block_m: float, epsg: int | None) -> NDArray[np.int64]:
    """Id of the ``block_m`` x ``block_m`` square of the map holding each point.

    Parameters
    ----------
    x, y : float or array of float
        Pixel centres in the CRS ``epsg`` (:func:`pixel_centres`), CRS units (metres).
    block_m : float
        Block side in CRS units (``block_px`` x the finest pixel size of the training
        scenes).
    epsg : int or None
        EPSG code of the CRS; ``None`` (a CRS without code) is stored as 0.

    Returns
    -------
    ndarray of int64, broadcast shape of the inputs
        ``epsg * 2**44 + (by + 2**21) * 2**22 + (bx + 2**21)`` with
        ``bx = floor(x / block_m)`` and ``by = floor(y / block_m)`` (two's complement
        int64 of that unsigned number). Equal for every point of one block of one CRS.
    """
    if not float(block_m) > 0:
        raise LabelError(f"block side must be > 0 map units, got {block_m}")
    code = 0 if epsg is None else int(epsg)
    if not 0 <= code < _EPSG_LIMIT:
        raise LabelError(f"EPSG code {epsg} does not fit a block id (0 .. {_EPSG_LIMIT - 1})")
    bx = np.floor(np.asarray(x, dtype=np.float64) / float(block_m))
    by = np.floor(np.asarray(y, dtype=np.float64) / float(block_m))
    if not (np.isfinite(bx).all() and np.isfinite(by).all()):
        raise LabelError("pixel coordinates must be finite")
    if (np.abs(bx) >= _HALF).any() or (np.abs(by) >= _HALF).any():
        raise LabelError(
            f"blocks of {block_m} map units are too small for coordinates up to "
            f"{max(np.abs(np.asarray(x)).max(), np.abs(np.asarray(y)).max()):.0f}: "
            "use a larger block size"
        )
    key = (
        (np.uint64(code) << np.uint64(44))
        | ((by.astype(np.int64) + _HALF).astype(np.uint64) << np.uint64(22))
        | (bx.astype(np.int64) + _HALF).astype(np.uint64)
    )
    return np.asarray(key, dtype=np.uint64).view(np.int64)


# ----------------------------------------------------------------------------- hashing


def _splitmix64(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """SplitMix64 finaliser: a well-mixed, platform-independent 64-bit hash."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def hash_unit(keys: ArrayLike, seed: int = 0) -> NDArray[np.float64]:
    """A seeded hash of int64 keys mapped to ``[0, 1)``: ``splitmix64(key ^ splitmix64(seed))``.

    A pure function of ``(key, seed)``: independent of data, partitioning and row order.
    Returns float64 of the shape of ``np.atleast_1d(keys)``.
    """
    ids = np.atleast_1d(np.asarray(keys, dtype=np.int64)).view(np.uint64)
    key = _splitmix64(np.asarray([seed], dtype=np.int64).view(np.uint64))
    h = _splitmix64(ids ^ key)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


# ----------------------------------------------------------------------------- the split


def overlap_links(geoms: Sequence[BaseGeometry]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Pairs ``(i, j)``, ``i < j``, of polygons whose interiors overlap (touching is not).

    ``geoms`` are the label polygons in one CRS, indexed by polygon id. Returns two int64
    arrays of equal length.
    """
    arr = np.asarray(list(geoms), dtype=object)
    if len(arr) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    a, b = STRtree(arr).query(arr, predicate="intersects")
    keep = a < b
    a, b = a[keep], b[keep]
    if len(a):
        inner = ~touches(arr[a], arr[b])
        a, b = a[inner], b[inner]
    return a.astype(np.int64), b.astype(np.int64)


def split_groups(
    polygon: ArrayLike,
    block: ArrayLike,
    links: tuple[ArrayLike, ArrayLike] | None = None,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Connected components of the bipartite graph polygon <-> block (+ polygon links).

    Parameters
    ----------
    polygon, block : array of int, shape (n,)
        One edge per row: a polygon has labelled pixels in a block.
    links : (array, array), optional
        Extra polygon-polygon edges (:func:`overlap_links`).

    Returns
    -------
    polygons : ndarray of int64, shape (p,)
        The distinct polygon ids of ``polygon``, ascending.
    groups : ndarray of int64, shape (p,)
        The group of each: the smallest polygon id of its component.
    """
    pol = np.asarray(polygon, dtype=np.int64)
    blk = np.asarray(block, dtype=np.int64)
    if pol.shape != blk.shape or pol.ndim != 1:
        raise LabelError(
            f"polygon and block must be 1-D of one length, got {pol.shape}, {blk.shape}"
        )
    la, lb = (np.zeros(0, np.int64),) * 2 if links is None else map(np.asarray, links)
    la, lb = np.asarray(la, dtype=np.int64), np.asarray(lb, dtype=np.int64)
    polygons = np.unique(pol)
    nodes_p = np.unique(np.concatenate([pol, la, lb]))
    nodes_b = np.unique(blk)
    n_p = len(nodes_p)
    parent = np.arange(n_p + len(nodes_b))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    def union(u: int, v: int) -> None:
        ru, rv = find(u), find(v)
        if ru != rv:  # the smaller index (smaller polygon id) becomes the root
            parent[max(ru, rv)] = min(ru, rv)

    edges_u = np.concatenate([np.searchsorted(nodes_p, pol), np.searchsorted(nodes_p, la)])
    edges_v = np.concatenate([n_p + np.searchsorted(nodes_b, blk), np.searchsorted(nodes_p, lb)])
    for u, v in zip(edges_u.tolist(), edges_v.tolist(), strict=True):
        union(u, v)
    roots = np.asarray([find(i) for i in np.searchsorted(nodes_p, polygons).tolist()], np.int64)
    # Polygon nodes come first and ascending, so every component with a polygon has the
    # smallest polygon id of it as root.
    return polygons, nodes_p[roots] if len(roots) else np.zeros(0, np.int64)


@dataclass(frozen=True)
class Split:
    """Which polygons are held out (see the module's Decisions).

    Attributes
    ----------
    polygons : ndarray of int64, shape (p,)
        Every polygon id with labelled pixels, ascending.
    groups : ndarray of int64, shape (p,)
        Group of each polygon (smallest polygon id of its group).
    test : ndarray of bool, shape (p,)
        True where the polygon (its whole group) is held out.
    pixels : ndarray of int64, shape (p,)
        Labelled pixels of each polygon (over every scene).
    classes : ndarray of int64, shape (p,)
        Class code of each polygon.
    missing_test, missing_train : tuple of int
        Class codes with labelled pixels but none on the held-out / training side.
    one_group : tuple of int
        Class codes whose polygons all fall in one group (they can be on one side only).
    """

    polygons: NDArray[np.int64]
    groups: NDArray[np.int64]
    test: NDArray[np.bool_]
    pixels: NDArray[np.int64]
    classes: NDArray[np.int64]
    missing_test: tuple[int, ...] = ()
    missing_train: tuple[int, ...] = ()
    one_group: tuple[int, ...] = ()

    @property
    def test_polygons(self) -> list[int]:
        return [int(p) for p in self.polygons[self.test]]

    @property
    def train_polygons(self) -> list[int]:
        return [int(p) for p in self.polygons[~self.test]]

    @property
    def n_groups(self) -> int:
        return len(np.unique(self.groups))

    @property
    def n_groups_test(self) -> int:
        return len(np.unique(self.groups[self.test]))

    @property
    def pixels_test(self) -> int:
        return int(self.pixels[self.test].sum())

    @property
    def pixels_train(self) -> int:
        return int(self.pixels[~self.test].sum())


def assign_split(
    polygon: ArrayLike,
    block: ArrayLike,
    pixels: ArrayLike,
    codes: ArrayLike,
    test_fraction: float,
    seed: int = 0,
    links: tuple[ArrayLike, ArrayLike] | None = None,
) -> Split:
    """Hold out whole groups of polygons and blocks (see the module's Decisions).

    Parameters
    ----------
    polygon, block, pixels : array of int, shape (n,)
        The (polygon id, block id, labelled pixel count) table, one row per pair present
        (rows of one pair may repeat; their pixels add up).
    codes : array of int
        Class code of every polygon, indexed by polygon id.
    test_fraction : float
        Target share of labelled pixels held out, within (0, 1).
    seed : int
        Seed of the group order.
    links : (array, array), optional
        Polygon-polygon edges (:func:`overlap_links`).
    """
    if not 0.0 < test_fraction < 1.0:
        raise LabelError(f"test fraction must be within (0, 1), got {test_fraction}")
    pol = np.asarray(polygon, dtype=np.int64)
    px = np.asarray(pixels, dtype=np.int64)
    code_of = np.asarray(codes, dtype=np.int64)
    if len(pol) and (pol.min() < 0 or pol.max() >= len(code_of)):
        raise LabelError(f"polygon ids must be within 0..{len(code_of) - 1}")
    polygons, groups = split_groups(pol, block, links)
    per_pol = np.bincount(np.searchsorted(polygons, pol), weights=px, minlength=len(polygons))
    per_pol = per_pol.astype(np.int64)
    classes = code_of[polygons]
    names, gi = np.unique(groups, return_inverse=True)
    gpx = np.bincount(gi, weights=per_pol, minlength=len(names))
    cls_list, ci = np.unique(classes, return_inverse=True)
    has = np.zeros((len(names), len(cls_list)), dtype=bool)
    has[gi, ci] = True
    order = np.lexsort((names, hash_unit(names, seed))) if len(names) else names
    target = test_fraction * float(per_pol.sum())
    test_g = np.zeros(len(names), dtype=bool)
    held = 0.0
    for g in order.tolist():
        if held + gpx[g] / 2 <= target:
            test_g[g] = True
            held += gpx[g]
    for k in range(len(cls_list)):
        if has[:, k].sum() < 2:
            continue
        for side in (True, False):
            if (has[:, k] & (test_g == side)).any():
                continue
            for g in order.tolist():
                if not has[g, k] or test_g[g] == side:
                    continue
                other = test_g != side
                before = has[other].any(axis=0)
                other[g] = False
                if not (before & ~has[other].any(axis=0)).any():
                    test_g[g] = side
                    break
    test = test_g[gi]

    def missing(side: bool) -> tuple[int, ...]:
        return tuple(int(c) for k, c in enumerate(cls_list) if not has[test_g == side, k].any())

    one = tuple(int(c) for k, c in enumerate(cls_list) if has[:, k].sum() == 1)
    return Split(polygons, groups, test, per_pol, classes, missing(True), missing(False), one)


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
