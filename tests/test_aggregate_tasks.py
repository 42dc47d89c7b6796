"""How the aggregate job splits its work over tasks and joins the results (no Spark), and
the driver's Arrow reads of local tables (real Delta via delta-rs, real Parquet)."""

from __future__ import annotations

from datetime import date, datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from pipelines.aggregate_plan import task_groups
from pipelines.config import load_config
from pipelines.lakehouse import Lakehouse
from udfs.aggregate_udfs import combine, reduce_partials

SCENES = {
    "a": {"sensor": "s2", "month": "2024-06"},
    "b": {"sensor": "s2", "month": "2024-07"},
}


def _unit(sid: str, tile: int, regions: list[int], f: str = "f1") -> dict:
    return {"scene_id": sid, "tile_row": 0, "tile_col": tile, "regions": regions,
            "tiles_file": f, "preds": []}  # fmt: skip


def test_regions_stay_whole_in_one_task_and_heavy_ones_are_split():
    units = [
        _unit("a", 0, [0]), _unit("a", 1, [0, 1]), _unit("a", 2, [1]),  # region 0-1 chain
        _unit("a", 3, [2]), _unit("b", 0, [0]), _unit("b", 1, [3]), _unit("b", 2, [4]),
        _unit("b", 3, [5]), _unit("b", 4, [6]),
    ]  # fmt: skip
    groups = task_groups(units, SCENES, 2)
    placed = [u for g in groups for u in g]
    assert sorted((u["scene_id"], u["tile_col"]) for u in placed) == sorted(
        (u["scene_id"], u["tile_col"]) for u in units
    )
    task_of = {(u["scene_id"], u["tile_col"]): k for k, g in enumerate(groups) for u in g}
    # Region 0 and 1 of scene a share tile 1: one component (cost 2 + 3 + 2 = 7 of 19,
    # under the fair share of 9.5): whole, in one task.
    assert task_of[("a", 0)] == task_of[("a", 1)] == task_of[("a", 2)]
    assert all(u["whole"] for u in placed)
    # Region 0 of another month is another key: its own component.
    comps = {(u["scene_id"], u["tile_col"]): u["component"] for u in placed}
    assert comps[("b", 0)] != comps[("a", 0)]
    # One component heavier than a task's share (a footprint) is split over the tasks.
    big = [_unit("a", i, [0]) for i in range(8)]
    groups = task_groups(big, SCENES, 2)
    assert [len(g) for g in groups] == [4, 4]
    assert not any(u["whole"] for g in groups for u in g)


def test_combine_joins_split_partials_into_the_exact_statistics():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=50).astype(np.float32), rng.normal(size=70).astype(np.float32)
    key = ("values", 0, "s2", "2024-06")
    part = lambda v: [("a", len(v), len(v), {"ndvi": v})]  # noqa: E731
    whole = reduce_partials(key, [part(x), part(y)])
    items = [("partial", key, [part(x)]), ("partial", key, [part(y)]),
             ("final", {"key": ("area", 1, "a", "m"), "counts": [1], "grid_pixels": 1})]  # fmt: skip
    got = {r["key"]: r for r in combine(items)}
    assert got[key]["scenes"]["a"]["stats"] == whole["scenes"]["a"]["stats"]
    want = np.concatenate([x, y]).astype(np.float64)
    stats = got[key]["scenes"]["a"]["stats"]["ndvi"]
    assert stats["count"] == 120
    assert stats["p50"] == pytest.approx(np.percentile(want, 50))
    assert stats["std"] == pytest.approx(want.std())
    assert got[("area", 1, "a", "m")]["counts"] == [1]


def _rows(schema: pa.Schema, n: int, **given: list) -> pa.Table:
    """``n`` rows of ``schema``: the ``given`` columns, nulls or plain values elsewhere."""
    plain = {pa.types.is_string: "x", pa.types.is_integer: 0, pa.types.is_floating: 0.0,
             pa.types.is_date: date(2024, 6, 1), pa.types.is_binary: b"",
             pa.types.is_timestamp: datetime(2024, 6, 1, tzinfo=timezone.utc)}  # fmt: skip
    cols = {}
    for f in schema:
        if f.name in given:
            cols[f.name] = given[f.name]
        elif f.nullable:
            cols[f.name] = [None] * n
        else:
            cols[f.name] = [next(v for test, v in plain.items() if test(f.type))] * n
    return pa.Table.from_pydict(cols, schema=schema)


@pytest.mark.parametrize("fmt", ["delta", "parquet"])
def test_read_arrow_reads_local_tables_with_partitions_and_files(tmp_path, fmt):
    import deltalake
    import pyarrow.parquet as pq
    from pyspark.sql.pandas.types import to_arrow_schema

    from pipelines.datamodel import TABLES

    cfg = load_config("local", [f"storage.root={tmp_path}", f"storage.format={fmt}"])
    lake = Lakehouse(None, cfg.storage)  # type: ignore[arg-type]  # no Spark needed
    assert lake.read_arrow("tiles", ["scene_id"]).num_rows == 0  # no table yet: empty
    schema = to_arrow_schema(TABLES["tiles"].schema)
    t = _rows(schema, 3, scene_id=["s1", "s2", "s3"], tile_row=[0, 0, 1],
              sensor=["s2-l2a", "s2-l2a", "landsat"], acq_month=["2024-06", "2024-07", "2024-06"])  # fmt: skip
    path = tmp_path / "tiles"
    if fmt == "delta":
        deltalake.write_deltalake(str(path), t, partition_by=["sensor", "acq_month"])
    else:
        for i in range(3):
            folder = path / f"sensor={t['sensor'][i]}" / f"acq_month={t['acq_month'][i]}"
            folder.mkdir(parents=True)
            pq.write_table(t.slice(i, 1).drop(["sensor", "acq_month"]), folder / "p.parquet")
        (path / "_SUCCESS").touch()
    where = (ds.field("sensor") == "s2-l2a") & (ds.field("acq_month") == "2024-07")
    got = lake.read_arrow("tiles", ["scene_id", "tile_row", "sensor"], where, with_file=True)
    assert got.column("scene_id").to_pylist() == ["s2"]
    assert got.column("sensor").to_pylist() == ["s2-l2a"]  # partition value, from the table
    (f,) = got.column("file").to_pylist()
    assert f.startswith(str(path)) and "acq_month=2024-07" in f
    assert pq.read_table(f).column("scene_id").to_pylist() == ["s2"]
    everything = lake.read_arrow("tiles", ["scene_id", "acquired_date"])
    assert sorted(everything.column("scene_id").to_pylist()) == ["s1", "s2", "s3"]
    assert everything.column("acquired_date")[0].as_py() == date(2024, 6, 1)


# ----------------------------------------------------------------------------- object stores


def test_delta_storage_options_come_from_the_aws_variables_without_secrets():
    from pipelines.object_store import delta_uri, storage_options

    env = {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI",
        "AWS_SESSION_TOKEN": "token",
        "AWS_DEFAULT_REGION": "eu-central-1",
    }
    assert storage_options(env) == {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_ALLOW_HTTP": "true",
        "AWS_REGION": "eu-central-1",
    }
    # The S3-specific endpoint wins; TLS endpoints need no AWS_ALLOW_HTTP; plain AWS: nothing.
    https = {**env, "AWS_ENDPOINT_URL_S3": "https://minio.example.org"}
    assert storage_options(https)["AWS_ENDPOINT_URL"] == "https://minio.example.org"
    assert "AWS_ALLOW_HTTP" not in storage_options(https)
    assert storage_options({}) == {}
    assert storage_options({"AWS_NO_SIGN_REQUEST": "YES"}) == {"AWS_SKIP_SIGNATURE": "true"}
    assert delta_uri("s3a://bucket/lake/tiles") == "s3://bucket/lake/tiles"
    assert delta_uri("s3://bucket/lake/tiles") == "s3://bucket/lake/tiles"


def test_table_file_hrefs_map_to_a_file_system_and_a_path(tmp_path):
    import pyarrow.parquet as pq
    from pyarrow import fs as pafs

    from udfs.storage import filesystem, is_object_store, open_parquet, store_options

    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_SECRET_ACCESS_KEY": "secret"}
    assert store_options("/data/lake", env) == {}
    recipe = store_options("s3a://bucket/lake", env)
    assert recipe["AWS_S3_ENDPOINT"] == "127.0.0.1:9000" and "secret" not in str(recipe)
    # Keys as they are: Spark's escaped partition folders (%3A) stay escaped, # is no fragment.
    fs, path = filesystem("s3a://bucket/lake/t/p=a%3Ab/part #1.parquet", recipe)
    assert isinstance(fs, pafs.S3FileSystem) and path == "bucket/lake/t/p=a%3Ab/part #1.parquet"
    assert filesystem("s3://bucket/k", recipe)[1] == "bucket/k"
    assert is_object_store("s3://b/k") and is_object_store("s3a://b/k")
    assert not is_object_store("/tmp/x") and not is_object_store("file:///tmp/x")
    with pytest.raises(ValueError, match="gs://bucket/k"):
        filesystem("gs://bucket/k", recipe)
    with pytest.raises(ValueError, match="no bucket"):
        filesystem("s3:///k", recipe)
    # Local paths and file: URIs open the same file.
    pq.write_table(pa.table({"x": [1, 2, 3]}), tmp_path / "t.parquet")
    for href in (str(tmp_path / "t.parquet"), f"file://{tmp_path}/t.parquet"):
        assert open_parquet(href).read().column("x").to_pylist() == [1, 2, 3]
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        open_parquet(str(tmp_path / "missing.parquet"))
