"""A Spark standalone cluster on 127.0.0.1, for tests and benchmarks.

The master and the workers are the installed pyspark's own classes, started with its
``spark-class``; jobs go through the virtual environment's ``spark-submit`` with the
project's ``pipelines/`` and ``udfs/`` shipped as a zip (``--py-files``), as they would to a
cluster that has none of this repository. Delta's jar comes from
``$SPARK_HOME/conf/spark-defaults.conf`` (``pipelines.session.write_spark_defaults``).

Imports nothing from pytest: a failure raises :class:`ClusterError` with the logs that
explain it (``tests/test_cluster.py`` turns it into a test failure, ``bench/cluster_bench.py``
into an exit code).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pyspark

REPO = Path(__file__).resolve().parents[1]
SPARK_HOME = Path(pyspark.__file__).resolve().parent
# The virtual environment's spark-submit (next to the interpreter running this code).
SPARK_SUBMIT = Path(sys.executable).parent / "spark-submit"
START_TIMEOUT_S = 60
SUBMIT_TIMEOUT_S = 300


class ClusterError(RuntimeError):
    """The cluster did not start, or a submitted application failed; the message holds the
    tails of the logs that say why."""


def missing() -> str | None:
    """Why a cluster cannot be started here (no ``spark-class``, no Java), or None."""
    if not (SPARK_HOME / "bin" / "spark-class").is_file() or not SPARK_SUBMIT.is_file():
        return f"no spark-class under {SPARK_HOME} or no {SPARK_SUBMIT}"
    if shutil.which("java") is None and "JAVA_HOME" not in os.environ:
        return "no Java runtime (java on PATH or JAVA_HOME)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return f"({path} does not exist)"
    text = path.read_text(errors="replace").splitlines()
    return f"--- last {min(lines, len(text))} lines of {path}:\n" + "\n".join(text[-lines:])


def stop(proc: subprocess.Popen) -> None:
    """Stop ``proc`` and its process group (its executors and their Python workers)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
    # Children (executor JVMs, Python workers) share the group even after the leader exits.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def ship_code(path: Path, extra: Mapping[str, str] | None = None) -> Path:
    """Write ``pipelines/`` and ``udfs/`` (their ``.py`` files, as ``--py-files`` wants them)
    to the zip ``path``; ``extra`` adds modules, ``{"udfs/_shipped.py": source}``."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for package in ("pipelines", "udfs"):
            for f in sorted((REPO / package).rglob("*.py")):
                z.write(f, f.relative_to(REPO).as_posix())
        for name, source in (extra or {}).items():
            z.writestr(name, source)
    return path


@dataclass
class Cluster:
    """A running master and its workers; ``url`` is what ``--master`` takes."""

    url: str
    env: dict[str, str]
    logs: Path
    work_dir: Path
    workers: int
    procs: list[subprocess.Popen] = field(default_factory=list)

    def executor_logs(self) -> str:
        return "\n".join(tail(p, 30) for p in sorted(self.work_dir.glob("*/app-*/*/stderr")))

    def submit(
        self,
        code_zip: Path,
        args: list[str],
        name: str,
        conf: Mapping[str, str] | None = None,
        timeout_s: float = SUBMIT_TIMEOUT_S,
    ) -> str:
        """Run ``spark-submit`` against this cluster from the repository root (``./conf``
        holds the profiles); return its stdout. ``args``: the job script and its arguments.

        Raises :class:`ClusterError` when it exits non-zero or runs past ``timeout_s``.
        """
        settings = {
            "spark.pyspark.python": sys.executable,
            "spark.executor.memory": "1g",
            **(conf or {}),
        }
        cmd = [str(SPARK_SUBMIT), "--master", self.url, "--py-files", str(code_zip)]
        for key, value in settings.items():
            cmd += ["--conf", f"{key}={value}"]
        cmd += args
        out, err = self.logs / f"{name}.out", self.logs / f"{name}.err"
        with out.open("w") as o, err.open("w") as e:
            proc = subprocess.Popen(
                cmd, cwd=REPO, env=self.env, stdout=o, stderr=e, start_new_session=True
            )
            try:
                rc = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                stop(proc)
                raise ClusterError(
                    f"spark-submit {name} still running after {timeout_s:.0f} s\n"
                    f"{tail(out)}\n{tail(err)}\n{self.executor_logs()}"
                ) from None
        if rc != 0:
            raise ClusterError(
                f"spark-submit {name} exited with code {rc}: {' '.join(cmd)}\n"
                f"{tail(out)}\n{tail(err)}\n{self.executor_logs()}"
            )
        return out.read_text()


def _wait_for(proc: subprocess.Popen, log: Path, text: str, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise ClusterError(
                f"{what} exited with code {proc.returncode} before {text!r}\n{tail(log)}"
            )
        time.sleep(0.5)
    raise ClusterError(f"{what}: no {text!r} in its log after {START_TIMEOUT_S} s\n{tail(log)}")


@contextmanager
def standalone_cluster(
    base: Path, workers: int = 1, cores: int = 2, memory: str = "2g"
) -> Iterator[Cluster]:
    """Start a master and ``workers`` workers of ``cores`` cores and ``memory`` each on
    127.0.0.1, with logs, work and local folders under ``base``; stop them all on exit.

    Raises :class:`ClusterError` when a daemon does not come up within ``START_TIMEOUT_S``.
    """
    logs, work, local = base / "logs", base / "work", base / "local"
    for d in (logs, work, local):
        d.mkdir(parents=True, exist_ok=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYSPARK_GATEWAY", "_PYSPARK")) and k != "PYSPARK_SUBMIT_ARGS"
    }
    env.pop("SPARK_CONF_DIR", None)  # spark-defaults.conf must come from $SPARK_HOME/conf
    env.update(
        SPARK_HOME=str(SPARK_HOME),
        SPARK_LOCAL_IP="127.0.0.1",
        SPARK_LOCAL_DIRS=str(local),
        PYSPARK_PYTHON=sys.executable,
        # The REST submission server would take the fixed port 6066.
        SPARK_MASTER_OPTS="-Dspark.master.rest.enabled=false",
    )
    port = free_port()
    cluster = Cluster(f"spark://127.0.0.1:{port}", env, logs, work, workers)
    spark_class = str(SPARK_HOME / "bin" / "spark-class")

    def launch(args: list[str], log: Path) -> subprocess.Popen:
        with log.open("w") as f:
            proc = subprocess.Popen(
                [spark_class, *args],
                env=env,
                cwd=base,
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: stop() ends it with its children
            )
        cluster.procs.append(proc)
        return proc

    try:
        master_log = logs / "master.log"
        master = launch(
            ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
             "--port", str(port), "--webui-port", str(free_port())],
            master_log,
        )  # fmt: skip
        _wait_for(master, master_log, "New state: ALIVE", "Spark master")
        started = []
        for i in range(1, workers + 1):
            (work / f"worker-{i}").mkdir(exist_ok=True)
            log = logs / f"worker-{i}.log"
            worker = launch(
                ["org.apache.spark.deploy.worker.Worker", cluster.url, "--host", "127.0.0.1",
                 "--cores", str(cores), "--memory", memory, "--webui-port", str(free_port()),
                 "--work-dir", str(work / f"worker-{i}")],
                log,
            )  # fmt: skip
            started.append((worker, log, i))
        for worker, log, i in started:
            _wait_for(worker, log, "Successfully registered with master", f"Spark worker {i}")
        yield cluster
    finally:
        for proc in reversed(cluster.procs):  # workers first, so they stop their executors
            stop(proc)
