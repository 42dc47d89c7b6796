"""The daily eo-lakehouse chain for Apache Airflow 3: ingest -> features -> classify -> aggregate.

One ``BashOperator`` per job, each running ``spark-submit <app>/pipelines/<job>.py`` with the
job's own options, in order. Every job is incremental (it skips the scenes it already did),
so a day that failed is caught up by the next run, and ``catchup`` is off: a run does not
stand for a date, it processes what is new in the source.

Where things come from, per run (first wins):

1. the run's parameters (Trigger DAG w/ config: ``profile``, ``root``, ``source``,
   ``regions``, ``model``);
2. Airflow Variables (``eo_lakehouse_profile``, ``eo_lakehouse_root``,
   ``eo_lakehouse_source``, ``eo_lakehouse_regions``, ``eo_lakehouse_model``); set them in
   the UI, with ``airflow variables set``, or as ``AIRFLOW_VAR_EO_LAKEHOUSE_ROOT=...`` in
   the environment;
3. the profile (``conf/<profile>.yaml``; an option left empty is not passed, so the
   profile's ``storage.root``, ``ingest.source``, ... apply). The profile defaults to
   ``cluster``.

How Spark is reached, from Variables only (they are the deployment's, not a run's):
``eo_lakehouse_app_dir`` (the folder holding ``pipelines/`` and ``conf/`` on the Airflow
worker; default ``/app``, the container image's), ``eo_lakehouse_spark_submit`` (default
``spark-submit`` on ``PATH``) and ``eo_lakehouse_spark_submit_options`` (inserted as they
are, for example ``--master yarn --py-files /app/code.zip``; default none: the
``spark-defaults.conf`` of the Spark installation decides). Credentials are never
parameters: Spark reads them from the worker's environment or the cloud's credential
chain.

Every value from a parameter or a Variable is shell-quoted (the ``sh`` filter), except
``eo_lakehouse_spark_submit_options``, which holds several options by design.
"""

from __future__ import annotations

import shlex
from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Param

DAG_ID = "eo_lakehouse_daily"
#: The jobs in the order they run; each is ``pipelines/<name>.py``.
JOBS = ("ingest", "features", "classify", "aggregate")
#: Options each job takes from a parameter / Variable: job -> ((flag, setting), ...).
OPTIONS = {
    "ingest": (("--root", "root"), ("--source", "source")),
    "features": (("--root", "root"),),
    "classify": (("--root", "root"), ("--model", "model")),
    # aggregate.model (latest | a model id | all) stays the profile's: `model` is a bundle.
    "aggregate": (("--root", "root"), ("--regions", "regions")),
}
#: Options that do not change: the ingest task has just run, so classify must not ingest
#: again (it would with `--ingest always`, or `auto` on a root without tiles).
FIXED = {"classify": ("--ingest", "never")}


def setting(name: str, default: str = "") -> str:
    """Jinja expression: the run's parameter ``name``, else the Airflow Variable
    ``eo_lakehouse_<name>``, else ``default``."""
    return f"(params.{name} or var.value.get('eo_lakehouse_{name}', '{default}'))"


def option(flag: str, name: str) -> str:
    """``flag <value>`` when the setting ``name`` is not empty; nothing otherwise."""
    value = setting(name)
    return f"{{% if {value} %}} {flag} {{{{ {value} | sh }}}}{{% endif %}}"


def command(job: str) -> str:
    """The templated ``spark-submit`` command line of ``job``."""
    app = "var.value.get('eo_lakehouse_app_dir', '/app')"
    return (
        "{{ var.value.get('eo_lakehouse_spark_submit', 'spark-submit') | sh }}"
        "{% set options = var.value.get('eo_lakehouse_spark_submit_options', '') %}"
        "{% if options %} {{ options }}{% endif %}"
        f" {{{{ ({app} ~ '/pipelines/{job}.py') | sh }}}}"
        f" --profile {{{{ {setting('profile', 'cluster')} | sh }}}}"
        + "".join(option(flag, name) for flag, name in OPTIONS[job])
        + "".join(f" {shlex.quote(word)}" for word in FIXED.get(job, ()))
        # The run in Spark's UI and event log: eo-lakehouse-ingest-scheduled__2026-...
        + f" --set {{{{ ('spark.app_name=eo-lakehouse-{job}-' ~ run_id) | sh }}}}"
    )


with DAG(
    dag_id=DAG_ID,
    description="Sentinel-2 / Landsat scenes -> tiles -> features -> land-cover maps -> "
    "analysis tables, once a day",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    # Each job picks up what is new, so missed days need no runs of their own.
    catchup=False,
    # Two runs must never write the same tables at once.
    max_active_runs=1,
    max_active_tasks=1,
    # A run stuck for a day would block the next ones (max_active_runs=1).
    dagrun_timeout=timedelta(hours=23),
    default_args={
        "owner": "eo-lakehouse",
        "retries": 2,
        "retry_delay": timedelta(minutes=15),
        "execution_timeout": timedelta(hours=8),
    },
    params={
        "profile": Param(
            "",
            type="string",
            description="conf/ profile name or YAML path; "
            "empty: Variable eo_lakehouse_profile, else cluster",
        ),
        "root": Param(
            "",
            type="string",
            description="table root (storage.root); "
            "empty: Variable eo_lakehouse_root, else the profile's",
        ),
        "source": Param(
            "",
            type="string",
            description="scene folder(s) or STAC JSON "
            "(ingest.source); empty: Variable eo_lakehouse_source, else the profile's",
        ),
        "regions": Param(
            "",
            type="string",
            description="regions file (aggregate.regions); "
            "empty: Variable eo_lakehouse_regions, else the profile's",
        ),
        "model": Param(
            "",
            type="string",
            description="model bundle or latest "
            "(classify.model); empty: Variable eo_lakehouse_model, else the profile's",
        ),
    },  # fmt: skip
    user_defined_filters={"sh": shlex.quote},
    tags=["eo-lakehouse", "spark"],
    doc_md=__doc__,
) as dag:
    previous = None
    for job in JOBS:
        task = BashOperator(task_id=job, bash_command=command(job))
        if previous is not None:
            previous >> task
        previous = task
