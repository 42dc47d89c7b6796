"""Ingest job: scenes (folders or STAC) -> ``scenes``, ``tiles``, ``rejected``, ``runs``.

Flow of :func:`main`: load config -> start Spark -> discover scenes (driver, listing only)
-> skip scenes already ingested with the same tiling -> inspect headers and metadata
(driver for up to one scene per core, else executors) -> plan read blocks, grouped into
one task per core by area (driver) -> read, resample and cut tiles, write them
(executors) -> commit tiles in one transaction -> write scenes -> record rejected inputs
and the run.

Run with ``python -m pipelines.ingest`` or ``spark-submit pipelines/ingest.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
from pyspark import RDD
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema

from pipelines.config import Config, load_config
from pipelines.datamodel import SCENES, TABLES, TILES
from pipelines.jobs import Job, job_parser, run_main
from pipelines.lakehouse import Decide, Held, Lakehouse, replace_held
from pipelines.preflight import absolute_sources, check_source, ingest_settled, row_count
from pipelines.runs import ListParam, Run, done_by_lines, live_runs, phase
from pipelines.scheduling import balanced_groups, grouped_rdd, task_count
from udfs.errors import ConfigError, SceneError
from udfs.ingest_udfs import (
    INSPECT_SCHEMA,
    inspect_batches,
    inspect_records,
    make_tile_file_writer,
    make_tile_reader,
)
from udfs.reader import SceneSource, is_url
from udfs.tiling import ReadBlock, plan_read_blocks, tile_grid_shape

JOB = "ingest"
#: Local scenes inspected on the driver rather than in a Spark job (:func:`inspect_scenes`).
DRIVER_INSPECT_MAX = 32


# ----------------------------------------------------------------------------- transforms


def split_candidates(run: Run, candidates: list) -> list[SceneSource]:
    """Scene sources to work on; discovery errors go to ``run.rejected``."""
    sources = []
    for c in candidates:
        if isinstance(c, SceneError):
            run.reject(c)
        else:
            sources.append(c)
    run.seen = len(candidates)
    return sources


def skip_ingested(
    run: Run, sources: list[SceneSource], existing: dict[str, str]
) -> tuple[list[SceneSource], list[str]]:
    """Drop scenes already ingested with this tiling; find those tiled differently.

    Returns the sources to ingest and the ids of scenes to rebuild. Raises
    :class:`ConfigError` for differently tiled scenes unless ``ingest.rebuild`` is set.
    """
    digest = run.config.ingest.tiling_digest()
    todo, rebuild, seen = [], [], set()
    for s in sources:
        if s.scene_id in seen:
            run.reject(
                SceneError(
                    "the same scene id appears twice in the source; the first one was used",
                    scene_id=s.scene_id,
                    href=s.origin,
                    stage="discover",
                )
            )
            continue
        seen.add(s.scene_id)
        old = existing.get(s.scene_id)
        if old is None:
            todo.append(s)
        elif old == digest:
            run.skipped.append(s.scene_id)
        else:
            rebuild.append(s.scene_id)
            todo.append(s)
    if rebuild and not run.config.ingest.rebuild:
        ing = run.config.ingest
        bands = ",".join(ing.bands) or "all"
        raise ConfigError(
            f"{len(rebuild)} scene(s) (e.g. {rebuild[0]}) were tiled with other settings than "
            f"tile_size={ing.tile_size}, overlap={ing.overlap}, resampling={ing.resampling}, "
            f"bands={bands}; refusing to mix tilings in one table. Re-run with --rebuild to "
            f"re-tile them."
        )
    return todo, rebuild


def inspect_scenes(
    spark: SparkSession, run: Run, sources: list[SceneSource]
) -> list[dict[str, Any]]:
    """Open headers and metadata; return scene records, reject the rest.

    Local scenes, up to :data:`DRIVER_INSPECT_MAX` of them (or one per core), are
    inspected on the driver: reading a scene's headers costs 0.03-0.05 s there, a Spark
    job for it 1.5 s warm and 5.3 s the first time in a session (four 5490 px scenes,
    bench/ndvi_e2e_bench.py, issue 12). More scenes, and scenes on an object store (each
    header a request), are inspected on the executors, in parallel.
    """
    if not sources:
        return []
    texts = [s.to_json() for s in sources]
    cores = spark.sparkContext.defaultParallelism
    local = not any(s.gdal_env or any(is_url(h) for h in s.bands.values()) for s in sources)
    if len(sources) <= cores or (local and len(sources) <= DRIVER_INSPECT_MAX):
        records = inspect_records(texts)
    else:
        df = spark.createDataFrame([(t,) for t in texts], "source string")
        df = df.repartition(min(len(sources), cores * 4))
        rows = df.mapInPandas(inspect_batches, INSPECT_SCHEMA).collect()
        records = [(r.scene_id, r.info, r.error) for r in rows]
    infos = []
    for _, info, error in records:
        if error is not None:
            run.rejected.append(json.loads(error))
        elif info is not None:
            infos.append(json.loads(info))
    return sorted(infos, key=lambda i: i["scene_id"])


def select_bands(info: dict[str, Any], config: Config) -> dict[str, Any]:
    """The scene record with only the bands ``ingest.bands`` asks for (and quality bands).

    ``bands`` of the record (and so ``scenes.bands``) then lists what ``tiles`` holds;
    the other band columns of the scene's tiles are null, and their files are never read.
    """
    keep = set(config.ingest.band_columns(info["sensor"]))
    return {**info, "bands": [b for b in info["bands"] if b["column"] in keep]}


def scene_plan(info: dict[str, Any], config: Config) -> list[ReadBlock]:
    """Read blocks (one executor task each) of a scene."""
    ing = config.ingest
    return plan_read_blocks(
        info["height"], info["width"], ing.tile_size, ing.overlap, ing.tiles_per_read
    )


#: Window fields of a block record, as :class:`udfs.tiling.ReadBlock` names them.
BLOCK_FIELDS = tuple(ReadBlock.__dataclass_fields__)


def block_records(infos: list[dict[str, Any]], config: Config) -> list[dict[str, Any]]:
    """One record per read block: the scene recipe (JSON) and the block window."""
    out = []
    for info in infos:
        acquired = datetime.fromisoformat(info["acquired"])
        recipe = dict(
            info, acquired_date=acquired.date().isoformat(), acq_month=acquired.strftime("%Y-%m")
        )
        text = json.dumps(recipe)
        for b in scene_plan(info, config):
            out.append({"scene": text, **{k: getattr(b, k) for k in BLOCK_FIELDS}})
    return out


def blocks_frame(spark: SparkSession, infos: list[dict[str, Any]], config: Config) -> DataFrame:
    """:func:`block_records` as a DataFrame, one task per core (:func:`balanced_blocks`)."""
    rows = balanced_blocks(spark, block_records(infos, config)).map(lambda r: tuple(r.values()))
    schema = "scene string, " + ", ".join(f"{k} int" for k in BLOCK_FIELDS)
    return spark.createDataFrame(rows, schema)


def balanced_blocks(spark: SparkSession, blocks: list[dict[str, Any]]) -> RDD:
    """Block records in one partition per task, the tasks' pixel areas about equal."""
    area = {i: b["height"] * b["width"] for i, b in enumerate(blocks)}
    groups = balanced_groups(area, task_count(spark, len(blocks)))
    return grouped_rdd(spark, [[blocks[i] for i in g] for g in groups])


def tiles_frame(blocks: DataFrame, config: Config, errors: Any) -> DataFrame:
    """Read every block on the executors into ``tiles`` rows."""
    ing = config.ingest
    reader = make_tile_reader(
        to_arrow_schema(TILES), ing.tile_size, ing.overlap, ing.resampling, errors.add
    )
    return blocks.mapInArrow(reader, TILES)


def use_arrow_writer(config: Config, lake: Lakehouse) -> bool:
    """Whether tiles are written by the executors' Python workers (see IngestConfig.writer):
    ``arrow``, or ``auto`` where the driver commits with delta-rs (:attr:`Lakehouse.arrow_io`:
    local roots, Delta tables on S3, whose commits are then conditional writes, safe for
    concurrent runs). Raises :class:`ConfigError` for ``arrow`` where it cannot work."""
    writer = config.ingest.writer
    if writer == "spark":
        return False
    if writer == "arrow" and not lake.arrow_io:
        raise ConfigError(
            f"ingest.writer=arrow writes local tables or Delta tables on s3://, not "
            f"{lake.format} tables under {lake.root}: use ingest.writer=spark (or auto)"
        )
    return lake.arrow_io


def tile_file_writer(
    config: Config,
    table_path: str,
    report_error: Any,
    owner: str = "",
    store: dict[str, str] | None = None,
) -> Any:
    """The executors' tile writer (:func:`udfs.ingest_udfs.make_tile_file_writer`) for
    ``config``, writing under ``table_path`` (local path or ``s3://`` URI, with the
    object-store recipe ``store``) files named after run ``owner``."""
    ing = config.ingest
    return make_tile_file_writer(
        table_path,
        to_arrow_schema(TILES),
        TABLES["tiles"].partition_by,
        ing.tile_size,
        ing.overlap,
        ing.resampling,
        config.storage.zstd_level,
        report_error,
        owner,
        store,
    )


def write_tile_files(
    spark: SparkSession,
    lake: Lakehouse,
    infos: list[dict[str, Any]],
    config: Config,
    errors: Any,
    owner: str = "",
) -> list[dict[str, Any]]:
    """Executors read blocks and write one Parquet file each (named after run ``owner``,
    uncommitted); returns the file records."""
    writer = tile_file_writer(config, lake.files_href("tiles"), errors.add, owner, lake.store)
    lake.ensure(TABLES["tiles"])  # before executors write into its folder
    # A plain RDD job: nothing but small file records comes back, and a DataFrame job
    # (rows to the JVM and back, Arrow) costs ~0.3 s more here (bench/ingest_bench.py).
    blocks = balanced_blocks(spark, block_records(infos, config))
    return blocks.mapPartitions(writer).collect()


def scene_rows(run: Run, infos: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``scenes`` rows for the scenes whose every tile was written."""
    ing = run.config.ingest
    now = datetime.now(timezone.utc)
    rows = []
    for info in infos:
        acquired = datetime.fromisoformat(info["acquired"])
        n_r, n_c = tile_grid_shape(info["height"], info["width"], ing.tile_size)
        rows.append(
            {
                **{k: info.get(k) for k in SCENES.fieldNames()},
                "acquired": acquired,
                "acquired_date": acquired.date(),
                "tile_size": ing.tile_size,
                "overlap": ing.overlap,
                "resampling": ing.resampling,
                "tiling_digest": ing.tiling_digest(),
                "n_tiles": n_r * n_c,
                "run_id": run.run_id,
                "ingested_at": now,
            }
        )
    return rows


# ----------------------------------------------------------------------------- the job


def existing_tilings(lake: Lakehouse) -> dict[str, str]:
    """scene_id -> tiling digest of every scene already in ``scenes``."""
    if lake.arrow_io:
        try:  # delta-rs: milliseconds; a Spark query costs seconds here
            t = lake.read_arrow("scenes", ["scene_id", "tiling_digest"]).to_pylist()
            return {r["scene_id"]: r["tiling_digest"] for r in t}
        except ValueError:  # reader features delta-rs lacks: Spark below
            pass
    if not lake.exists("scenes"):
        return {}
    rows = lake.read("scenes").select("scene_id", "tiling_digest").collect()
    return {r.scene_id: r.tiling_digest for r in rows}


def tiled_bands(lake: Lakehouse, scene_ids: list[str]) -> dict[str, list[str]]:
    """scene_id -> band columns its tiles hold (``scenes.bands``; see ``ingest.bands``).

    For :func:`udfs.ingest_udfs.check_tiled_bands`: jobs that read bands refuse scenes
    ingested without one they need.
    """
    if not scene_ids:
        return {}
    if lake.arrow_io:
        import pyarrow.dataset as ds

        try:  # delta-rs: milliseconds; a Spark query costs seconds here
            where = ds.field("scene_id").isin(scene_ids)
            t = lake.read_arrow("scenes", ["scene_id", "bands"], where).to_pylist()
            return {r["scene_id"]: [b["column"] for b in r["bands"] or []] for r in t}
        except ValueError:  # reader features delta-rs lacks: Spark below
            pass
    if not lake.exists("scenes"):
        return {}
    rows = (
        lake.read("scenes")
        .filter(F.col("scene_id").isin(scene_ids))
        .select("scene_id", "bands.column")
        .collect()
    )
    return {r.scene_id: list(r.column or []) for r in rows}


def check_strict(run: Run) -> None:
    """With ``ingest.strict``, stop at the first rejected input (a :class:`SceneError`)."""
    if run.config.ingest.strict and run.rejected:
        r = run.rejected[0]
        raise SceneError(r["reason"], scene_id=r["scene_id"], href=r["href"], stage=r["stage"])


#: Tables whose rows derive from a scene's tiles and are keyed by scene: a re-tiled scene's
#: rows there are stale (the aggregates keyed otherwise carry the scene's ingest run in
#: their inputs digests, and recompute).
DOWNSTREAM = tuple(
    t.name
    for t in TABLES.values()
    if "scene_id" in t.key and t.name not in ("scenes", "tiles", "rejected")
)


def invalidate_downstream(lake: Lakehouse, scene_ids: list[str]) -> None:
    """Delete the :data:`DOWNSTREAM` rows of re-tiled scenes: computed from their old
    tiles, they must not be read as current (features, classify and aggregate redo them)."""
    for name in DOWNSTREAM if scene_ids else ():
        if lake.format != "delta" or _holds(lake, name, scene_ids):
            lake.delete(name, "scene_id", scene_ids)


def _holds(lake: Lakehouse, name: str, scene_ids: list[str]) -> bool:
    """Whether table ``name`` holds a row of these scenes (delta-rs where it reads them)."""
    import pyarrow.dataset as ds

    if not lake.arrow_io:
        return lake.exists(name)
    try:
        t = lake.read_arrow(name, ["scene_id"], ds.field("scene_id").isin(scene_ids))
    except ValueError:  # reader features delta-rs lacks: let Spark's DELETE look
        return True
    return t.num_rows > 0


def tile_decider(lake: Lakehouse, run: Run, rebuild: set[str]) -> Decide:
    """Per scene, at the ``tiles`` commit: write it, or leave it to the run that has it.

    Against the ``scenes`` table as it is at that moment, for each scene this run tiled:

    * already recorded with this tiling (by a concurrent run that committed first): left
      to that run;
    * recorded with other settings: replaced with ``--rebuild`` (planned, or tiled so by a
      concurrent run), else left to that run;
    * tiles there and no ``scenes`` row: a run that is still running committed them and is
      about to record the scene (left to it), or a run that stopped before recording it
      left them (replaced, in the same commit).
    """
    digest = run.config.ingest.tiling_digest()

    def decide(held: dict[tuple, Held]) -> dict[tuple, str | None]:
        ids = [g[0] for g in held]
        recorded = _scene_rows(lake, ids)
        owners = {o for h in held.values() for o in h.owners if o and o != run.run_id}
        alive = live_runs(lake.spark, lake, owners) if owners else set()
        out: dict[tuple, str | None] = {}
        for g, h in held.items():
            row = recorded.get(g[0])
            if row and row["tiling_digest"] == digest and h.files:
                out[g] = row["run_id"]
                continue
            if row and not (run.config.ingest.rebuild or g[0] in rebuild):
                out[g] = row["run_id"]
                continue
            pending = sorted(o for o in h.owners if o in alive and (not row or o != row["run_id"]))
            out[g] = pending[0] if pending else None
        return out

    return decide


def _scene_rows(lake: Lakehouse, scene_ids: list[str]) -> dict[str, dict[str, Any]]:
    """scene_id -> ``scenes`` row (tiling digest, run id) of these scenes, now."""
    import pyarrow.dataset as ds

    where = ds.field("scene_id").isin(scene_ids)
    t = lake.read_arrow("scenes", ["scene_id", "tiling_digest", "run_id"], where)
    return {r["scene_id"]: r for r in t.to_pylist()}


def commit_scenes(
    spark: SparkSession,
    lake: Lakehouse,
    run: Run,
    infos: list[dict[str, Any]],
    files: list[dict[str, Any]],
    rebuild: list[str],
) -> list[dict[str, Any]]:
    """Commit the tiles files, then the ``scenes`` rows, of the scenes this run may write
    (:func:`tile_decider`); returns their ``scenes`` rows. Scenes another run wrote first
    go to ``run.skipped`` and ``run.done_by``, and this run's files of them are deleted.

    Re-tiled scenes: their ``scenes`` rows (old tiling) and :data:`DOWNSTREAM` rows go
    first, so no job plans on the old tiling meanwhile; the downstream rows are swept again
    after the tiles commit (rows a concurrent job computed from the old tiles meanwhile).
    """
    digest = run.config.ingest.tiling_digest()
    if rebuild:
        lake.delete_where(
            "scenes", F.col("scene_id").isin(rebuild) & (F.col("tiling_digest") != digest)
        )
        invalidate_downstream(lake, rebuild)
    done = lake.commit_files("tiles", files, run.run_id, tile_decider(lake, run, set(rebuild)))
    for (scene_id,), other in sorted(done.left.items()):
        run.skipped.append(scene_id)
        run.done_by[scene_id] = other
    written = {g[0] for g in done.written}
    invalidate_downstream(lake, sorted(written & set(rebuild)))
    rows = scene_rows(run, [i for i in infos if i["scene_id"] in written])
    if rows:
        # A scene's tiles are this run's alone now: its row replaces any older one.
        table = pa.Table.from_pylist(rows, schema=to_arrow_schema(SCENES))
        lake.append_arrow(
            "scenes", table, run.config.storage.zstd_level, run.run_id, decide=replace_held
        )
    return rows


def merge_scenes(
    spark: SparkSession,
    lake: Lakehouse,
    run: Run,
    infos: list[dict[str, Any]],
    rebuild: list[str],
    errors: Any,
) -> list[dict[str, Any]]:
    """Tables anywhere (object stores, ``ingest.writer=spark``): tiles and scenes through
    Spark MERGEs (insert if absent; retried on concurrent commits), so no key is written
    twice. In strict mode the tiles are computed and checked before anything is written.
    """
    config = run.config
    lake.delete("scenes", "scene_id", rebuild)
    invalidate_downstream(lake, rebuild)
    # Tiles of a scene about to be (re)ingested: re-tiled ones, or left by a run that
    # stopped between writing tiles and recording the scene. Keeps the tile key unique.
    lake.delete("tiles", "scene_id", [i["scene_id"] for i in infos])
    frame = tiles_frame(blocks_frame(spark, infos, config), config, errors)
    if config.ingest.strict:
        frame = frame.localCheckpoint(eager=True)  # reads every block: errors known
        reject_unreadable(run, errors)
        check_strict(run)
    lake.merge("tiles", frame)
    failed = reject_unreadable(run, errors) if not config.ingest.strict else []
    lake.delete("tiles", "scene_id", failed)
    rows = scene_rows(run, [i for i in infos if i["scene_id"] not in failed])
    if rows:
        lake.merge("scenes", spark.createDataFrame(rows, SCENES))
    return rows


def reject_unreadable(run: Run, errors: Any) -> list[str]:
    """Scenes with an unreadable block (rejected whole, one record each); their ids."""
    by_scene = {e["scene_id"]: e for e in errors.value}
    known = {(r.get("scene_id"), r.get("stage")) for r in run.rejected}
    run.rejected.extend(e for s, e in by_scene.items() if (s, e["stage"]) not in known)
    return sorted(by_scene)


def ingest(spark: SparkSession, lake: Lakehouse, run: Run) -> Run:
    """Run the whole ingest for ``run.config``; returns ``run`` with its accounting filled.

    Nothing is committed before every block of every scene was read and written: with
    ``--strict`` a bad input stops the run with nothing of it in ``tiles`` or ``scenes``.
    """
    config = run.config
    with phase("discover"):
        from pipelines import incremental  # ingest.since: what this run examines (issue 15)

        found = incremental.discover_new(lake, config)
        sources = split_candidates(run, found.candidates)
        if line := incremental.account(run, found):  # passed products: seen and skipped
            print(line)
    check_strict(run)
    with phase("incremental check"):
        todo, rebuild = skip_ingested(run, sources, existing_tilings(lake))
    with phase(f"inspect {len(todo)} scene(s)"):
        infos = [select_bands(i, config) for i in inspect_scenes(spark, run, todo)]
    check_strict(run)

    errors = spark.sparkContext.accumulator([], ListParam())
    if not use_arrow_writer(config, lake):
        with phase("read, write and merge tiles and scenes"):
            rows = merge_scenes(spark, lake, run, infos, rebuild, errors) if infos else []
    else:
        if lake.format != "delta":
            # No log to commit against: the files are the table. Old rows of these scenes
            # go before this run writes its files (not safe for concurrent runs).
            lake.delete("scenes", "scene_id", rebuild)
            invalidate_downstream(lake, rebuild)
            lake.delete("tiles", "scene_id", [i["scene_id"] for i in infos])
            rebuild = []
        files: list[dict[str, Any]] = []
        with phase("read and write tiles"):
            if infos:
                files = write_tile_files(spark, lake, infos, config, errors, run.run_id)
        # A scene with an unreadable block is rejected whole: what was written of it goes.
        failed = set(reject_unreadable(run, errors))
        mine = [f for f in files if f["scene_id"] not in failed]
        lake.remove_files(
            "tiles",
            [f for f in files if f["scene_id"] in failed or (config.ingest.strict and failed)],
        )
        check_strict(run)  # before any commit: nothing of this run is in a table
        with phase("commit tiles and scenes"):
            good = [i for i in infos if i["scene_id"] not in failed]
            rows = commit_scenes(spark, lake, run, good, mine, rebuild) if good else []
    run.ingested = [r["scene_id"] for r in rows]
    run.tiles_written = sum(r["n_tiles"] for r in rows)
    return run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = job_parser("ingest", __doc__.split("\n")[0])
    p.add_argument("--source", help="scene folder(s) or STAC JSON (comma-separated)")
    p.add_argument("--format", choices=("delta", "parquet"), help="table format")
    p.add_argument("--tile-size", type=int, help="tile side in pixels (ingest.tile_size)")
    p.add_argument("--overlap", type=int, help="tile overlap in pixels (ingest.overlap)")
    p.add_argument("--resampling", help="resampling of coarser bands (ingest.resampling)")
    p.add_argument("--strict", action="store_true", help="fail on the first bad input")
    p.add_argument("--rebuild", action="store_true", help="re-tile scenes tiled differently")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> Config:
    """Profile + flags + ``--set`` overrides, validated (before Spark starts)."""
    overrides = []
    for flag, key in (
        ("source", "ingest.source"),
        ("root", "storage.root"),
        ("format", "storage.format"),
        ("tile_size", "ingest.tile_size"),
        ("overlap", "ingest.overlap"),
        ("resampling", "ingest.resampling"),
    ):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.strict:
        overrides.append("ingest.strict=true")
    if args.rebuild:
        overrides.append("ingest.rebuild=true")
    return load_config(args.profile, [*overrides, *args.set])


def _some(ids: list[str]) -> str:
    more = f" and {len(ids) - 3} more" if len(ids) > 3 else ""
    return ", ".join(ids[:3]) + more


def summary(run: Run, lake: Lakehouse) -> str:
    # Skipped inputs are of two kinds: in ``scenes`` already, or left unread as older than
    # the incremental window (whether they were ever ingested is not known); ``runs``
    # counts both as skipped.
    before = set(run.before_watermark)
    present = [s for s in run.skipped if s not in before]
    older = [s for s in run.skipped if s in before]
    lines = [
        f"ingest run {run.run_id}: {run.seen} input(s) seen, {len(run.ingested)} ingested, "
        f"{len(present)} already present, "
        + (f"{len(older)} before the watermark, " if older else "")
        + f"{len(run.rejected)} rejected, {run.tiles_written} tiles written",
        f"tables ({run.config.storage.format}) under {lake.root}:",
    ]
    if run.seen == 0:
        lines.insert(
            1,
            f"  no scene found in {absolute_sources(run.source)}: give --source a folder of "
            "products (Sentinel-2 SAFE or COG folders, Landsat folders) or a STAC JSON file",
        )
    else:
        if older:
            when = f" ({run.watermark})" if run.watermark else ""
            lines.insert(1, f"  not read (before the watermark{when}): {_some(older)}")
        if present:
            lines.insert(1, f"  skipped (already ingested with the same tiling): {_some(present)}")
    lines[1:1] = done_by_lines(run, "ingested")
    for name in ("scenes", "tiles", "rejected", "runs"):
        # Counts from the Delta log's file statistics: no scan, no Spark job.
        lines.append(f"  {name:<9} {row_count(lake, name):>7} rows  {lake.path(name)}")
    for r in run.rejected:
        lines.append(
            f"  rejected: {r['scene_id'] or '-'} {r['href']}: [{r['error_class']}] {r['reason']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def plan(config: Config) -> Job:
        check_source(config)  # a mistyped path stops here (exit code 2), nothing written
        return Job(ingest, summary, settled=ingest_settled)

    return run_main(JOB, lambda: config_from_args(args), plan, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
