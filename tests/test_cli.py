"""The jobs as their users meet them: exit codes, messages, console output, no-op runs.

Exit codes (README, "Exit codes"): 0 did what was asked (also: nothing new), 1 an input
rejected with ``--strict`` (tests/test_bad_input.py) or a failed run, 2 a usage or
configuration problem, decided before Spark starts with nothing written.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from model_factory import tiny_bundle

from pipelines import aggregate, classify, features, ingest, train

REPO = Path(__file__).resolve().parents[1]


def written(root: Path) -> list[str]:
    """Everything under ``root`` (nothing, for a refused run)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.fixture(scope="module")
def landsat_source(tmp_path_factory) -> Path:
    """One small demo Landsat scene (a folder of product files)."""
    from pipelines.demo import generate

    out = tmp_path_factory.mktemp("cli_demo")
    generate(out, size=120, seed=3, scenes=["LC09"])
    (scene,) = [p for p in (out / "scenes" / "landsat").iterdir() if p.is_dir()]
    return scene


@pytest.fixture
def s2_model(tmp_path) -> Path:
    """A Sentinel-2-only model bundle."""
    return tiny_bundle(tmp_path / "s2model", ["red", "nir", "ndvi"], ["sentinel2-l2a"]).path


# ----------------------------------------------------------------------------- exit code 2


def test_missing_source_stops_ingest_with_2_naming_the_absolute_path(tmp_path, capsys):
    root = tmp_path / "lake"
    code = ingest.main(["--source", str(tmp_path / "scenes_typo"), "--root", str(root)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"ingest: source {tmp_path / 'scenes_typo'} does not exist" in err
    assert "pass --source with a scene folder or a STAC JSON file" in err
    assert not root.exists()  # no runs, no rejected, no folder


def test_relative_missing_source_is_shown_absolute_with_the_current_folder(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    code = ingest.main(["--source", "data/demo/scenes", "--root", "lake"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"source {tmp_path / 'data/demo/scenes'} does not exist" in err
    assert f"relative paths are read from the current folder {tmp_path}" in err
    assert written(tmp_path) == []


def test_features_on_an_empty_root_says_run_ingest_first(tmp_path, capsys):
    root = tmp_path / "never_ingested"
    assert features.main(["--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert f"features: the table root {root} does not exist" in err
    assert f"Run ingest first: `python -m pipelines.ingest --root {root} --source" in err
    root.mkdir()
    assert features.main(["--root", str(root)]) == 2
    assert f"there is no tiles table under {root}" in capsys.readouterr().err
    assert written(root) == []


def test_train_and_aggregate_on_an_empty_root_say_what_to_run(tmp_path, capsys):
    root = tmp_path / "empty"
    root.mkdir()
    labels = REPO / "conf" / "local.yaml"  # any existing file: the root is checked next
    assert train.main(["--root", str(root), "--labels", str(labels)]) == 2
    assert f"train: there is no tiles table under {root}" in capsys.readouterr().err
    assert train.main(["--root", str(root), "--labels", str(tmp_path / "nope.geojson")]) == 2
    assert f"labels file not found: {tmp_path / 'nope.geojson'}" in capsys.readouterr().err
    assert aggregate.main(["--root", str(root)]) == 2
    assert "aggregate: there is no tiles table under" in capsys.readouterr().err
    assert written(root) == []


def test_classify_on_an_empty_root_with_a_missing_source_stops_with_2(tmp_path, s2_model, capsys):
    root = tmp_path / "lake"
    code = classify.main(
        ["--root", str(root), "--model", str(s2_model), "--source", str(tmp_path / "nowhere")]
    )
    out, err = capsys.readouterr()
    assert code == 2
    assert f"classify: source {tmp_path / 'nowhere'} does not exist" in err
    assert f"model tiny-s2model at {s2_model}" in out  # which bundle it would have used
    assert not root.exists()


def test_classify_on_an_empty_root_with_ingest_never_says_run_ingest(tmp_path, s2_model, capsys):
    root = tmp_path / "lake"
    code = classify.main(["--root", str(root), "--model", str(s2_model), "--ingest", "never"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"there is no tiles table under {root} and --ingest never was given" in err
    assert f"python -m pipelines.ingest --root {root}" in err
    assert not root.exists()


def test_mismatched_model_stops_classify_before_anything_is_ingested(
    tmp_path, s2_model, landsat_source, capsys
):
    root = tmp_path / "lake"
    code = classify.main(["--root", str(root), "--model", str(s2_model), "--source",
                          str(landsat_source)])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 2
    assert (
        f"no tiles under {root} yet: ingest runs first on {landsat_source} (1 scene(s) found)"
        in out
    )
    assert "classify: model tiny-s2model" in err and "landsat-c2l2 not trained on" in err
    assert not root.exists()


# ----------------------------------------------------------------------------- exit code 0


@pytest.mark.spark
def test_nothing_new_is_exit_0_decided_without_spark(spark, tmp_path, landsat_source, capsys,
                                                     monkeypatch):  # fmt: skip
    from pipelines import session
    from pipelines.config import load_config
    from pipelines.lakehouse import Lakehouse

    root = tmp_path / "lake"
    args = ["--root", str(root), "--source", str(landsat_source)]
    assert ingest.main(args) == 0
    assert features.main(["--root", str(root)]) == 0
    capsys.readouterr()

    def no_spark(*a, **k):
        raise AssertionError("a run with nothing to do started Spark")

    monkeypatch.setattr(session, "build_session", no_spark)
    t0 = time.perf_counter()
    assert ingest.main(args) == 0
    assert features.main(["--root", str(root)]) == 0
    took = time.perf_counter() - t0
    out = capsys.readouterr().out
    assert "1 input(s) seen, 0 ingested, 1 already present, 0 rejected" in out
    assert f"skipped (already ingested with the same tiling): {landsat_source.name}" in out
    assert "0 scene(s) processed, 1 already done" in out
    assert took < 5, took
    # The no-op runs are recorded like any other (with delta-rs), and Spark reads them.
    lake = Lakehouse(spark, load_config("local", [f"storage.root={root}"]).storage)
    runs = lake.read("runs").orderBy("started").collect()
    assert [(r.job, r.status, r.ingested, r.skipped) for r in runs] == [
        ("ingest", "succeeded", 1, 0), ("features", "succeeded", 1, 0),
        ("ingest", "succeeded", 0, 1), ("features", "succeeded", 0, 1),
    ]  # fmt: skip


# ----------------------------------------------------------------------------- the console


def console(argv: list[str], cwd: Path) -> tuple[int, list[str]]:
    """Run a job as a user does, stdout and stderr merged (not a terminal)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run(
        [sys.executable, "-m", *argv], cwd=cwd, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=600,
    )  # fmt: skip
    return p.returncode, p.stdout.splitlines()


@pytest.mark.slow
def test_a_demo_job_prints_a_handful_of_lines_before_its_summary(tmp_path, landsat_source):
    root = tmp_path / "lake"
    code, lines = console(
        ["pipelines.ingest", "--root", str(root), "--source", str(landsat_source)], tmp_path
    )
    assert code == 0, "\n".join(lines)
    (start,) = [i for i, line in enumerate(lines) if line.startswith("ingest run ")]
    before = lines[:start]
    assert start <= 4, "\n".join(before)  # no Ivy report, no Spark warnings
    assert not any(":: " in line or " WARN " in line or "log level" in line for line in before)
    assert not any("\r" in line or "[Stage" in line for line in lines)  # no progress bar
    assert "1 ingested" in lines[start]
    # Nothing new: the summary straight away, no JVM at all.
    code, lines = console(
        ["pipelines.ingest", "--root", str(root), "--source", str(landsat_source)], tmp_path
    )
    assert code == 0 and lines[0].startswith("ingest run "), "\n".join(lines)
    assert "0 ingested, 1 already present" in lines[0]
