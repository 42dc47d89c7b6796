"""Daily incremental runs (``ingest.since``): the watermark from ``runs``, what a run examines.

* Pure logic (:mod:`pipelines.incremental`): names to acquisition days, the watermark from
  ``runs`` and ``scenes`` rows, the window a configuration gives, the accounting.
* The daily schedule, as jobs in their own processes: day 1's scenes, then day 2's added
  to the same folder; the day-2 run reads only day 2 (day 1's files are emptied after day
  1, so any read of them would reject them) and every table equals a from-scratch run
  over both days. A day-2 run killed mid-way and run again ends equal too.

Expected values come from the demo's known acquisition dates, written out here by hand.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pipelines.config import load_config
from pipelines.incremental import (
    BEFORE,
    KNOWN,
    Found,
    Passed,
    Window,
    account,
    acquired_by,
    parse_since,
    watermark,
    window_for,
)
from udfs.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
UTC = timezone.utc


def t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# ----------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "name, day",
    [
        ("S2B_MSIL2A_20240621T103629_N0510_R008_T31UFS_20240621T133010.SAFE", "2024-06-21"),
        ("S2B_MSIL2A_20240621T103629_N0510_R008_T31UFS_20240621T133010", "2024-06-21"),
        ("S2A_MSIL1C_20170729T153911_N0205_R011_T19UDP_20170729T154128", "2017-07-29"),
        ("S2A_29RKH_20200219_0_L2A", "2020-02-19"),
        ("LC09_L2SP_198025_20240726_20240801_02_T1", "2024-07-26"),
        ("LT05_L2SP_198025_19950101_20200909_02_T1", "1995-01-01"),
    ],
)
def test_a_product_name_dates_it_to_the_end_of_the_next_day(name, day):
    assert acquired_by(name) == t(day) + timedelta(days=2)


@pytest.mark.parametrize(
    "name", ["scene_0001", "S2B_MSIL2A_20241341T103629_N0510_x", "LC09_L2SP_198025", ""]
)
def test_a_name_without_a_valid_date_gives_no_time(name):
    assert acquired_by(name) is None


def test_since_is_all_watermark_or_an_iso_date_or_time():
    assert parse_since("all") is None and parse_since("watermark") is None
    assert parse_since("2024-07-01") == t("2024-07-01T00:00:00")
    assert parse_since("2024-07-01T12:30:00") == t("2024-07-01T12:30:00")
    assert parse_since("2024-07-01T12:30:00+02:00") == t("2024-07-01T10:30:00")
    with pytest.raises(ValueError):
        parse_since("yesterday")


@pytest.mark.parametrize(
    "override, words",
    [
        ("ingest.since=last-week", "ingest.since must be all, watermark or an ISO date"),
        ("ingest.watermark_by=mtime", "ingest.watermark_by must be acquired or arrival"),
        ("ingest.lookback_days=-1", "ingest.lookback_days must be 0..36600"),
        ("ingest.lookback_days=inf", "ingest.lookback_days must be 0..36600"),
        ("ingest.since_when=all", "unknown key ingest.since_when"),
    ],
)
def test_a_bad_incremental_setting_names_the_key(override, words):
    with pytest.raises(ConfigError, match=words):
        load_config("local", [override])


# ----------------------------------------------------------------------------- watermark

SRC = "/data/scenes"


def run(run_id, status="succeeded", started="2024-07-02T06:00:00", job="ingest", source=SRC):
    return {"run_id": run_id, "job": job, "source": source, "status": status,
            "started": t(started)}  # fmt: skip


def scene(scene_id, acquired, run_id, digest="d"):
    return {"scene_id": scene_id, "acquired": t(acquired), "run_id": run_id,
            "tiling_digest": digest}  # fmt: skip


RUNS = [
    run("r1", started="2024-07-01T06:00:00"),
    run("r2", "failed", "2024-07-02T06:00:00"),
    run("r3", "killed", "2024-07-03T06:00:00"),
    run("r4", "running", "2024-07-04T06:00:00"),
    run("f1", started="2024-07-05T06:00:00", job="features"),
    run("o1", started="2024-07-06T06:00:00", source="/other/scenes"),
]
SCENES = [
    scene("A", "2024-06-20T10:00:00", "r1"),
    scene("B", "2024-06-29T10:00:00", "r1"),
    scene("C", "2024-06-30T10:00:00", "r2"),  # committed by a run that then failed
    scene("D", "2024-07-01T10:00:00", "r3"),  # ... and one that was killed
    scene("E", "2024-07-02T10:00:00", "o1"),  # another source's run
]


def test_only_succeeded_ingest_runs_of_the_same_source_move_the_watermark():
    by_arrival = watermark(RUNS, SCENES, SRC, "arrival")
    assert (by_arrival.at, by_arrival.run_id) == (t("2024-07-01T06:00:00"), "r1")
    by_acquisition = watermark(RUNS, SCENES, SRC, "acquired")
    assert (by_acquisition.at, by_acquisition.scene_id) == (t("2024-06-29T10:00:00"), "B")
    other = watermark(RUNS, SCENES, "/other/scenes", "acquired")
    assert (other.at, other.scene_id) == (t("2024-07-02T10:00:00"), "E")


def test_no_succeeded_run_no_watermark():
    failed_only = [r for r in RUNS if r["run_id"] != "r1" and r["source"] == SRC]
    assert watermark(failed_only, SCENES, SRC, "arrival") is None
    assert watermark(failed_only, SCENES, SRC, "acquired") is None
    # A succeeded run that committed no scene sets no acquisition watermark.
    assert watermark([run("r9")], SCENES, SRC, "acquired") is None
    assert watermark([run("r9")], [], SRC, "arrival").run_id == "r9"


def cfg(**ingest):
    """A configuration with these ``ingest`` settings (validated as a profile would be)."""
    return load_config("local", [f"ingest.{k}={v}" for k, v in {"source": SRC, **ingest}.items()])


def current(rows):
    """The scene rows with the tiling digest of the default configuration."""
    return [{**r, "tiling_digest": cfg().ingest.tiling_digest()} for r in rows]


def test_the_window_is_the_watermark_less_the_lookback():
    window, note = window_for(cfg(since="watermark", lookback_days=3), RUNS, current(SCENES))
    assert window.by == "acquired"
    assert window.cutoff == t("2024-06-26T10:00:00")  # B's acquisition less 3 days
    assert window.known == {"A", "B", "C", "D", "E"}  # every scene of this tiling
    assert "acquisition of B, succeeded run r1" in note
    window, _ = window_for(
        cfg(since="watermark", watermark_by="arrival", lookback_days=0.5), RUNS, current(SCENES)
    )
    assert (window.by, window.cutoff) == ("arrival", t("2024-06-30T18:00:00"))


def test_an_explicit_date_ignores_runs_and_lookback():
    window, note = window_for(cfg(since="2024-06-01", lookback_days=30), RUNS, current(SCENES))
    assert window.cutoff == t("2024-06-01T00:00:00")
    assert "since 2024-06-01T00:00:00Z" in note


def test_everything_is_examined_for_all_rebuild_other_tilings_or_no_run_yet():
    assert window_for(cfg(), RUNS, current(SCENES)) == (None, "")  # since=all: today's way
    window, note = window_for(cfg(since="watermark", rebuild="true"), RUNS, current(SCENES))
    assert window is None and "ingest.rebuild" in note
    mixed = [*current(SCENES[:2]), scene("Z", "2024-01-01T00:00:00", "r1", digest="other")]
    window, note = window_for(cfg(since="watermark"), RUNS, mixed)
    assert window is None and "1 scene(s) (e.g. Z) are tiled with other settings" in note
    window, note = window_for(cfg(since="watermark"), [], current(SCENES))
    assert window.cutoff is None and window.known == {"A", "B", "C", "D", "E"}
    assert "no succeeded ingest run" in note


def test_a_product_is_passed_only_when_certainly_older_than_the_cutoff():
    w = Window("acquired", t("2024-07-01T00:00:00"), frozenset({"K"}))
    assert w.why_not_read("X", t("2024-06-30T23:59:59"), None) == BEFORE
    assert w.why_not_read("X", t("2024-07-01T00:00:00"), None) is None  # at the cutoff: read
    assert w.why_not_read("X", None, None) is None  # undated: read
    assert w.why_not_read("K", t("2024-07-05T00:00:00"), None) == KNOWN
    assert w.why_not_read("X", None, t("2024-01-01T00:00:00")) is None  # arrival not asked
    a = Window("arrival", t("2024-07-01T00:00:00"))
    assert a.why_not_read("X", t("2020-01-01T00:00:00"), None) is None
    assert a.why_not_read("X", None, t("2024-06-30T00:00:00")) == BEFORE


def counts(seen: int = 0, skipped: list[str] | None = None) -> SimpleNamespace:
    """The accounting fields of a :class:`pipelines.runs.Run`."""
    return SimpleNamespace(seen=seen, skipped=skipped or [], before_watermark=[], watermark="")


def test_passed_products_are_counted_as_seen_and_skipped_and_said():
    r = counts(2, ["S0"])
    passed = [Passed("A", "/a", BEFORE), Passed("B", "/b", BEFORE), Passed("C", "/c", KNOWN)]
    cutoff = "acquired before 2024-06-14T10:36:29Z"
    line = account(r, Found([], passed, "watermark by acquisition time ...", cutoff))
    assert (r.seen, r.skipped) == (5, ["S0", "A", "B", "C"])
    assert (r.before_watermark, r.watermark) == (["A", "B"], cutoff)
    assert line == (
        "ingest: watermark by acquisition time ...; not read: 2 before watermark, "
        "1 already ingested (counted as skipped)"
    )
    assert account(counts(), Found([], [], "")) == ""  # since=all
    first = Found([], [], "no succeeded ingest run of /x yet")
    assert account(counts(1), first) == (
        "ingest: no succeeded ingest run of /x yet; every listed scene examined"
    )


# ----------------------------------------------------------------------------- daily runs

#: The demo's acquisitions (pipelines/demo/scenes.py), by day of the schedule.
DAY1 = (
    "S2A_MSIL2A_20240412T103621_N0300_R008_T31UFS_20240412T165012",
    "LC08_L2SP_198025_20240515_20240521_02_T1",
    "S2B_MSIL2A_20240621T103629_N0510_R008_T31UFS_20240621T133010",
)
DAY2 = (
    "LC09_L2SP_198025_20240726_20240801_02_T1",
    "S2A_MSIL2A_20240830T103631_N0510_R008_T31UFS_20240830T151502",
)
DAILY = ("--set", "ingest.since=watermark", "--set", "ingest.lookback_days=7", "--tile-size=64")


@pytest.fixture(scope="module")
def products(tmp_path_factory) -> dict[str, Path]:
    """scene id -> product folder of the five demo scenes (small)."""
    from pipelines.demo import generate

    out = tmp_path_factory.mktemp("incremental_demo")
    generate(out, size=120, seed=3)
    folders = [p for p in (out / "scenes").glob("*/*") if p.is_dir()]
    return {p.name.removesuffix(".SAFE"): p for p in folders}


def put(products: dict[str, Path], ids: tuple[str, ...], source: Path) -> None:
    for i in ids:
        shutil.copytree(products[i], source / products[i].name)


def start(*args: str, job: str = "ingest") -> subprocess.Popen:
    """``python -m pipelines.<job> args`` in its own process, as a scheduler starts it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", f"pipelines.{job}", *args], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def ingest(*args: str, job: str = "ingest") -> str:
    proc = start(*args, job=job)
    out = proc.communicate(timeout=600)[0]
    print(out)  # shown with pytest -s, or when the test fails
    assert proc.returncode == 0, out
    return out


def rows(root: Path, name: str, drop: tuple[str, ...] = ()) -> list[dict]:
    """Every row of a table (delta-rs snapshot), sorted by key, without ``drop`` columns."""
    import deltalake

    table = deltalake.DeltaTable(str(root / name)).to_pyarrow_table().to_pylist()
    out = [{k: v for k, v in r.items() if k not in drop} for r in table]
    return sorted(out, key=lambda r: (r["scene_id"], r.get("tile_row", 0), r.get("tile_col", 0)))


def runs_of(root: Path) -> list[dict]:
    import deltalake

    table = deltalake.DeltaTable(str(root / "runs")).to_pyarrow_table().to_pylist()
    return sorted(table, key=lambda r: r["started"])


def empty_files(folder: Path) -> None:
    """Truncate every file under ``folder`` to 0 bytes (names kept): reading any of them
    (metadata or band) fails, so a run that reads one rejects its scene."""
    for p in folder.rglob("*"):
        if p.is_file():
            p.write_bytes(b"")


VOLATILE = ("run_id", "ingested_at")


@pytest.mark.slow
def test_day_two_reads_only_its_scenes_and_equals_a_run_over_both_days(tmp_path, products):
    source = tmp_path / "scenes"
    scratch, lake, killed = tmp_path / "scratch", tmp_path / "lake", tmp_path / "killed"
    # From scratch: both days at once, from the same folder path (scenes record it).
    source.mkdir()
    put(products, DAY1 + DAY2, source)
    ingest("--source", str(source), "--root", str(scratch), "--tile-size=64")
    ingest("--root", str(scratch), job="features")
    shutil.rmtree(source)

    # Day 1.
    source.mkdir()
    put(products, DAY1, source)
    out = ingest("--source", str(source), "--root", str(lake), *DAILY)
    assert "no succeeded ingest run" in out  # the first run examines everything
    (day1,) = runs_of(lake)
    assert (day1["status"], day1["inputs_seen"], day1["ingested"]) == ("succeeded", 3, 3)
    shutil.copytree(lake, killed)  # the same day 1, for the killed day 2 below
    ingest("--root", str(lake), job="features")

    # Day 2: day 1's files emptied (a read of any of them would reject its scene), day 2's
    # scenes copied in.
    for i in DAY1:
        empty_files(source / products[i].name)
    put(products, DAY2, source)
    out = ingest("--source", str(source), "--root", str(lake), *DAILY)
    assert "not read: 2 before watermark, 1 already ingested (counted as skipped)" in out
    day2 = runs_of(lake)[-1]
    counts = {k: day2[k] for k in ("status", "inputs_seen", "ingested", "skipped", "rejected")}
    assert counts == {"status": "succeeded", "inputs_seen": 5, "ingested": 2, "skipped": 3,
                      "rejected": 0}  # fmt: skip
    assert {s["scene_id"] for s in rows(lake, "scenes") if s["run_id"] == day2["run_id"]} == set(
        DAY2
    )
    assert rows(lake, "tiles") == rows(scratch, "tiles")  # keys and pixel bytes
    assert rows(lake, "scenes", VOLATILE) == rows(scratch, "scenes", VOLATILE)
    ingest("--root", str(lake), job="features")
    feats = runs_of(lake)[-1]  # ingested / skipped count scenes for features
    assert (feats["job"], feats["ingested"], feats["skipped"]) == ("features", 2, 3)
    assert rows(lake, "tile_features", ("run_id",)) == rows(scratch, "tile_features", ("run_id",))

    # Day 2 killed once its first tile file is written, then run again.
    before = set((killed / "tiles").rglob("*.parquet"))
    proc = start("--source", str(source), "--root", str(killed), *DAILY)
    deadline = time.monotonic() + 300
    while not set((killed / "tiles").rglob("*.parquet")) - before:
        assert proc.poll() is None, "the run ended before writing a tile file"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    ingest("--source", str(source), "--root", str(killed), *DAILY)
    statuses = [r["status"] for r in runs_of(killed)]
    assert statuses == ["succeeded", "killed", "succeeded"]
    stopped, again = runs_of(killed)[1:]
    # Whatever the killed run had committed is skipped by id; the rest is ingested now.
    committed = {s["scene_id"] for s in rows(killed, "scenes") if s["run_id"] == stopped["run_id"]}
    print("scenes committed by the killed run:", sorted(committed))
    assert again["ingested"] == len(DAY2) - len(committed)
    assert again["ingested"] + again["skipped"] + again["rejected"] == again["inputs_seen"] == 5
    assert again["rejected"] == 0
    assert rows(killed, "tiles") == rows(scratch, "tiles")
    assert rows(killed, "scenes", VOLATILE) == rows(scratch, "scenes", VOLATILE)


# ----------------------------------------------------------------------------- preflight


def day_one_lake(products: dict[str, Path], tmp_path: Path) -> tuple[Any, Path]:
    """A local root as a succeeded day-1 run left it (``runs`` and ``scenes`` rows written
    with delta-rs, no Spark), its source folder holding day 1's products, emptied: a run
    that reads any of them (metadata included) rejects it."""
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema

    from pipelines.datamodel import RUNS, SCENES
    from pipelines.preflight import driver_lake
    from pipelines.runs import Run, run_row

    source = tmp_path / "scenes"
    source.mkdir()
    put(products, DAY1, source)
    config = load_config("local", [
        f"storage.root={tmp_path / 'lake'}", f"ingest.source={source}", "ingest.tile_size=64",
        "ingest.since=watermark", "ingest.lookback_days=7",
    ])  # fmt: skip
    lake = driver_lake(config)
    day1 = Run(config)
    lake.append_arrow("runs", pa.Table.from_pylist([run_row(day1, "succeeded")],
                                                   schema=to_arrow_schema(RUNS)))  # fmt: skip
    scenes = [
        {"scene_id": i, "sensor": "sentinel2-l2a" if i.startswith("S2") else "landsat-c2l2",
         "acquired": ACQUIRED[i], "acquired_date": ACQUIRED[i].date(), "width": 120,
         "height": 120, "run_id": day1.run_id, "tiling_digest": config.ingest.tiling_digest()}
        for i in DAY1
    ]  # fmt: skip
    lake.append_arrow("scenes", pa.Table.from_pylist(scenes, schema=to_arrow_schema(SCENES)))
    for i in DAY1:
        empty_files(source / products[i].name)
    return config, source


#: Acquisition times of day 1 (the demo's, by hand): the watermark is the newest, less 7
#: days of lookback: 2024-06-14T10:36:29Z. The first two are before it, the third is in.
ACQUIRED = {
    DAY1[0]: t("2024-04-12T10:36:21"),
    DAY1[1]: t("2024-05-15T10:30:00"),
    DAY1[2]: t("2024-06-21T10:36:29"),
}


def test_a_daily_preflight_reads_only_the_new_products(tmp_path, products):
    """The "nothing to do" check of a watermark run passes old and known products from
    their listing: with day 1's files unreadable it still finds the run settled, and counts
    them as the full ingest does; a new product makes it unsettled."""
    from pipelines.preflight import driver_lake, ingest_settled
    from pipelines.runs import Run

    config, source = day_one_lake(products, tmp_path)
    lake = driver_lake(config)
    run = Run(config)
    assert ingest_settled(run, lake)  # a full discovery would reject the emptied products
    assert (run.seen, sorted(run.skipped)) == (3, sorted(DAY1))
    assert sorted(run.before_watermark) == sorted(DAY1[:2])
    put(products, DAY2[:1], source)
    assert not ingest_settled(Run(config), lake)


def test_the_summary_names_products_before_the_watermark_apart_from_ingested_ones(
    tmp_path, products
):
    from pipelines.ingest import summary
    from pipelines.preflight import driver_lake, ingest_settled
    from pipelines.runs import Run, run_row

    config, _ = day_one_lake(products, tmp_path)
    lake = driver_lake(config)
    run = Run(config)
    assert ingest_settled(run, lake)
    text = summary(run, lake)
    print(text)
    first = text.splitlines()[0]
    assert "3 input(s) seen, 0 ingested, 1 already present, 2 before the watermark," in first
    (known,) = [line for line in text.splitlines() if "already ingested" in line]
    assert known.strip() == f"skipped (already ingested with the same tiling): {DAY1[2]}"
    (older,) = [line for line in text.splitlines() if "before the watermark (" in line]
    assert older.strip() == (
        "not read (before the watermark (acquired before 2024-06-14T10:36:29Z)): "
        f"{', '.join(run.before_watermark)}"
    )
    assert set(run.before_watermark) == set(DAY1[:2])
    # The runs row counts them as before: every passed product seen and skipped.
    row = run_row(run, "succeeded")
    assert (row["inputs_seen"], row["skipped"], row["ingested"]) == (3, 3, 0)
