"""Composites job: ``tiles`` -> ``composites`` (cloud-free per-pixel medians per grid and period).

Flow of :func:`build_composites`: read the ``scenes`` table -> give every scene its tile
grid (:func:`grid_id`) and period (:func:`period_of`) -> one group per (grid, period) with
the digest of its scenes, masks and policy (:func:`composite_digest`) -> compare with the
digests stored in ``composites``: groups whose digest is stored are skipped, new or
changed groups are (re)built, groups without scenes left are dropped -> delete the rows
of changed and dropped groups -> executors: the ``tiles`` rows of the groups to build,
grouped by (grid, period, tile_row, tile_col), are decoded, masked with the features
stage's masks (``features.scl_masked``, ``qa_pixel_flags``, ``qa_pixel_min_confidence``),
scaled to reflectance with each scene's own scaling and reduced to their per-pixel median
(:mod:`udfs.composites`) -> MERGE into ``composites``.

So a re-run adds nothing, a new scene rebuilds the rows of its (grid, period) only, and a
rebuilt upstream scene (a new ingest run, so a new ``scenes.run_id``) replaces the rows
of its groups. The driver only plans (scenes rows, group keys); pixels are only touched on
the executors.

Decisions
---------
* A *tile grid* is one sensor's pixel grid: sensor, CRS, the scene transform and size,
  ``tile_size`` and ``overlap`` (:func:`grid_id`). The scenes of one Sentinel-2 MGRS tile
  share it on every date; Landsat and Sentinel-2 never do, nor do Sentinel-2 L1C and L2A
  (top-of-atmosphere is never mixed with surface reflectance). Scenes on differing grids
  (Landsat scenes of one path/row whose extent moved) give separate composites: nothing is
  reprojected or aligned here.
* Periods: ``month`` (``2024-06``, the default), ``quarter`` (``2024-Q2``) or ``year``
  (``2024``) of ``scenes.acquired_date`` (UTC). Composites of different period kinds live
  side by side in the table; building one kind never touches another.
* If a run stops between deleting changed groups and writing them, those groups are
  missing, which the next run sees as "to build": the table heals itself.

Run with ``python -m pipelines.composites`` or ``spark-submit pipelines/composites.py``.
"""

from __future__ import annotations

import argparse
import calendar
import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema

from pipelines.config import Config, load_config
from pipelines.datamodel import COMPOSITES
from pipelines.jobs import Job, job_parser, run_main
from pipelines.lakehouse import Lakehouse
from pipelines.preflight import require_tiles
from pipelines.runs import ListParam, Run, phase
from udfs.composites import GEOMETRY_COLUMNS, PERIOD_KINDS, make_composite_builder
from udfs.errors import ConfigError
from udfs.masks import MaskSettings
from udfs.sensors import BAND_COLUMNS

JOB = "composites"

#: Version of the composite rules (masks as the features stage, reflectance, nanmedian),
#: part of every composite's digest: rows of older rules are rebuilt.
COMPOSITE_POLICY_VERSION = 1

#: ``scenes`` columns the plan needs.
SCENE_COLUMNS = (
    "scene_id",
    "sensor",
    "scaling",
    "acquired_date",
    "crs_epsg",
    "crs_wkt",
    "transform",
    "width",
    "height",
    "tile_size",
    "overlap",
    "run_id",
)

Group = tuple[str, str]  # (grid_id, period)


def check_period(kind: str) -> str:
    """``kind`` if it is a known period kind; :class:`ConfigError` naming the choices."""
    if kind not in PERIOD_KINDS:
        raise ConfigError(
            f"composite period must be one of {', '.join(PERIOD_KINDS)}, got {kind!r}"
        )
    return kind


def period_of(day: date, kind: str) -> tuple[str, date, date]:
    """The period holding ``day``: its label, first day and last day (inclusive).

    >>> period_of(date(2024, 5, 15), "quarter")
    ('2024-Q2', datetime.date(2024, 4, 1), datetime.date(2024, 6, 30))
    """
    check_period(kind)
    if kind == "year":
        return f"{day.year}", date(day.year, 1, 1), date(day.year, 12, 31)
    if kind == "quarter":
        q = (day.month - 1) // 3 + 1
        last = 3 * q
        end = date(day.year, last, calendar.monthrange(day.year, last)[1])
        return f"{day.year}-Q{q}", date(day.year, last - 2, 1), end
    end = date(day.year, day.month, calendar.monthrange(day.year, day.month)[1])
    return f"{day.year}-{day.month:02d}", date(day.year, day.month, 1), end


def grid_id(scene: Mapping[str, Any]) -> str:
    """Short digest of a scene's tile grid: sensor, CRS, transform, size, tiling.

    Transform coefficients are rounded to micro-units of the CRS, so a value read back
    from a header with a different last bit is the same grid.
    """
    crs = scene["crs_epsg"] if scene["crs_epsg"] is not None else scene["crs_wkt"]
    keys = {
        "sensor": scene["sensor"],
        "crs": crs,
        "transform": [round(float(v), 6) for v in scene["transform"]],
        "size": [scene["height"], scene["width"]],
        "tile_size": scene["tile_size"],
        "overlap": scene["overlap"],
    }
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def composite_digest(scenes: list[tuple[str, str]], masks: MaskSettings, kind: str) -> str:
    """Digest of what a composite is made of: ``(scene_id, ingest run_id)`` pairs (a
    rebuilt scene has a new run), the mask settings, the period kind and the policy."""
    keys = {
        "scenes": sorted([list(s) for s in scenes]),
        "scl_masked": list(masks.scl_classes),
        "qa_pixel_flags": sorted(masks.qa_flags),
        "qa_pixel_min_confidence": [list(kv) for kv in masks.qa_min_confidence],
        "period_kind": kind,
        "policy": COMPOSITE_POLICY_VERSION,
    }
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class CompositePlan:
    """What a composites run does.

    Attributes
    ----------
    kind : str
        Period kind.
    scenes : dict
        scene_id -> ``sensor``, ``scaling`` (band -> [scale, offset]), ``grid_id``,
        ``period``: every scene of a group to build (what the executors need).
    groups : dict
        (grid_id, period) -> planned row columns (``period_kind``, ``period_start``,
        ``period_end``, ``composite_digest``) of every group the scenes make.
    todo, skipped, dropped : list of (grid_id, period)
        Groups to build (new or changed), already stored with their digest, and stored
        but without scenes any more (their rows are deleted).
    """

    kind: str
    scenes: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: dict[Group, dict[str, Any]] = field(default_factory=dict)
    todo: list[Group] = field(default_factory=list)
    skipped: list[Group] = field(default_factory=list)
    dropped: list[Group] = field(default_factory=list)


def plan_groups(
    scenes: Sequence[Mapping[str, Any]],
    stored: Mapping[Group, set[str]],
    kind: str,
    masks: MaskSettings,
) -> CompositePlan:
    """Group scenes rows by (grid, period) and compare with the stored digests.

    ``stored`` maps each (grid_id, period) of the table (this period kind only) to the
    set of digests its rows carry. A group is skipped when that set is exactly its digest.
    """
    check_period(kind)
    members: dict[Group, list[Mapping[str, Any]]] = {}
    for s in scenes:
        label, _, _ = period_of(s["acquired_date"], kind)
        members.setdefault((grid_id(s), label), []).append(s)
    plan = CompositePlan(kind)
    for key, rows in sorted(members.items()):
        _, start, end = period_of(rows[0]["acquired_date"], kind)
        digest = composite_digest([(r["scene_id"], r["run_id"]) for r in rows], masks, kind)
        plan.groups[key] = {
            "period_kind": kind,
            "period_start": start,
            "period_end": end,
            "composite_digest": digest,
        }
        if stored.get(key) == {digest}:
            plan.skipped.append(key)
            continue
        plan.todo.append(key)
        for r in rows:
            plan.scenes[r["scene_id"]] = {
                "sensor": r["sensor"],
                "scaling": {k: [v[0], v[1]] for k, v in (r["scaling"] or {}).items()},
                "grid_id": key[0],
                "period": key[1],
            }
    plan.dropped = sorted(set(stored) - set(members))
    return plan


def stored_digests(lake: Lakehouse, kind: str) -> dict[Group, set[str]]:
    """(grid_id, period) -> digests of the stored ``composites`` rows of this period kind."""
    cols = ["grid_id", "period", "composite_digest"]
    if lake.local:  # the table's log and small columns, no Spark query (~1 s each here)
        import pyarrow.dataset as ds

        rows = lake.read_arrow("composites", cols, ds.field("period_kind") == kind).to_pylist()
    elif lake.exists("composites"):
        df = lake.read("composites").filter(F.col("period_kind") == kind).select(*cols)
        rows = [r.asDict() for r in df.distinct().collect()]
    else:
        rows = []
    out: dict[Group, set[str]] = {}
    for r in rows:
        out.setdefault((r["grid_id"], r["period"]), set()).add(r["composite_digest"])
    return out


def plan_composites(lake: Lakehouse, kind: str, masks: MaskSettings) -> CompositePlan:
    """:func:`plan_groups` over the ``scenes`` table and the stored composites."""
    if lake.local:
        scenes = lake.read_arrow("scenes", SCENE_COLUMNS).to_pylist()
        for s in scenes:  # Arrow gives a map as (key, value) pairs, a struct as a dict
            s["scaling"] = {k: (v["scale"], v["offset"]) for k, v in s["scaling"] or []}
    else:
        scenes = [r.asDict() for r in lake.read("scenes").select(*SCENE_COLUMNS).collect()]
        for s in scenes:
            s["scaling"] = {k: (v.scale, v.offset) for k, v in (s["scaling"] or {}).items()}
    return plan_groups(scenes, stored_digests(lake, kind), kind, masks)


def group_condition(groups: list[Group]) -> Column:
    """Rows of ``composites`` belonging to any of these (grid_id, period) groups."""
    return F.concat_ws("/", "grid_id", "period").isin([f"{g}/{p}" for g, p in groups])


def composites_frame(
    spark: SparkSession,
    lake: Lakehouse,
    plan: CompositePlan,
    masks: MaskSettings,
    run_id: str,
    errors: Any,
) -> DataFrame:
    """``composites`` rows of the groups in ``plan.todo``, computed on the executors.

    One Python call per (grid, period, tile_row, tile_col) holds every observation of
    that tile position in the period.
    """
    assign = spark.createDataFrame(
        [(sid, s["grid_id"], s["period"]) for sid, s in sorted(plan.scenes.items())],
        "scene_id string, grid_id string, period string",
    )
    columns = dict.fromkeys(("scene_id", "dtype", *GEOMETRY_COLUMNS, *BAND_COLUMNS))
    tiles = (
        lake.read("tiles")
        .filter(F.col("scene_id").isin(sorted(plan.scenes)))
        .select(*columns)
        .join(F.broadcast(assign), "scene_id")
    )
    scenes = {k: {"sensor": v["sensor"], "scaling": v["scaling"]} for k, v in plan.scenes.items()}
    groups = {k: plan.groups[k] for k in plan.todo}
    builder = make_composite_builder(
        scenes, groups, masks, {"run_id": run_id}, to_arrow_schema(COMPOSITES), errors.add
    )
    return tiles.groupBy("grid_id", "period", "tile_row", "tile_col").applyInArrow(
        builder, COMPOSITES
    )


@dataclass
class CompositeResult:
    """What :func:`build_composites` did (groups are (grid_id, period) pairs)."""

    plan: CompositePlan
    rows_written: int = 0

    @property
    def built(self) -> list[Group]:
        return self.plan.todo

    @property
    def skipped(self) -> list[Group]:
        return self.plan.skipped

    @property
    def dropped(self) -> list[Group]:
        return self.plan.dropped


def build_composites(
    spark: SparkSession, lake: Lakehouse, cfg: Config, run: Run, period: str | None = None
) -> CompositeResult:
    """Build the ``composites`` rows that are missing or out of date.

    Parameters
    ----------
    spark, lake
        The session and the tables.
    cfg : Config
        Masks come from ``cfg.features``; the period kind from ``period``, else
        ``aggregate.composite_period`` (``month`` by default).
    run : Run
        Tiles that cannot be decoded are appended to ``run.rejected`` (stage
        ``composites``); the run's other counters are left to the caller.
    period : str, optional
        ``month``, ``quarter`` or ``year``.

    Returns
    -------
    CompositeResult
        Groups built, skipped and dropped, and the composite rows written.
    """
    kind = check_period(period or cfg.aggregate.composite_period)
    masks = cfg.features.masks()
    with phase("plan composites"):
        plan = plan_composites(lake, kind, masks)
    result = CompositeResult(plan)
    # Rows of changed groups go before their new rows are written (MERGE inserts only).
    stale = [*plan.dropped, *plan.todo]
    if stale and lake.exists("composites"):
        with phase(f"delete {len(stale)} out-of-date composite group(s)"):
            lake.delete_where("composites", group_condition(stale))
    if not plan.todo:
        return result
    errors = spark.sparkContext.accumulator([], ListParam())
    with phase(f"composites of {len(plan.todo)} group(s)"):
        lake.merge("composites", composites_frame(spark, lake, plan, masks, run.run_id, errors))
    run.rejected.extend(errors.value)
    written = lake.read("composites").filter(group_condition(plan.todo))
    result.rows_written = written.filter(F.col("run_id") == run.run_id).count()
    return result


# ----------------------------------------------------------------------------- the job


def composites(spark: SparkSession, lake: Lakehouse, run: Run, period: str | None = None) -> Run:
    """The job's work: :func:`build_composites`, accounted in ``run`` (inputs are
    (grid, period) groups: ``ingested`` built, ``skipped`` already up to date)."""
    result = build_composites(spark, lake, run.config, run, period)
    run.seen = len(result.built) + len(result.skipped)
    run.ingested = [f"{g}/{p}" for g, p in result.built]
    run.skipped = [f"{g}/{p}" for g, p in result.skipped]
    run.tiles_written = result.rows_written
    return run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = job_parser("composites", __doc__.split("\n")[0])
    p.add_argument(
        "--period", choices=PERIOD_KINDS, help="period kind (default aggregate.composite_period)"
    )
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = [f"storage.root={args.root}"] if args.root else []
    return load_config(args.profile, [*overrides, *args.set])


def summary(run: Run, lake: Lakehouse, period: str) -> str:
    return (
        f"composites run {run.run_id} ({period}): {len(run.ingested)} (grid, period) group(s) "
        f"built, {len(run.skipped)} up to date, {run.tiles_written} composite rows written, "
        f"{len(run.rejected)} tile(s) rejected -> {lake.path('composites')}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def configure() -> Config:
        config = config_from_args(args)
        check_period(args.period or config.aggregate.composite_period)
        return config

    def plan(config: Config) -> Job:
        period = args.period or config.aggregate.composite_period
        require_tiles(config, JOB)  # an empty root stops here (exit code 2), nothing written
        return Job(
            lambda spark, lake, run: composites(spark, lake, run, period),
            lambda run, lake: summary(run, lake, period),
            source=lambda lake: lake.path("tiles"),
        )

    return run_main(JOB, configure, plan, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
