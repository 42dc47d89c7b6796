"""Features job: ``tiles`` -> ``tile_features`` (cloud-masked reflectance statistics).

Flow of :func:`main`: load config -> start Spark -> find scenes without features (or with
features of other settings: refused unless ``--rebuild``) -> executors read their tiles,
mask invalid pixels (nodata, saturation, valid DN range, QA_RADSAT) and the configured
quality classes / flags (``features.scl_masked``, ``features.qa_pixel_flags``,
``features.qa_pixel_min_confidence``), scale DN to reflectance with each scene's own
scaling, compute indices (NaN where an input reflectance is negative or the result
leaves the index's physical range, see :mod:`udfs.indices`) and per-tile statistics over
each tile's core (the layers of ``features.bands`` and ``features.indices``, the statistics
of ``features.statistics``) -> MERGE into ``tile_features`` -> record rejected tiles and
the run.

:func:`pixel_features` is the pixel-level feature view the model jobs train and predict on.

Run with ``python -m pipelines.features`` or ``spark-submit pipelines/features.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import FloatType, IntegerType, StringType, StructField, StructType

from pipelines.config import Config, load_config
from pipelines.datamodel import TILE_FEATURES, TILES
from pipelines.jobs import Job, job_parser, run_main
from pipelines.lakehouse import Lakehouse
from pipelines.preflight import features_settled, require_tiles
from pipelines.runs import ListParam, Run, phase
from pipelines.scheduling import balanced_groups, grouped_rdd, task_count
from udfs.errors import ConfigError
from udfs.feature_udfs import (
    CORE_COLUMNS,
    TILE_COLUMNS,
    make_feature_mapper,
    make_feature_reader,
    make_pixel_reader,
)
from udfs.sensors import SENSORS

JOB = "features"


def scene_table(lake: Lakehouse, scene_ids: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """scene_id -> sensor, scaling (band -> [scale, offset]), acquisition date, tile count
    and tile size (``scenes.tile_size``: the executors find each tile's core with it)."""
    columns = ("scene_id", "sensor", "scaling", "acquired_date", "n_tiles", "tile_size")
    if lake.local:
        try:  # a few small columns: delta-rs in milliseconds, a Spark query in ~0.5 s
            rows = lake.read_arrow("scenes", columns).to_pylist()
        except ValueError:  # reader features delta-rs lacks: Spark below
            rows = None
        if rows is not None:
            return {
                r["scene_id"]: {
                    "sensor": r["sensor"],
                    "scaling": {k: [v["scale"], v["offset"]] for k, v in (r["scaling"] or [])},
                    "acquired_date": r["acquired_date"],
                    "n_tiles": r["n_tiles"],
                    "tile_size": r["tile_size"],
                }
                for r in rows
                if scene_ids is None or r["scene_id"] in scene_ids
            }
    df = lake.read("scenes").select(*columns)
    if scene_ids is not None:
        df = df.filter(F.col("scene_id").isin(scene_ids))
    return {
        r.scene_id: {
            "sensor": r.sensor,
            "scaling": {k: [v.scale, v.offset] for k, v in (r.scaling or {}).items()},
            "acquired_date": r.acquired_date,
            "n_tiles": r.n_tiles,
            "tile_size": r.tile_size,
        }
        for r in df.collect()
    }


def plan_scenes(run: Run, lake: Lakehouse) -> dict[str, dict[str, Any]]:
    """Scenes that need features; refuses scenes whose features used other settings."""
    feats = run.config.features
    digest = feats.digest()
    done: dict[str, str] = {}
    if lake.exists("tile_features"):
        done = feature_digests(lake)
    stale = sorted(s for s, d in done.items() if d != digest)
    if stale and not feats.rebuild:
        raise ConfigError(
            f"{len(stale)} scene(s) (e.g. {stale[0]}) have features computed with other "
            f"settings (indices {', '.join(feats.indices)}, masks, or an older version of "
            "the reflectance/index policy); re-run with --rebuild to recompute them"
        )
    lake.delete("tile_features", "scene_id", stale)
    scenes = scene_table(lake)
    run.skipped = sorted(s for s in scenes if done.get(s) == digest)
    return {s: v for s, v in scenes.items() if done.get(s) != digest}


def feature_digests(lake: Lakehouse) -> dict[str, str]:
    """scene_id -> features_digest of the scenes in ``tile_features``."""
    if lake.local:
        try:
            t = lake.read_arrow("tile_features", ["scene_id", "features_digest"])
            ids, digests = t["scene_id"].to_pylist(), t["features_digest"].to_pylist()
            return dict(zip(ids, digests, strict=True))
        except ValueError:  # reader features delta-rs lacks: Spark below
            pass
    rows = lake.read("tile_features").select("scene_id", "features_digest").distinct()
    return {r.scene_id: r.features_digest for r in rows.collect()}


def use_file_reader(reader: str, lake: Lakehouse) -> bool:
    """Whether workers read the tiles' Parquet files themselves (``arrow``; ``auto``: local)."""
    return reader == "arrow" or (reader == "auto" and lake.local)


def tile_files(lake: Lakehouse, scene_ids: list[str]) -> list[str]:
    """Local paths of the ``tiles`` files of the current table version holding these scenes."""
    if lake.format == "delta":
        from_log = files_from_log(lake.local_path("tiles"), set(scene_ids))
        if from_log is not None:
            return from_log
    try:
        import pyarrow.dataset as ds

        where = ds.field("scene_id").isin(scene_ids)
        t = lake.read_arrow("tiles", ["scene_id"], where=where, with_file=True)
        return sorted(set(t["file"].to_pylist()))
    except ValueError:  # reader features delta-rs lacks: ask Spark
        pass
    files = lake.read("tiles").filter(F.col("scene_id").isin(scene_ids)).inputFiles()
    return sorted(f.removeprefix("file://").removeprefix("file:") for f in files)


def files_from_log(table: str, scene_ids: set[str]) -> list[str] | None:
    """Files of a local Delta ``tiles`` table that may hold ``scene_ids``, from the log.

    The log's per-file minimum and maximum of ``scene_id`` decide, so no Parquet file is
    opened (reading the ``scene_id`` column of every file took ~0.2 s of the 5490 px
    bench scene's run). A file whose range holds one of the scenes is kept: the workers
    skip rows of other scenes. None where the log lacks these statistics or delta-rs
    cannot read the table: the caller reads the files instead.
    """
    from urllib.parse import unquote

    import deltalake

    try:
        dt = deltalake.DeltaTable(table)
    except deltalake.exceptions.TableNotFoundError:
        return []
    if dt.protocol().reader_features:
        return None
    acts = pa.table(dt.get_add_actions(flatten=True))
    if not {"min.scene_id", "max.scene_id"} <= set(acts.column_names):
        return None
    out = []
    for path, lo, hi in zip(
        acts.column("path").to_pylist(),
        acts.column("min.scene_id").to_pylist(),
        acts.column("max.scene_id").to_pylist(),
        strict=True,
    ):
        if lo is None or hi is None:
            return None
        if any(lo <= s <= hi for s in scene_ids):
            out.append(os.path.join(table, unquote(path)))
    return sorted(out)


#: Tiles files one task takes before the job gets more tasks than cores.
MAX_FILES_PER_TASK = 256


def file_task_count(spark: SparkSession, n_files: int) -> int:
    """Tasks for ``n_files`` tiles files: one per core, and a multiple of the cores when
    a task would get more than :data:`MAX_FILES_PER_TASK` files.

    A task reads its files one after the other, so memory does not grow with their
    number; what costs is a task count that is not a multiple of the cores, which leaves
    cores idle while the last tasks run. Four 5490 px scenes (144 files) went to three
    tasks on two cores (:func:`pipelines.scheduling.task_count`, at most 64 items each):
    two ran side by side for 2.1 s, then the third alone for 1.9 s, 4.4 s in all where
    two tasks of 72 files take about 3 s.
    """
    return task_count(spark, n_files, MAX_FILES_PER_TASK)


def file_groups(spark: SparkSession, lake: Lakehouse, scene_ids: list[str]) -> list[list[str]]:
    """The ``tiles`` files of these scenes in one group per task (:func:`file_task_count`),
    balanced by size."""
    paths = tile_files(lake, scene_ids)
    sizes = {p: os.path.getsize(p) for p in paths}
    return balanced_groups(sizes, file_task_count(spark, len(paths)))


def tile_input(
    spark: SparkSession, lake: Lakehouse, reader: str, scene_ids: list[str], columns: Any
) -> tuple[DataFrame, bool]:
    """What the executors read the tiles of ``scene_ids`` from.

    Either one row per ``tiles`` Parquet file (``path``; the workers read the files,
    filtering on ``scene_id`` themselves) and ``True``, or the tile rows (``columns``)
    through Spark and ``False``. See ``features.reader``.
    """
    if use_file_reader(reader, lake):
        groups = file_groups(spark, lake, scene_ids)
        paths = grouped_rdd(spark, groups).map(lambda p: (p,))
        return spark.createDataFrame(paths, "path string"), True
    tiles = lake.read("tiles").filter(F.col("scene_id").isin(scene_ids))
    return tiles.select(*columns), False


def features_frame(
    spark: SparkSession, lake: Lakehouse, run: Run, todo: dict[str, dict[str, Any]], errors: Any
) -> DataFrame:
    """``tile_features`` rows of the scenes in ``todo``, computed on the executors."""
    feats = run.config.features
    schema = to_arrow_schema(TILE_FEATURES)
    extra = {"features_digest": feats.digest(), "run_id": run.run_id}
    args = (todo, list(feats.indices), feats.max_cloud_fraction, extra, schema, errors.add)
    columns = (*TILE_COLUMNS, *CORE_COLUMNS)
    source, from_files = tile_input(spark, lake, feats.reader, list(todo), columns)
    reader = make_feature_reader(
        *args,
        from_files=from_files,
        masks=feats.masks(),
        bands=feats.band_set(),
        stats=feats.stat_names(),
    )
    return source.mapInArrow(reader, TILE_FEATURES)


def features_table(
    spark: SparkSession, lake: Lakehouse, run: Run, todo: dict[str, dict[str, Any]]
) -> tuple[pa.Table, list[dict[str, Any]]]:
    """``tile_features`` rows of the scenes in ``todo`` as an Arrow table (local tables),
    and the ``rejected`` records of tiles that could not be decoded.

    With the file reader (``features.reader`` ``auto`` or ``arrow``): one RDD task per
    core, each given whole ``tiles`` files balanced by size, reads them with pyarrow and
    returns its rows and rejected tiles (:func:`udfs.feature_udfs.make_feature_mapper`);
    no DataFrame, whose planning and Arrow round trip cost ~0.5 s more than an RDD job
    here, and no accumulator. Otherwise the rows of :func:`features_frame`.
    """
    feats = run.config.features
    schema = to_arrow_schema(TILE_FEATURES)
    if not use_file_reader(feats.reader, lake):
        errors = spark.sparkContext.accumulator([], ListParam())
        table = features_frame(spark, lake, run, todo, errors).toArrow()
        return table, list(errors.value)
    mapper = make_feature_mapper(
        todo,
        list(feats.indices),
        feats.max_cloud_fraction,
        {"features_digest": feats.digest(), "run_id": run.run_id},
        masks=feats.masks(),
        bands=feats.band_set(),
        stats=feats.stat_names(),
    )
    with phase("plan tasks"):
        groups = file_groups(spark, lake, list(todo))
    with phase(f"{len(groups)} task(s) over {sum(map(len, groups))} tiles file(s)"):
        out = grouped_rdd(spark, groups).mapPartitions(mapper).collect()
    rows = [r for ok, r in out if ok]
    return pa.Table.from_pylist(rows, schema=schema), [r for ok, r in out if not ok]


def features(spark: SparkSession, lake: Lakehouse, run: Run) -> Run:
    """Compute ``tile_features`` for every scene that lacks them."""
    if features_settled(run, lake):  # every scene done: decided from two small Delta logs
        return run
    with phase("plan"):
        todo = plan_scenes(run, lake)
        run.seen = sum(s["n_tiles"] or 0 for s in todo.values())
    rejected: list[dict[str, Any]] = []
    if todo:
        with phase(f"features of {len(todo)} scene(s)"):
            if lake.local:
                # One row per tile is small: collect it and commit one file with delta-rs.
                # A MERGE would run a Spark job more and may compute its source twice.
                # plan_scenes removed any older rows of these scenes, so the keys are new.
                table, rejected = features_table(spark, lake, run, todo)
                with phase("commit"):
                    lake.append_arrow(
                        "tile_features", table, run.config.storage.zstd_level, owner=run.run_id
                    )
            else:
                errors = spark.sparkContext.accumulator([], ListParam())
                lake.merge("tile_features", features_frame(spark, lake, run, todo, errors))
                rejected = list(errors.value)
    run.rejected.extend(rejected)
    run.ingested = sorted(todo)
    # Every tile of these scenes has a features row unless it was rejected.
    run.tiles_written = run.seen - len(rejected)
    return run


# ----------------------------------------------------------------------------- pixel view


def pixel_schema(indices: list[str]) -> StructType:
    """Schema of the pixel feature view: keys, radiometry, pixel position, reflectance,
    indices."""
    bands = list(dict.fromkeys(b.common for s in SENSORS.values() for b in s.reflectance_bands))
    return StructType(
        [
            *[TILES[n] for n in ("scene_id", "tile_row", "tile_col", "sensor", "acquired_date")],
            StructField("radiometry", StringType()),  # surface | toa (S2 L1C)
            StructField("row", IntegerType(), False),  # pixel row inside the tile
            StructField("col", IntegerType(), False),
            *[StructField(b, FloatType()) for b in bands],  # reflectance, unitless
            *[StructField(i.lower(), FloatType()) for i in indices],
        ]
    )


def pixel_features(
    spark: SparkSession,
    lake: Lakehouse,
    config: Config,
    scene_ids: list[str] | None = None,
    usable_only: bool = True,
) -> DataFrame:
    """Lazy view: one row per valid (unmasked) core pixel of the chosen tiles.

    Pixels are exploded on the executors, tile by tile; nothing is collected. Only each
    tile's core is emitted, so a sum or count over the view counts every scene pixel once
    whatever ``ingest.overlap``. Masks follow ``features.scl_masked`` /
    ``qa_pixel_flags`` / ``qa_pixel_min_confidence``. With ``usable_only`` only tiles whose
    ``tile_features.usable`` is true are used (requires the features job to have run).
    Columns: tile key, ``sensor``, ``acquired_date``, ``radiometry`` (``surface`` or
    ``toa``), ``row`` / ``col`` in the stored tile, reflectance per band column (measured
    value, may be slightly negative; null where the sensor lacks it) and one column per
    index (lower-case; NaN where undefined, see :mod:`udfs.indices`).
    """
    indices = list(config.features.indices)
    scenes = scene_table(lake, scene_ids)
    tiles = lake.read("tiles").filter(F.col("scene_id").isin(list(scenes)))
    if usable_only:
        ok = lake.read("tile_features").filter("usable").select("scene_id", "tile_row", "tile_col")
        tiles = tiles.join(ok, ["scene_id", "tile_row", "tile_col"], "left_semi")
    schema = pixel_schema(indices)
    reader = make_pixel_reader(
        scenes, indices, to_arrow_schema(schema), masks=config.features.masks()
    )
    return tiles.select(*TILE_COLUMNS, *CORE_COLUMNS).mapInArrow(reader, schema)


# ----------------------------------------------------------------------------- the job


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = job_parser("features", __doc__.split("\n")[0])
    p.add_argument("--max-cloud-fraction", type=float, help="features.max_cloud_fraction")
    p.add_argument("--rebuild", action="store_true", help="recompute features of other settings")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = []
    if args.root:
        overrides.append(f"storage.root={args.root}")
    if args.max_cloud_fraction is not None:
        overrides.append(f"features.max_cloud_fraction={args.max_cloud_fraction}")
    if args.rebuild:
        overrides.append("features.rebuild=true")
    return load_config(args.profile, [*overrides, *args.set])


def summary(run: Run, lake: Lakehouse) -> str:
    return (
        f"features run {run.run_id}: {len(run.ingested)} scene(s) processed, "
        f"{len(run.skipped)} already done, {run.tiles_written} tile rows written, "
        f"{len(run.rejected)} tile(s) rejected -> {lake.path('tile_features')}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def plan(config: Config) -> Job:
        require_tiles(config, JOB)  # an empty root stops here (exit code 2), nothing written
        return Job(
            features, summary, source=lambda lake: lake.path("tiles"), settled=features_settled
        )

    return run_main(JOB, lambda: config_from_args(args), plan, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
