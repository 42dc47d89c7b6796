"""Aggregate job: tiles + predictions -> analysis tables by region and date.

Flow of :func:`main`: load config -> start Spark -> composites (their own run, when
``aggregate.composites``) -> read and check the regions file on the driver (bad regions go
to ``rejected``, the others go on; no file: each scene's footprint is the region) -> plan:
scenes (x models) whose rows are missing or stale (their ``inputs_digest`` differs: a
changed regions file, a rebuilt scene, new predictions), regions reprojected into each
scene CRS, and the (tile, regions) pairs whose bounding boxes meet (every other tile is
pruned before a pixel is read) -> executors read those tiles' ``tiles`` / ``predictions``
files, burn each region into the tile's grid (pixel centres, core only), and emit class
counts, index values and transition counts -> Spark groups them by region and scene (index
values by region, sensor and month, for exact percentiles) -> replace the rows of those
scenes in ``class_area``, ``index_timeseries``, ``index_monthly`` and ``change`` -> record
bad regions and the run. ``classify.py`` runs the same stages after its maps
(:func:`analysis_stages`).

Modules: :mod:`pipelines.regions_io` (the regions file), :mod:`pipelines.aggregate_plan`
(scenes, digests, tile pruning), :mod:`pipelines.analysis_tables` (rows, incremental
replacement); the executor side is :mod:`udfs.aggregate_udfs` and :mod:`udfs.regions`.

Decisions
---------
* **Regions** are read and checked on the driver (:mod:`pipelines.regions_io`: formats,
  CRS, what refuses a file and what skips a region into ``rejected``).
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
* **Where the tables live**: a local or mounted file system, or an S3-compatible object
  store (``s3://`` / ``s3a://`` root). The driver plans from the tables' logs and small
  columns with delta-rs + pyarrow either way (:func:`pipelines.object_store.read_arrow`;
  endpoint and region from the AWS environment variables); the workers read the
  ``tiles`` / ``predictions`` / ``composites`` Parquet row groups themselves, by path or
  through a ``pyarrow.fs.S3FileSystem`` built from a recipe of the driver's endpoint and
  region settings (:mod:`udfs.storage`; credentials come from each process's own
  environment or credential chain, never from the recipe). On an object store the
  analysis tables are written through Spark (a Delta DELETE of the recomputed rows, then
  an append), locally with delta-rs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from pyspark.sql import SparkSession
from rasterio.crs import CRS

from pipelines.aggregate_plan import (
    plan,
    regions_in_crs,
    resolve_models,
    scene_info,
    task_groups,
)
from pipelines.analysis_tables import build_rows, write_tables
from pipelines.config import Config, load_config
from pipelines.jobs import Job, Stage, job_parser, run_main
from pipelines.lakehouse import Lakehouse
from pipelines.preflight import require_file, require_tiles, row_count, table_exists
from pipelines.regions_io import FOOTPRINT_SET, RegionSet, RegionsFileError, load_regions
from pipelines.runs import Run, phase
from pipelines.scheduling import grouped_rdd, task_count
from udfs.aggregate_udfs import combine, make_region_mapper
from udfs.errors import ConfigError
from udfs.regions import RegionError
from udfs.storage import is_object_store, store_options

JOB = "aggregate"
log = logging.getLogger("eo")


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
    if not (lake.local or is_object_store(lake.root)):
        raise ConfigError(
            f"aggregate reads the tables' files itself: {lake.root} must be a local or "
            "mounted file system, or an s3:// / s3a:// root"
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
        p = plan(lake, run, rset, scenes, model_classes, geoms)
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
            # Endpoint and region for the workers' reads of s3:// files; no credentials.
            "store": store_options(lake.root),
        }
        bc = spark.sparkContext.broadcast(ctx)
        # A unit costs a few ms: up to 512 a task, so the ~0.2 s a Python task costs here
        # is paid once per core rather than per 64 units.
        n_tasks = task_count(spark, len(p.units), max_per_task=512)
        units = task_groups(p.units, scenes, n_tasks)
        try:
            with phase(f"aggregate {len(p.units)} tile unit(s) over {len(rset.regions)} region(s)"):
                results = combine(
                    grouped_rdd(spark, units).mapPartitions(make_region_mapper(bc)).collect()
                )
        finally:
            bc.unpersist()
    with phase("write"):
        rows = build_rows(run, rset, p, scenes, model_classes, geoms, results)
        write_tables(spark, lake, rset, p, rows)
    run.tiles_written = len(p.units)
    return run


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = job_parser("aggregate", __doc__.split("\n")[0])
    p.add_argument("--regions", help="regions file (aggregate.regions)")
    p.add_argument("--model", help="latest | a model id | all (aggregate.model)")
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
    for name in ("class_area", "index_timeseries", "index_monthly", "change", "composite_index"):
        if table_exists(lake, name):  # counts from the Delta log: no Spark job
            lines.append(f"  {name:<17} {row_count(lake, name):>7} rows  {lake.path(name)}")
    return "\n".join(lines)


def composite_stages(config: Config, lake: Lakehouse) -> list[Stage]:
    """The composites stage (its own run) when ``aggregate.composites`` is on, else none."""
    if not config.aggregate.composites:
        return []
    from pipelines.composites import composites

    return [Stage("composites", composites, lake.path("tiles"))]


def analysis_stages(config: Config, lake: Lakehouse, models: Sequence[str]) -> list[Stage]:
    """What classify runs after its maps: composites, then the analysis tables of
    ``models``, each recorded as its own run and summarised."""
    return [
        *composite_stages(config, lake),
        Stage(
            JOB,
            lambda spark, lk, run: aggregate(spark, lk, run, models=list(models)),
            config.aggregate.regions or "",
            summary,
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Composites first (``aggregate.composites``, recorded as their own run), then the
    analysis tables."""
    args = parse_args(argv)

    def plan(config: Config) -> Job:
        # Usage problems stop here (exit code 2), before Spark starts: nothing written.
        require_tiles(config, JOB)
        require_file(config.aggregate.regions, "regions", "--regions")
        return Job(
            aggregate,
            summary,
            source=lambda lake: config.aggregate.regions or "",
            upstream=lambda lake: composite_stages(config, lake),
        )

    return run_main(JOB, lambda: config_from_args(args), plan, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
