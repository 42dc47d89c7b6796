"""Aggregate job: tiles + predictions -> analysis tables by region and date.

Flow of :func:`main`: load config -> read and check the regions file on the driver (bad
regions go to ``rejected``, the others go on; no file: each scene's footprint is the
region) -> start Spark -> plan: scenes (x models) whose rows are missing or stale (their
``inputs_digest`` differs: a changed regions file, a rebuilt scene, new predictions),
regions reprojected into each scene CRS, and the (tile, regions) pairs whose bounding
boxes meet (every other tile is pruned before a pixel is read) -> executors read those
tiles' ``tiles`` / ``predictions`` files, burn each region into the tile's grid (pixel
centres, core only), and emit class counts, index values and transition counts -> Spark
groups them by region and scene (index values by region, sensor and month, for exact
percentiles) -> replace the rows of those scenes in ``class_area``, ``index_timeseries``,
``index_monthly`` and ``change`` -> record bad regions and the run.

Decisions
---------
* **Regions** are read on the driver from GeoJSON (RFC 7946: lon/lat unless a legacy
  ``crs`` member names another CRS; coordinates outside lon/lat refuse the file),
  GeoParquet (WKB; the ``geo`` metadata's CRS, absent = lon/lat, ``null`` refused) or
  GeoPackage (read with ``sqlite3``: no vector library is installed, and the format is
  SQLite + a small header before standard WKB). A file without a CRS or without the id
  column is refused whole; a region with an empty, invalid or non-polygon geometry, or
  an id used twice, is skipped and recorded in ``rejected`` (stage ``aggregate``) with its
  id, name and the reason.
* **Area**: hectares = pixels x the scene grid's pixel area / 10 000
  (:func:`udfs.regions.pixel_area_m2`); ``region_hectares`` is the polygon's area after
  reprojection into the scene CRS (shapely), and ``unobserved_fraction = 1 - observed
  area / region_hectares`` clipped to 0..1: cloud, shadow, nodata and whatever lies
  outside the scene. A region no tile of a scene touches still gets its rows, with zero
  pixels and an unobserved fraction of 1.
* **Observed** means, for ``class_area`` and ``change``, a pixel with a class (not 0 in
  ``predictions``); for ``index_timeseries``, a pixel neither nodata nor masked under the
  ``features`` mask settings (``valid_pixels``); an index's ``count`` further leaves out
  pixels where the index is undefined (NaN by the policy of :mod:`udfs.indices`).
* **Percentiles** are exact: the valid values of a region are gathered per (region,
  sensor, month) in one task and sorted once, which serves both the per-scene rows and
  the monthly rows (``index_monthly`` pools every valid pixel of every scene of that
  sensor and month). Fine for regions up to tens of km^2 per scene; counts, means and std
  alone could be combined from partial sums, percentiles cannot.
* **Change** compares scenes of one grid only (same CRS, transform, size and tiling);
  a region seen on two grids gets one matrix per grid (``grid`` column). A period's class
  of a pixel is its latest observation in the period; only pixels observed in both
  periods count.
* **Incremental**: each row carries ``inputs_digest`` (regions digest, the scene's
  ingest run and tiling, the feature settings or the predictions' run ids, the policy
  version). Rows of a (region set, scene[, model]) whose digest still matches are kept;
  others are deleted and written again in the same run. Re-running adds nothing; a new
  scene adds its rows; a rebuilt scene replaces its rows. A month's ``index_monthly`` rows
  are recomputed with every scene of that month whenever one of them changes.
* Tables on a local or mounted file system only: the workers read the tables' Parquet
  files themselves.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sqlite3
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema
from rasterio.crs import CRS
from rasterio.warp import transform_geom
from shapely.geometry import MultiPolygon, Polygon, box, mapping, shape
from shapely.geometry.base import BaseGeometry

from pipelines.config import Config, load_config, parse_period
from pipelines.datamodel import TABLES
from pipelines.jobs import Job, Stage, run_main
from pipelines.lakehouse import Lakehouse
from pipelines.runs import Run, phase
from pipelines.scheduling import balanced_groups, grouped_rdd, task_count
from udfs.aggregate_udfs import make_region_mapper, reduce_partials
from udfs.errors import ConfigError
from udfs.regions import VALUE_STATS, RegionError, pixel_area_m2
from udfs.tiling import window_bounds

JOB = "aggregate"
log = logging.getLogger("eo")

#: Version of the aggregation rules, part of every ``inputs_digest``.
AGGREGATE_POLICY_VERSION = 1
FOOTPRINT_SET = "scene"


class RegionsFileError(RegionError):
    """The regions file as a whole cannot be used (unreadable, no CRS, no id column)."""


# ----------------------------------------------------------------------------- regions


@dataclass(frozen=True)
class Region:
    """One area of interest: id, name and polygon in the file's CRS (None: a footprint)."""

    id: str
    name: str | None
    geom: BaseGeometry | None


@dataclass(frozen=True)
class RegionSet:
    """The usable regions of one file, its CRS, digest and the regions refused."""

    name: str
    crs: str
    regions: list[Region]
    digest: str
    path: str = ""
    rejected: list[dict[str, Any]] = field(default_factory=list)


def footprint_regions() -> RegionSet:
    """Without a regions file: one region, each scene's whole footprint."""
    return RegionSet(FOOTPRINT_SET, "", [Region("scene", "scene footprint", None)], "footprint")


def _lonlat_ok(geoms: list[BaseGeometry | None]) -> bool:
    b = [g.bounds for g in geoms if g is not None and not g.is_empty]
    if not b:
        return True
    arr = np.asarray(b)
    return bool((arr[:, [0, 2]] >= -180).all() and (arr[:, [0, 2]] <= 360).all()) and bool(
        (np.abs(arr[:, [1, 3]]) <= 90).all()
    )


def _read_geojson(path: Path) -> tuple[list[dict[str, Any]], list[Any], str]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RegionsFileError(f"regions {path}: not readable GeoJSON: {e}") from e
    feats = [doc] if isinstance(doc, dict) and doc.get("type") == "Feature" else None
    if feats is None:
        feats = doc.get("features") if isinstance(doc, dict) else None
    if not isinstance(feats, list):
        raise RegionsFileError(f"regions {path}: expected a GeoJSON FeatureCollection")
    named = (doc.get("crs") or {}).get("properties", {}).get("name")
    crs = "EPSG:4326" if not named or "CRS84" in named else str(named)
    props, geoms = [], []
    for feat in feats:
        props.append(dict(feat.get("properties") or {}))
        g = feat.get("geometry")
        try:
            geoms.append(shape(g) if g else None)
        except (ValueError, TypeError, AttributeError, shapely.errors.ShapelyError) as e:
            geoms.append(e)
    if not named and not _lonlat_ok([g for g in geoms if isinstance(g, BaseGeometry)]):
        raise RegionsFileError(
            f"regions {path}: coordinates are not longitude/latitude, and the file names no "
            "CRS (GeoJSON without a 'crs' member is EPSG:4326 by RFC 7946): reproject it to "
            "lon/lat, or use GeoParquet or GeoPackage, which record their CRS"
        )
    return props, geoms, crs


def _geoparquet_crs(path: Path, meta: dict[str, Any], column: str) -> str:
    spec = meta.get("columns", {}).get(column, {})
    if "crs" not in spec:
        return "EPSG:4326"  # GeoParquet: an absent crs means OGC:CRS84 (lon/lat)
    crs = spec["crs"]
    if crs is None:
        raise RegionsFileError(
            f"regions {path}: the geometry column {column!r} has no CRS (crs: null): "
            "coordinates cannot be placed on the scenes"
        )
    ident = crs.get("id", {}) if isinstance(crs, dict) else {}
    if ident.get("authority") == "EPSG":
        return f"EPSG:{ident['code']}"
    if ident.get("authority") == "OGC" and str(ident.get("code")) == "CRS84":
        return "EPSG:4326"
    return json.dumps(crs) if isinstance(crs, dict) else str(crs)


def _read_geoparquet(path: Path) -> tuple[list[dict[str, Any]], list[Any], str]:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise RegionsFileError(f"regions {path}: not a readable Parquet file: {e}") from e
    raw = (table.schema.metadata or {}).get(b"geo")
    if raw is None:
        raise RegionsFileError(f"regions {path}: no 'geo' metadata, not a GeoParquet file")
    meta = json.loads(raw)
    col = meta.get("primary_column", "geometry")
    enc = meta.get("columns", {}).get(col, {}).get("encoding", "WKB")
    if str(enc).upper() != "WKB":
        raise RegionsFileError(f"regions {path}: geometry encoding {enc!r}, only WKB is read")
    crs = _geoparquet_crs(path, meta, col)
    rows = table.drop_columns([col]).to_pylist()
    return rows, [_from_wkb(b) for b in table.column(col).to_pylist()], crs


def _from_wkb(blob: bytes | None) -> Any:
    if blob is None:
        return None
    try:
        return shapely.from_wkb(bytes(blob))
    except shapely.errors.ShapelyError as e:
        return e


def _gpkg_wkb(blob: bytes | None) -> Any:
    """Standard WKB of a GeoPackage geometry blob (``GP`` header + envelope + WKB)."""
    if blob is None:
        return None
    blob = bytes(blob)
    if blob[:2] != b"GP" or len(blob) < 8:
        return ValueError("not a GeoPackage geometry blob")
    flags = blob[3]
    if flags & 0b10000:
        return Polygon()  # the empty flag
    envelope = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}.get((flags >> 1) & 0b111)
    if envelope is None:
        return ValueError(f"bad GeoPackage envelope code {(flags >> 1) & 0b111}")
    return _from_wkb(blob[8 + envelope :])


def _read_geopackage(path: Path) -> tuple[list[dict[str, Any]], list[Any], str]:
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise RegionsFileError(f"regions {path}: not a readable GeoPackage: {e}") from e
    try:
        found = con.execute(
            "SELECT g.table_name, g.column_name, g.srs_id FROM gpkg_geometry_columns g "
            "JOIN gpkg_contents c ON c.table_name = g.table_name WHERE c.data_type = 'features'"
        ).fetchall()
        if len(found) != 1:
            raise RegionsFileError(
                f"regions {path}: expected one feature table, found {len(found)}"
                + (f" ({', '.join(t for t, _, _ in found)})" if found else "")
            )
        table, column, srs_id = found[0]
        srs = con.execute(
            "SELECT organization, organization_coordsys_id, definition FROM gpkg_spatial_ref_sys "
            "WHERE srs_id = ?",
            (srs_id,),
        ).fetchone()
        cur = con.execute(f'SELECT * FROM "{table}"')
        names = [d[0] for d in cur.description]
        rows = cur.fetchall()
    except sqlite3.Error as e:
        raise RegionsFileError(f"regions {path}: not a readable GeoPackage: {e}") from e
    finally:
        con.close()
    if srs is None or srs_id in (0, -1) or (srs[2] or "").strip() in ("", "undefined"):
        raise RegionsFileError(
            f"regions {path}: table {table!r} has an undefined CRS (srs_id {srs_id}): "
            "coordinates cannot be placed on the scenes"
        )
    org, code, wkt = srs
    crs = f"EPSG:{code}" if str(org).upper() == "EPSG" else wkt
    g = names.index(column)
    props = [{n: v for i, (n, v) in enumerate(zip(names, r, strict=True)) if i != g} for r in rows]
    return props, [_gpkg_wkb(r[g]) for r in rows], crs


def _file_digest(path: Path, *extra: str) -> str:
    h = hashlib.sha256(path.read_bytes())
    for e in extra:
        h.update(b"\0" + e.encode())
    return h.hexdigest()[:16]


def read_regions(path: str | Path, id_column: str = "id", name_column: str = "name") -> RegionSet:
    """Read and check a regions file (GeoJSON, GeoParquet or GeoPackage, any CRS).

    Returns the usable regions (polygons in the file's CRS) and, in ``rejected``, one
    ``rejected`` record per region refused: no id, an id used twice (every region with
    it), an empty, invalid or non-polygon geometry; the reason names the region's id and
    name. Raises :class:`RegionsFileError` when the file cannot be used at all: missing,
    unreadable, no CRS, or no ``id_column``.
    """
    p = Path(path)
    if not p.is_file():
        raise RegionsFileError(f"regions file not found: {p}")
    suffix = p.suffix.lower()
    if suffix in (".parquet", ".geoparquet", ".pq"):
        props, geoms, crs = _read_geoparquet(p)
    elif suffix == ".gpkg":
        props, geoms, crs = _read_geopackage(p)
    else:
        props, geoms, crs = _read_geojson(p)
    if props and not any(id_column in pr for pr in props):
        known = sorted({k for pr in props for k in pr})
        raise RegionsFileError(
            f"regions {p}: no id column {id_column!r} (columns: {', '.join(known) or 'none'}); "
            "set aggregate.region_id_column"
        )
    try:
        CRS.from_user_input(crs)
    except Exception as e:  # rasterio's CRSError has several bases
        raise RegionsFileError(f"regions {p}: unknown CRS {crs!r}: {e}") from e
    rejected: list[dict[str, Any]] = []
    ids: dict[str, list[int]] = {}
    candidates: list[Region] = []

    def refuse(i: int, rid: Any, name: Any, reason: str) -> None:
        label = f"region {rid!r}" if rid is not None else f"feature {i} (no id)"
        label += f" ({name})" if name else ""
        rejected.append(
            {
                "href": f"{p}#{rid if rid is not None else f'feature-{i}'}",
                "scene_id": None,
                "stage": "aggregate",
                "error_class": "BadRegion",
                "reason": f"{label}: {reason}; skipped",
            }
        )

    for i, (pr, g) in enumerate(zip(props, geoms, strict=True)):
        rid, name = pr.get(id_column), pr.get(name_column)
        name = None if name is None else str(name)
        if rid is None or str(rid).strip() == "":
            refuse(i, None, name, f"no value in the id column {id_column!r}")
            continue
        rid = str(rid)
        if isinstance(g, Exception):
            refuse(i, rid, name, f"unreadable geometry: {g}")
        elif g is None or g.is_empty:
            refuse(i, rid, name, "empty geometry")
        elif not isinstance(g, (Polygon, MultiPolygon)):
            refuse(i, rid, name, f"geometry is a {g.geom_type}, expected a polygon")
        elif not g.is_valid:
            refuse(i, rid, name, f"invalid geometry: {shapely.is_valid_reason(g)}")
        else:
            ids.setdefault(rid, []).append(len(candidates))
            candidates.append(Region(rid, name, g))
    regions = []
    for rid, where in ids.items():
        if len(where) > 1:
            for k in where:
                refuse(-1, rid, candidates[k].name, f"id used by {len(where)} regions")
        else:
            regions.append(candidates[where[0]])
    digest = _file_digest(p, id_column, name_column)
    return RegionSet(p.stem, crs, regions, digest, str(p), rejected)


# ----------------------------------------------------------------------------- planning


def _digest(*parts: Any) -> str:
    blob = json.dumps([AGGREGATE_POLICY_VERSION, *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _crs_key(row: Any) -> str:
    return f"EPSG:{row.crs_epsg}" if row.crs_epsg else str(row.crs_wkt)


def scene_info(lake: Lakehouse) -> dict[str, dict[str, Any]]:
    """Every scene's grid, sensor, date, scaling and ingest identity."""
    cols = ("scene_id", "sensor", "acquired_date", "crs_epsg", "crs_wkt", "transform", "width",
            "height", "tile_size", "overlap", "scaling", "run_id", "tiling_digest")  # fmt: skip
    out = {}
    for r in lake.read("scenes").select(*cols).collect():
        crs = _crs_key(r)
        out[r.scene_id] = {
            "sensor": r.sensor,
            "acquired_date": r.acquired_date,
            "month": r.acquired_date.strftime("%Y-%m"),
            "crs": crs,
            "transform": list(r.transform),
            "width": r.width,
            "height": r.height,
            "tile_size": r.tile_size,
            "scaling": {k: [v.scale, v.offset] for k, v in (r.scaling or {}).items()},
            "ingest": [r.run_id, r.tiling_digest],
            "grid": f"{crs} {','.join(f'{v:g}' for v in list(r.transform)[:6])} "
            f"{r.width}x{r.height} tile {r.tile_size}+{r.overlap}",
        }
    return out


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


def tile_layout(lake: Lakehouse, name: str, scene_ids: list[str], model_ids=None) -> list[Any]:
    """Key, window and file of every row of ``tiles`` / ``predictions`` of these scenes
    (no pixel column is read)."""
    if not scene_ids or not lake.exists(name):
        return []
    df = lake.read(name).filter(F.col("scene_id").isin(scene_ids))
    cols = ["scene_id", "tile_row", "tile_col", "row_off", "col_off", "width", "height"]
    if model_ids is not None:
        df = df.filter(F.col("model_id").isin(model_ids))
        cols.append("model_id")
    return df.select(*cols, F.input_file_name().alias("file")).collect()


def _local(uri: str) -> str:
    return unquote(uri.removeprefix("file://").removeprefix("file:"))


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
    if not lake.exists("models"):
        return {}
    rows = lake.read("models").select("model_id", "classes", "registered_at").collect()
    if choice == "latest":
        rows = sorted(rows, key=lambda r: r.registered_at)[-1:]
    elif choice != "all":
        rows = [r for r in rows if r.model_id == choice]
        if not rows:
            raise ConfigError(f"aggregate.model: no model {choice!r} in the models table")
    return {r.model_id: [(c.code, c.name) for c in r.classes] for r in rows}


def prediction_runs(lake: Lakehouse, models: list[str]) -> dict[tuple[str, str], list[str]]:
    """(model_id, scene_id) -> sorted predictions run ids, for the scenes each model mapped."""
    if not models or not lake.exists("tile_predictions"):
        return {}
    rows = (
        lake.read("tile_predictions")
        .filter(F.col("model_id").isin(models))
        .select("model_id", "scene_id", "run_id")
        .distinct()
        .collect()
    )
    out: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        out.setdefault((r.model_id, r.scene_id), []).append(r.run_id)
    return {k: sorted(v) for k, v in out.items()}


def stored_digests(lake: Lakehouse, name: str, rset: str, keys: Sequence[str]) -> dict:
    """key tuple -> inputs_digest of the rows of ``name`` for region set ``rset``."""
    if not lake.exists(name):
        return {}
    rows = (
        lake.read(name)
        .filter(F.col("region_set") == rset)
        .select(*keys, "inputs_digest")
        .distinct()
        .collect()
    )
    out: dict[tuple, set[str]] = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), set()).add(r.inputs_digest)
    return {k: next(iter(v)) if len(v) == 1 else None for k, v in out.items()}


@dataclass
class Plan:
    """What this run recomputes, and the work units of the executors."""

    area: list[tuple[str, str]] = field(default_factory=list)  # (scene, model)
    index: list[str] = field(default_factory=list)  # scenes
    months: list[tuple[str, str]] = field(default_factory=list)  # (sensor, month)
    change: list[dict[str, Any]] = field(default_factory=list)  # per (model, grid)
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
    spark: SparkSession,
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
            members = sorted(
                s for s, v in scenes.items() if (v["sensor"], v["month"]) == (sensor, month)
            )
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
    p.units = work_units(lake, p, scenes, geoms)
    run.seen = len(scenes)
    run.ingested = sorted({s for s, _ in p.area} | set(p.index))
    run.skipped = sorted(set(scenes) - set(run.ingested))
    return p


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
    tiles = {(r.scene_id, r.tile_row, r.tile_col): _local(r.file)
             for r in tile_layout(lake, "tiles", p.index)}  # fmt: skip
    preds: dict[tuple[str, str, int, int], str] = {}
    keys = sorted(set(area_scenes) | set(change_scenes))
    for r in tile_layout(lake, "predictions", keys, models):
        preds[(r.model_id, r.scene_id, r.tile_row, r.tile_col)] = _local(r.file)
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


def unit_weight(unit: dict[str, Any], geoms: list[dict[str, Any]]) -> int:
    """Rough cost of a unit: the area of its regions' bounding boxes (+ a fixed part)."""
    total = 0.0
    for r in unit["regions"]:
        b = geoms[r]["bounds"]
        total += max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    return 1 + int(min(total, 1e12) ** 0.5)


# ----------------------------------------------------------------------------- rows


def _unobserved(observed_m2: float, region_m2: float) -> float:
    if not region_m2 > 0:
        return 1.0
    return float(min(1.0, max(0.0, 1.0 - observed_m2 / region_m2)))


def _stats(s: dict[str, Any] | None) -> dict[str, Any]:
    if s is None:
        return {"count": 0, **{k: math.nan for k in VALUE_STATS[1:]}}
    return {k: s[k] for k in VALUE_STATS}


def build_rows(
    run: Run,
    rset: RegionSet,
    p: Plan,
    scenes: dict[str, dict[str, Any]],
    models: dict[str, list[tuple[int, str]]],
    geoms: dict[str, list[dict[str, Any]]],
    results: list[dict[str, Any]],
) -> dict[str, list[dict[str, Any]]]:
    """Rows of the four tables: every region x scene (x model x class), zeros included."""
    by_key = {r["key"]: r for r in results}
    cfg = run.config
    out: dict[str, list[dict[str, Any]]] = {n: [] for n in ("class_area", "index_timeseries",
                                                            "index_monthly", "change")}  # fmt: skip
    base = {"region_set": rset.name, "regions_digest": rset.digest, "run_id": run.run_id}

    def region(i: int, scene: dict[str, Any]) -> dict[str, Any]:
        reg = rset.regions[i]
        area = geoms[scene["crs"]][i]["area"]
        return {**base, "region_id": reg.id, "region_name": reg.name,
                "region_hectares": area / 1e4}  # fmt: skip

    for sid, model in p.area:
        s = scenes[sid]
        px = pixel_area_m2(s["transform"])
        codes = models[model]
        for i in range(len(rset.regions)):
            rec = by_key.get(("area", i, sid, model))
            counts = rec["counts"] if rec else []
            n = [counts[c] if c < len(counts) else 0 for c, _ in codes]
            observed = sum(n)
            head = region(i, s)
            for (code, name), k in zip(codes, n, strict=True):
                out["class_area"].append(
                    {
                        **head,
                        "scene_id": sid,
                        "sensor": s["sensor"],
                        "acquired_date": s["acquired_date"],
                        "model_id": model,
                        "class_code": code,
                        "class_name": name,
                        "pixels": k,
                        "hectares": k * px / 1e4,
                        "class_fraction": k / observed if observed else math.nan,
                        "observed_hectares": observed * px / 1e4,
                        "grid_pixels": rec["grid_pixels"] if rec else 0,
                        "unobserved_fraction": _unobserved(
                            observed * px, head["region_hectares"] * 1e4
                        ),
                        "pixel_m2": px,
                        "inputs_digest": p.digests[("area", sid, model)],
                    }
                )
    indices = [i.lower() for i in cfg.features.indices]
    for sid in p.index:
        s = scenes[sid]
        px = pixel_area_m2(s["transform"])
        for i in range(len(rset.regions)):
            rec = by_key.get(("values", i, s["sensor"], s["month"]))
            sc = (rec or {}).get("scenes", {}).get(sid)
            head = region(i, s)
            valid = sc["valid_pixels"] if sc else 0
            for name in indices:
                out["index_timeseries"].append(
                    {
                        **head,
                        "scene_id": sid,
                        "sensor": s["sensor"],
                        "acquired_date": s["acquired_date"],
                        "index": name,
                        **_stats(sc["stats"].get(name) if sc else None),
                        "grid_pixels": sc["grid_pixels"] if sc else 0,
                        "valid_pixels": valid,
                        "unobserved_fraction": _unobserved(
                            valid * px, head["region_hectares"] * 1e4
                        ),
                        "inputs_digest": p.digests[("index", sid)],
                    }
                )
    for sensor, month in p.months:
        members = sorted(
            s for s, v in scenes.items() if (v["sensor"], v["month"]) == (sensor, month)
        )
        for i in range(len(rset.regions)):
            rec = by_key.get(("values", i, sensor, month))
            head = region(i, scenes[members[0]])
            for name in indices:
                out["index_monthly"].append(
                    {
                        **head,
                        "sensor": sensor,
                        "month": month,
                        "index": name,
                        "scenes": len(members),
                        **_stats((rec or {}).get("pooled", {}).get(name)),
                        "inputs_digest": p.digests[("month", sensor, month)],
                    }
                )
    agg = cfg.aggregate
    for g in p.change:
        s = scenes[g["from"][0]]
        px = pixel_area_m2(s["transform"])
        codes = models[g["model_id"]]
        for i in range(len(rset.regions)):
            rec = by_key.get(("change", i, g["grid"], g["model_id"]))
            m = rec["matrix"] if rec else None
            head = region(i, s)
            for a, _ in codes:
                for b, _ in codes:
                    k = m[a][b] if m is not None and a < len(m) and b < len(m) else 0
                    out["change"].append(
                        {
                            **head,
                            "model_id": g["model_id"],
                            "from_period": agg.change_from,
                            "to_period": agg.change_to,
                            "grid": g["grid"],
                            "from_class": a,
                            "to_class": b,
                            "pixels": k,
                            "hectares": k * px / 1e4,
                            "from_scenes": g["from"],
                            "to_scenes": g["to"],
                            "inputs_digest": p.digests[("change", g["model_id"], g["grid"])],
                        }
                    )
    return out


# ----------------------------------------------------------------------------- writing


def _sql_list(values: Sequence[str]) -> str:
    return ", ".join("'" + str(v).replace("'", "''") + "'" for v in values)


def replace_rows(
    spark: SparkSession, lake: Lakehouse, name: str, where: str, rows: list[dict[str, Any]]
) -> None:
    """Delete the rows matching SQL ``where``, then add ``rows`` (keyed: the rows of the
    recomputed scenes replace theirs, other rows stay)."""
    spec = TABLES[name]
    if lake.exists(name):
        if lake.local and lake.format == "delta":
            import deltalake

            deltalake.DeltaTable(lake.local_path(name)).delete(where)
        else:
            lake.delete_where(name, F.expr(where))
    if not rows:
        return
    if lake.local and lake.format == "delta":
        lake.append_arrow(name, pa.Table.from_pylist(rows, schema=to_arrow_schema(spec.schema)))
    else:
        lake.append(name, spark.createDataFrame(rows, spec.schema))


def write_tables(
    spark: SparkSession, lake: Lakehouse, rset: RegionSet, p: Plan, rows: dict[str, list]
) -> None:
    rs = f"region_set = {_sql_list([rset.name])}"
    if p.area:
        by_model: dict[str, list[str]] = {}
        for sid, m in p.area:
            by_model.setdefault(m, []).append(sid)
        where = " OR ".join(
            f"(model_id = {_sql_list([m])} AND scene_id IN ({_sql_list(s)}))"
            for m, s in by_model.items()
        )
        replace_rows(spark, lake, "class_area", f"{rs} AND ({where})", rows["class_area"])
    if p.index:
        where = f"{rs} AND scene_id IN ({_sql_list(p.index)})"
        replace_rows(spark, lake, "index_timeseries", where, rows["index_timeseries"])
    if p.months:
        where = " OR ".join(
            f"(sensor = {_sql_list([s])} AND month = {_sql_list([m])})" for s, m in p.months
        )
        replace_rows(spark, lake, "index_monthly", f"{rs} AND ({where})", rows["index_monthly"])
    if p.change:
        where = " OR ".join(
            f"(model_id = {_sql_list([g['model_id']])} AND grid = {_sql_list([g['grid']])})"
            for g in p.change
        )
        replace_rows(spark, lake, "change", f"{rs} AND ({where})", rows["change"])


# ----------------------------------------------------------------------------- the job


def load_regions(cfg: Config) -> RegionSet:
    """The configured regions file, or each scene's footprint."""
    agg = cfg.aggregate
    if agg.regions is None:
        return footprint_regions()
    return read_regions(agg.regions, agg.region_id_column, agg.region_name_column)


def aggregate(
    spark: SparkSession,
    lake: Lakehouse,
    run: Run,
    models: Sequence[str] | None = None,
    regions: RegionSet | None = None,
) -> Run:
    """Write the analysis tables for every scene (x model) whose rows are missing or stale.

    ``models``: model ids to aggregate (default: ``aggregate.model``); ``regions``: an
    already read region set (default: ``aggregate.regions``).
    """
    cfg = run.config
    try:
        rset = regions or load_regions(cfg)
    except RegionsFileError as e:
        run.rejected.append(
            {"href": cfg.aggregate.regions, "scene_id": None, "stage": "aggregate",
             "error_class": "BadRegionsFile", "reason": str(e)}
        )  # fmt: skip
        raise
    run.rejected.extend(rset.rejected)
    for r in rset.rejected:
        log.warning("%s", r["reason"])
    if not lake.local:
        raise ConfigError(
            f"aggregate reads the tables' files itself: {lake.root} must be a local or "
            "mounted file system"
        )
    with phase("plan"):
        scenes = scene_info(lake)
        if models is None:
            model_classes = resolve_models(lake, cfg.aggregate.model)
        else:
            every = resolve_models(lake, "all")
            model_classes = {m: every[m] for m in models if m in every}
        geoms: dict[str, list[dict[str, Any]]] = {}
        for s in scenes.values():
            if s["crs"] not in geoms:
                if CRS.from_user_input(s["crs"]).is_geographic:
                    raise RegionError(
                        f"scenes in {s['crs']} (geographic, degrees): pixel areas need a "
                        "projected CRS in metres"
                    )
                geoms[s["crs"]] = regions_in_crs(rset, s["crs"], s)
        if rset.name == FOOTPRINT_SET:  # each scene its own extent: key geoms by scene
            for sid, s in scenes.items():
                s["crs"] = f"{s['crs']}#{sid}"
                geoms[s["crs"]] = regions_in_crs(rset, s["crs"].split("#")[0], s)
        p = plan(spark, lake, run, rset, scenes, model_classes, geoms)
    results: list[dict[str, Any]] = []
    if p.units:
        ctx = {
            "scenes": {
                sid: {k: s[k] for k in ("sensor", "scaling", "tile_size", "crs", "month")}
                for sid, s in scenes.items()
            },  # fmt: skip
            "regions": {k: [(g["geom"], g["bounds"]) for g in v] for k, v in geoms.items()},
            "indices": list(cfg.features.indices),
            "masks": cfg.features.masks(),
            "n_codes": {m: max(c for c, _ in codes) + 1 for m, codes in model_classes.items()},
        }
        bc = spark.sparkContext.broadcast(ctx)
        weights = {
            i: unit_weight(u, geoms[scenes[u.get("scene_id") or u["from"][0][0]]["crs"]])
            for i, u in enumerate(p.units)
        }
        order = sorted(range(len(p.units)), key=lambda i: _unit_sort_key(p.units[i]))
        rank = {i: k for k, i in enumerate(order)}
        n_tasks = task_count(spark, len(p.units))
        groups = balanced_groups({rank[i]: w for i, w in weights.items()}, n_tasks)
        units = [[p.units[order[k]] for k in g] for g in groups]
        try:
            with phase(f"aggregate {len(p.units)} tile unit(s) over {len(rset.regions)} region(s)"):
                results = (
                    grouped_rdd(spark, units)
                    .mapPartitions(make_region_mapper(bc))
                    .groupByKey(max(1, n_tasks))
                    .map(lambda kv: reduce_partials(kv[0], kv[1]))
                    .collect()
                )
        finally:
            bc.unpersist()
    with phase("write"):
        rows = build_rows(run, rset, p, scenes, model_classes, geoms, results)
        write_tables(spark, lake, rset, p, rows)
    run.tiles_written = len(p.units)
    return run


def _unit_sort_key(u: dict[str, Any]) -> tuple:
    files = [u.get("tiles_file") or ""] + [f for _, f in u.get("preds", [])]
    files += [f for _, f in u.get("from", []) + u.get("to", [])]
    return (files, u.get("scene_id") or u.get("grid"), u["tile_row"], u["tile_col"])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="aggregate", description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="local", help="conf/<profile>.yaml or a YAML path")
    p.add_argument("--root", help="table root folder (storage.root)")
    p.add_argument("--regions", help="regions file (aggregate.regions)")
    p.add_argument("--model", help="latest | a model id | all (aggregate.model)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = []
    for flag, key in (("root", "storage.root"), ("regions", "aggregate.regions"),
                      ("model", "aggregate.model")):  # fmt: skip
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    return load_config(args.profile, [*overrides, *args.set])


def summary(run: Run, lake: Lakehouse) -> str:
    lines = [
        f"aggregate run {run.run_id}: {len(run.ingested)} scene(s) aggregated, "
        f"{len(run.skipped)} already done, {run.tiles_written} tile unit(s) read, "
        f"{len(run.rejected)} region(s) rejected"
    ]
    for r in run.rejected:
        lines.append(f"  rejected: {r['reason']}")
    for name in ("class_area", "index_timeseries", "index_monthly", "change"):
        if lake.exists(name):
            lines.append(f"  {name:<17} {lake.read(name).count():>7} rows  {lake.path(name)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Composites first (``aggregate.composites``, recorded as their own run), then the
    analysis tables."""
    args = parse_args(argv)

    def plan(config: Config) -> Job:
        def upstream(lake: Lakehouse) -> list[Stage]:
            if not config.aggregate.composites:
                return []
            from pipelines.composites import composites

            return [Stage("composites", composites, lake.path("tiles"))]

        return Job(
            aggregate,
            summary,
            source=lambda lake: config.aggregate.regions or "",
            upstream=upstream,
        )

    return run_main(JOB, lambda: config_from_args(args), plan)


if __name__ == "__main__":
    sys.exit(main())
