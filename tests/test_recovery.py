"""Killed runs, re-tiled scenes and strict mode: what a table shows is always whole.

* A run killed with SIGKILL while its executors write tiles leaves nothing readable; the
  next run marks it ``killed`` and writes tables equal to a clean run's (keys and pixels).
* ``ingest --rebuild`` with another tile size leaves no row derived from the old tiles
  (features, predictions, counts, analysis rows); the next jobs recompute them.
* ``--strict`` with a bad scene among good ones: exit 1, nothing of the run in the tables.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import deltalake
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from model_factory import tiny_bundle
from test_concurrency import finish, keys, start, together, unique_keys

from pipelines import classify, features, ingest
from pipelines.config import load_config
from pipelines.lakehouse import Lakehouse
from pipelines.runs import process_alive, run_alive

pytestmark = pytest.mark.slow


def committed(root: Path, name: str) -> set[str]:
    """File names the Delta log of table ``name`` lists now."""
    acts = pa.table(deltalake.DeltaTable(str(root / name)).get_add_actions(flatten=True))
    return {Path(p).name for p in acts.column("path").to_pylist()}


def on_disk(root: Path, name: str) -> set[str]:
    return {p.name for p in (root / name).rglob("*.parquet")}


def table_rows(root: Path, name: str, drop: tuple[str, ...] = ()) -> list[dict]:
    """Every row of a table, sorted by key, without the ``drop`` columns; read with pyarrow
    from the files the Delta log lists (partition columns from the folder names)."""
    dt = deltalake.DeltaTable(str(root / name))
    rows = []
    for a in pa.table(dt.get_add_actions(flatten=True)).to_pylist():
        parts = {k.split(".", 1)[1]: v for k, v in a.items() if k.startswith("partition.")}
        rows += [{**r, **parts} for r in pq.read_table(root / name / a["path"]).to_pylist()]
    rows = [{k: v for k, v in r.items() if k not in drop} for r in rows]
    return sorted(rows, key=lambda r: (r["scene_id"], r.get("tile_row", 0), r.get("tile_col", 0)))


def runs_of(root: Path) -> dict[str, dict]:
    table = deltalake.DeltaTable(str(root / "runs")).to_pyarrow_table()
    return {r["run_id"]: r for r in table.to_pylist()}


def test_a_run_killed_while_writing_tiles_is_recovered_by_the_next(tmp_path, demo_root):
    source = str(demo_root / "scenes")
    args = ["--source", source, "--tile-size=64"]
    clean, root = tmp_path / "clean", tmp_path / "lake"
    ((code, out),) = together(("ingest", "--root", str(clean), *args))
    assert code == 0, out

    proc = start("ingest", "--root", str(root), *args)
    deadline = time.monotonic() + 300
    while not ((root / "tiles").exists() and on_disk(root, "tiles")):
        assert proc.poll() is None, "the run ended before writing a tile file"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    ((code, out),) = finish([proc])
    assert code == -signal.SIGKILL
    # Mid-way: files written, none of them part of the table; no scene recorded.
    assert on_disk(root, "tiles") - committed(root, "tiles")
    assert keys(root, "tiles") == []
    assert not (root / "scenes").exists() or keys(root, "scenes") == []
    (killed,) = runs_of(root).values()
    assert (killed["job"], killed["status"]) == ("ingest", "running")

    ((code, out),) = together(("ingest", "--root", str(root), *args))
    assert code == 0, out
    assert "5 ingested" in out
    runs = runs_of(root)
    assert runs[killed["run_id"]]["status"] == "killed"
    assert sorted(r["status"] for r in runs.values()) == ["killed", "succeeded"]
    # Tables equal a clean run's: keys and pixel bytes, scene records but their run.
    assert table_rows(root, "tiles") == table_rows(clean, "tiles")
    volatile = ("run_id", "ingested_at")
    assert table_rows(root, "scenes", volatile) == table_rows(clean, "scenes", volatile)
    unique_keys(root, "tiles")


@pytest.fixture
def s2_source(demo_root, tmp_path) -> Path:
    src = tmp_path / "s2"
    shutil.copytree(demo_root / "scenes" / "sentinel2", src)
    return src


DOWNSTREAM = ("tile_features", "predictions", "tile_predictions", "class_area")


def test_rebuild_with_another_tile_size_leaves_no_stale_downstream_row(spark, tmp_path, s2_source):
    root = tmp_path / "lake"
    model = tiny_bundle(tmp_path / "m", ["red", "nir", "ndvi"], ["sentinel2-l2a"]).path
    lake = Lakehouse(spark, load_config("local", [f"storage.root={root}"]).storage)
    base = ["--root", str(root), "--source", str(s2_source)]
    assert ingest.main([*base, "--tile-size=128"]) == 0
    assert classify.main(["--root", str(root), "--model", str(model)]) == 0
    ids = sorted(r.scene_id for r in lake.read("scenes").collect())
    for name in DOWNSTREAM:
        assert lake.read(name).count() > 0, name
    old_tiles = unique_keys(root, "tiles")

    assert ingest.main([*base, "--tile-size=64", "--rebuild"]) == 0
    new_tiles = unique_keys(root, "tiles")
    assert max(r for _, r, _ in new_tiles) == 2 * max(r for _, r, _ in old_tiles) + 1
    scenes = lake.read("scenes").collect()
    assert sorted(s.scene_id for s in scenes) == ids
    assert {s.tile_size for s in scenes} == {64}
    for name in DOWNSTREAM:  # nothing computed from the old tiles is readable
        assert lake.read(name).count() == 0, name

    # The next jobs recompute them on the new tiles (features, maps, composites).
    assert features.main(["--root", str(root)]) == 0
    assert unique_keys(root, "tile_features") == new_tiles
    assert classify.main(["--root", str(root), "--model", str(model)]) == 0
    assert unique_keys(root, "predictions") == {(f"tiny-{model.name}", *k) for k in new_tiles}
    assert {r.width for r in lake.read("composites").select("width").distinct().collect()} <= {64}


def test_strict_fails_before_anything_of_the_run_is_committed(spark, tmp_path, demo_root, capsys):
    from test_bad_input import clone, landsat_folder, one

    src = tmp_path / "src"
    good = landsat_folder(demo_root)
    shutil.copytree(good, src / good.name)
    shutil.copytree(demo_root / "scenes" / "sentinel2", src / "s2")
    bad = clone(good, src, "LC08_L2SP_198025_20240201_20240202_02_T1")
    band = one(bad, "_SR_B3.TIF")
    band.write_bytes(band.read_bytes()[: band.stat().st_size // 3])  # unreadable pixels
    root = tmp_path / "lake"
    assert ingest.main(["--source", str(src), "--root", str(root), "--strict"]) == 1
    assert bad.name in capsys.readouterr().err
    lake = Lakehouse(spark, load_config("local", [f"storage.root={root}"]).storage)
    assert lake.read("tiles").count() == 0
    assert lake.read("scenes").count() == 0
    assert on_disk(root, "tiles") == set()  # the run's own files are gone too
    (run,) = lake.read("runs").collect()
    assert run.status == "failed"
    # Rejected while reading pixels on the executors, after the good scenes' tiles were
    # written: those files never became part of the table.
    assert [(r.scene_id, r.stage) for r in lake.read("rejected").collect()] == [(bad.name, "read")]


def test_a_dead_process_is_told_from_a_live_one_and_from_another_host():
    now = datetime.now(timezone.utc)
    p = subprocess.Popen(["sleep", "30"])
    assert process_alive(p.pid, now)
    p.kill()
    p.wait()
    assert not process_alive(p.pid, now)
    # Our own process started before now; had the run started before it, the id was reused.
    assert process_alive(os.getpid(), now)
    assert not process_alive(os.getpid(), now - timedelta(days=365))
    row = {"status": "running", "host": "another-host", "pid": p.pid, "started": now}
    assert run_alive(row)  # cannot be checked from here
    assert not run_alive({**row, "status": "succeeded"})
    assert not run_alive({**row, "host": socket.gethostname()})
