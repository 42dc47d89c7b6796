"""What every job run records: its id, its inputs' fate, ``runs`` and ``rejected`` rows."""

from __future__ import annotations

import logging
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from pyspark.accumulators import AccumulatorParam
from pyspark.sql import DataFrame, SparkSession

from pipelines.config import Config
from pipelines.datamodel import REJECTED, RUNS
from pipelines.lakehouse import Lakehouse
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


class ListParam(AccumulatorParam):
    """Accumulator of lists: executors report unreadable blocks to the driver."""

    def zero(self, value: list) -> list:
        return []

    def addInPlace(self, a: list, b: list) -> list:  # noqa: N802  (pyspark's name)
        return a + b


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

    def __post_init__(self) -> None:
        if not self.source and self.job == "ingest":
            self.source = self.config.ingest.source

    def reject(self, err: SceneError) -> None:
        self.rejected.append(scene_error_row(err))


def rejected_rows(run: Run) -> list[dict[str, Any]]:
    """The ``rejected`` rows of ``run``'s rejected inputs."""
    now = datetime.now(timezone.utc)
    return [{**r, "run_id": run.run_id, "job": run.job, "rejected_at": now} for r in run.rejected]


def rejected_frame(spark: SparkSession, run: Run) -> DataFrame:
    return spark.createDataFrame(rejected_rows(run), REJECTED)


def run_row(run: Run, status: str) -> dict[str, Any]:
    """The ``runs`` row of ``run`` ended now with ``status``."""
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
        "ended": datetime.now(timezone.utc),
    }


def runs_frame(spark: SparkSession, run: Run, status: str) -> DataFrame:
    return spark.createDataFrame([run_row(run, status)], RUNS)


def record_run(spark: SparkSession, lake: Lakehouse, run: Run, status: str) -> None:
    """Append the run's rejected inputs and its ``runs`` row (also when the run failed).

    Local Delta tables: the ``runs`` row is written with delta-rs (:func:`append_run_row`);
    a Spark append of one row costs a Spark job (~1-3 s on a fresh session) per run and
    stage. Rejected rows go through Spark: their key columns (``href``, ``scene_id``) may be
    null, which the Arrow writer's file statistics do not handle.
    """
    if run.rejected:
        lake.append("rejected", rejected_frame(spark, run))
    if lake.local and lake.format == "delta":
        append_run_row(lake, run, status)
        return
    lake.append("runs", runs_frame(spark, run, status))


def record_run_arrow(lake: Lakehouse, run: Run, status: str) -> None:
    """The ``runs`` row of ``run``, appended to a local Delta table with delta-rs (no
    Spark): what a run that found nothing to do records before any SparkSession exists.
    ``run.rejected`` must be empty (see :func:`record_run`)."""
    if run.rejected:
        raise ValueError("a run with rejected inputs is recorded through Spark (record_run)")
    append_run_row(lake, run, status)


def append_run_row(lake: Lakehouse, run: Run, status: str) -> None:
    """Append the ``runs`` row of ``run`` to a local Delta table with delta-rs."""
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema

    table = pa.Table.from_pylist([run_row(run, status)], schema=to_arrow_schema(RUNS))
    lake.append_arrow("runs", table, run.config.storage.zstd_level)


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
    try:
        work(spark, lake, run)
        status, code = "succeeded", 0
    except PipelineError as e:
        print(f"{job} failed: {e}", file=sys.stderr)
        code = 2 if isinstance(e, refused) else 1
    finally:
        record_run(spark, lake, run, status)
    return code, run
