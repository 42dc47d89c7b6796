"""Driver-side planning of the aggregate job: what to recompute and which tiles to read.

From the ``scenes``, ``models``, ``tile_predictions`` and stored analysis rows (no pixel
column is read): :func:`scene_info` gives every scene's grid, date and ingest identity;
:func:`plan` compares each (region set, scene[, model]) ``inputs_digest`` with the stored
one and lists the scenes (x models), months and change groups to recompute, and
:func:`work_units` the (tile, regions) units whose bounding boxes meet (every other tile
is pruned before a pixel is read). Tables are read with delta-rs + pyarrow, on a local
root or an object store alike (:func:`pipelines.object_store.read_arrow`); a unit names
its files by path or ``s3://`` href. The digests and what they hold are described in
:mod:`pipelines.aggregate` (Decisions, *Incremental*).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pyarrow.dataset as ds
from rasterio.crs import CRS
from rasterio.warp import transform_geom
from shapely.geometry import box, mapping, shape

from pipelines.config import Config, parse_period
from pipelines.lakehouse import Lakehouse
from pipelines.object_store import read_arrow
from pipelines.regions_io import RegionSet
from pipelines.runs import Run
from pipelines.scheduling import balanced_groups
from udfs.errors import ConfigError
from udfs.tiling import window_bounds

#: Version of the aggregation rules, part of every ``inputs_digest``.
AGGREGATE_POLICY_VERSION = 1


def _digest(*parts: Any) -> str:
    blob = json.dumps([AGGREGATE_POLICY_VERSION, *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _crs_key(row: dict[str, Any]) -> str:
    return f"EPSG:{row['crs_epsg']}" if row["crs_epsg"] else str(row["crs_wkt"])


def scene_info(lake: Lakehouse) -> dict[str, dict[str, Any]]:
    """Every scene's grid, sensor, date, scaling and ingest identity."""
    cols = ("scene_id", "sensor", "acquired_date", "crs_epsg", "crs_wkt", "transform", "width",
            "height", "tile_size", "overlap", "scaling", "run_id", "tiling_digest")  # fmt: skip
    out = {}
    for r in read_arrow(lake, "scenes", cols).to_pylist():
        crs = _crs_key(r)
        out[r["scene_id"]] = {
            "sensor": r["sensor"],
            "acquired_date": r["acquired_date"],
            "month": r["acquired_date"].strftime("%Y-%m"),
            "crs": crs,
            "transform": list(r["transform"]),
            "width": r["width"],
            "height": r["height"],
            "tile_size": r["tile_size"],
            "scaling": {k: [v["scale"], v["offset"]] for k, v in (r["scaling"] or [])},
            "ingest": [r["run_id"], r["tiling_digest"]],
            "grid": f"{crs} {','.join(f'{v:g}' for v in list(r['transform'])[:6])} "
            f"{r['width']}x{r['height']} tile {r['tile_size']}+{r['overlap']}",
        }
    return out


def month_members(scenes: dict[str, dict[str, Any]], sensor: str, month: str) -> list[str]:
    """Sorted ids of the scenes of one sensor and month (``YYYY-MM``)."""
    return sorted(s for s, v in scenes.items() if (v["sensor"], v["month"]) == (sensor, month))


def regions_in_crs(rset: RegionSet, crs: str, scene: dict[str, Any]) -> list[dict[str, Any]]:
    """Each region in ``crs``: GeoJSON geometry, bounds, area (CRS units^2).

    A footprint region is the scene's own extent (geometry None: every pixel).
    """
    out = []
    for reg in rset.regions:
        if reg.geom is None:
            bounds = window_bounds(scene["transform"], 0, 0, scene["height"], scene["width"])
            area = box(*bounds).area
            out.append({"geom": None, "bounds": bounds, "area": area})
            continue
        same = CRS.from_user_input(rset.crs) == CRS.from_user_input(crs)
        geo = mapping(reg.geom) if same else transform_geom(rset.crs, crs, mapping(reg.geom))
        g = shape(geo)
        out.append({"geom": geo, "bounds": g.bounds, "area": g.area})
    return out


def tile_layout(
    lake: Lakehouse, name: str, scene_ids: list[str], model_ids: list[str] | None = None
) -> list[dict[str, Any]]:
    """Key and file of every row of ``tiles`` / ``predictions`` of these scenes (no pixel
    column is read)."""
    if not scene_ids:
        return []
    where = ds.field("scene_id").isin(scene_ids)
    cols = ["scene_id", "tile_row", "tile_col"]
    if model_ids is not None:
        where = where & ds.field("model_id").isin(model_ids)
        cols.append("model_id")
    return read_arrow(lake, name, cols, where, with_file=True).to_pylist()


def core_bounds(scene: dict[str, Any], tile_row: int, tile_col: int) -> tuple[float, ...]:
    """Map bounds of a tile's core (overlap excluded) in the scene CRS."""
    size = scene["tile_size"]
    r0, c0 = tile_row * size, tile_col * size
    h = min(size, scene["height"] - r0)
    w = min(size, scene["width"] - c0)
    return window_bounds(scene["transform"], r0, c0, h, w)


def touching(bounds: Sequence[float], regions: list[dict[str, Any]]) -> list[int]:
    """Regions whose bounding box meets ``bounds`` (the driver's pruning)."""
    x0, y0, x1, y1 = bounds
    return [
        i
        for i, r in enumerate(regions)
        if r["bounds"][0] <= x1 and r["bounds"][2] >= x0
        and r["bounds"][1] <= y1 and r["bounds"][3] >= y0
    ]  # fmt: skip


def resolve_models(lake: Lakehouse, choice: str) -> dict[str, list[tuple[int, str]]]:
    """model_id -> [(code, name)] of the models to aggregate (``aggregate.model``)."""
    rows = read_arrow(lake, "models", ["model_id", "classes", "registered_at"]).to_pylist()
    if choice == "latest":
        rows = sorted(rows, key=lambda r: r["registered_at"])[-1:]
    elif choice != "all":
        rows = [r for r in rows if r["model_id"] == choice]
        if not rows:
            raise ConfigError(f"aggregate.model: no model {choice!r} in the models table")
    return {r["model_id"]: [(c["code"], c["name"]) for c in r["classes"]] for r in rows}


def prediction_runs(lake: Lakehouse, models: list[str]) -> dict[tuple[str, str], list[str]]:
    """(model_id, scene_id) -> sorted predictions run ids, for the scenes each model mapped."""
    if not models:
        return {}
    cols = ["model_id", "scene_id", "run_id"]
    rows = read_arrow(lake, "tile_predictions", cols, ds.field("model_id").isin(models))
    out: dict[tuple[str, str], set[str]] = {}
    for r in rows.to_pylist():
        out.setdefault((r["model_id"], r["scene_id"]), set()).add(r["run_id"])
    return {k: sorted(v) for k, v in out.items()}


def stored_digests(lake: Lakehouse, name: str, rset: str, keys: Sequence[str]) -> dict:
    """key tuple -> inputs_digest of the rows of ``name`` for region set ``rset``."""
    rows = read_arrow(lake, name, [*keys, "inputs_digest"], ds.field("region_set") == rset)
    out: dict[tuple, set[str]] = {}
    for r in rows.to_pylist():
        out.setdefault(tuple(r[k] for k in keys), set()).add(r["inputs_digest"])
    return {k: next(iter(v)) if len(v) == 1 else None for k, v in out.items()}


@dataclass
class Plan:
    """What this run recomputes, and the work units of the executors."""

    area: list[tuple[str, str]] = field(default_factory=list)  # (scene, model)
    index: list[str] = field(default_factory=list)  # scenes
    months: list[tuple[str, str]] = field(default_factory=list)  # (sensor, month)
    change: list[dict[str, Any]] = field(default_factory=list)  # per (model, grid)
    composites: list[dict[str, Any]] = field(default_factory=list)  # per (grid_id, period)
    units: list[dict[str, Any]] = field(default_factory=list)
    digests: dict[tuple, str] = field(default_factory=dict)


def change_groups(
    cfg: Config, scenes: dict[str, dict[str, Any]], runs: dict[tuple[str, str], list[str]]
) -> list[dict[str, Any]]:
    """Per (model, grid): the scenes of each change period classified by the model."""
    agg = cfg.aggregate
    if agg.change_from is None or agg.change_to is None:
        return []
    a = parse_period("aggregate.change_from", agg.change_from)
    b = parse_period("aggregate.change_to", agg.change_to)
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for (model, sid), _ in sorted(runs.items()):
        s = scenes.get(sid)
        if s is None:
            continue
        d: date = s["acquired_date"]
        side = "from" if a[0] <= d <= a[1] else "to" if b[0] <= d <= b[1] else None
        if side is None:
            continue
        g = groups.setdefault(
            (model, s["grid"]), {"model_id": model, "grid": s["grid"], "from": [], "to": []}
        )
        g[side].append(sid)
    out = []
    for g in groups.values():
        if g["from"] and g["to"]:
            for side in ("from", "to"):
                g[side].sort(key=lambda sid: (scenes[sid]["acquired_date"], sid))
            out.append(g)
    return out


def plan(
    lake: Lakehouse,
    run: Run,
    rset: RegionSet,
    scenes: dict[str, dict[str, Any]],
    models: dict[str, list[tuple[int, str]]],
    geoms: dict[str, list[dict[str, Any]]],
) -> Plan:
    """Scenes (x models) to recompute, and the (tile, regions) units that cover them."""
    cfg = run.config
    p = Plan()
    runs = prediction_runs(lake, list(models))
    feats = cfg.features.digest()
    # index_timeseries: per scene
    have = stored_digests(lake, "index_timeseries", rset.name, ["scene_id"])
    for sid, s in sorted(scenes.items()):
        d = _digest("index", rset.digest, s["ingest"], feats)
        p.digests[("index", sid)] = d
        if have.get((sid,)) != d:
            p.index.append(sid)
    if cfg.aggregate.monthly:
        p.months = sorted({(scenes[s]["sensor"], scenes[s]["month"]) for s in p.index})
        in_months = {s for s, v in scenes.items() if (v["sensor"], v["month"]) in p.months}
        p.index = sorted(set(p.index) | in_months)
        for sensor, month in p.months:
            members = month_members(scenes, sensor, month)
            p.digests[("month", sensor, month)] = _digest(
                "month", rset.digest, feats, [scenes[s]["ingest"] for s in members]
            )
    # class_area: per scene and model
    have = stored_digests(lake, "class_area", rset.name, ["scene_id", "model_id"])
    for (model, sid), rids in sorted(runs.items()):
        if sid not in scenes:
            continue
        d = _digest("area", rset.digest, scenes[sid]["ingest"], rids)
        p.digests[("area", sid, model)] = d
        if have.get((sid, model)) != d:
            p.area.append((sid, model))
    # change: per model and grid
    have = stored_digests(
        lake, "change", rset.name, ["model_id", "grid", "from_period", "to_period"]
    )
    agg = cfg.aggregate
    for g in change_groups(cfg, scenes, runs):
        ids = [(s, scenes[s]["ingest"], runs[(g["model_id"], s)]) for s in g["from"] + g["to"]]
        d = _digest("change", rset.digest, g["from"], g["to"], ids)
        p.digests[("change", g["model_id"], g["grid"])] = d
        if have.get((g["model_id"], g["grid"], agg.change_from, agg.change_to)) != d:
            p.change.append(g)
    if cfg.aggregate.composites:
        p.composites = composite_groups(lake, rset, cfg, scenes, feats)
    p.units = work_units(lake, p, scenes, geoms) + composite_units(p.composites, scenes, geoms)
    run.seen = len(scenes)
    run.ingested = sorted({s for s, _ in p.area} | set(p.index))
    run.skipped = sorted(set(scenes) - set(run.ingested))
    return p


#: ``composites`` columns the plan reads (no pixel column).
COMPOSITE_PLAN_COLUMNS = (
    *("grid_id", "period", "period_kind", "period_start", "period_end", "sensor"),
    *("tile_row", "tile_col", "scene_ids", "composite_digest"),
)


def composite_groups(
    lake: Lakehouse,
    rset: RegionSet,
    cfg: Config,
    scenes: dict[str, dict[str, Any]],
    feats: str,
) -> list[dict[str, Any]]:
    """The (grid, period) composites of ``aggregate.composite_period`` whose
    ``composite_index`` rows are missing or stale, each with its tiles and files.

    A group's digest holds the regions, the feature settings and the digests of its
    composite tiles (which change with any scene of the period, see
    :mod:`pipelines.composites`). The grid's geometry (CRS key, transform, tiling) is the
    one of its first scene; a group whose scenes are gone from ``scenes`` is left out.
    """
    kind = cfg.aggregate.composite_period
    rows = read_arrow(
        lake, "composites", COMPOSITE_PLAN_COLUMNS, ds.field("period_kind") == kind, with_file=True
    ).to_pylist()
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        g = groups.setdefault((r["grid_id"], r["period"]), {
            "grid_id": r["grid_id"], "period": r["period"], "period_kind": kind,
            "period_start": r["period_start"], "period_end": r["period_end"],
            "sensor": r["sensor"], "scene_ids": set(), "digests": set(), "tiles": [],
        })  # fmt: skip
        g["scene_ids"].update(r["scene_ids"])
        g["digests"].add(r["composite_digest"])
        g["tiles"].append((r["tile_row"], r["tile_col"], r["file"]))
    have = stored_digests(lake, "composite_index", rset.name, ["grid_id", "period"])
    out = []
    for key, g in sorted(groups.items()):
        members = sorted(g.pop("scene_ids"))
        if not members or any(sid not in scenes for sid in members):
            continue  # composites of scenes no longer in the table: rebuilt by composites
        g["scene"] = members[0]
        g["n_scenes"] = len(members)
        g["digest"] = _digest("composite", rset.digest, feats, sorted(g.pop("digests")))
        if have.get(key) != g["digest"]:
            out.append(g)
    return out


def composite_units(
    groups: list[dict[str, Any]],
    scenes: dict[str, dict[str, Any]],
    geoms: dict[str, list[dict[str, Any]]],
) -> list[dict[str, Any]]:
    """One unit per composite tile that some region touches (others pruned)."""
    out = []
    for g in groups:
        scene = scenes[g["scene"]]
        for tr, tc, path in sorted(g["tiles"]):
            regs = touching(core_bounds(scene, tr, tc), geoms[scene["crs"]])
            if regs:
                out.append({"kind": "composite", "grid_id": g["grid_id"], "period": g["period"],
                            "scene": g["scene"], "tile_row": tr, "tile_col": tc,
                            "regions": regs, "composite_file": path})  # fmt: skip
    return out


def work_units(
    lake: Lakehouse,
    p: Plan,
    scenes: dict[str, dict[str, Any]],
    geoms: dict[str, list[dict[str, Any]]],
) -> list[dict[str, Any]]:
    """One unit per tile that some region of a planned scene touches (others pruned)."""
    area_scenes = sorted({s for s, _ in p.area})
    change_scenes = sorted({s for g in p.change for s in g["from"] + g["to"]})
    models = sorted({m for _, m in p.area} | {g["model_id"] for g in p.change})
    tiles = {(r["scene_id"], r["tile_row"], r["tile_col"]): r["file"]
             for r in tile_layout(lake, "tiles", p.index)}  # fmt: skip
    preds: dict[tuple[str, str, int, int], str] = {}
    keys = sorted(set(area_scenes) | set(change_scenes))
    for r in tile_layout(lake, "predictions", keys, models):
        preds[(r["model_id"], r["scene_id"], r["tile_row"], r["tile_col"])] = r["file"]
    area_models: dict[str, list[str]] = {}
    for sid, m in p.area:
        area_models.setdefault(sid, []).append(m)
    units: dict[tuple[str, int, int], dict[str, Any]] = {}
    tile_keys = set(tiles) | {k[1:] for k in preds if k[1] in area_models}
    for key in sorted(tile_keys):
        sid, tr, tc = key
        scene = scenes[sid]
        regs = touching(core_bounds(scene, tr, tc), geoms[scene["crs"]])
        if not regs:
            continue
        unit: dict[str, Any] = {"scene_id": sid, "tile_row": tr, "tile_col": tc, "regions": regs}
        unit["tiles_file"] = tiles.get(key)
        unit["preds"] = [
            (m, preds[(m, *key)]) for m in area_models.get(sid, []) if (m, *key) in preds
        ]
        if unit["tiles_file"] or unit["preds"]:
            units[key] = unit
    out = list(units.values())
    for g in p.change:
        first = scenes[g["from"][0]]
        tile_set = {k[2:] for k in preds if k[0] == g["model_id"] and k[1] in g["from"] + g["to"]}
        for tr, tc in sorted(tile_set):
            regs = touching(core_bounds(first, tr, tc), geoms[first["crs"]])
            if not regs:
                continue
            out.append(
                {
                    "kind": "change",
                    "grid": g["grid"],
                    "model_id": g["model_id"],
                    "tile_row": tr,
                    "tile_col": tc,
                    "regions": regs,
                    **{
                        side: [
                            (s, preds[(g["model_id"], s, tr, tc)])
                            for s in g[side]
                            if (g["model_id"], s, tr, tc) in preds
                        ]
                        for side in ("from", "to")
                    },
                }
            )
    return out


def _unit_files(u: dict[str, Any]) -> tuple[str, ...]:
    files = [u.get("tiles_file") or u.get("composite_file") or ""]
    files += [f for _, f in u.get("preds", [])]
    return tuple(files + [f for _, f in u.get("from", []) + u.get("to", [])])


def task_groups(
    units: list[dict[str, Any]], scenes: dict[str, dict[str, Any]], n_tasks: int
) -> list[list[dict[str, Any]]]:
    """The units split into ``n_tasks`` groups of about equal cost, each region whole where
    it can be.

    Units that share a result key (a region of one sensor and month, or of one change
    grid) form a *component*. A component goes whole to one task, which then reduces its
    keys itself (``whole``): no shuffle, whose fixed cost (~0.7 s here) would exceed the
    work of small regions. A component heavier than a task's fair share (a scene
    footprint, a region covering much of the scenes) is split over the tasks; its partial
    results are joined on the driver (:func:`udfs.aggregate_udfs.combine`). A unit costs a
    tile read plus a burn per region; inside a task units go by component, then by file and
    tile (a file's key index is read once per run of its units).
    """
    parent = list(range(len(units)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple, int] = {}
    for i, u in enumerate(units):
        if u.get("kind") == "change":
            atoms = [("c", r, u["grid"], u["model_id"]) for r in u["regions"]]
        elif u.get("kind") == "composite":
            atoms = [("k", r, u["grid_id"], u["period"]) for r in u["regions"]]
        else:
            s = scenes[u["scene_id"]]
            atoms = [("v", r, s["sensor"], s["month"]) for r in u["regions"]]
        for a in atoms:
            j = first.setdefault(a, i)
            parent[find(i)] = find(j)
    comps: dict[int, list[int]] = {}
    for i in range(len(units)):
        comps.setdefault(find(i), []).append(i)
    cost = {c: sum(1 + len(units[i]["regions"]) for i in m) for c, m in comps.items()}
    share = sum(cost.values()) / max(1, n_tasks)
    items: dict[tuple[int, int], int] = {}  # (component, unit or -1 for whole) -> cost
    for c, members in comps.items():
        whole = cost[c] <= share or n_tasks == 1
        for i in members:
            units[i] = {**units[i], "component": c, "whole": whole}
        if whole:
            items[(c, -1)] = cost[c]
        else:
            items.update({(c, i): 1 + len(units[i]["regions"]) for i in members})
    out = []
    for group in balanced_groups(items, n_tasks):
        idx = [i for c, u in group for i in (comps[c] if u < 0 else [u])]
        idx.sort(key=lambda i: (units[i]["component"], _unit_key(units[i])))
        out.append([units[i] for i in idx])
    return out


def _unit_key(u: dict[str, Any]) -> tuple:
    place = u.get("scene_id") or u.get("grid") or u.get("grid_id")
    return (_unit_files(u), place, u.get("period", ""), u["tile_row"], u["tile_col"])
