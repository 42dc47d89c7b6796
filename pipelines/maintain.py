"""Maintenance job: compaction, clustering and clean-up of the tables under one root.

Flow of :func:`maintain`: for every table of :data:`pipelines.datamodel.TABLES` that
exists under the root -> count its files on storage -> Delta: ``OPTIMIZE`` (small files
rewritten into larger ones, ``ZORDER BY`` the columns users filter by, see
:func:`cluster_columns`) then ``VACUUM`` with the table's ``deletedFileRetentionDuration``
set to the retention (files no version within the retention references: replaced by
OPTIMIZE or a rebuild, or written by a killed task and never committed); on local roots,
leftovers of killed Spark writes (``_temporary`` folders, which VACUUM leaves alone) older
than the retention are removed too -> count the files again -> record the run.

Run with ``python -m pipelines.maintain [--root DIR] [--retention-hours 168]
[--no-zorder] [--tables tiles,scenes]``; a scheduler runs it after the daily jobs, or weekly.

Decisions
---------
* **Rows never change.** OPTIMIZE and VACUUM are Delta's own commands: OPTIMIZE commits
  a rewrite of the same rows (``dataChange=false``), VACUUM only deletes files no
  retained version references. The test checks every key and value before and after.
* **Safe retention.** The default is Delta's own (7 days = 168 h): readers and writers
  that started before the VACUUM keep finding their files for that long. Shorter needs
  ``--force``: a running job could then lose files it is about to read or commit. The
  retention is stored as the table's ``delta.deletedFileRetentionDuration`` (Delta 4
  ignores ``VACUUM ... RETAIN`` other than 0), so it stays until changed.
* **Clustering.** Z-order on the first columns of each table's key that are not partition
  columns (a partition column cannot be z-ordered): ``scene_id, tile_row, tile_col`` for
  the pixel tables, ``region_set, region_id, ...`` for the analysis tables. Dates are the
  partition (``acq_month``) of ``tiles``, so a scene, a date range and a tile each prune
  files. ``--no-zorder`` only compacts (cheaper: files already large are left alone).
* **Parquet tables** have no log, so nothing tells a committed file from an orphan except
  Spark's staging folders; only those are removed. Delta is the format that can clean up
  after killed runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Sequence

from pyspark.sql import SparkSession

from pipelines.config import Config, load_config
from pipelines.datamodel import TABLES, Table
from pipelines.jobs import Job, job_parser, run_main
from pipelines.lakehouse import Lakehouse
from pipelines.runs import Run, phase
from udfs.errors import ConfigError

JOB = "maintain"
#: Delta's own default retention for VACUUM (``delta.deletedFileRetentionDuration``).
SAFE_RETENTION_HOURS = 168.0
RETENTION_PROPERTY = "delta.deletedFileRetentionDuration"
DEFAULT_RETENTION = f"interval {SAFE_RETENTION_HOURS:g} hours"
#: Columns z-ordered at most: more dilutes the locality of each.
MAX_CLUSTER_COLUMNS = 3


def cluster_columns(table: Table) -> list[str]:
    """Columns ``OPTIMIZE ... ZORDER BY`` uses: the key's first non-partition columns."""
    return [c for c in table.key if c not in table.partition_by][:MAX_CLUSTER_COLUMNS]


def data_files(path: str) -> tuple[int, int]:
    """Parquet files under a local table folder (log and staging folders excluded) and
    their total size in bytes: what storage holds, referenced or not."""
    n = size = 0
    for folder, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(("_delta_log", "_temporary"))]
        for f in files:
            if f.endswith(".parquet"):
                n += 1
                size += os.path.getsize(os.path.join(folder, f))
    return n, size


def stale_staging(path: str, retention_hours: float, now: float) -> list[str]:
    """Spark's ``_temporary`` folders under a local table older than the retention."""
    out = []
    for folder, dirs, _ in os.walk(path):
        for d in list(dirs):
            if d == "_temporary":
                full = os.path.join(folder, d)
                if now - os.path.getmtime(full) > retention_hours * 3600:
                    out.append(full)
                dirs.remove(d)
    return out


def maintain_table(
    spark: SparkSession, lake: Lakehouse, table: Table, retention_hours: float, zorder: bool
) -> dict[str, float]:
    """Compact, cluster and vacuum one existing table; files on storage before / after."""
    path = lake.path(table.name)
    local = lake.local_path(table.name) if lake.local else None
    before = data_files(local) if local else (-1, -1)
    t0 = time.perf_counter()
    if lake.format == "delta":
        cols = cluster_columns(table) if zorder else []
        order = f" ZORDER BY ({', '.join(cols)})" if cols else ""
        spark.sql(f"OPTIMIZE delta.`{path}`{order}").collect()
        # Delta 4 ignores VACUUM's RETAIN (other than 0): the retention is the table's
        # own property, so it is set there (a metadata commit) when it differs.
        want = f"interval {retention_hours:g} hours"
        rows = spark.sql(f"SHOW TBLPROPERTIES delta.`{path}`").collect()
        props: dict[str, str] = {r[0]: r[1] for r in rows}
        if props.get(RETENTION_PROPERTY, DEFAULT_RETENTION) != want:
            spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES "
                      f"('{RETENTION_PROPERTY}' = '{want}')")  # fmt: skip
        spark.sql(f"VACUUM delta.`{path}`").collect()
    if local:  # VACUUM leaves hidden folders alone: Spark's staging is cleaned here
        for folder in stale_staging(local, retention_hours, time.time()):
            shutil.rmtree(folder, ignore_errors=True)
    after = data_files(local) if local else (-1, -1)
    return {"files_before": before[0], "bytes_before": before[1], "files_after": after[0],
            "bytes_after": after[1], "seconds": time.perf_counter() - t0}  # fmt: skip


def maintain(
    spark: SparkSession,
    lake: Lakehouse,
    run: Run,
    tables: Sequence[str] | None = None,
    retention_hours: float = SAFE_RETENTION_HOURS,
    zorder: bool = True,
) -> dict[str, dict[str, float]]:
    """Maintain every existing table (or ``tables``); returns per-table file counts, sizes
    and seconds (local roots; -1 where storage cannot be listed)."""
    out = {}
    for name in tables or list(TABLES):
        if not lake.exists(name):
            continue
        with phase(f"maintain {name}"):
            out[name] = maintain_table(spark, lake, TABLES[name], retention_hours, zorder)
    run.seen = len(out)
    run.ingested = sorted(out)
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = job_parser("maintain", __doc__.split("\n")[0])
    p.add_argument("--tables", help="comma-separated table names (default: every table)")
    p.add_argument("--retention-hours", type=float, default=SAFE_RETENTION_HOURS,
                   help="VACUUM retention (default 168 = 7 days, Delta's own)")  # fmt: skip
    p.add_argument("--force", action="store_true", help="allow a retention under 168 hours")
    p.add_argument("--no-zorder", action="store_true", help="compact only, no clustering")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> list[str] | None:
    """The tables asked for; refuses unknown names and an unsafe retention without --force."""
    if args.retention_hours < 0:
        raise ConfigError(f"--retention-hours must be >= 0, got {args.retention_hours:g}")
    if args.retention_hours < SAFE_RETENTION_HOURS and not args.force:
        raise ConfigError(
            f"--retention-hours {args.retention_hours:g} is under Delta's safe "
            f"{SAFE_RETENTION_HOURS:g} h: a job running now could lose files it is about to "
            "read or commit. Stop every job on this root and add --force to go on."
        )
    if not args.tables:
        return None
    names = [t.strip() for t in args.tables.split(",") if t.strip()]
    unknown = sorted(set(names) - set(TABLES))
    if unknown:
        raise ConfigError(f"--tables: no table {', '.join(unknown)}; tables: {', '.join(TABLES)}")
    return names


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = [f"storage.root={args.root}"] if args.root else []
    return load_config(args.profile, [*overrides, *args.set])


def summary(run: Run, lake: Lakehouse, report: dict[str, dict[str, float]]) -> str:
    lines = [f"maintain run {run.run_id}: {len(report)} table(s) under {lake.root}"]
    for name, r in report.items():
        lines.append(
            f"  {name:<17} files {r['files_before']:>6} -> {r['files_after']:<6} "
            f"MB {r['bytes_before'] / 1e6:>8.1f} -> {r['bytes_after'] / 1e6:<8.1f} "
            f"{r['seconds']:.1f} s"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def configure() -> Config:
        config = config_from_args(args)
        args.table_list = check_args(args)  # a bad flag is a usage error: before Spark
        return config

    report: dict[str, dict[str, float]] = {}

    def work(spark: SparkSession, lake: Lakehouse, run: Run) -> None:
        report.update(maintain(spark, lake, run, args.table_list, args.retention_hours,
                               not args.no_zorder))  # fmt: skip

    def plan(config: Config) -> Job:
        return Job(
            work, lambda run, lake: summary(run, lake, report), source=lambda lake: lake.root
        )

    return run_main(JOB, configure, plan, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
