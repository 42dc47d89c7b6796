"""Thin wrappers running :mod:`udfs.regions` in executor Python workers (aggregate job).

:func:`make_region_mapper` turns *work units* (one tile of one scene, or one tile of one
grid for ``change``, with the regions whose bounding boxes touch it; planned on the
driver) into keyed partial results; :func:`reduce_partials` combines the partials of one
key after Spark groups them. The workers read the ``tiles`` and ``predictions`` Parquet
files named in the units themselves (pixels never pass through the JVM), each file once
per task when units come sorted by file.

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
import pyarrow.parquet as pq

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
from udfs.tiling import decode_array

#: ``tiles`` columns the workers read (pixels + the tile's place in the scene grid).
TILE_READ_COLUMNS = (*TILE_COLUMNS, "row_off", "col_off", "transform")
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
    """The rows of the last few Parquet files read, keyed by (scene_id, tile_row, tile_col)."""

    def __init__(self, columns: Sequence[str], keep: int = 4) -> None:
        self.columns = list(columns)
        self.keep = keep
        self.files: OrderedDict[str, dict[tuple[str, int, int], dict[str, Any]]] = OrderedDict()

    def get(self, path: str, key: tuple[str, int, int]) -> dict[str, Any] | None:
        if path not in self.files:
            table = pq.read_table(path, columns=self.columns)
            self.files[path] = {
                (r["scene_id"], r["tile_row"], r["tile_col"]): r for r in table.to_pylist()
            }
            while len(self.files) > self.keep:
                self.files.popitem(last=False)
        return self.files[path].get(key)


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
    dn = decode_tile(row, sensor)
    masked = tile_quality(sensor, dn, ctx["masks"]).masked.ravel()
    idxs = _pixels(geoms, regions, row, core)
    union = np.unique(np.concatenate(idxs)) if idxs else np.zeros(0, np.int64)
    sel = union[~masked[union]]
    # Scale and combine only the regions' valid pixels (1-D): cost follows their area.
    flat = {k: v.ravel()[sel] for k, v in reflectance_dn(sensor, dn).items()}
    values = compute_indices(
        reflectance_layers(sensor, flat, _scaling(scene)), ctx["indices"], sensor
    )
    for r, idx in zip(regions, idxs, strict=True):
        pos = np.searchsorted(sel, idx)
        ok = pos < len(sel)
        ok[ok] = sel[pos[ok]] == idx[ok]
        pos = pos[ok]
        per_index = {}
        for name, v in values.items():
            x = v[pos]
            per_index[name.lower()] = x[np.isfinite(x)]
        part = (sid, len(idx), int(ok.sum()), per_index)
        yield ("values", r, sensor, scene["month"]), [part]


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
    ``masks`` (:class:`udfs.masks.MaskSettings`) and ``n_codes`` (model id -> highest class
    code + 1).
    """

    def run(units: Iterable[Mapping[str, Any]]) -> Iterator[tuple[tuple, Any]]:
        ctx = ctx_ref.value if hasattr(ctx_ref, "value") else ctx_ref
        tiles = FileRows(TILE_READ_COLUMNS)
        preds = FileRows(PRED_READ_COLUMNS)
        for unit in units:
            if unit.get("kind") == "change":
                yield from change_unit(unit, ctx, preds)
            else:
                yield from scene_unit(unit, ctx, tiles, preds)

    return run


def reduce_partials(key: tuple, grouped: Iterable[Any]) -> dict[str, Any]:
    """The partials of one key (grouped by Spark) combined into a plain record.

    ``area`` and ``change`` partials are summed. ``values`` keys get statistics per scene
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
        "pooled": {k: value_statistics(np.concatenate(v)) for k, v in pooled.items()},
    }
