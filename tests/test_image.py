"""The container image, built with podman from ``docker/Dockerfile`` and run for real.

* The image is built once per content: its tag holds a hash of the Dockerfile and of every
  file the Dockerfile copies (``pyproject.toml``, ``conf/``, ``pipelines/``, ``udfs/``,
  ``docker/bake_jars.py``, ``docker/entrypoint.sh``), so an unchanged tree reuses the image
  of an earlier run and a change rebuilds (podman's layer cache keeps the dependency layer
  when only code changed). No registry is needed: the base is Debian bookworm made with
  debootstrap (``docker/engine.sh base``); apt and pip reach their registries during the
  build, with the host's CA bundle passed as the build's extra CA.
* The entry point's ``driver`` mode, as Spark on Kubernetes starts a driver pod
  (``driver --properties-file F --class org.apache.spark.deploy.PythonRunner local:///app/
  pipelines/classify.py ...``, the properties being the Kubernetes manifest's ``sparkConf``
  and ``spark.master=local[2]``), in a container with no network at all (``--network
  none``): ingest, features and classify of two demo scenes with a model bundle made on the
  host, into a host folder; the tables are read back here with delta-rs.
* The entry point's ``executor`` mode: a driver (``driver`` mode, its master a standalone
  master without workers) runs the ingest job; an ``executor`` container, given only the
  variables Spark's Kubernetes backend gives an executor pod, registers with it and runs
  every task; the tables equal a host ingest's.
* A standalone cluster from the same image (a master and two one-core workers, each in its
  container on the host's network, a host folder mounted at the same path in all of them)
  runs the ingest job through ``spark-submit --master spark://127.0.0.1:PORT`` with the
  scenes read from and the tables written to an S3 store (moto's server on the host,
  ``tests/s3server.py``); its ``scenes`` and ``tiles`` equal those of an ingest run on the
  host from the local folder.
* ``docker/local-cluster.yaml`` itself, through ``podman kube play`` (its host ports moved to
  free ones, the pod and volume given names of their own, the image the tested one): the
  demo container's chain must exit 0, print each job's summary, and leave the tables in the
  pod's S3 store, read here through its port.

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
import yaml
from model_factory import tiny_bundle
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from s3server import (  # noqa: F401 (s3_server: the `s3` fixture, used by name)
    S3Server,
    s3_server,
    upload_tree,
)

pytestmark = [pytest.mark.image, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
ENGINE = DOCKER / "engine.sh"
LOCAL_CLUSTER = DOCKER / "local-cluster.yaml"
MANIFEST = REPO / "deploy" / "k8s" / "scheduled-spark-application.yaml"
IMAGE_NAME = "localhost/eo-lakehouse"  # tests tag it test-<hash>; users eo-lakehouse:<version>
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_TIMEOUT_S = 3600
RUN_TIMEOUT_S = 600
START_TIMEOUT_S = 120
DEMO_TIMEOUT_S = 1200
TILE = 256
# A Sentinel-2 and a Landsat demo scene: both readers, both sensors' tables.
SCENES = ("S2B_MSIL2A_20240621", "LC09_L2SP_198025_20240726")
MODEL_CLASSES = {2, 5, 7}  # model_factory.tiny_model's classes
# Columns a run stamps (its id and time): the only ones two ingests of one source differ in.
RUN_COLUMNS = {"run_id", "ingested_at"}
BUCKET = "eo-image-test"


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


def s3_options(env: dict[str, str]) -> dict[str, str]:
    """delta-rs storage options for the S3 store that the AWS variables ``env`` point at."""
    return {
        "AWS_ENDPOINT_URL": env["AWS_ENDPOINT_URL"],
        "AWS_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"],
        "AWS_REGION": env.get("AWS_REGION", "us-east-1"),
        "AWS_ALLOW_HTTP": "true",
    }


def read_table(path: Path | str, options: dict[str, str] | None = None):
    from deltalake import DeltaTable

    return DeltaTable(str(path), storage_options=options).to_pyarrow_table()


def rows_by_key(
    path: Path | str, key: tuple[str, ...], options: dict[str, str] | None = None
) -> dict[tuple, dict]:
    rows = read_table(path, options).to_pylist()
    out = {tuple(r[k] for k in key): r for r in rows}
    assert len(out) == len(rows), f"{path}: duplicate {key}"
    return out


def assert_same_ingest(
    got_root: str,
    expected_root: Path,
    options: dict[str, str] | None = None,
    moved: tuple[str, str] | None = None,
) -> None:
    """``scenes`` and ``tiles`` under ``got_root`` equal those under ``expected_root``, row by
    row and column by column (pixel bytes included), but for the run's own columns.
    ``moved``: (local folder, URL) where the scenes were read from elsewhere: the paths in
    the expected rows are compared as that URL."""
    for table, key in (("scenes", ("scene_id",)), ("tiles", ("scene_id", "tile_row", "tile_col"))):
        got = rows_by_key(f"{got_root}/{table}", key, options)
        expected = rows_by_key(expected_root / table, key)
        assert got, table
        assert sorted(got) == sorted(expected), table
        for k, row in expected.items():
            for column, value in row.items():
                if column in RUN_COLUMNS:
                    continue
                mine = got[k][column]
                if moved is not None and (isinstance(value, str) or column == "bands"):
                    value = json.dumps(value, default=repr).replace(*moved)
                    mine = json.dumps(mine, default=repr)
                # Pixel columns are bytes: equal bytes, equal pixels.
                assert mine == value, f"{table} {k}: column {column} differs"


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


# ----------------------------------------------------------------------------- driver mode, offline


def manifest_spark_conf() -> dict[str, str]:
    """The ``sparkConf`` of the Kubernetes manifest: what the operator's properties file gives
    the driver and executors of the image."""
    doc = yaml.safe_load(MANIFEST.read_text())
    return {str(k): str(v) for k, v in doc["spec"]["template"]["sparkConf"].items()}


def operator_conf(**conf: str) -> dict[str, str]:
    """A driver pod's properties: the manifest's settings but its class paths (the image's
    entry point puts the baked jars after Spark's own; see
    test_manifest_spark_conf_starts_a_driver_in_the_image), and ``conf``."""
    keep = {k: v for k, v in manifest_spark_conf().items() if not k.endswith(".extraClassPath")}
    return {**keep, **conf}


def properties_file(path: Path, conf: dict[str, str]) -> Path:
    """A Spark properties file, as Spark's Kubernetes backend mounts one in the driver pod."""
    path.write_text("".join(f"{k}={v}\n" for k, v in conf.items()))
    path.chmod(0o644)
    return path


def driver_args(props: Path, job: str) -> list[str]:
    """The arguments Spark's Kubernetes backend gives a Python application's driver pod."""
    return [
        "driver", "--properties-file", str(props),
        "--class", "org.apache.spark.deploy.PythonRunner", f"local:///app/pipelines/{job}.py",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def offline_classify(image, shared) -> tuple[Path, str]:
    """The entry point's ``driver`` mode (a Kubernetes driver pod's command, its master
    local[2]) running ``pipelines/classify.py`` in a container without any network."""
    root = shared / "offline-lake"
    conf = operator_conf(**{"spark.master": "local[2]", "spark.app.name": "offline"})
    props = properties_file(shared / "offline.properties", conf)
    started = time.monotonic()
    proc = podman(
        "run", "--rm", "--network", "none", *mount(shared), image,
        *driver_args(props, "classify"),
        "--source", str(shared / "scenes"),
        "--root", str(root),
        "--model", str(shared / "model"),
        "--set", f"ingest.tile_size={TILE}",
    )  # fmt: skip
    print(f"offline classify in the image took {time.monotonic() - started:.0f} s\n{proc.stdout}")
    return root, proc.stdout


def test_manifest_spark_conf_starts_a_driver_in_the_image(image, shared):
    """The manifest's ``sparkConf`` exactly as the operator passes it, in a driver pod of the
    image: a Spark session starts and runs a job (a class path that put other versions of
    Spark's own libraries, netty or Jackson, before Spark's jars would fail here)."""
    app = shared / "manifest_app.py"
    app.write_text(
        "from pyspark.sql import SparkSession\n"
        "spark = SparkSession.builder.getOrCreate()\n"
        "print('rows', spark.range(5).count())\n"
        "spark.stop()\n"
    )
    app.chmod(0o644)
    conf = {**manifest_spark_conf(), "spark.master": "local[1]", "spark.app.name": "manifest"}
    props = properties_file(shared / "manifest.properties", conf)
    proc = podman(
        "run", "--rm", "--network", "none", *mount(shared), image,
        "driver", "--properties-file", str(props),
        "--class", "org.apache.spark.deploy.PythonRunner", f"local://{app}",
        check=False,
    )  # fmt: skip
    text = proc.stdout + proc.stderr
    errors = [line for line in text.splitlines() if "Error" in line or "Exception" in line]
    assert proc.returncode == 0, "\n".join(errors[:10]) or text[-3000:]
    assert "rows 5" in proc.stdout


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


def s3_env_args(env: dict[str, str]) -> list[str]:
    return [arg for k, v in sorted(env.items()) for arg in ("--env", f"{k}={v}")]


def start_master(name: str, image: str, port: int, names: list[str]) -> None:
    """A standalone master from the image, through the entry point's pass-through."""
    names.append(name)
    podman(
        "run", "--detach", "--name", name, "--network", "host",
        "--env", "SPARK_LOCAL_IP=127.0.0.1",
        # The REST submission server would take the fixed port 6066.
        "--env", "SPARK_MASTER_OPTS=-Dspark.master.rest.enabled=false",
        image, "spark-class", "org.apache.spark.deploy.master.Master",
        "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(free_port()),
    )  # fmt: skip
    wait_for_log(name, "New state: ALIVE")


@pytest.fixture(scope="module")
def scenes_on_s3(s3: S3Server, shared) -> str:
    """The two scenes of ``shared`` uploaded to the host's S3 store; their URL."""
    client = s3.client()
    client.create_bucket(Bucket=BUCKET)
    assert upload_tree(client, shared / "scenes", BUCKET, "scenes")
    return f"s3://{BUCKET}/scenes"


@pytest.fixture(scope="module")
def cluster(image, shared, s3: S3Server) -> Iterator[dict]:
    """A master and two one-core workers, each a container of the image on the host's
    network; the workers (hence their executors) get the S3 store's variables."""
    run_id = uuid.uuid4().hex[:8]
    port = free_port()
    url = f"spark://127.0.0.1:{port}"
    names: list[str] = []
    try:
        start_master(f"eo-test-master-{run_id}", image, port, names)
        work_dirs = []
        for i in (1, 2):
            work = shared / f"worker-{i}"
            work.mkdir(mode=0o777)
            work.chmod(0o777)
            work_dirs.append(work)
            name = f"eo-test-worker-{i}-{run_id}"
            names.append(name)
            # Each worker a loopback address of its own, as each host of a cluster has:
            # executors that share an address read each other's shuffle files from their
            # own disk (spark.shuffle.readHostLocalDisk), which another container's /tmp
            # is not.
            host = f"127.0.0.{1 + i}"
            podman(
                "run", "--detach", "--name", name, "--network", "host",
                "--env", f"SPARK_LOCAL_IP={host}", *s3_env_args(s3.env), *mount(shared),
                image, "spark-class", "org.apache.spark.deploy.worker.Worker", url,
                "--host", host, "--cores", "1", "--memory", "1g",
                "--webui-port", str(free_port()), "--work-dir", str(work),
            )  # fmt: skip
        for name in names[1:]:
            wait_for_log(name, "Successfully registered with master")
        yield {"url": url, "work_dirs": work_dirs, "names": names}
    finally:
        for name in reversed(names):
            podman("rm", "--force", "--time", "5", name, check=False)


@pytest.fixture(scope="module")
def cluster_ingest(image, cluster, shared, s3: S3Server, scenes_on_s3) -> str:
    """The ingest job on the cluster: scenes from the S3 store, tables onto it."""
    root = f"s3://{BUCKET}/cluster-lake"
    started = time.monotonic()
    proc = podman(
        "run", "--rm", "--network", "host", "--env", "SPARK_LOCAL_IP=127.0.0.1",
        *s3_env_args(s3.env), *mount(shared), image,
        "--master", cluster["url"],
        "--conf", "spark.driver.host=127.0.0.1",
        "--conf", "spark.executor.memory=768m",
        "pipelines/ingest.py",
        "--source", scenes_on_s3,
        "--root", root,
        "--tile-size", str(TILE),
    )  # fmt: skip
    print(f"cluster ingest from the image took {time.monotonic() - started:.0f} s\n{proc.stdout}")
    return root


@pytest.fixture(scope="module")
def host_ingest(shared, tmp_path_factory) -> Path:
    """The same ingest on the host, with the project's own virtual environment, from the
    local folder."""
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


def test_cluster_in_containers_ingests_from_s3_what_the_host_ingests(
    cluster_ingest, host_ingest, shared, s3: S3Server, scenes_on_s3
):
    assert_same_ingest(
        cluster_ingest,
        host_ingest,
        s3_options(s3.env),
        moved=(str(shared / "scenes"), scenes_on_s3),
    )
    keys = {o["Key"] for o in s3.client().list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert any(k.startswith("cluster-lake/tiles/_delta_log/") for k in keys)


def test_cluster_in_containers_used_both_workers(cluster_ingest, cluster):
    for work in cluster["work_dirs"]:
        executors = list(work.glob("app-*/*/stderr"))
        assert executors, f"no executor ran on the worker with work dir {work}"


# ----------------------------------------------------------------------------- Kubernetes modes


@pytest.fixture(scope="module")
def k8s_ingest(image, shared) -> Iterator[dict]:
    """A driver and an executor as Spark on Kubernetes starts them (``driver`` with a
    properties file; ``executor`` with only the variables the backend sets), both on the
    host's network. The driver's master is a standalone master without any worker: the only
    executor the application gets is the one that registers itself from its container."""
    run_id = uuid.uuid4().hex[:8]
    names: list[str] = []
    master_port, driver_port = free_port(), free_port()
    root = shared / "k8s-lake"
    app_id = f"spark-eo-test-{run_id}"
    conf = operator_conf(**{
        "spark.master": f"spark://127.0.0.1:{master_port}",
        "spark.app.name": "k8s-ingest",
        "spark.driver.host": "127.0.0.1",
        "spark.driver.port": str(driver_port),
    })  # fmt: skip
    props = properties_file(shared / "k8s.properties", conf)
    try:
        start_master(f"eo-test-k8s-master-{run_id}", image, master_port, names)
        driver = f"eo-test-k8s-driver-{run_id}"
        names.append(driver)
        podman(
            "run", "--detach", "--name", driver, "--network", "host",
            "--env", "SPARK_DRIVER_BIND_ADDRESS=127.0.0.1", *mount(shared), image,
            *driver_args(props, "ingest"),
            "--source", str(shared / "scenes"), "--root", str(root), "--tile-size", str(TILE),
        )  # fmt: skip
        wait_for_port(driver_port, driver)
        executor = f"eo-test-k8s-executor-{run_id}"
        names.append(executor)
        env = {
            "SPARK_DRIVER_URL": f"spark://CoarseGrainedScheduler@127.0.0.1:{driver_port}",
            "SPARK_EXECUTOR_ID": "7",
            "SPARK_EXECUTOR_CORES": "2",
            "SPARK_EXECUTOR_MEMORY": "768m",
            "SPARK_APPLICATION_ID": app_id,
            "SPARK_EXECUTOR_POD_IP": "127.0.0.1",
            "SPARK_EXECUTOR_POD_NAME": executor,
            "SPARK_RESOURCE_PROFILE_ID": "0",
            # Out of numeric order on purpose: _10 must come after _2.
            "SPARK_JAVA_OPT_10": "-Deo.test.option=ten",
            "SPARK_JAVA_OPT_2": "-Deo.test.option=two",
            "SPARK_JAVA_OPT_0": f"-Dspark.driver.port={driver_port}",
        }
        podman(
            "run", "--detach", "--name", executor, "--network", "host", *s3_env_args(env),
            *mount(shared), image, "executor",
        )  # fmt: skip
        wait_for_log(executor, "Successfully registered with driver")
        cmdline = podman("exec", executor, "cat", "/proc/1/cmdline").stdout.split("\0")
        started = time.monotonic()
        code = podman("wait", driver, timeout=RUN_TIMEOUT_S).stdout.strip()
        driver_log = podman("logs", driver)
        print(f"k8s-mode ingest took {time.monotonic() - started:.0f} s after registration")
        assert code == "0", (
            f"driver exited {code}\n{driver_log.stdout[-3000:]}{driver_log.stderr[-6000:]}"
        )
        podman("wait", executor, timeout=START_TIMEOUT_S)
        executor_log = podman("logs", executor)
        yield {
            "root": root,
            "cmdline": [c for c in cmdline if c],
            "executor_log": executor_log.stdout + executor_log.stderr,
            "driver_port": driver_port,
            "app_id": app_id,
        }
    finally:
        for name in reversed(names):
            podman("rm", "--force", "--time", "5", name, check=False)


def wait_for_port(port: int, name: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        state = podman("inspect", "--format", "{{.State.Running}}", name, check=False)
        if state.stdout.strip() != "true":
            logs = podman("logs", name, check=False)
            pytest.fail(
                f"container {name} stopped before listening on {port}\n{logs.stderr[-4000:]}"
            )
        time.sleep(1)
    pytest.fail(f"container {name}: nothing listens on port {port} after {START_TIMEOUT_S} s")


def test_k8s_executor_mode_runs_the_drivers_tasks_and_ingests_what_the_host_ingests(
    k8s_ingest, host_ingest
):
    log = k8s_ingest["executor_log"]
    assert "Successfully registered with driver" in log
    assert "Running task" in log and "Finished task" in log, log[-3000:]
    assert_same_ingest(str(k8s_ingest["root"]), host_ingest)


def test_k8s_executor_mode_starts_the_backend_jvm_from_the_pods_variables(k8s_ingest):
    cmd = k8s_ingest["cmdline"]
    assert Path(cmd[0]).name == "java", cmd[:3]
    main = cmd.index("org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend")
    opts = cmd[1:main]
    # SPARK_JAVA_OPT_<n> in the order of n; the heap from SPARK_EXECUTOR_MEMORY.
    ours = [o for o in opts if o.startswith(("-Deo.test.option", "-Dspark.driver.port"))]
    assert ours == [
        f"-Dspark.driver.port={k8s_ingest['driver_port']}",
        "-Deo.test.option=two",
        "-Deo.test.option=ten",
    ]
    assert {"-Xms768m", "-Xmx768m"} <= set(opts)
    classpath = opts[opts.index("-cp") + 1].split(":")
    assert classpath[0].endswith("/pyspark/jars/*"), classpath[:2]
    assert any("delta-spark_" in jar for jar in classpath), "no Delta jar on the class path"
    assert any("hadoop-aws-" in jar for jar in classpath), "no S3A jar on the class path"
    assert len(cmd[main + 1 :]) % 2 == 0, cmd[main:]
    args = dict(zip(cmd[main + 1 :: 2], cmd[main + 2 :: 2], strict=True))
    assert args == {
        "--driver-url": f"spark://CoarseGrainedScheduler@127.0.0.1:{k8s_ingest['driver_port']}",
        "--executor-id": "7",
        "--cores": "2",
        "--app-id": k8s_ingest["app_id"],
        "--resourceProfileId": "0",
        "--hostname": "127.0.0.1",
        "--podName": args.get("--podName", ""),
    }
    assert args["--podName"].startswith("eo-test-k8s-executor-")


def test_k8s_executor_mode_names_what_is_missing(image):
    proc = podman(
        "run", "--rm", "--network", "none", "--env", "SPARK_EXECUTOR_CORES=1", image, "executor",
        check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    for var in ("SPARK_DRIVER_URL", "SPARK_EXECUTOR_ID", "SPARK_APPLICATION_ID"):
        assert var in proc.stderr
    assert "SPARK_EXECUTOR_CORES" not in proc.stderr


def test_entry_point_runs_other_commands_as_they_are(image):
    proc = podman(
        "run", "--rm", "--network", "none", image,
        "python", "-c", "import sys, pipelines; print(sys.prefix)",
    )  # fmt: skip
    assert proc.stdout.strip() == "/opt/venv"
    # spark-submit's own options go to spark-submit.
    proc = podman("run", "--rm", "--network", "none", image, "--version")
    assert "version 4.1" in proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- local-cluster.yaml


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def local_cluster(image, tmp_path_factory) -> Iterator[dict]:
    """``podman kube play`` of docker/local-cluster.yaml, until its demo container ends.

    Changed for the test only: the pod's and volume's names (unique), each hostPort (a free
    one: inside the pod the containers keep the file's ports) and the project's image (the
    tested tag). The store's image is the file's, built here (``--target s3store``) if
    missing."""
    doc = yaml.safe_load(LOCAL_CLUSTER.read_text())
    containers = {c["name"]: c for c in doc["spec"]["containers"]}
    store = containers["s3"]["image"]
    if podman("image", "exists", store, check=False).returncode != 0:
        log = tmp_path_factory.mktemp("s3store-build") / "build.log"
        base = engine("base", log=log).strip().splitlines()[-1]
        extra = {"EO_BASE": base, **({"EXTRA_CA": str(HOST_CA)} if HOST_CA.is_file() else {})}
        engine("build", store, "--target", "s3store", log=log, extra_env=extra)
    run_id = uuid.uuid4().hex[:8]
    pod = doc["metadata"]["name"] = f"eo-test-pod-{run_id}"
    (volume,) = doc["spec"]["volumes"]
    claim = volume["persistentVolumeClaim"]["claimName"] = f"eo-test-data-{run_id}"
    host_ports: dict[int, int] = {}
    for c in containers.values():
        if c["image"] != store:
            c["image"] = image
        for p in c.get("ports", []):
            p["hostPort"] = host_ports[p["containerPort"]] = free_port()
    path = tmp_path_factory.mktemp("kube") / "local-cluster.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    env = {e["name"]: e["value"] for e in containers["demo"]["env"]}
    started = time.monotonic()
    try:
        podman("kube", "play", str(path))
        code = podman("wait", f"{pod}-demo", timeout=DEMO_TIMEOUT_S).stdout.strip()
        logs = podman("logs", f"{pod}-demo")
        print(f"local-cluster.yaml demo took {time.monotonic() - started:.0f} s")
        endpoint = f"http://127.0.0.1:{host_ports[5000]}"
        yield {
            "code": code,
            "log": logs.stdout + logs.stderr,
            "options": s3_options({**env, "AWS_ENDPOINT_URL": endpoint}),
            "root": "s3://eo-lakehouse/lakehouse",
        }
    finally:
        podman("kube", "down", str(path), check=False)
        podman("volume", "rm", "--force", claim, check=False)


def test_local_cluster_yaml_runs_the_demo_chain_on_its_s3_store(local_cluster):
    log = local_cluster["log"]
    assert local_cluster["code"] == "0", log[-8000:]
    for job in ("ingest", "features", "train", "classify"):
        assert f"{job} run " in log, f"no summary of {job} in the demo's log\n{log[-4000:]}"
    root, options = local_cluster["root"], local_cluster["options"]
    runs = read_table(f"{root}/runs", options).to_pylist()
    assert {(r["job"], r["status"]) for r in runs} >= {
        ("ingest", "succeeded"),
        ("features", "succeeded"),
        ("classify", "succeeded"),
    }
    tiles = Counter(r["scene_id"] for r in read_table(f"{root}/tiles", options).to_pylist())
    predictions = read_table(f"{root}/predictions", options).to_pylist()
    assert tiles and Counter(r["scene_id"] for r in predictions) == tiles
