"""Thin wrappers running :mod:`udfs.regions` in executor Python workers (aggregate job).

:func:`make_region_mapper` turns *work units* (one tile of one scene, or one tile of one
grid for ``change``, with the regions whose bounding boxes touch it; planned on the
driver) into keyed partial results; :func:`reduce_partials` combines the partials of one
key after Spark groups them. The workers read the ``tiles`` and ``predictions`` Parquet
files named in the units themselves (local paths or ``s3://`` hrefs, :mod:`udfs.storage`;
pixels never pass through the JVM), each file once per task when units come sorted by
file.

Keys and partials
-----------------
* ``("area", region, scene_id, model_id)`` -> ``(class counts, grid pixels)``: summed.
* ``("values", region, sensor, month)`` -> list of ``(scene_id, grid pixels, valid
  pixels, {index: finite float32 values})``: concatenated, then statistics per scene and
  for the month pooled (:func:`udfs.regions.value_statistics`).
* ``("change", region, grid, model_id)`` -> ``(n, n)`` transition counts: summed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import rasterio

from udfs.composites import COMPOSITE_BANDS, decode_composite
from udfs.feature_udfs import TILE_COLUMNS, _scaling, tile_core
from udfs.features import decode_tile, reflectance_dn, reflectance_layers, tile_quality
from udfs.indices import compute_indices
from udfs.regions import (
    class_counts,
    period_classes,
    region_pixels,
    transition_counts,
    value_statistics,
)
from udfs.storage import open_parquet
from udfs.tiling import decode_array

#: ``tiles`` columns the workers read (pixels + the tile's place in the scene grid).
TILE_READ_COLUMNS = (*TILE_COLUMNS, "row_off", "col_off", "transform")
#: Key of a ``composites`` row.
COMPOSITE_KEYS = ("grid_id", "period", "tile_row", "tile_col")
#: ``composites`` columns the workers read.
COMPOSITE_READ_COLUMNS = (*COMPOSITE_KEYS, "sensor", "width", "height", "dtype", "transform",
                          "row_off", "col_off", "count", *COMPOSITE_BANDS)  # fmt: skip
#: ``predictions`` columns the workers read.
PRED_READ_COLUMNS = (
    "scene_id",
    "tile_row",
    "tile_col",
    "row_off",
    "col_off",
    "width",
    "height",
    "dtype",
    "transform",
    "classes",
)


class FileRows:
    """Rows of ``tiles`` / ``predictions`` / ``composites`` Parquet files by their key
    (``keys``: scene_id, tile_row, tile_col; for composites grid_id, period, tile_row,
    tile_col).

    Files are local paths or ``s3://`` / ``s3a://`` hrefs, opened through
    :func:`udfs.storage.open_parquet` with ``store``, the object-store recipe of the
    driver (endpoint, region; empty for local files). A file's key columns are read
    once; a row's other columns are read with its row group only (one tile per group,
    :data:`udfs.ingest_udfs.TILES_PER_ROW_GROUP`), so a task decodes the tiles its regions
    touch, not their neighbours in the same file. The last ``keep`` row groups read stay
    cached, and the key index of the last ``4 * keep`` files.
    """

    def __init__(
        self,
        columns: Sequence[str],
        keep: int = 8,
        keys: Sequence[str] = ("scene_id", "tile_row", "tile_col"),
        store: Mapping[str, str] | None = None,
    ) -> None:
        self.columns = list(columns)
        self.store = dict(store or {})
        self.keys = tuple(keys)
        self.keep = keep
        self.index: OrderedDict[str, tuple[Any, dict[tuple[Any, ...], tuple[int, int]]]]
        self.index = OrderedDict()
        self.groups: OrderedDict[tuple[str, int], Any] = OrderedDict()

    def _index(self, path: str) -> tuple[Any, dict[tuple[Any, ...], tuple[int, int]]]:
        if path not in self.index:
            pf = open_parquet(path, self.store)
            t = pf.read(columns=list(self.keys))
            groups = [(rg, i) for rg in range(pf.num_row_groups)
                      for i in range(pf.metadata.row_group(rg).num_rows)]  # fmt: skip
            keys = zip(*(t.column(c).to_pylist() for c in self.keys), strict=True)
            where = dict(zip(keys, groups, strict=True))
            self.index[path] = (pf, where)
            while len(self.index) > 4 * self.keep:
                self.index.popitem(last=False)
        return self.index[path]

    def get(self, path: str, key: tuple[Any, ...]) -> dict[str, Any] | None:
        pf, where = self._index(path)
        if key not in where:
            return None
        rg, i = where[key]
        if (path, rg) not in self.groups:
            self.groups[(path, rg)] = pf.read_row_group(rg, columns=self.columns)
            while len(self.groups) > self.keep:
                self.groups.popitem(last=False)
        return self.groups[(path, rg)].slice(i, 1).to_pylist()[0]


def _classes(row: Mapping[str, Any]) -> np.ndarray:
    return decode_array(row["classes"], row["dtype"], row["height"], row["width"])


def _pixels(
    geoms: Sequence[tuple[Any, Any]], regions: Sequence[int], row: Mapping[str, Any], core: Any
) -> list[np.ndarray]:
    return [
        region_pixels(*geoms[r], row["transform"], row["height"], row["width"], core)
        for r in regions
    ]


def scene_unit(
    unit: Mapping[str, Any], ctx: Mapping[str, Any], tiles: FileRows, preds: FileRows
) -> Iterator[tuple[tuple, Any]]:
    """Partials of one tile of one scene: class counts per model, index values."""
    sid = unit["scene_id"]
    scene = ctx["scenes"][sid]
    geoms = ctx["regions"][scene["crs"]]
    key = (sid, unit["tile_row"], unit["tile_col"])
    regions = unit["regions"]
    for model_id, path in unit.get("preds", ()):
        row = preds.get(path, key)
        if row is None:
            continue
        core = tile_core(row, scene)
        cls = _classes(row)
        n = ctx["n_codes"][model_id]
        for r, idx in zip(regions, _pixels(geoms, regions, row, core), strict=True):
            yield ("area", r, sid, model_id), (class_counts(cls, idx, n), len(idx))
    if not unit.get("tiles_file"):
        return
    row = tiles.get(unit["tiles_file"], key)
    if row is None:
        return
    sensor = scene["sensor"]
    core = tile_core(row, scene)
    idxs = _pixels(geoms, regions, row, core)
    union = np.unique(np.concatenate(idxs)) if idxs else np.zeros(0, np.int64)
    # Mask, scale and combine only the regions' pixels (1-D): cost follows their area.
    dn = {k: v.ravel()[union] for k, v in decode_tile(row, sensor).items()}
    keep = ~tile_quality(sensor, dn, ctx["masks"]).masked
    sel = union[keep]
    flat = {k: v[keep] for k, v in reflectance_dn(sensor, dn).items()}
    values = compute_indices(
        reflectance_layers(sensor, flat, _scaling(scene)), ctx["indices"], sensor
    )
    for r, idx in zip(regions, idxs, strict=True):
        yield ("values", r, sensor, scene["month"]), [_region_values(sid, sel, idx, values)]


def composite_unit(
    unit: Mapping[str, Any], ctx: Mapping[str, Any], comps: FileRows
) -> Iterator[tuple[tuple, Any]]:
    """Index values of one composite tile (grid, period) in each region it touches.

    A pixel is valid where the composite has at least one valid observation (``count``
    > 0); indices come from the median reflectance with the policy of
    :mod:`udfs.indices` (NaN where undefined, left out).
    """
    key = (unit["grid_id"], unit["period"], unit["tile_row"], unit["tile_col"])
    row = comps.get(unit["composite_file"], key)
    if row is None:
        return
    scene = ctx["scenes"][unit["scene"]]
    geoms = ctx["regions"][scene["crs"]]
    idxs = _pixels(geoms, unit["regions"], row, tile_core(row, scene))
    union = np.unique(np.concatenate(idxs)) if idxs else np.zeros(0, np.int64)
    comp = decode_composite(row)
    keep = comp.count.ravel()[union] > 0
    sel = union[keep]
    refl = {k: v.ravel()[sel] for k, v in comp.bands.items()}
    values = compute_indices(refl, ctx["indices"], row["sensor"])
    cid = f"{unit['grid_id']}/{unit['period']}"
    for r, idx in zip(unit["regions"], idxs, strict=True):
        yield (
            ("cvalues", r, unit["grid_id"], unit["period"]),
            [_region_values(cid, sel, idx, values)],
        )


def _region_values(
    sid: str, sel: np.ndarray, idx: np.ndarray, values: Mapping[str, np.ndarray]
) -> tuple[str, int, int, dict[str, np.ndarray]]:
    """One region's partial: (scene or composite id, grid pixels, valid pixels, {index:
    finite values}); ``values`` hold the indices at the sorted valid pixels ``sel``."""
    pos = np.searchsorted(sel, idx)
    ok = pos < len(sel)
    ok[ok] = sel[pos[ok]] == idx[ok]
    pos = pos[ok]
    per_index = {}
    for name, v in values.items():
        x = v[pos]
        per_index[name.lower()] = x[np.isfinite(x)]
    return (sid, len(idx), int(ok.sum()), per_index)


def change_unit(
    unit: Mapping[str, Any], ctx: Mapping[str, Any], preds: FileRows
) -> Iterator[tuple[tuple, Any]]:
    """Transition counts of one tile of one grid between two periods (same grid only)."""
    periods = []
    row = None
    for side in ("from", "to"):
        stack = []
        for sid, path in unit[side]:  # oldest first
            r = preds.get(path, (sid, unit["tile_row"], unit["tile_col"]))
            if r is not None:
                row = r
                stack.append(_classes(r))
        if not stack:
            return
        periods.append(period_classes(stack))
    assert row is not None
    scene = ctx["scenes"][unit["from"][0][0]]
    geoms = ctx["regions"][scene["crs"]]
    core = tile_core(row, scene)
    n = ctx["n_codes"][unit["model_id"]]
    for r, idx in zip(unit["regions"], _pixels(geoms, unit["regions"], row, core), strict=True):
        yield (
            ("change", r, unit["grid"], unit["model_id"]),
            transition_counts(periods[0], periods[1], idx, n),
        )


def make_region_mapper(
    ctx_ref: Any,
) -> Callable[[Iterable[Mapping[str, Any]]], Iterator[tuple[tuple, Any]]]:
    """RDD ``mapPartitions`` function: work units -> keyed partials (module docstring).

    ``ctx_ref`` is a Spark broadcast (``.value``) or the context itself: ``scenes``
    (scene_id -> sensor, scaling, tile_size, crs key, month), ``regions`` (crs key -> list
    of (GeoJSON geometry in that CRS or None for a whole footprint, bounds)), ``indices``,
    ``masks`` (:class:`udfs.masks.MaskSettings`), ``n_codes`` (model id -> highest class
    code + 1) and optionally ``store`` (:func:`udfs.storage.store_options`: the settings
    of an object store holding the files; absent or empty for local files).
    """

    def run(units: Iterable[Mapping[str, Any]]) -> Iterator[tuple[tuple, Any]]:
        ctx = ctx_ref.value if hasattr(ctx_ref, "value") else ctx_ref
        store = ctx.get("store")
        tiles = FileRows(TILE_READ_COLUMNS, store=store)
        preds = FileRows(PRED_READ_COLUMNS, store=store)
        comps = FileRows(COMPOSITE_READ_COLUMNS, keys=COMPOSITE_KEYS, store=store)
        acc: dict[tuple, list[Any]] = {}
        component, whole = None, True
        with rasterio.Env():  # one GDAL environment for every burn of the task
            for unit in units:
                if unit.get("component") != component:
                    yield from _flush(acc, whole)
                    component, whole = unit.get("component"), unit.get("whole", False)
                if unit.get("kind") == "change":
                    parts = change_unit(unit, ctx, preds)
                elif unit.get("kind") == "composite":
                    parts = composite_unit(unit, ctx, comps)
                else:
                    parts = scene_unit(unit, ctx, tiles, preds)
                for key, part in parts:
                    acc.setdefault(key, []).append(part)
            yield from _flush(acc, whole)

    return run


def _flush(acc: dict[tuple, list[Any]], whole: bool) -> Iterator[tuple]:
    """Emit and forget the partials of the component just done (see :func:`combine`)."""
    for key, parts in acc.items():
        yield ("final", reduce_partials(key, parts)) if whole else ("partial", key, parts)
    acc.clear()


def combine(items: Iterable[tuple]) -> list[dict[str, Any]]:
    """The records of every key from what the tasks emitted (driver side).

    A task emits ``("final", record)`` for the keys of a component it held whole (every
    unit of those regions was in that task) and ``("partial", key, partials)`` for the
    keys of a component split over tasks; the partials of a key are joined here and
    reduced once (:func:`reduce_partials`), so percentiles stay exact.
    """
    out: list[dict[str, Any]] = []
    split: dict[tuple, list[Any]] = {}
    for item in items:
        if item[0] == "final":
            out.append(item[1])
        else:
            split.setdefault(item[1], []).extend(item[2])
    return out + [reduce_partials(k, v) for k, v in split.items()]


def reduce_partials(key: tuple, grouped: Iterable[Any]) -> dict[str, Any]:
    """The partials of one key (grouped by Spark) combined into a plain record.

    ``area`` and ``change`` partials are summed. ``values`` (and ``cvalues``: composites,
    one "scene" per grid and period) keys get statistics per scene
    (``scenes``: scene_id -> grid pixels, valid pixels, {index: stats}) and for the whole
    group (``pooled``: {index: stats}), each from all its values at once, so percentiles
    are exact.
    """
    kind = key[0]
    parts = list(grouped)
    if kind == "area":
        counts = np.sum([p[0] for p in parts], axis=0)
        return {"key": key, "counts": counts.tolist(), "grid_pixels": sum(p[1] for p in parts)}
    if kind == "change":
        return {"key": key, "matrix": np.sum(parts, axis=0).tolist()}
    value = [x for p in parts for x in p]
    by_scene: dict[str, dict[str, Any]] = {}
    for sid, grid_px, valid_px, per_index in value:
        s = by_scene.setdefault(sid, {"grid_pixels": 0, "valid_pixels": 0, "values": {}})
        s["grid_pixels"] += grid_px
        s["valid_pixels"] += valid_px
        for name, v in per_index.items():
            s["values"].setdefault(name, []).append(v)
    scenes = {}
    pooled: dict[str, list[np.ndarray]] = {}
    for sid, s in by_scene.items():
        stats = {}
        for name, chunks in s["values"].items():
            v = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
            stats[name] = value_statistics(v)
            pooled.setdefault(name, []).append(v)
        scenes[sid] = {
            "grid_pixels": s["grid_pixels"],
            "valid_pixels": s["valid_pixels"],
            "stats": stats,
        }
    return {
        "key": key,
        "scenes": scenes,
        "pooled": (
            next(iter(scenes.values()))["stats"]  # one scene: the same values
            if len(scenes) == 1
            else {k: value_statistics(np.concatenate(v)) for k, v in pooled.items()}
        ),
    }
