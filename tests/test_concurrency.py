"""Runs started at the same time over overlapping inputs: exactly one copy of every key.

Each job runs as its own process (``python -m pipelines.<job>``), as two users would start
it; the tables are read back with Spark and with plain pyarrow over the Delta log's files.
The expected keys come from a clean single run of the same inputs, and uniqueness is
counted directly (duplicates are never hidden by a set comparison).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from model_factory import tiny_bundle

from pipelines.datamodel import TABLES

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

#: Small tiles so every scene has several (and several files race per scene).
TILE = "--tile-size=128"


def start(job: str, *args: str) -> subprocess.Popen:
    """Start ``python -m pipelines.<job> args`` as a separate process."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", f"pipelines.{job}", *args], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def finish(procs: list[subprocess.Popen], timeout: float = 400) -> list[tuple[int, str]]:
    """Exit code and console output of each process."""
    return [(p.wait(timeout), p.stdout.read() if p.stdout else "") for p in procs]


def together(*jobs: tuple[str, ...]) -> list[tuple[int, str]]:
    """Start the jobs at once; wait for all of them."""
    return finish([start(*j) for j in jobs])


def keys(root: Path, name: str) -> list[tuple]:
    """Every key of table ``name`` (duplicates kept), read from the files the Delta log
    lists, with pyarrow only."""
    import deltalake
    import pyarrow as pa
    import pyarrow.parquet as pq

    spec = TABLES[name]
    dt = deltalake.DeltaTable(str(root / name))
    out = []
    for a in pa.table(dt.get_add_actions(flatten=True)).to_pylist():
        cols = [k for k in spec.key if k not in spec.partition_by]
        t = pq.read_table(root / name / a["path"], columns=cols).to_pylist()
        parts = {p: a[f"partition.{p}"] for p in spec.partition_by}
        out += [tuple({**parts, **r}[k] for k in spec.key) for r in t]
    return out


def unique_keys(root: Path, name: str) -> set[tuple]:
    found = keys(root, name)
    dup = [k for k, n in Counter(found).items() if n > 1]
    assert not dup, f"{name}: {len(dup)} key(s) twice, e.g. {dup[0]}"
    return set(found)


def summary_counts(out: str, job: str) -> tuple[str, int, int]:
    """(run id, inputs done by this run, inputs found done) from a job's summary line."""
    if job == "ingest":
        m = re.search(r"ingest run (\w+): \d+ input\(s\) seen, (\d+) ingested, (\d+) already", out)
    else:
        m = re.search(
            r"classify run (\w+): model \S+; (\d+) scene\(s\) classified, (\d+) already", out
        )
    assert m, out
    return m.group(1), int(m.group(2)), int(m.group(3))


def runs_rows(root: Path) -> list[dict]:
    import deltalake

    return deltalake.DeltaTable(str(root / "runs")).to_pyarrow_table().to_pylist()


@pytest.fixture(scope="module")
def sources(demo_root: Path) -> dict[str, str]:
    s2 = sorted(str(p) for p in (demo_root / "scenes" / "sentinel2").glob("*.SAFE"))
    ls = sorted(str(p) for p in (demo_root / "scenes" / "landsat").iterdir() if p.is_dir())
    return {
        "all": str(demo_root / "scenes"),
        "s2+1": ",".join([*s2, ls[0]]),
        "ls+1": ",".join([*ls, s2[0]]),
        "s2": str(demo_root / "scenes" / "sentinel2"),
    }


@pytest.fixture(scope="module")
def clean(sources, tmp_path_factory) -> Path:
    """The reference: one ingest of every scene, alone."""
    root = tmp_path_factory.mktemp("clean")
    ((code, out),) = together(("ingest", "--root", str(root), "--source", sources["all"], TILE))
    assert code == 0, out
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "s2"
    return tiny_bundle(path, ["red", "nir", "ndvi"], ["sentinel2-l2a"]).path


def scene_ids(root: Path) -> list[str]:
    return [k[0] for k in keys(root, "scenes")]


@pytest.mark.parametrize(
    "a,b", [("all", "all"), ("s2+1", "ls+1"), ("all", "s2")], ids=["same", "overlap", "subset"]
)
def test_two_ingests_at_once_write_every_key_once(tmp_path, sources, clean, a, b):
    root = tmp_path / "lake"
    results = together(
        ("ingest", "--root", str(root), "--source", sources[a], TILE),
        ("ingest", "--root", str(root), "--source", sources[b], TILE),
    )
    for code, out in results:
        assert code == 0, out
    union = set(scene_ids(clean))  # every pair of sources covers the five scenes
    ids = unique_keys(root, "scenes")
    assert {s for (s,) in ids} == union
    expected_tiles = {k for k in unique_keys(clean, "tiles") if k[0] in union}
    assert unique_keys(root, "tiles") == expected_tiles
    # Each scene was ingested by exactly one of the two runs, which both say so.
    counts = [summary_counts(out, "ingest") for _, out in results]
    assert sum(n for _, n, _ in counts) == len(union)
    recorded = {r["scene_id"]: r["run_id"] for r in _rows(root, "scenes")}
    for run_id, n, _ in counts:
        assert sum(1 for v in recorded.values() if v == run_id) == n
    # A run that found scenes done by the other names it (not itself, not a third run).
    ids_ = [c[0] for c in counts]
    for (_, out), other in zip(results, ids_[::-1], strict=True):
        assert set(re.findall(r"ingested meanwhile by run (\w+)", out)) <= {other}, out
    runs = {r["run_id"]: r for r in runs_rows(root)}
    assert {r["status"] for r in runs.values()} == {"succeeded"}
    assert sorted(runs) == sorted(c[0] for c in counts)
    assert [runs[c[0]]["ingested"] for c in counts] == [c[1] for c in counts]
    # Files of scenes a run found done by the other are deleted, not left behind.
    on_disk = {p.name for p in (root / "tiles").rglob("*.parquet")}
    assert on_disk == {Path(f).name for f in _files(root, "tiles")}


def _rows(root: Path, name: str) -> list[dict]:
    import deltalake

    return deltalake.DeltaTable(str(root / name)).to_pyarrow_table().to_pylist()


def _files(root: Path, name: str) -> list[str]:
    import deltalake
    import pyarrow as pa

    acts = pa.table(deltalake.DeltaTable(str(root / name)).get_add_actions(flatten=True))
    return acts.column("path").to_pylist()


def test_two_classify_runs_at_once_write_every_key_once(tmp_path, sources, model):
    root = tmp_path / "lake"
    ((code, out),) = together(("ingest", "--root", str(root), "--source", sources["s2"], TILE))
    assert code == 0, out
    model_id = f"tiny-{model.name}"
    for flags in ([], ["--rebuild"]):  # two first runs, then two rebuilds of the same maps
        results = together(
            ("classify", "--root", str(root), "--model", str(model), *flags),
            ("classify", "--root", str(root), "--model", str(model), *flags),
        )
        for code, out in results:
            assert code == 0, out
        tiles = unique_keys(root, "tiles")
        assert unique_keys(root, "tile_features") == tiles
        assert unique_keys(root, "predictions") == {(model_id, *k) for k in tiles}
        assert unique_keys(root, "tile_predictions") == {(model_id, *k) for k in tiles}
        assert unique_keys(root, "models") == {(model_id,)}
        unique_keys(root, "composites")
        unique_keys(root, "class_area")
        counts = [summary_counts(out, "classify") for _, out in results]
        n_scenes = len(scene_ids(root))
        if not flags:  # each scene classified by exactly one of the two
            assert sum(n for _, n, _ in counts) == n_scenes, [out for _, out in results]
            assert all(n + done == n_scenes for _, n, done in counts)
        # Every map and its counts come from the same run.
        maps = {(r["scene_id"], r["tile_row"], r["tile_col"]): r["run_id"]
                for r in _rows(root, "predictions")}  # fmt: skip
        for r in _rows(root, "tile_predictions"):
            assert maps[(r["scene_id"], r["tile_row"], r["tile_col"])] == r["run_id"]
    runs = runs_rows(root)
    assert {r["status"] for r in runs} == {"succeeded"}
    assert sorted(r["job"] for r in runs if r["job"] == "classify") == ["classify"] * 4


APPENDER = str(Path(__file__).with_name("runs_appender.py"))  # six runs rows, delta-rs


def test_concurrent_arrow_appends_of_the_same_keys_keep_one_copy(tmp_path):
    """Four processes append overlapping keys with delta-rs at once (no Spark): every
    key once, and each process says which keys it found written by another."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen([sys.executable, APPENDER, str(tmp_path), str(first)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for first in (0, 2, 4, 6)
    ]  # fmt: skip
    outs = [(p.wait(120), p.stdout.read() if p.stdout else "") for p in procs]
    for code, out in outs:
        assert code == 0, out
    assert sorted(unique_keys(tmp_path, "runs")) == [(f"r{i:03d}",) for i in range(12)]
    said = Counter(line.split()[0] for _, out in outs for line in out.splitlines()
                   if line.endswith("written"))  # fmt: skip
    assert said == Counter(f"r{i:03d}" for i in range(12))  # each written by exactly one
