"""The aggregate job's output: rows of the analysis tables, and their incremental replacement.

:func:`build_rows` turns the executors' reduced results into the rows of ``class_area``,
``index_timeseries``, ``index_monthly`` and ``change`` (every region x scene (x model x
class), zeros included); :func:`write_tables` deletes the rows of the recomputed scenes,
months and change groups of the region set and appends the new ones
(:func:`replace_rows`). Units and conventions are stated in :mod:`pipelines.aggregate`
and :mod:`pipelines.datamodel`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema

from pipelines.aggregate_plan import Plan, month_members
from pipelines.datamodel import TABLES
from pipelines.lakehouse import Lakehouse
from pipelines.regions_io import RegionSet
from pipelines.runs import Run
from udfs.regions import VALUE_STATS, pixel_area_m2

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
    """Rows of the analysis tables: every region x scene (x model x class) and every
    region x composite (grid, period), zeros included."""
    by_key = {r["key"]: r for r in results}
    cfg = run.config
    names = ("class_area", "index_timeseries", "index_monthly", "change", "composite_index")
    out: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
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
        members = month_members(scenes, sensor, month)
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
    for g in p.composites:
        s = scenes[g["scene"]]
        px = pixel_area_m2(s["transform"])
        cid = f"{g['grid_id']}/{g['period']}"
        for i in range(len(rset.regions)):
            rec = by_key.get(("cvalues", i, g["grid_id"], g["period"]))
            sc = (rec or {}).get("scenes", {}).get(cid)
            head = region(i, s)
            valid = sc["valid_pixels"] if sc else 0
            for name in indices:
                out["composite_index"].append(
                    {
                        **head,
                        **{
                            k: g[k]
                            for k in (
                                "grid_id",
                                "period",
                                "period_kind",
                                "period_start",
                                "period_end",
                                "sensor",
                            )
                        },  # fmt: skip
                        "index": name,
                        **_stats(sc["stats"].get(name) if sc else None),
                        "grid_pixels": sc["grid_pixels"] if sc else 0,
                        "valid_pixels": valid,
                        "unobserved_fraction": _unobserved(
                            valid * px, head["region_hectares"] * 1e4
                        ),
                        "n_scenes": g["n_scenes"],
                        "inputs_digest": g["digest"],
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
    if p.composites:
        where = " OR ".join(
            f"(grid_id = {_sql_list([g['grid_id']])} AND period = {_sql_list([g['period']])})"
            for g in p.composites
        )
        replace_rows(spark, lake, "composite_index", f"{rs} AND ({where})", rows["composite_index"])
