"""The container image, built with podman from ``docker/Dockerfile`` and run for real.

* The image is built once per content: its tag holds a hash of the Dockerfile and of every
  file the Dockerfile copies (``pyproject.toml``, ``conf/``, ``pipelines/``, ``udfs/``,
  ``docker/bake_jars.py``), so an unchanged tree reuses the image of an earlier run and a
  change rebuilds (podman's layer cache keeps the dependency layer when only code changed).
  No registry is needed: the base is Debian bookworm made with debootstrap
  (``docker/engine.sh base``); apt and pip reach their registries during the build, with
  the host's CA bundle passed as the build's extra CA.
* ``spark-submit pipelines/classify.py`` runs in a container with no network at all
  (``--network none``): ingest, features and classify of two demo scenes with a model
  bundle made on the host, into a host folder; the tables are read back here with delta-rs.
* A standalone cluster from the same image (a master and two one-core workers, each in its
  container on the host's network, a host folder mounted at the same path in all of them)
  runs the ingest job through ``spark-submit --master spark://127.0.0.1:PORT``; its
  ``scenes`` and ``tiles`` equal those of an ingest run on the host.

Skipped only where podman cannot run containers here (``docker/engine.sh setup`` installs
it on Debian as root).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import test_docker as dockerfile_parse
from model_factory import tiny_bundle
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

pytestmark = [pytest.mark.image, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
ENGINE = DOCKER / "engine.sh"
IMAGE_NAME = "localhost/eo-lakehouse"  # tests tag it test-<hash>; users eo-lakehouse:<version>
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_TIMEOUT_S = 3600
RUN_TIMEOUT_S = 600
START_TIMEOUT_S = 120
TILE = 256
# A Sentinel-2 and a Landsat demo scene: both readers, both sensors' tables.
SCENES = ("S2B_MSIL2A_20240621", "LC09_L2SP_198025_20240726")
MODEL_CLASSES = {2, 5, 7}  # model_factory.tiny_model's classes
# Columns a run stamps (its id and time): the only ones two ingests of one source differ in.
RUN_COLUMNS = {"run_id", "ingested_at"}


# ----------------------------------------------------------------------------- engine


def engine_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(DOCKER / "containers.conf"))
    return env


def podman(*args: str, timeout: float = RUN_TIMEOUT_S, check: bool = True):
    proc = subprocess.run(
        ["podman", *args], env=engine_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"podman {' '.join(args)} exited with {proc.returncode}\n"
            f"--- stdout (tail):\n{proc.stdout[-4000:]}\n--- stderr (tail):\n{proc.stderr[-6000:]}"
        )
    return proc


def why_no_engine() -> str | None:
    """Why containers cannot run here, or None."""
    if shutil.which("podman") is None:
        return "podman is not installed (on Debian, as root: docker/engine.sh setup)"
    proc = subprocess.run(
        ["podman", "info", "--format", "{{.Host.OCIRuntime.Name}}"],
        env=engine_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        return f"podman cannot run here: {proc.stderr.strip()[-500:]}"
    return None


def excluded(rel: str, patterns: list[str]) -> bool:
    """.dockerignore semantics as this repository uses them: ``**/x`` matches a path part
    anywhere, other patterns match from the context's root."""
    parts = rel.split("/")
    for pat in patterns:
        if pat.startswith("**/"):
            if any(fnmatch.fnmatch(part, pat[3:]) for part in parts):
                return True
        elif any(fnmatch.fnmatch("/".join(parts[:i]), pat) for i in range(1, len(parts) + 1)):
            return True
    return False


def context_files() -> list[Path]:
    """The Dockerfile and every file it copies from the repository (.dockerignore applied)."""
    instrs = dockerfile_parse.instructions((DOCKER / "Dockerfile").read_text())
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [x.strip() for x in lines if x.strip() and not x.startswith("#")]
    files = {DOCKER / "Dockerfile"}
    for sources, _ in dockerfile_parse.copies(instrs):
        for src in sources:
            path = REPO / src
            found = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
            files |= {f for f in found if not excluded(f.relative_to(REPO).as_posix(), patterns)}
    return sorted(files)


def content_tag() -> str:
    digest = hashlib.sha256()
    for f in context_files():
        digest.update(f.relative_to(REPO).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(f.read_bytes()).digest())
    return f"{IMAGE_NAME}:test-{digest.hexdigest()[:16]}"


def engine(*args: str, log: Path, extra_env: dict[str, str] | None = None) -> str:
    """``docker/engine.sh ARGS``; its stdout. Its stderr (the build's output) goes to ``log``."""
    env = {**engine_env(), **(extra_env or {})}
    with log.open("a") as err:
        proc = subprocess.run(
            [str(ENGINE), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            timeout=BUILD_TIMEOUT_S,
        )
    if proc.returncode != 0:
        text = log.read_text(errors="replace").splitlines()
        pytest.fail(
            f"engine.sh {' '.join(args)} exited {proc.returncode}\n" + "\n".join(text[-60:])
        )
    return proc.stdout


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    reason = why_no_engine()
    if reason:
        pytest.skip(reason)
    tag = content_tag()
    if podman("image", "exists", tag, check=False).returncode == 0:
        return tag
    log = tmp_path_factory.mktemp("image-build") / "build.log"
    started = time.monotonic()
    base = engine("base", log=log).strip().splitlines()[-1]
    extra = {"EO_BASE": base}
    if HOST_CA.is_file():
        extra["EXTRA_CA"] = str(HOST_CA)
    # engine.sh builds with --layers: unchanged layers of earlier builds are reused.
    engine("build", tag, log=log, extra_env=extra)
    print(f"built {tag} in {time.monotonic() - started:.0f} s (log: {log})")
    # Older test images: their layers that this one shares stay.
    listed = podman("images", "--format", "{{.Repository}}:{{.Tag}}", IMAGE_NAME).stdout.split()
    old = [t for t in listed if t.startswith(f"{IMAGE_NAME}:test-") and t != tag]
    if old:
        podman("rmi", *old, check=False)
    return tag


# ----------------------------------------------------------------------------- data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_table(path: Path):
    from deltalake import DeltaTable

    return DeltaTable(str(path)).to_pyarrow_table()


def rows_by_key(path: Path, key: tuple[str, ...]) -> dict[tuple, dict]:
    rows = read_table(path).to_pylist()
    out = {tuple(r[k] for k in key): r for r in rows}
    assert len(out) == len(rows), f"{path}: duplicate {key}"
    return out


@pytest.fixture(scope="module")
def shared(demo_root, tmp_path_factory) -> Path:
    """A host folder every container mounts at the same path: two demo scenes, a model
    bundle, and the tables the containers write (as uid 185, hence world-writable)."""
    base = tmp_path_factory.mktemp("image-shared")
    base.chmod(0o777)
    scenes = base / "scenes"
    src = demo_root / "scenes"
    for name in SCENES:
        (folder,) = [p for p in src.rglob(f"{name}*") if p.is_dir()]
        shutil.copytree(folder, scenes / folder.name)
    # Features both sensors have (Landsat's NIR is nir08): one model for both scenes.
    tiny_bundle(base / "model", ["red", "green", "ndvi"], ["sentinel2-l2a", "landsat-c2l2"])
    for p in [base, *base.rglob("*")]:
        p.chmod(0o777 if p.is_dir() else 0o644)
    return base


def mount(path: Path) -> list[str]:
    return ["--volume", f"{path}:{path}"]


# ----------------------------------------------------------------------------- classify, offline


@pytest.fixture(scope="module")
def offline_classify(image, shared) -> tuple[Path, str]:
    """``spark-submit pipelines/classify.py`` in a container without any network."""
    root = shared / "offline-lake"
    started = time.monotonic()
    proc = podman(
        "run", "--rm", "--network", "none", *mount(shared), image,
        "--master", "local[2]",
        "pipelines/classify.py",
        "--source", str(shared / "scenes"),
        "--root", str(root),
        "--model", str(shared / "model"),
        "--set", f"ingest.tile_size={TILE}",
    )  # fmt: skip
    print(f"offline classify in the image took {time.monotonic() - started:.0f} s\n{proc.stdout}")
    return root, proc.stdout


def test_image_classifies_every_ingested_tile_with_no_network(offline_classify):
    root, _ = offline_classify
    tiles = Counter(r["scene_id"] for r in read_table(root / "tiles").to_pylist())
    predictions = read_table(root / "predictions").to_pylist()
    folders = (root.parent / "scenes").iterdir()
    assert sorted(tiles) == sorted(p.name.removesuffix(".SAFE") for p in folders)
    assert Counter(r["scene_id"] for r in predictions) == tiles
    keys = Counter((r["scene_id"], r["tile_row"], r["tile_col"]) for r in predictions)
    assert max(keys.values()) == 1, "a tile was classified twice"


def test_image_predictions_hold_only_the_models_classes(offline_classify):
    root, _ = offline_classify
    seen: set[int] = set()
    for r in read_table(root / "predictions").to_pylist():
        classes = np.frombuffer(r["classes"], dtype=np.dtype(r["dtype"]))
        assert classes.size == r["height"] * r["width"]
        seen |= set(np.unique(classes).tolist())
    assert seen - {0} <= MODEL_CLASSES, f"classes outside the model's: {seen - {0}}"
    assert seen & MODEL_CLASSES, "no pixel got a class"
    for r in read_table(root / "tile_predictions").to_pylist():
        counts = dict(r["class_counts"])
        assert set(counts) == MODEL_CLASSES
        assert sum(counts.values()) == r["classified_count"] <= r["pixel_count"]


def test_image_runs_its_jobs_as_a_user_that_is_not_root(offline_classify):
    root, _ = offline_classify
    owners = {p.stat().st_uid for p in (root / "predictions").rglob("*.parquet")}
    assert owners == {185}, owners
    runs = read_table(root / "runs").to_pylist()
    assert {(r["job"], r["status"]) for r in runs} >= {("classify", "succeeded")}


def test_image_python_and_java_match_the_project(image):
    out = podman(
        "run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c",
        "python -c 'import platform; print(platform.python_version())'; "
        "java -version 2>&1 | head -1; pip list --format json; id -u",
    ).stdout.splitlines()  # fmt: skip
    project = dockerfile_parse.tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert out[0] in SpecifierSet(project["requires-python"]), out[0]
    assert '"17.' in out[1], out[1]
    installed = {canonicalize_name(p["name"]): p["version"] for p in json.loads(out[2])}
    for req in map(Requirement, project["dependencies"]):
        name = canonicalize_name(req.name)
        assert name in installed, f"{req.name} is not installed in the image"
        assert req.specifier.contains(installed[name], prereleases=True), (req, installed[name])
    assert out[3] == "185"


# ----------------------------------------------------------------------------- standalone cluster


def wait_for_log(name: str, text: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        logs = podman("logs", name, check=False)
        if text in logs.stdout + logs.stderr:
            return
        state = podman("inspect", "--format", "{{.State.Running}}", name, check=False)
        if state.stdout.strip() != "true":
            pytest.fail(f"container {name} stopped before {text!r}\n{logs.stderr[-4000:]}")
        time.sleep(1)
    pytest.fail(f"container {name}: no {text!r} after {START_TIMEOUT_S} s")


@pytest.fixture(scope="module")
def cluster(image, shared) -> Iterator[dict]:
    """A master and two one-core workers, each a container of the image on the host's network."""
    run_id = uuid.uuid4().hex[:8]
    port = free_port()
    url = f"spark://127.0.0.1:{port}"
    names: list[str] = []
    common = [
        "--network", "host",
        "--env", "SPARK_LOCAL_IP=127.0.0.1",
        # The REST submission server would take the fixed port 6066.
        "--env", "SPARK_MASTER_OPTS=-Dspark.master.rest.enabled=false",
        "--entrypoint", "spark-class",
    ]  # fmt: skip

    def start(name: str, *args: str) -> None:
        names.append(name)
        podman("run", "--detach", "--name", name, *common, *mount(shared), image, *args)

    try:
        master = f"eo-test-master-{run_id}"
        start(master, "org.apache.spark.deploy.master.Master",
              "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(free_port()))  # fmt: skip
        wait_for_log(master, "New state: ALIVE")
        work_dirs = []
        for i in (1, 2):
            work = shared / f"worker-{i}"
            work.mkdir(mode=0o777)
            work.chmod(0o777)
            work_dirs.append(work)
            start(f"eo-test-worker-{i}-{run_id}", "org.apache.spark.deploy.worker.Worker", url,
                  "--host", "127.0.0.1", "--cores", "1", "--memory", "1g",
                  "--webui-port", str(free_port()), "--work-dir", str(work))  # fmt: skip
        for name in names[1:]:
            wait_for_log(name, "Successfully registered with master")
        yield {"url": url, "work_dirs": work_dirs, "names": names}
    finally:
        for name in reversed(names):
            podman("rm", "--force", "--time", "5", name, check=False)


@pytest.fixture(scope="module")
def cluster_ingest(image, cluster, shared) -> Path:
    root = shared / "cluster-lake"
    started = time.monotonic()
    proc = podman(
        "run", "--rm", "--network", "host", "--env", "SPARK_LOCAL_IP=127.0.0.1",
        *mount(shared), image,
        "--master", cluster["url"],
        "--conf", "spark.driver.host=127.0.0.1",
        "--conf", "spark.executor.memory=768m",
        "pipelines/ingest.py",
        "--source", str(shared / "scenes"),
        "--root", str(root),
        "--tile-size", str(TILE),
    )  # fmt: skip
    print(f"cluster ingest from the image took {time.monotonic() - started:.0f} s\n{proc.stdout}")
    return root


@pytest.fixture(scope="module")
def host_ingest(shared, tmp_path_factory) -> Path:
    """The same ingest on the host, with the project's own virtual environment."""
    root = tmp_path_factory.mktemp("host-ingest") / "lake"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_", "_PYSPARK"))}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.ingest",
            "--source",
            str(shared / "scenes"),
            "--root",
            str(root),
            "--tile-size",
            str(TILE),
        ],  # fmt: skip
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root


def test_cluster_in_containers_ingests_what_the_host_ingests(cluster_ingest, host_ingest):
    for table, key in (("scenes", ("scene_id",)), ("tiles", ("scene_id", "tile_row", "tile_col"))):
        got = rows_by_key(cluster_ingest / table, key)
        expected = rows_by_key(host_ingest / table, key)
        assert sorted(got) == sorted(expected), table
        assert got, table
        for k, row in expected.items():
            for column, value in row.items():
                if column in RUN_COLUMNS:
                    continue
                # Pixel columns are bytes: equal bytes, equal pixels.
                assert got[k][column] == value, f"{table} {k}: column {column} differs"


def test_cluster_in_containers_used_both_workers(cluster_ingest, cluster):
    for work in cluster["work_dirs"]:
        executors = list(work.glob("app-*/*/stderr"))
        assert executors, f"no executor ran on the worker with work dir {work}"
