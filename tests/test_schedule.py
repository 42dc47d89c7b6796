"""The daily schedule in ``deploy/``, checked by the tools that would run it.

The Airflow DAG is loaded by Airflow itself (its ``DagBag``) in a virtual environment of its
own: Airflow is not a dependency of the project, and its pins must not move the project's.
The Kubernetes manifest is checked against the repository (the job script, its arguments
through the job's own parser and configuration loader, the profile, the Spark version, the
image docker/ builds) and against the Spark operator's API models (``kubeflow-spark-api``,
generated from the operator's Go types).

Each tool's environment is created on first use under ``~/.cache/eo-lakehouse/`` (or
``$EO_TOOLS_CACHE``), named after a hash of what it installs, and reused after that: the
first run installs Airflow from PyPI (about two minutes here), later runs take seconds. The
tests skip, saying so, only when PyPI cannot be reached.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyspark
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DAG_FOLDER = REPO / "deploy" / "airflow"
AIRFLOW_REQUIREMENTS = DAG_FOLDER / "requirements.txt"
MANIFEST = REPO / "deploy" / "k8s" / "scheduled-spark-application.yaml"
DOCKERFILE = REPO / "docker" / "Dockerfile"
#: The Spark operator's API as Python models, generated from its Go types (PyPI).
OPERATOR_API = ["kubeflow-spark-api==2.4.0"]
CACHE = Path(
    os.environ.get("EO_TOOLS_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "eo-lakehouse"
)
DAG_ID = "eo_lakehouse_daily"
JOBS = ["ingest", "features", "classify", "aggregate"]


# ----------------------------------------------------------------------------- tool venvs


def requirement_lines(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def pypi_unreachable() -> str | None:
    """Why pip cannot reach its index (PyPI, or the one pip is configured with), or None."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", "pip", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode == 0:
        return None
    return (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["pip index failed"]


def tool_python(name: str, requirements: list[str]) -> Path:
    """The interpreter of a virtual environment holding ``requirements``, created once.

    The folder is ``CACHE/<name>-<hash>``, the hash over the requirements and this Python's
    version, so a changed requirement makes a new one. A file lock keeps two test processes
    from building it at once; ``.installed`` is written last, so a broken install is redone.
    """
    key = hashlib.sha256(
        "\n".join([f"{sys.version_info[0]}.{sys.version_info[1]}", *requirements]).encode()
    ).hexdigest()[:12]
    venv = CACHE / f"{name}-{key}"
    python = venv / "bin" / "python"
    done = venv / ".installed"
    if done.is_file():
        return python
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{name}-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.is_file():  # built by another process while this one waited
            return python
        shutil.rmtree(venv, ignore_errors=True)
        base = getattr(sys, "_base_executable", sys.executable)
        started = time.monotonic()
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
        proc = subprocess.run(
            [str(python), "-m", "pip", "install", "--disable-pip-version-check", *requirements],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if proc.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            why = pypi_unreachable()
            if why is not None:
                pytest.skip(f"PyPI unreachable, cannot install {requirements}: {why}")
            pytest.fail(f"pip install {requirements} failed:\n{proc.stdout[-3000:]}\n"
                        f"{proc.stderr[-3000:]}")  # fmt: skip
        done.write_text(f"{requirements}: installed in {time.monotonic() - started:.0f} s\n")
    return python


# ----------------------------------------------------------------------------- Airflow

#: Runs in Airflow's environment: load the DAG folder with DagBag, describe the DAG, and
#: render every task's command for each scenario (Variables from AIRFLOW_VAR_* as Airflow's
#: environment-variable secrets backend reads them; params merged and validated by the
#: task runner's own process_params).
PROBE = r"""
import json
import os
import sys

from airflow.dag_processing.dagbag import DagBag
from airflow.sdk.definitions.param import process_params
from airflow.sdk.execution_time.context import VariableAccessor

folder, dag_id, scenarios_file, out_file = sys.argv[1:5]
bag = DagBag(dag_folder=folder)
report = {
    "import_errors": {str(k): str(v) for k, v in bag.import_errors.items()},
    "dag_ids": sorted(bag.dag_ids),
}
dag = bag.dags.get(dag_id)
if dag is not None:
    report["dag"] = {
        "schedule": str(dag.schedule),
        "cron": dag.timetable.expression,
        "timezone": str(dag.timetable.timezone),
        "timetable": type(dag.timetable).__name__,
        "catchup": dag.catchup,
        "max_active_runs": dag.max_active_runs,
        "max_active_tasks": dag.max_active_tasks,
        "dagrun_timeout_s": dag.dagrun_timeout.total_seconds() if dag.dagrun_timeout else None,
        "params": sorted(dag.params.keys()),
    }
    report["order"] = [t.task_id for t in dag.topological_sort()]
    report["tasks"] = {
        t.task_id: {
            "operator": type(t).__name__,
            "upstream": sorted(t.upstream_task_ids),
            "downstream": sorted(t.downstream_task_ids),
            "retries": t.retries,
            "retry_delay_s": t.retry_delay.total_seconds(),
        }
        for t in dag.tasks
    }
    templates = {t.task_id: t.bash_command for t in dag.tasks}
    env = dag.get_template_env()
    rendered = {}
    for name, scenario in json.load(open(scenarios_file)).items():
        for key in [k for k in os.environ if k.startswith("AIRFLOW_VAR_")]:
            del os.environ[key]
        for key, value in scenario["variables"].items():
            os.environ["AIRFLOW_VAR_" + key.upper()] = value
        rendered[name] = {}
        for t in dag.tasks:
            t.bash_command = templates[t.task_id]
            context = {
                "params": process_params(dag, t, scenario["conf"], suppress_exception=False),
                "var": {"json": VariableAccessor(True), "value": VariableAccessor(False)},
                "run_id": "scheduled__2026-12-01T00:00:00+00:00",
            }
            t.render_template_fields(context, jinja_env=env)
            rendered[name][t.task_id] = t.bash_command
    report["rendered"] = rendered
json.dump(report, open(out_file, "w"))
"""

#: A deployment's Variables, with a root that only survives shell quoting intact.
VARIABLES = {
    "eo_lakehouse_profile": "local",
    "eo_lakehouse_root": "/srv/eo lake; touch /tmp/pwned",
    "eo_lakehouse_source": "/srv/scenes,/srv/more scenes",
    "eo_lakehouse_regions": "/srv/regions.geojson",
    "eo_lakehouse_model": "/srv/models/landcover-1",
    "eo_lakehouse_app_dir": str(REPO),
    "eo_lakehouse_spark_submit": "/opt/spark/bin/spark-submit",
    "eo_lakehouse_spark_submit_options": "--master yarn --deploy-mode client --py-files code.zip",
}
SCENARIOS = {
    "variables": {"variables": VARIABLES, "conf": {}},
    # Nothing set: the profile decides everything but the app folder (the image's /app).
    "defaults": {"variables": {}, "conf": {}},
    # A run triggered with parameters: they win over the Variables.
    "params": {
        "variables": VARIABLES,
        "conf": {"profile": "cluster", "root": "s3a://bucket/run", "source": "/srv/today"},
    },
}


@pytest.fixture(scope="module")
def airflow_python() -> Path:
    started = time.monotonic()
    python = tool_python("airflow", requirement_lines(AIRFLOW_REQUIREMENTS))
    print(f"Airflow environment {python.parent.parent} ready in {time.monotonic() - started:.1f} s")
    return python


@pytest.fixture(scope="module")
def dag_report(airflow_python, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("airflow")
    (work / "probe.py").write_text(PROBE)
    (work / "scenarios.json").write_text(json.dumps(SCENARIOS))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "PYTHON", "VIRTUAL_ENV", "PYSPARK", "SPARK"))
    }
    env.update(AIRFLOW_HOME=str(work / "home"), AIRFLOW__CORE__LOAD_EXAMPLES="False")
    proc = subprocess.run(
        [str(airflow_python), str(work / "probe.py"), str(DAG_FOLDER), DAG_ID,
         str(work / "scenarios.json"), str(work / "report.json")],
        env=env, cwd=work, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((work / "report.json").read_text())


def job_call(command: str) -> tuple[str, list[str], str, list[str]]:
    """``spark-submit [options] <script.py> [args]`` -> (spark-submit, options, script, args)."""
    argv = shlex.split(command)
    script = next(i for i, word in enumerate(argv) if word.endswith(".py"))
    return argv[0], argv[1:script], argv[script], argv[script + 1 :]


def parsed_job(job: str, args: list[str]):
    """The job's own parser and configuration loader on ``args``: (namespace, Config)."""
    module = importlib.import_module(f"pipelines.{job}")
    try:
        ns = module.parse_args(args)
    except SystemExit as e:
        pytest.fail(f"pipelines/{job}.py refuses its arguments {args} (exit {e.code})")
    return ns, module.config_from_args(ns)


def test_airflow_loads_the_dag_folder_without_import_errors(dag_report):
    assert dag_report["import_errors"] == {}
    assert dag_report["dag_ids"] == [DAG_ID]


def test_dag_runs_daily_one_run_at_a_time_without_catchup(dag_report):
    dag = dag_report["dag"]
    assert dag["schedule"] == "@daily"
    assert (dag["cron"], dag["timezone"]) == ("0 0 * * *", "UTC")  # midnight, every day
    assert dag["catchup"] is False
    assert dag["max_active_runs"] == 1
    assert dag["dagrun_timeout_s"] is not None and dag["dagrun_timeout_s"] < 24 * 3600
    assert {"profile", "root", "source"} <= set(dag["params"])


def test_dag_runs_one_task_per_job_in_order_with_retries(dag_report):
    assert dag_report["order"] == JOBS
    tasks = dag_report["tasks"]
    assert sorted(tasks) == sorted(JOBS)
    for i, job in enumerate(JOBS):
        task = tasks[job]
        assert task["operator"] == "BashOperator"
        assert task["upstream"] == JOBS[max(i - 1, 0) : i]
        assert task["downstream"] == JOBS[i + 1 : i + 2]
        assert task["retries"] >= 1 and task["retry_delay_s"] >= 60, (job, task)


def test_rendered_commands_run_each_job_with_arguments_its_parser_accepts(dag_report):
    """With the deployment's Variables set: the job script that exists, spark-submit's
    options as given, and arguments the job's own parser and config loader accept, carrying
    the values intact (the root holds a space and a ``;``)."""
    from pipelines.config import profile_path

    commands = dag_report["rendered"]["variables"]
    assert sorted(commands) == sorted(JOBS)
    for job, command in commands.items():
        submit, options, script, args = job_call(command)
        assert submit == VARIABLES["eo_lakehouse_spark_submit"], command
        assert options == shlex.split(VARIABLES["eo_lakehouse_spark_submit_options"]), command
        assert Path(script) == REPO / "pipelines" / f"{job}.py" and Path(script).is_file()
        ns, config = parsed_job(job, args)
        assert profile_path(ns.profile) == REPO / "conf" / "local.yaml"
        assert config.storage.root == VARIABLES["eo_lakehouse_root"], command
        assert config.spark.app_name.startswith(f"eo-lakehouse-{job}"), command
    assert parsed_job("ingest", job_call(commands["ingest"])[3])[1].ingest.source == (
        "/srv/scenes,/srv/more scenes"
    )
    _, classify = parsed_job("classify", job_call(commands["classify"])[3])
    assert classify.classify.ingest == "never"  # the ingest task already ran
    assert classify.classify.model == VARIABLES["eo_lakehouse_model"]
    _, aggregate = parsed_job("aggregate", job_call(commands["aggregate"])[3])
    assert aggregate.aggregate.regions == VARIABLES["eo_lakehouse_regions"]


def test_without_variables_the_cluster_profile_decides(dag_report):
    from pipelines.config import load_config

    cluster = load_config("cluster")
    for job, command in dag_report["rendered"]["defaults"].items():
        submit, options, script, args = job_call(command)
        assert (submit, options, script) == ("spark-submit", [], f"/app/pipelines/{job}.py")
        assert "--root" not in args and "--source" not in args, command
        ns, config = parsed_job(job, args)
        assert ns.profile == "cluster"
        assert config.storage.root == cluster.storage.root


def test_run_parameters_win_over_variables(dag_report):
    commands = dag_report["rendered"]["params"]
    for job, command in commands.items():
        ns, config = parsed_job(job, job_call(command)[3])
        assert ns.profile == "cluster"
        assert config.storage.root == "s3a://bucket/run"
    _, ingest = parsed_job("ingest", job_call(commands["ingest"])[3])
    assert ingest.ingest.source == "/srv/today"


# ----------------------------------------------------------------------------- Kubernetes


@pytest.fixture(scope="module")
def manifest() -> dict:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d is not None]
    assert len(docs) == 1, f"{MANIFEST} should hold one document, found {len(docs)}"
    return docs[0]


def dockerfile_runtime() -> tuple[dict[str, str], str]:
    """The last stage of docker/Dockerfile (the image built by default): where ``COPY`` puts
    files of the build context (absolute path in the image -> path in the repository; a
    folder for a folder) and the home of the user it creates."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    copies: dict[str, str] = {}
    home = ""
    workdir = "/"
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        op = words[0].upper()
        if op == "FROM":
            copies, workdir = {}, "/"
        elif op == "WORKDIR":
            workdir = os.path.join(workdir, words[1])
        elif op == "COPY" and not any(w.startswith("--from") for w in words):
            *sources, dest = [w for w in words[1:] if not w.startswith("--")]
            target = os.path.join(workdir, dest)
            for source in sources:
                into = (REPO / source).is_dir() or dest.endswith("/") or dest in (".", "./")
                name = Path(source).name if into and not (REPO / source).is_dir() else ""
                copies[os.path.normpath(os.path.join(target, name))] = source.rstrip("/")
        elif op == "RUN" and "useradd" in words and "--home-dir" in words:
            home = words[words.index("--home-dir") + 1]
    return copies, home


def in_repo(path_in_image: str) -> Path | None:
    """The repository file the image holds at ``path_in_image``, by docker/Dockerfile's COPYs."""
    copies, _ = dockerfile_runtime()
    for dest in sorted(copies, key=len, reverse=True):
        if path_in_image == dest or path_in_image.startswith(dest + "/"):
            return REPO / copies[dest] / os.path.relpath(path_in_image, dest)
    return None


def image_names() -> set[str]:
    """Image names (without tag) that docker/ builds: ``-t NAME[:TAG]`` in its files."""
    names = set()
    for path in [DOCKERFILE, *DOCKERFILE.parent.glob("*.md")]:
        for ref in re.findall(r"(?:-t|--tag)\s+([a-z0-9][a-z0-9._/-]*)", path.read_text()):
            names.add(ref.rsplit("/", 1)[-1])
    return names


def project_version() -> str:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def test_manifest_is_a_daily_scheduled_spark_application_that_never_overlaps(manifest):
    assert manifest["apiVersion"] == "sparkoperator.k8s.io/v1beta2"
    assert manifest["kind"] == "ScheduledSparkApplication"
    spec = manifest["spec"]
    schedule = spec["schedule"]
    assert schedule in ("@daily", "@midnight") or (
        len(schedule.split()) == 5 and schedule.split()[2:] == ["*", "*", "*"]
    ), schedule
    assert spec["concurrencyPolicy"] == "Forbid"
    app = spec["template"]
    assert (app["type"], app["pythonVersion"], app["mode"]) == ("Python", "3", "cluster")
    assert app["restartPolicy"]["type"] in ("OnFailure", "Always")


def test_manifest_runs_classify_from_the_image_with_arguments_it_accepts(manifest):
    from pipelines.config import profile_path

    app = manifest["spec"]["template"]
    file = app["mainApplicationFile"]
    assert file.startswith("local:///"), file
    source = in_repo(file.removeprefix("local://"))
    assert source is not None, f"{file}: no COPY of docker/Dockerfile puts a file there"
    assert source == REPO / "pipelines" / "classify.py" and source.is_file()
    ns, config = parsed_job("classify", app["arguments"])
    assert profile_path(ns.profile) == REPO / "conf" / f"{ns.profile}.yaml"
    assert profile_path(ns.profile).is_file()
    assert config.classify.ingest == "always"  # one application: ingest .. aggregate
    assert config.storage.root == app["arguments"][app["arguments"].index("--root") + 1]


def test_manifest_spark_version_is_the_installed_pyspark(manifest):
    assert manifest["spec"]["template"]["sparkVersion"] == pyspark.__version__


def test_manifest_image_is_the_one_docker_builds(manifest):
    image = manifest["spec"]["template"]["image"]
    name, _, tag = image.rsplit("/", 1)[-1].partition(":")
    assert name in image_names(), (image, image_names())
    assert tag == project_version(), image


def test_manifest_names_the_delta_settings_and_jars_of_the_image(manifest):
    """The operator hands the driver's spark-submit a properties file of its own, so the
    image's spark-defaults.conf is not read: the manifest must carry what it says."""
    from pipelines.session import spark_defaults

    conf = manifest["spec"]["template"]["sparkConf"]
    defaults = dict(
        line.split(" ", 1) for line in spark_defaults().splitlines() if line[:1].isalpha()
    )
    for key in ("spark.sql.extensions", "spark.sql.catalog.spark_catalog"):
        assert conf[key] == defaults[key], key
    # The jars come from the image's spark-defaults.conf, which its entry point loads in
    # `driver` mode and puts after Spark's jars in `executor` mode; an extraClassPath of
    # the Ivy folder would put older netty / Jackson before Spark's (tests/test_image.py
    # starts a driver with this sparkConf in the image).
    assert "spark.driver.extraClassPath" not in conf
    assert "spark.executor.extraClassPath" not in conf
    entrypoint = (REPO / "docker" / "entrypoint.sh").read_text()
    assert "--load-spark-defaults" in entrypoint and "KubernetesExecutorBackend" in entrypoint


def test_manifest_credentials_come_from_a_secret(manifest):
    app = manifest["spec"]["template"]
    for role in ("driver", "executor"):
        env = app[role]["env"]
        names = {e["name"] for e in env}
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= names, role
        for e in env:
            assert "value" not in e, f"{role} env {e['name']} has a literal value"
            ref = e["valueFrom"]["secretKeyRef"]
            assert ref["name"] and ref["key"], e
    for key in app.get("sparkConf", {}) | app.get("hadoopConf", {}):
        assert not re.search(r"secret|access\.key|password|token", key, re.I), key
    text = MANIFEST.read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)  # an AWS access key id
    assert not re.search(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])", text)


OPERATOR_CHECK = r"""
import json
import sys

from kubeflow_spark_api.models.spark_v1beta2_scheduled_spark_application import (
    SparkV1beta2ScheduledSparkApplication as Model,
)

manifest = json.load(open(sys.argv[1]))
print(json.dumps(Model.from_dict(manifest).to_dict()))
"""


def test_manifest_matches_the_spark_operator_api(manifest, tmp_path):
    """Parsed by the operator's API models: required fields and types are checked there,
    and a key the API does not know is dropped, which the round trip shows."""
    python = tool_python("spark-operator-api", OPERATOR_API)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "check.py").write_text(OPERATOR_CHECK)
    proc = subprocess.run(
        [str(python), str(tmp_path / "check.py"), str(tmp_path / "manifest.json")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout) == manifest


def test_a_misspelled_key_fails_the_operator_api_check(manifest, tmp_path):
    """The check above can fail: the same round trip of a manifest with a typo differs."""
    python = tool_python("spark-operator-api", OPERATOR_API)
    broken = json.loads(json.dumps(manifest))
    broken["spec"]["template"]["executor"]["memoryOverHead"] = "3g"
    (tmp_path / "manifest.json").write_text(json.dumps(broken))
    (tmp_path / "check.py").write_text(OPERATOR_CHECK)
    proc = subprocess.run(
        [str(python), str(tmp_path / "check.py"), str(tmp_path / "manifest.json")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0 or json.loads(proc.stdout) != broken
