"""Tables on object storage (issue 15, writes): the executors' Parquet files and the driver's
delta-rs commits on an ``s3://`` table root, on a real S3-compatible server (moto's server
on 127.0.0.1, :mod:`s3server`), which honours conditional PUTs (``If-None-Match: *``).

* Several processes committing to the same table on S3 at once: every key once (the
  commit protocol: the second writer of a log version gets HTTP 412 and decides again).
* Two ingest jobs at once into one ``s3://`` root: every (scene, tile) once, one ``scenes``
  row per scene, and the tables read with Spark equal those of a local ingest.
* A table the arrow writer wrote on S3 reads back with deltalake and with Spark.

The client side knows the server only through the AWS environment variables. The expected
rows come from a local ingest of the same scenes; keys are read from the files the Delta
log lists with plain pyarrow, and duplicates are counted (never hidden by a set).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from s3server import (  # noqa: F401 (s3_server: the `s3` fixture, used by name)
    ACCESS_KEY,
    SECRET_KEY,
    S3Server,
    s3_server,
)

from pipelines.datamodel import TABLES

REPO = Path(__file__).resolve().parents[1]
BUCKET = "eo-lake"
#: Small tiles so every scene has several (and several files race per scene).
TILE = "--tile-size=128"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bucket(s3: S3Server) -> str:
    s3.client().create_bucket(Bucket=BUCKET)
    return BUCKET


def start(*args: str) -> subprocess.Popen:
    """``python -m <args>`` (or ``python -c``) in its own process; the server's AWS
    variables come from the environment the ``s3`` fixture set."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, *args], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def together(*commands: tuple[str, ...], timeout: float = 480) -> list[tuple[int, str]]:
    """Start the commands at once; exit code and console output of each."""
    procs = [start(*c) for c in commands]
    return [(p.wait(timeout), p.stdout.read() if p.stdout else "") for p in procs]


def ingest(root: str, source: Path, *extra: str) -> tuple[str, ...]:
    return ("-m", "pipelines.ingest", "--root", root, "--source", str(source), TILE, *extra)


def s3_fs(s3: S3Server) -> Any:
    """A pyarrow file system on the server, built here from its endpoint (not the code's)."""
    from pyarrow import fs as pafs

    return pafs.S3FileSystem(
        endpoint_override=s3.endpoint.removeprefix("http://"), scheme="http",
        access_key=ACCESS_KEY, secret_key=SECRET_KEY, region="us-east-1",
    )  # fmt: skip


def delta(s3: S3Server, uri: str) -> Any:
    import deltalake

    opts = {"AWS_ENDPOINT_URL": s3.endpoint, "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1"}
    return deltalake.DeltaTable(uri, storage_options=opts)


def keys(s3: S3Server, uri: str, name: str) -> list[tuple]:
    """Every key of table ``name`` under ``uri`` (duplicates kept), from the Parquet files
    its Delta log lists, read with pyarrow."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    spec = TABLES[name]
    fs, base = s3_fs(s3), f"{uri}/{name}".removeprefix("s3://")
    out = []
    for a in pa.table(delta(s3, f"{uri}/{name}").get_add_actions(flatten=True)).to_pylist():
        cols = [k for k in spec.key if k not in spec.partition_by]
        rows = pq.read_table(f"{base}/{a['path']}", columns=cols, filesystem=fs).to_pylist()
        parts = {p: a[f"partition.{p}"] for p in spec.partition_by}
        out += [tuple({**parts, **r}[k] for k in spec.key) for r in rows]
    return out


def local_keys(root: Path, name: str) -> list[tuple]:
    import deltalake

    t = deltalake.DeltaTable(str(root / name)).to_pyarrow_table(columns=list(TABLES[name].key))
    return [tuple(r.values()) for r in t.to_pylist()]


def once(found: list[tuple], name: str) -> set[tuple]:
    dup = [k for k, n in Counter(found).items() if n > 1]
    assert not dup, f"{name}: {len(dup)} key(s) twice, e.g. {dup[0]}"
    return set(found)


#: A separate driver that reads two roots' ``tiles`` and ``scenes`` with Spark (a session
#: with S3A, as the jobs build it) and compares them row by row, keyed, duplicates counted.
#: (``assertDataFrameEqual`` would be the tool, but it imports pyspark.pandas, which fails
#: with pandas 3.)
SPARK_COMPARE = """
import sys
from pipelines.config import load_config
from pipelines.lakehouse import Lakehouse
from pipelines.session import build_session

s3_root, local_root = sys.argv[1], sys.argv[2]
config = load_config("local", [f"storage.root={s3_root}", "spark.shuffle_partitions=2"])
spark = build_session(config)
remote, local = Lakehouse(spark, config.storage), Lakehouse(spark, load_config(
    "local", [f"storage.root={local_root}"]).storage)
volatile = {"scenes": ["run_id", "ingested_at"], "tiles": []}
for name in ("tiles", "scenes"):
    keyed = []
    for lake in (remote, local):
        rows = [r.asDict(recursive=True) for r in lake.read(name).drop(*volatile[name]).collect()]
        by_key = {(r["scene_id"], r.get("tile_row"), r.get("tile_col")): r for r in rows}
        assert len(by_key) == len(rows) > 0, (name, lake.root, len(by_key), len(rows))
        keyed.append(by_key)
    assert keyed[0] == keyed[1], name
    print(f"equal {name} {len(keyed[0])}", flush=True)
spark.stop()
"""


@pytest.fixture(scope="module")
def reference(demo_root: Path, tmp_path_factory) -> Path:
    """One ingest of the demo scenes into a local root, alone."""
    root = tmp_path_factory.mktemp("local") / "lake"
    ((code, out),) = together(ingest(str(root), demo_root / "scenes"))
    assert code == 0, out
    return root


# ----------------------------------------------------------------------------- commits

APPENDER = str(Path(__file__).with_name("runs_appender.py"))  # six runs rows, delta-rs


def test_concurrent_delta_rs_commits_on_s3_keep_every_key_once(s3, bucket):
    """Four processes append overlapping keys to one table on S3 at once (delta-rs, no
    Spark): every key once, each written by exactly one process, and the server refused
    some commit PUTs (the race was real and decided by the conditional write)."""
    root = f"s3://{BUCKET}/appends"
    outs = together(*((APPENDER, root, str(first)) for first in (0, 2, 4, 6)), timeout=180)
    for code, out in outs:
        assert code == 0, out
    assert sorted(once(keys(s3, root, "runs"), "runs")) == [(f"r{i:03d}",) for i in range(12)]
    said = Counter(line.split()[0] for _, out in outs for line in out.splitlines()
                   if line.endswith("written"))  # fmt: skip
    assert said == Counter(f"r{i:03d}" for i in range(12))  # each written by exactly one
    # Every version of the log is one commit of one process: 12 keys written in at most
    # 12 commits (+ the table's creation), none lost to an overwrite.
    history = delta(s3, f"{root}/runs").history()
    written = sum(int(h.get("eo.groups_written", 0)) for h in history)
    assert written == 12, history


def test_auto_picks_the_arrow_writer_for_delta_on_s3_and_refuses_it_for_parquet():
    from typing import cast

    from pyspark.sql import SparkSession

    from pipelines.config import load_config
    from pipelines.ingest import use_arrow_writer
    from pipelines.lakehouse import Lakehouse
    from udfs.errors import ConfigError

    def pick(root: str, fmt: str, writer: str) -> bool:
        config = load_config("local", [f"storage.root={root}", f"storage.format={fmt}",
                                       f"ingest.writer={writer}"])  # fmt: skip
        return use_arrow_writer(config, Lakehouse(cast(SparkSession, None), config.storage))

    assert pick("s3://b/lake", "delta", "auto") and pick("s3a://b/lake", "delta", "arrow")
    assert pick("/tmp/lake", "parquet", "auto") and pick("/tmp/lake", "delta", "auto")
    assert not pick("s3://b/lake", "delta", "spark")
    assert not pick("s3://b/lake", "parquet", "auto")  # no log to commit to: Spark writes
    with pytest.raises(ConfigError, match="ingest.writer=arrow"):
        pick("s3://b/lake", "parquet", "arrow")


def test_an_executor_writes_a_table_file_to_s3_from_a_recipe_without_secrets(s3, bucket):
    """The writer recipe holds the endpoint and region, never the credentials; the file it
    writes on S3 is the table's rows, and its record (size) matches the object."""
    from typing import cast

    import cloudpickle
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyspark.sql import SparkSession

    from pipelines.config import load_config
    from pipelines.ingest import tile_file_writer
    from pipelines.lakehouse import Lakehouse
    from udfs.ingest_udfs import write_table_file

    config = load_config("local", [f"storage.root=s3://{BUCKET}/x"])
    lake = Lakehouse(cast(SparkSession, None), config.storage)
    # What Spark ships to the executors: the writer function and its closure.
    shipped = cloudpickle.dumps(tile_file_writer(config, lake.files_href("tiles"), print, "r1",
                                                 lake.store))  # fmt: skip
    assert s3.endpoint.removeprefix("http://").encode() in shipped
    assert f"s3://{BUCKET}/x/tiles".encode() in shipped
    assert SECRET_KEY.encode() not in shipped and ACCESS_KEY.encode() not in shipped
    recipe = cloudpickle.dumps(lake.store)
    rows = pa.table({"scene_id": ["s1", "s1"], "tile_row": [0, 1], "tile_col": [0, 0],
                     "red": [b"ab", b"cd"]})  # fmt: skip
    table_path = f"s3://{BUCKET}/files/tiles"
    rec = write_table_file(table_path, rows, {"acq_month": "2024-06"}, ("scene_id", "tile_row"),
                           1, owner="r1", store=cloudpickle.loads(recipe))  # fmt: skip
    assert rec["path"].startswith("acq_month=2024-06/part-runr1-")
    head = s3.client().head_object(Bucket=BUCKET, Key=f"files/tiles/{rec['path']}")
    assert head["ContentLength"] == rec["size"] > 0
    got = pq.read_table(f"{BUCKET}/files/tiles/{rec['path']}", filesystem=s3_fs(s3))
    assert got.equals(rows)
    assert json.loads(rec["stats"])["numRecords"] == 2


# ----------------------------------------------------------------------------- ingest


def test_two_ingests_at_once_into_one_s3_root_write_every_key_once(
    s3, bucket, demo_root, reference
):
    root = f"s3://{BUCKET}/concurrent"
    results = together(ingest(root, demo_root / "scenes"), ingest(root, demo_root / "scenes"))
    for code, out in results:
        assert code == 0, out
    expected_tiles = once(local_keys(reference, "tiles"), "tiles")
    assert once(keys(s3, root, "tiles"), "tiles") == expected_tiles
    scenes = Counter(k for (k,) in keys(s3, root, "scenes"))
    assert scenes == Counter({s: 1 for (s,) in local_keys(reference, "scenes")})
    # Each scene was ingested by exactly one of the two runs, which both say so.
    counts = []
    for _, out in results:
        m = re.search(r"ingest run (\w+): \d+ input\(s\) seen, (\d+) ingested, (\d+) already", out)
        assert m, out
        counts.append((m.group(1), int(m.group(2)), int(m.group(3))))
    assert sum(n for _, n, _ in counts) == len(scenes) == 5
    assert all(n + done == 5 for _, n, done in counts), counts
    runs = delta(s3, f"{root}/runs").to_pyarrow_table().to_pylist()
    assert sorted((r["run_id"], r["status"], r["ingested"]) for r in runs) == sorted(
        (run_id, "succeeded", n) for run_id, n, _ in counts
    )
    # The loser's files were deleted: the bucket holds exactly the files the log lists.
    client = s3.client()
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix="concurrent/tiles/")
    objects = {o["Key"] for o in listed.get("Contents", [])}
    assert listed.get("IsTruncated") is False
    data = {k.removeprefix("concurrent/tiles/") for k in objects if k.endswith(".parquet")}
    logged = delta(s3, f"{root}/tiles").get_add_actions(flatten=True).column("path")
    assert data == {str(p) for p in logged.to_pylist()}
    # No secret reaches a table or the log.
    for name in ("scenes", "runs"):
        text = json.dumps(delta(s3, f"{root}/{name}").to_pyarrow_table().to_pylist(), default=str)
        assert SECRET_KEY not in text and ACCESS_KEY not in text, name
    # Read with Spark (S3A), the tables equal the local ingest's.
    ((code, out),) = together(("-c", SPARK_COMPARE, root, str(reference)))
    assert code == 0, out
    assert "equal tiles" in out and "equal scenes 5" in out, out


def test_a_table_the_arrow_writer_wrote_on_s3_reads_back_with_deltalake_and_spark(
    s3, bucket, demo_root, reference
):
    import deltalake

    root = f"s3://{BUCKET}/arrow"
    ((code, out),) = together(ingest(root, demo_root / "scenes", "--set", "ingest.writer=arrow"))
    assert code == 0, out
    # Written by the executors' Python workers (file names carry the run id), committed
    # by delta-rs (its engine in the log), not by Spark's writer.
    tiles = delta(s3, f"{root}/tiles")
    assert all(
        re.search(r"part-run\w+-", p) for p in tiles.get_add_actions(True)["path"].to_pylist()
    )
    assert any("delta-rs" in str(h.get("engineInfo", "")) for h in tiles.history())

    def sorted_rows(t: Any) -> list[dict]:
        return sorted(t.to_pylist(), key=lambda r: (r["scene_id"], r["tile_row"], r["tile_col"]))

    local = deltalake.DeltaTable(str(reference / "tiles")).to_pyarrow_table()
    remote = tiles.to_pyarrow_table()
    assert remote.num_rows == local.num_rows > 0
    assert sorted_rows(remote.select(local.column_names)) == sorted_rows(local)
    ((code, out),) = together(("-c", SPARK_COMPARE, root, str(reference)))
    assert code == 0, out
    assert "equal tiles" in out and "equal scenes 5" in out, out
