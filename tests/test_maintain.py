"""The maintenance job on real Delta and Parquet tables: rows unchanged, files compacted,
unreferenced files and stale staging folders removed, unsafe retention refused."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import pytest

from pipelines.config import load_config
from pipelines.datamodel import TABLES
from pipelines.ingest import ingest
from pipelines.lakehouse import Lakehouse
from pipelines.maintain import cluster_columns, data_files, main, maintain
from pipelines.runs import Run

S2 = "S2B_MSIL2A_20240621T103629_N0510_R008_T31UFS_20240621T133010"


def test_cluster_columns_skip_partition_columns():
    assert cluster_columns(TABLES["tiles"]) == ["scene_id", "tile_row", "tile_col"]
    assert cluster_columns(TABLES["composites"])[0] == "grid_id"
    assert all(c not in TABLES[n].partition_by for n in TABLES for c in cluster_columns(TABLES[n]))


def test_a_short_retention_needs_force_and_is_refused_before_spark(tmp_path, capsys):
    code = main(["--root", str(tmp_path / "lake"), "--retention-hours", "1"])
    assert code == 2
    assert "--force" in capsys.readouterr().err
    assert not (tmp_path / "lake").exists()  # nothing written
    assert main(["--root", str(tmp_path / "lake"), "--tables", "tilez"]) == 2


def digest_rows(lake: Lakehouse, name: str) -> list[tuple]:
    """Every row of a table, each as its key and a digest of all its values."""
    key = list(TABLES[name].key)
    out = []
    for r in lake.read(name).collect():
        d = r.asDict(recursive=True)
        blob = repr(sorted((k, v) for k, v in d.items() if k != "file")).encode()
        out.append((tuple(d[k] for k in key), hashlib.sha256(blob).hexdigest()))
    return sorted(out)


def make_old(path: Path) -> None:
    past = time.time() - 3 * 86400
    os.utime(path, (past, past))


@pytest.mark.spark
@pytest.mark.parametrize("fmt", ["delta", "parquet"])
def test_maintain_keeps_every_row_and_removes_what_no_version_references(
    spark, demo_root, tmp_path, fmt
):
    scene = demo_root / "scenes" / "sentinel2" / f"{S2}.SAFE"
    cfg = load_config("local", [f"ingest.source={scene}", f"storage.root={tmp_path / 'lake'}",
                                f"storage.format={fmt}", "ingest.tile_size=128"])  # fmt: skip
    lake = Lakehouse(spark, cfg.storage)
    ingest(spark, lake, Run(cfg))
    before = {n: digest_rows(lake, n) for n in ("tiles", "scenes")}
    tiles = Path(lake.local_path("tiles"))
    n_files, _ = data_files(str(tiles))
    # What a killed run leaves: a data file no version references (Delta), a staging
    # folder of an interrupted Spark write (Parquet); both three days old.
    some = next(tiles.rglob("*.parquet"))
    orphan = some.with_name("part-orphan-of-a-killed-task.zstd.parquet")
    if fmt == "delta":
        shutil.copy(some, orphan)
        make_old(orphan)
    staging = tiles / "_temporary" / "0" / "task_1"
    staging.mkdir(parents=True)
    (staging / "part-0.parquet").write_bytes(b"half a file")
    make_old(staging.parent.parent)
    report = maintain(spark, lake, Run(cfg, job="maintain"), retention_hours=24)
    assert {n: digest_rows(lake, n) for n in ("tiles", "scenes")} == before
    assert not orphan.exists()
    if fmt == "delta":
        assert report["tiles"]["files_before"] == n_files + 1
        # The orphan is gone; files OPTIMIZE just replaced stay for the retention.
        assert report["tiles"]["files_after"] <= n_files + 1
    else:
        assert report["tiles"]["files_after"] == n_files
    assert not (tiles / "_temporary").exists()
    # A file younger than the retention is kept (a job may be about to commit it).
    if fmt == "delta":
        young = some.with_name("part-young-uncommitted.zstd.parquet")
        shutil.copy(some, young)
        maintain(spark, lake, Run(cfg, job="maintain"), tables=["tiles"], retention_hours=24)
        assert young.exists()
        assert digest_rows(lake, "tiles") == before["tiles"]
