"""The whole chain on object storage (issue 15): scenes read from, and every table written
to, a real S3-compatible server (moto's server on 127.0.0.1, :mod:`s3server`).

Three demo scenes (two Sentinel-2 dates of one grid and a Landsat scene) are uploaded to
the bucket; ``ingest -> features -> classify -> aggregate`` run through the jobs' own
``main`` with the source *and* the table root on the bucket, then the same chain runs with
a local source and root. Every table of the bucket must equal the local run's, row for
row (run ids, timestamps, digests of run ids and source paths left out), read back twice:
with Spark (``spark.read.format("delta").load("s3a://...")``) and without it (delta-rs
lists the snapshot's files, pyarrow reads them from the server).

The chain runs in a child Python process with its own Spark session: S3A's jars join a
JVM's class path only when it starts, and this test session's shared ``spark`` fixture may
have started without them. The child is this file run as a script (:func:`run_chains`);
the client side knows the server only through the AWS environment variables.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from s3server import (  # noqa: F401 (s3_server: the `s3` fixture, used by name)
    ACCESS_KEY,
    REGION,
    SECRET_KEY,
    S3Server,
    s3_server,
    upload_tree,
)

pytestmark = [pytest.mark.spark, pytest.mark.slow]

BUCKET = "eo-chain"
JUNE = "S2B_MSIL2A_20240621T103629_N0510_R008_T31UFS_20240621T133010"
AUGUST = "S2A_MSIL2A_20240830T103631_N0510_R008_T31UFS_20240830T151502"
LANDSAT = "LC08_L2SP_198025_20240515_20240521_02_T1"
FOLDERS = (f"sentinel2/{JUNE}.SAFE", f"sentinel2/{AUGUST}.SAFE", f"landsat/{LANDSAT}")
#: Scenes under s3://BUCKET/SCENES, tables under s3a://BUCKET/LAKE (Spark's scheme; the
#: non-Spark readers are given s3://, the same objects).
SCENES = "demo/scenes"
LAKE = "lake"
#: Every table the chain writes (runs and rejected hold run ids and times only).
TABLES = (
    "scenes", "tiles", "tile_features", "models", "predictions", "tile_predictions",
    "composites", "class_area", "index_timeseries", "index_monthly", "change",
    "composite_index",
)  # fmt: skip
#: Columns that differ between two runs of the same data: run ids, times, the sources'
#: paths, and digests that hold run ids (``inputs_digest``: the ingest and prediction runs;
#: ``composite_digest``: the ingest runs of the period's scenes).
RUN_COLUMNS = {"run_id", "ingested_at", "registered_at", "source", "bands", "inputs_digest",
               "composite_digest", "training_run_id"}  # fmt: skip
FEATURES = ["red", "ndvi", "nbr"]  # both sensors have them
CHANGE = ["--set", "aggregate.change_from=2024-06", "--set", "aggregate.change_to=2024-08-30"]


# ----------------------------------------------------------------------------- the child


def run_chains(out: Path, s3_source: str, local_source: str, bundle: str, regions: str) -> None:
    """Child process: the chain on the bucket, then locally; then the bucket's tables as
    Spark reads them, written to ``out/spark/<table>.parquet``.

    The bucket's chain goes first: its session is the one with S3A (the local chain's jobs
    reuse it, as ``getOrCreate`` does).
    """
    from pipelines import aggregate, classify, features, ingest
    from pipelines.session import build_session

    roots = {"s3": f"s3a://{BUCKET}/{LAKE}", "local": str(out / "local")}
    sources = {"s3": s3_source, "local": local_source}
    for side in ("s3", "local"):
        root = roots[side]
        steps = [
            (ingest, ["--source", sources[side]]),
            (features, []),
            # classify also builds composites and aggregates each scene's footprint
            (classify, ["--model", bundle, *CHANGE]),
            (aggregate, ["--regions", regions, *CHANGE]),
        ]
        for job, args in steps:
            start = time.monotonic()
            code = job.main(["--root", root, *args])
            if code != 0:
                raise SystemExit(f"{job.__name__} on {root} exited with {code}")
            print(f"TIMING {job.__name__} on {side}: {time.monotonic() - start:.1f} s")
    from pipelines.config import load_config

    spark = build_session(load_config("local", [f"storage.root={roots['s3']}"]), verbose=False)
    (out / "spark").mkdir()
    for name in TABLES:
        t = spark.read.format("delta").load(f"{roots['s3']}/{name}").toArrow()
        pq.write_table(t, out / "spark" / f"{name}.parquet")


if __name__ == "__main__":
    run_chains(Path(sys.argv[1]), *sys.argv[2:6])
    sys.exit(0)


# ----------------------------------------------------------------------------- readers


def local_table(path: Path) -> pa.Table:
    import deltalake

    return deltalake.DeltaTable(str(path)).to_pyarrow_table()


def s3_table_without_spark(s3: S3Server, name: str) -> pa.Table:
    """A table of the bucket: its files from the Delta log (delta-rs, told the endpoint and
    the test credentials explicitly), each read with pyarrow's own S3 client, partition
    values added from the log."""
    import deltalake
    from pyarrow import fs as pafs

    options = {
        "AWS_ENDPOINT_URL": s3.endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": REGION,
    }
    table = deltalake.DeltaTable(f"s3://{BUCKET}/{LAKE}/{name}", storage_options=options)
    schema = pa.schema(table.schema().to_arrow())
    fs = pafs.S3FileSystem(
        endpoint_override=s3.endpoint.removeprefix("http://"), scheme="http",
        access_key=ACCESS_KEY, secret_key=SECRET_KEY, region=REGION,
    )  # fmt: skip
    acts = pa.table(table.get_add_actions(flatten=True)).to_pylist()
    parts = table.metadata().partition_columns
    out = []
    for act in acts:
        from urllib.parse import unquote

        # ParquetFile: the file's own columns only (no partition guessed from the key).
        with fs.open_input_file(f"{BUCKET}/{LAKE}/{name}/{unquote(act['path'])}") as f:
            t = pq.ParquetFile(f).read()
        for col in (c for c in parts if c not in t.column_names):  # Spark may keep them
            value = act[f"partition.{col}"]
            typ = schema.field(col).type
            t = t.append_column(col, pa.array([value] * t.num_rows).cast(typ))
        out.append(t.select(schema.names).cast(schema))
    return pa.concat_tables(out) if out else schema.empty_table()


def _plain(v: Any) -> Any:
    """A value comparable with ``==``: NaN as a marker, times as UTC instants, maps and
    structs as sorted tuples (Spark and delta-rs give them as lists of pairs or dicts)."""
    if isinstance(v, float) and math.isnan(v):
        return "NaN"
    if isinstance(v, dt.datetime):
        return (v if v.tzinfo else v.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
    if isinstance(v, dict):
        return tuple(sorted((k, _plain(x)) for k, x in v.items()))
    if isinstance(v, list | tuple):
        return tuple(_plain(x) for x in v)
    return v


def rows(t: pa.Table, name: str) -> list[tuple]:
    """A table's rows without :data:`RUN_COLUMNS`, columns by name, sorted."""
    cols = sorted(c for c in t.column_names if c not in RUN_COLUMNS)
    out = [tuple(_plain(r[c]) for c in cols) for r in t.select(cols).to_pylist()]
    return sorted(out, key=repr)


# ----------------------------------------------------------------------------- the chain


@pytest.fixture(scope="module")
def chain(s3: S3Server, demo_root: Path, tmp_path_factory) -> dict[str, Any]:
    from model_factory import tiny_bundle

    work = tmp_path_factory.mktemp("s3chain")
    client = s3.client()
    client.create_bucket(Bucket=BUCKET)
    for folder in FOLDERS:
        upload_tree(client, demo_root / "scenes" / folder, BUCKET, f"{SCENES}/{folder}")
    bundle = tiny_bundle(work / "model", FEATURES, ["sentinel2-l2a", "landsat-c2l2"])
    local_source = ",".join(str(demo_root / "scenes" / f) for f in FOLDERS)
    regions = demo_root / "regions.geojson"
    cmd = [sys.executable, __file__, str(work), f"s3://{BUCKET}/{SCENES}", local_source,
           str(bundle.path), str(regions)]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=work, env=os.environ.copy(), capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    print("\n".join(line for line in proc.stdout.splitlines() if line.startswith("TIMING")))
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=f"{LAKE}/").get("KeyCount", 0)
    return {"work": work, "client": client, "log": proc.stdout, "objects": listed}


def test_every_table_is_written_to_the_bucket_and_nothing_beside_it(chain):
    client = chain["client"]
    for name in TABLES:
        log = client.list_objects_v2(Bucket=BUCKET, Prefix=f"{LAKE}/{name}/_delta_log/")
        assert log.get("KeyCount", 0) > 0, f"no Delta log for {name} on the bucket"
    # No local stand-in for the bucket (a folder named after the URI in the job's cwd).
    assert sorted(p.name for p in chain["work"].iterdir()) == ["local", "model", "spark"]


def test_tables_on_the_bucket_read_without_spark_equal_the_local_run(s3, chain):
    work = chain["work"]
    for name in TABLES:
        remote = s3_table_without_spark(s3, name)
        local = local_table(work / "local" / name)
        assert remote.num_rows == local.num_rows > 0, name
        assert rows(remote, name) == rows(local, name), name


def test_tables_on_the_bucket_read_with_spark_equal_the_local_run(chain):
    work = chain["work"]
    for name in TABLES:
        remote = pq.read_table(work / "spark" / f"{name}.parquet")
        local = local_table(work / "local" / name)
        assert remote.num_rows == local.num_rows > 0, name
        assert rows(remote, name) == rows(local, name), name


def test_the_analysis_tables_cover_both_region_sets_and_the_change(chain):
    """The comparison above is not of empty or trivial tables: aggregate on the bucket
    mapped every scene over the demo regions and each scene's footprint."""
    work = chain["work"]
    area = local_table(work / "local" / "class_area").to_pylist()
    assert {r["region_set"] for r in area} == {"scene", "regions"}
    assert {r["scene_id"] for r in area} == {JUNE, AUGUST, LANDSAT}
    assert sum(r["pixels"] for r in area) > 0
    change = local_table(work / "local" / "change").to_pylist()
    assert {tuple(r["from_scenes"]) for r in change} == {(JUNE,)}
    assert sum(r["pixels"] for r in change) > 0


def test_no_secret_reaches_a_table_or_the_log(s3, chain):
    for name in ("scenes", "runs", "rejected", "tiles"):
        client = chain["client"]
        if not client.list_objects_v2(Bucket=BUCKET, Prefix=f"{LAKE}/{name}/").get("KeyCount"):
            continue
        text = json.dumps(s3_table_without_spark(s3, name).to_pylist(), default=str)
        assert SECRET_KEY not in text and ACCESS_KEY not in text, name
    assert SECRET_KEY not in chain["log"]


def test_planning_reads_and_worker_reads_on_the_bucket_match_the_local_tables(s3, chain):
    """What aggregate's driver and workers read themselves: the key/file columns of
    ``tiles`` and ``predictions`` from the bucket's Delta logs (delta-rs + pyarrow, no
    Spark), and each row by its file href and key (``udfs.storage``), equal the local
    table's rows."""
    import pyarrow.dataset as ds

    from pipelines.config import StorageConfig
    from pipelines.lakehouse import Lakehouse
    from pipelines.object_store import read_arrow
    from udfs.aggregate_udfs import PRED_READ_COLUMNS, TILE_READ_COLUMNS, FileRows
    from udfs.storage import store_options

    root = f"s3a://{BUCKET}/{LAKE}"
    lake = Lakehouse(None, StorageConfig(root=root))  # type: ignore[arg-type] # no Spark here
    store = store_options(root)
    assert store["AWS_S3_ENDPOINT"] == s3.endpoint.removeprefix("http://")
    assert SECRET_KEY not in json.dumps(store) and ACCESS_KEY not in json.dumps(store)
    keys = ["scene_id", "tile_row", "tile_col"]
    for name, columns in (("tiles", TILE_READ_COLUMNS), ("predictions", PRED_READ_COLUMNS)):
        local = {tuple(r[k] for k in keys): r for r in
                 local_table(chain["work"] / "local" / name).to_pylist()}  # fmt: skip
        got = read_arrow(lake, name, keys, ds.field("scene_id").isin([JUNE, LANDSAT]), True)
        assert sorted(tuple(r[k] for k in keys) for r in got.to_pylist()) == sorted(
            k for k in local if k[0] in (JUNE, LANDSAT)
        )
        reader = FileRows(columns, store=store)
        for r in got.to_pylist():
            assert r["file"].startswith(f"{root}/{name}/"), r["file"]
            key = tuple(r[k] for k in keys)
            row = reader.get(r["file"], key)
            assert row is not None and row == {c: local[key][c] for c in columns}, key
    # A table not written (yet) reads as empty, with its types.
    nothing = Lakehouse(None, StorageConfig(root=f"s3://{BUCKET}/no-lake"))  # type: ignore[arg-type]
    empty = read_arrow(nothing, "tiles", keys, with_file=True)
    assert empty.num_rows == 0 and empty.schema.field("tile_row").type == pa.int32()
