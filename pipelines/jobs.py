"""One entry for every job: configuration -> Spark session -> run record -> work -> summary.

Each job module's ``main(argv)`` parses its flags and hands :func:`run_main` two things:
how to build its configuration, and a ``plan`` that turns the configuration into a
:class:`Job` (what to run, and how to report it). :func:`run_main` then

1. builds the configuration (a :class:`udfs.errors.ConfigError` prints
   ``config error: ...`` and returns 2, before Spark starts);
2. calls the plan, still before Spark starts: the checks of :mod:`pipelines.preflight`
   (a source that does not exist, a root without the tables the job needs, a model that
   does not fit the data) and classify's model; an error of
   :data:`pipelines.runs.REFUSED` prints ``<job>: ...`` and returns 2, nothing written;
   when the job's ``settled`` check finds nothing to do (local Delta tables), the run is
   recorded with delta-rs and its summary printed without starting Spark at all;
3. starts the Spark session (quiet unless ``verbose``, see :mod:`pipelines.session`) and
   the lakehouse;
4. runs the job's upstream stages, if any (classify: ingest and features), each recorded
   as its own run; the plan may refuse here too, before any stage (exit code 2);
5. runs the job's work under a new :class:`pipelines.runs.Run`, visible in ``runs`` from
   its start (status ``running``; runs of this host whose process is gone are marked
   ``killed`` first) and recorded there (and its rejected inputs in ``rejected``) whatever
   happens (:func:`pipelines.runs.run_stage`);
6. prints the job's summary when the run succeeded;
7. runs the job's downstream stages, if any (classify: the analysis tables), each recorded
   as its own run with its summary printed, and returns the exit code: 0 ok, 1 bad input in
   strict mode or a failed run, 2 a refused configuration, model or input.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipelines.config import Config
from pipelines.lakehouse import Lakehouse
from pipelines.preflight import driver_lake, spark_free
from pipelines.runs import REFUSED, Run, Work, record_run_arrow, run_stage
from udfs.errors import ConfigError, PipelineError


def job_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The flags every job has: ``--profile``, ``--root``, ``--verbose`` and ``--set``;
    each job adds its own."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--profile", default="local", help="conf/<profile>.yaml or a YAML path")
    p.add_argument("--root", help="table root folder (storage.root)")
    p.add_argument(
        "--verbose", "-v", action="store_true", help="phase timings, Spark warnings, Ivy output"
    )
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config key (repeatable)")  # fmt: skip
    return p


@dataclass(frozen=True)
class Stage:
    """A recorded step before or after the job's own work: ``work`` runs as job ``name``;
    ``summary`` (``(run, lake) -> str``), when given, is printed once it succeeded."""

    name: str
    work: Work
    source: str = ""
    summary: Callable[[Run, Lakehouse], str] | None = None


@dataclass(frozen=True)
class Job:
    """What a job does once its configuration is valid (planned before Spark starts).

    Attributes
    ----------
    work : callable
        ``(spark, lake, run)``: the job itself, recorded as one run.
    summary : callable
        ``(run, lake) -> str``: what is printed when the run succeeded.
    source : callable, optional
        ``lake -> str``: the run's ``source`` (what it read); None: the default of
        :class:`pipelines.runs.Run`.
    upstream : callable, optional
        ``lake -> stages`` to run first, in order; each is recorded as its own run and a
        failing one stops the job with its exit code. It may raise an error of
        :data:`pipelines.runs.REFUSED` to refuse the job before anything is written.
    refused : tuple of exception types
        Errors of ``work`` that mean exit code 2 rather than 1.
    downstream : callable, optional
        ``lake -> stages`` to run after the job's work succeeded, in order; each is
        recorded as its own run and a failing one makes the job's exit code.
    settled : callable, optional
        ``(run, lake) -> bool``: True when there is nothing to do, decided from the small
        tables' metadata only (:mod:`pipelines.preflight`), with the run's accounting
        filled. Tried before Spark starts on local Delta tables (with ``summary`` it must
        then need no Spark either), for jobs without upstream or downstream stages.
    """

    work: Work
    summary: Callable[[Run, Lakehouse], str]
    source: Callable[[Lakehouse], str] | None = None
    upstream: Callable[[Lakehouse], Sequence[Stage]] | None = None
    refused: tuple[type[PipelineError], ...] = REFUSED
    downstream: Callable[[Lakehouse], Sequence[Stage]] | None = None
    settled: Callable[[Run, Lakehouse], bool] | None = None


def run_main(
    name: str,
    configure: Callable[[], Config],
    plan: Callable[[Config], Job],
    verbose: bool = False,
) -> int:
    """Run job ``name`` from start to summary (see the module docstring); returns the exit
    code: 0 did what was asked (also: nothing new), 1 an input rejected with ``--strict``
    or a failed run, 2 a usage or configuration problem (nothing written).

    ``verbose`` (the jobs' ``--verbose``): phase timings, Spark's warnings and dependency
    resolution on the console; without it only decisions, progress and the summary.
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
    )
    if not verbose:
        # py4j logs every connection it opens and closes at INFO.
        logging.getLogger("py4j").setLevel(logging.WARNING)
    try:
        config = configure()
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    try:
        job = plan(config)
    except REFUSED as e:
        print(f"{name}: {e}", file=sys.stderr)
        return 2
    if job.settled and not (job.upstream or job.downstream) and spark_free(config):
        lake = driver_lake(config)
        run = Run(config, job=name, source=job.source(lake) if job.source else "")
        if job.settled(run, lake):
            record_run_arrow(lake, run, "succeeded")
            print(job.summary(run, lake))
            return 0
    from pipelines.session import build_session

    spark = build_session(config, verbose=verbose)
    lake = Lakehouse(spark, config.storage)
    try:
        stages = list(job.upstream(lake)) if job.upstream else []
    except REFUSED as e:
        print(f"{name}: {e}", file=sys.stderr)
        return 2
    for stage in stages:
        code, _ = run_stage(spark, lake, stage.name, config, stage.work, stage.source)
        if code:
            return code
    source = job.source(lake) if job.source else ""
    code, run = run_stage(spark, lake, name, config, job.work, source, job.refused)
    if code:
        return code
    print(job.summary(run, lake))
    for stage in job.downstream(lake) if job.downstream else []:
        code, stage_run = run_stage(spark, lake, stage.name, config, stage.work, stage.source)
        if code:
            return code
        if stage.summary:
            print(stage.summary(stage_run, lake))
    return 0
