"""What every job run records: its id, its inputs' fate, ``runs`` and ``rejected`` rows.

A run is visible from its start: :func:`start_run` appends its ``runs`` row with status
``running`` (and the driver's host name and process id), :func:`record_run` replaces that
row with the final one (``succeeded`` / ``failed`` and the counts). A run killed outright
(SIGKILL, a lost machine) stays ``running``; the next run started on the same host finds
its process gone and marks it ``killed`` (:func:`mark_killed`). Runs of other hosts cannot
be checked from here and stay ``running`` until a run on their host looks.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from pipelines.accumulators import ListParam  # noqa: F401  (re-exported)
from pipelines.config import Config
from pipelines.datamodel import REJECTED, RUNS
from pipelines.lakehouse import Lakehouse, replace_held
from udfs.errors import ConfigError, PipelineError, SceneError
from udfs.models import ModelError
from udfs.reader import scene_error_row

log = logging.getLogger("eo")


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Log how long a phase of the job took (INFO)."""
    t0 = time.perf_counter()
    yield
    log.info("%s took %.2f s", name, time.perf_counter() - t0)


@dataclass
class Run:
    """One job run: its id, config and what happened to every input."""

    config: Config
    job: str = "ingest"
    source: str = ""
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    started: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    seen: int = 0
    ingested: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    tiles_written: int = 0
    #: inputs another run wrote first (concurrent runs) -> that run's id
    done_by: dict[str, str] = field(default_factory=dict)
    #: inputs of ``skipped`` left unread as older than the incremental window
    #: (``ingest.since``), and the window's start in words (:mod:`pipelines.incremental`)
    before_watermark: list[str] = field(default_factory=list)
    watermark: str = ""
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)

    def __post_init__(self) -> None:
        if not self.source and self.job == "ingest":
            self.source = self.config.ingest.source

    def reject(self, err: SceneError) -> None:
        self.rejected.append(scene_error_row(err))


def done_by_lines(run: Run, verb: str) -> list[str]:
    """Summary lines for the inputs a concurrent run wrote first (``run.done_by``)."""
    by: dict[str, list[str]] = {}
    for item, other in sorted(run.done_by.items()):
        by.setdefault(other or "another run", []).append(item)
    lines = []
    for other, items in by.items():
        more = f" and {len(items) - 3} more" if len(items) > 3 else ""
        lines.append(f"  {verb} meanwhile by run {other}: {', '.join(items[:3])}{more}")
    return lines


def rejected_rows(run: Run) -> list[dict[str, Any]]:
    """The ``rejected`` rows of ``run``'s rejected inputs."""
    now = datetime.now(timezone.utc)
    return [{**r, "run_id": run.run_id, "job": run.job, "rejected_at": now} for r in run.rejected]


def rejected_frame(spark: SparkSession, run: Run) -> DataFrame:
    return spark.createDataFrame(rejected_rows(run), REJECTED)


def run_row(run: Run, status: str) -> dict[str, Any]:
    """The ``runs`` row of ``run`` ended now with ``status`` (``running``: started now)."""
    return {
        "run_id": run.run_id,
        "job": run.job,
        "config_digest": run.config.digest(),
        "source": run.source,
        "inputs_seen": run.seen,
        "ingested": len(run.ingested),
        "skipped": len(run.skipped),
        "rejected": len(run.rejected),
        "tiles_written": run.tiles_written,
        "status": status,
        "started": run.started,
        "ended": run.started if status == "running" else datetime.now(timezone.utc),
        "host": run.host,
        "pid": run.pid,
    }


def runs_frame(spark: SparkSession, run: Run, status: str) -> DataFrame:
    return spark.createDataFrame([run_row(run, status)], RUNS)


def start_run(spark: SparkSession | None, lake: Lakehouse, run: Run) -> None:
    """Mark dead runs of this host ``killed``, then append ``run``'s ``running`` row.

    Parquet tables cannot replace a row: there only the final row is written.
    """
    if lake.format != "delta":
        return
    mark_killed(spark, lake)
    if lake.arrow_io:  # delta-rs: on S3 a conditional PUT, safe for concurrent runs
        append_run_row(lake, run, "running")
    else:
        assert spark is not None
        lake.upsert("runs", runs_frame(spark, run, "running"))


def record_run(spark: SparkSession, lake: Lakehouse, run: Run, status: str) -> None:
    """Append the run's rejected inputs; replace its ``runs`` row with the final one
    (also when the run failed).

    Delta tables on a local root or S3: the ``runs`` row is written with delta-rs
    (:func:`append_run_row`; on S3 its commit is a conditional PUT, which Spark's single-driver log
    store is not); a Spark append of one row costs a Spark job (~1-3 s on a fresh session) per run
    and stage. Rejected rows go through Spark: their key columns (``href``, ``scene_id``) may be
    null, which the Arrow writer's file statistics do not handle.
    """
    if run.rejected:
        lake.append("rejected", rejected_frame(spark, run))
    if lake.arrow_io and lake.format == "delta":
        append_run_row(lake, run, status)
        return
    lake.upsert("runs", runs_frame(spark, run, status))


def record_run_arrow(lake: Lakehouse, run: Run, status: str) -> None:
    """The ``runs`` row of ``run``, appended to a local Delta table with delta-rs (no
    Spark): what a run that found nothing to do records before any SparkSession exists.
    ``run.rejected`` must be empty (see :func:`record_run`)."""
    if run.rejected:
        raise ValueError("a run with rejected inputs is recorded through Spark (record_run)")
    mark_killed(None, lake)
    append_run_row(lake, run, status)


def append_run_row(lake: Lakehouse, run: Run, status: str) -> None:
    """Write the ``runs`` row of ``run`` to a Delta table (local or S3) with delta-rs, replacing
    the run's earlier row (``running``) in the same commit."""
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema

    table = pa.Table.from_pylist([run_row(run, status)], schema=to_arrow_schema(RUNS))
    lake.append_arrow(
        "runs", table, run.config.storage.zstd_level, owner=run.run_id, decide=replace_held
    )


# ----------------------------------------------------------------------------- liveness


def process_alive(pid: int, started: datetime) -> bool:
    """Whether process ``pid`` of this host still runs and may be the one that started at
    ``started`` (a process started later reuses the id; a zombie is dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
    except (OSError, StopIteration, IndexError, ValueError):
        return True  # no /proc: the id exists, assume it is the run
    if fields[0] == "Z":
        return False
    began = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return began <= started.timestamp() + 5  # /proc's clock ticks vs the wall clock


def run_alive(row: dict[str, Any]) -> bool:
    """Whether the run of a ``runs`` row may still be running: status ``running`` and, on
    this host, its process alive. A run of another host cannot be checked: True."""
    if row.get("status") != "running" or row.get("pid") is None:
        return False
    if row.get("host") != socket.gethostname():
        return True
    started = row["started"]
    if started.tzinfo is None:
        started = started.replace(tzinfo=timezone.utc)
    return process_alive(int(row["pid"]), started)


def running_rows(spark: SparkSession | None, lake: Lakehouse) -> list[dict[str, Any]]:
    """The ``runs`` rows with status ``running``."""
    if lake.arrow_io and lake.format == "delta":
        import pyarrow.dataset as ds

        t = lake.read_arrow("runs", RUNS.fieldNames(), ds.field("status") == "running")
        return t.to_pylist()
    if spark is None or not lake.exists("runs"):
        return []
    return [r.asDict() for r in lake.read("runs").filter("status = 'running'").collect()]


def live_runs(spark: SparkSession | None, lake: Lakehouse, run_ids: set[str]) -> set[str]:
    """Those of ``run_ids`` that may still be running (:func:`run_alive`)."""
    return {
        r["run_id"] for r in running_rows(spark, lake) if r["run_id"] in run_ids and run_alive(r)
    }


def mark_killed(spark: SparkSession | None, lake: Lakehouse) -> list[str]:
    """Replace the ``running`` rows of this host's dead processes with ``killed`` ones
    (``ended``: now, when it was found); returns their run ids.

    What a killed run wrote is never part of a table: its files are committed at the end of
    each stage, in one transaction per table; files it wrote and did not commit are left
    for ``VACUUM`` (``python -m pipelines.maintain``).
    """
    dead = [r for r in running_rows(spark, lake) if not run_alive(r)]
    if not dead:
        return []
    now = datetime.now(timezone.utc)
    rows = [{**r, "status": "killed", "ended": now} for r in dead]
    for r in rows:
        log.warning(
            "run %s (%s, pid %s on %s) was killed", r["run_id"], r["job"], r["pid"], r["host"]
        )
    if lake.arrow_io and lake.format == "delta":
        import pyarrow as pa
        from pyspark.sql.pandas.types import to_arrow_schema

        table = pa.Table.from_pylist(rows, schema=to_arrow_schema(RUNS))
        lake.append_arrow("runs", table, decide=replace_held)
    elif spark is not None:
        lake.upsert("runs", spark.createDataFrame(rows, RUNS))
    return [r["run_id"] for r in rows]


#: Errors that refuse a run (exit code 2) rather than fail it (1): a configuration or a
#: model that cannot be used. A job may name others (training: labels).
REFUSED: tuple[type[PipelineError], ...] = (ConfigError, ModelError)

#: What a job or stage does: fills the run's accounting, writes its tables.
Work = Callable[[SparkSession, Lakehouse, Run], Any]


def run_stage(
    spark: SparkSession,
    lake: Lakehouse,
    job: str,
    config: Config,
    work: Work,
    source: str = "",
    refused: tuple[type[PipelineError], ...] = REFUSED,
) -> tuple[int, Run]:
    """Run ``work`` as job ``job`` and record the run whatever happens.

    Returns the exit code (0 ok, 1 bad input in strict mode or a failed run, 2 an error of
    ``refused``: a refused configuration or model) and the run. Programming errors are not
    caught.
    """
    run = Run(config, job=job, source=source)
    status, code = "failed", 1
    start_run(spark, lake, run)
    try:
        work(spark, lake, run)
        status, code = "succeeded", 0
    except PipelineError as e:
        print(f"{job} failed: {e}", file=sys.stderr)
        code = 2 if isinstance(e, refused) else 1
    finally:
        record_run(spark, lake, run, status)
    return code, run
