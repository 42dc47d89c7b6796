"""The planners' driver-side read, :func:`pipelines.object_store.read_arrow`, on the two
paths the whole-chain tests do not take: Parquet tables on an object store (a pyarrow
dataset on moto's server on 127.0.0.1), and Delta tables whose reader features delta-rs
does not read (deletion vectors: Spark reads them, the same filter applies).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from s3server import S3Server, s3_server  # noqa: F401 (s3_server: the `s3` fixture)

from pipelines.config import StorageConfig
from pipelines.lakehouse import Lakehouse, ReaderFeaturesError
from pipelines.object_store import read_arrow

BUCKET = "eo-read-arrow"
ROWS = {  # model_id partition -> (scene_id, tile_row, tile_col) rows of predictions
    "rf-1": [("S2A_1", 0, 0), ("S2A_1", 0, 1)],
    "rf-2": [("S2A_1", 1, 0)],
}


def part(rows: list[tuple]) -> pa.Table:
    return pa.table(
        {
            "scene_id": pa.array([r[0] for r in rows], pa.string()),
            "tile_row": pa.array([r[1] for r in rows], pa.int32()),
            "tile_col": pa.array([r[2] for r in rows], pa.int32()),
        }
    )


@pytest.mark.slow
def test_a_parquet_table_on_s3_reads_by_partition_with_its_file_hrefs(s3: S3Server):
    from pyarrow import fs as pafs

    client = s3.client()
    client.create_bucket(Bucket=BUCKET)
    fs = pafs.S3FileSystem(endpoint_override=s3.endpoint, scheme="http", region="us-east-1")
    for model, rows in ROWS.items():
        pq.write_table(part(rows), f"{BUCKET}/pq/predictions/model_id={model}/part-0.parquet",
                       filesystem=fs)  # fmt: skip
    cols = ["model_id", "scene_id", "tile_row", "tile_col"]
    lake = Lakehouse(None, StorageConfig(root=f"s3a://{BUCKET}/pq", format="parquet"))  # type: ignore[arg-type]
    # Without _SUCCESS the table is not written (yet): empty, with the table's types.
    empty = read_arrow(lake, "predictions", cols, with_file=True)
    assert empty.num_rows == 0 and empty.schema.field("tile_row").type == pa.int32()
    client.put_object(Bucket=BUCKET, Key="pq/predictions/_SUCCESS", Body=b"")

    got = read_arrow(lake, "predictions", cols, ds.field("model_id") == "rf-1", with_file=True)
    assert sorted(tuple(r.values())[1:4] for r in got.to_pylist()) == ROWS["rf-1"]
    assert {r["model_id"] for r in got.to_pylist()} == {"rf-1"}
    assert {r["file"] for r in got.to_pylist()} == {
        f"s3a://{BUCKET}/pq/predictions/model_id=rf-1/part-0.parquet"
    }
    everything = read_arrow(lake, "predictions", ["model_id", "tile_row"])
    assert everything.num_rows == 3 and everything.column_names == ["model_id", "tile_row"]


def test_a_root_that_is_neither_local_nor_s3_is_refused():
    lake = Lakehouse(None, StorageConfig(root="gs://bucket/lake", format="parquet"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gs://bucket/lake"):
        read_arrow(lake, "predictions", ["model_id"])


def test_a_delta_table_with_deletion_vectors_is_read_through_spark(spark, tmp_path: Path):
    """delta-rs refuses the table (reader feature ``deletionVectors``); the planners' read
    answers through Spark, the deleted row gone, the filter and ``file`` as on the fast path."""
    from pyspark.sql import functions as F

    root = tmp_path / "lake"
    lake = Lakehouse(spark, StorageConfig(root=str(root)))
    table = root / "predictions"
    rows = [(m, *r) for m, rs in ROWS.items() for r in rs]
    df = spark.createDataFrame(rows, "model_id string, scene_id string, tile_row int, tile_col int")
    (df.write.format("delta").partitionBy("model_id")
       .option("delta.enableDeletionVectors", "true").save(str(table)))  # fmt: skip
    cols = ["model_id", "scene_id", "tile_row", "tile_col"]
    where = ds.field("model_id") == "rf-1"
    before = read_arrow(lake, "predictions", cols, where, with_file=True)  # delta-rs path
    spark.sql(f"DELETE FROM delta.`{table}` WHERE model_id = 'rf-1' AND tile_col = 1")
    with pytest.raises(ReaderFeaturesError):
        lake.read_arrow("predictions", cols, where)

    after = read_arrow(lake, "predictions", cols, where, with_file=True)
    assert [tuple(r.values())[:4] for r in after.to_pylist()] == [("rf-1", "S2A_1", 0, 0)]
    assert after.schema == before.schema
    files = {r["file"] for r in after.to_pylist()}
    kept = spark.read.format("delta").load(str(table)).where(F.col("tile_col") == 0)
    assert files <= {f.removeprefix("file:") for f in kept.inputFiles()} | {
        r["file"] for r in before.to_pylist()
    }
    assert all("/model_id=rf-1/" in f for f in files), files
