"""Thin Arrow/pandas wrappers that run the ingest reads inside executor Python workers.

They only convert between Arrow batches and the kernels of :mod:`udfs.reader` /
:mod:`udfs.tiling`; errors become records (scene, file, stage, reason) instead of
failing the task, so one bad scene never stops the others.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import rasterio
from rasterio.crs import CRS
from rasterio.warp import transform_bounds

from udfs.errors import SceneError
from udfs.reader import GDAL_ENV, SceneSource, inspect_scene, read_block, scene_error_row
from udfs.sensors import BAND_COLUMNS, SENSORS
from udfs.tiling import ReadBlock, encode_array, encode_mask

INSPECT_SCHEMA = "scene_id string, info string, error string"
TILE_KEYS = ("scene_id", "tile_row", "tile_col")


def inspect_records(sources: Iterable[str]) -> list[tuple[str, str | None, str | None]]:
    """Inspect scenes (SceneSource JSON): ``(scene_id, info JSON, None)`` per readable scene,
    ``(scene_id, None, rejected record JSON)`` per bad one."""
    out: list[tuple[str, str | None, str | None]] = []
    with rasterio.Env(**GDAL_ENV):
        for text in sources:
            src = SceneSource.from_json(text)
            try:
                info = inspect_scene(src)
                out.append((src.scene_id, json.dumps(info, default=_json_default), None))
            except SceneError as e:
                if e.scene_id is None:
                    e.scene_id = src.scene_id
                out.append((src.scene_id, None, json.dumps(scene_error_row(e))))
    return out


def inspect_batches(batches: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """mapInPandas: ``source`` (SceneSource JSON) -> scene record JSON or error JSON."""
    for pdf in batches:
        yield pd.DataFrame(inspect_records(pdf["source"]), columns=["scene_id", "info", "error"])


def _json_default(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.isoformat()
    raise TypeError(type(v))


def tiles_from_block(
    scene: dict[str, Any],
    block: ReadBlock,
    tile_size: int,
    overlap: int,
    resampling: str,
    datasets: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Read one block and build the ``tiles`` rows (pixel columns encoded) for it."""
    sensor = SENSORS[scene["sensor"]]
    refl_cols = [b.common for b in sensor.reflectance_bands]
    dtype = np.result_type(*[np.dtype(b["dtype"]) for b in scene["bands"]])
    crs = CRS.from_wkt(scene["crs_wkt"])
    rows = []
    for tile in read_block(scene, block, tile_size, overlap, resampling, datasets):
        arrays = tile["arrays"]
        valid = np.ones((tile["window"].height, tile["window"].width), dtype=bool)
        for c in refl_cols:
            valid &= arrays[c] != sensor.nodata
        w = tile["window"]
        row = {
            "scene_id": scene["scene_id"],
            "tile_row": w.tile_row,
            "tile_col": w.tile_col,
            "sensor": scene["sensor"],
            "acquired_date": date.fromisoformat(scene["acquired_date"]),
            "acq_month": scene["acq_month"],
            "crs_epsg": scene["crs_epsg"],
            "transform": list(tile["transform"]),
            "bounds": list(tile["bounds"]),
            "bbox_wgs84": list(transform_bounds(crs, "EPSG:4326", *tile["bounds"], densify_pts=5)),
            "row_off": w.row_off,
            "col_off": w.col_off,
            "width": w.width,
            "height": w.height,
            "dtype": dtype.name,
            "valid_fraction": float(valid.mean()),
            "valid": encode_mask(valid),
        }
        for c in BAND_COLUMNS:
            row[c] = encode_array(arrays[c].astype(dtype, copy=False)) if c in arrays else None
        rows.append(row)
    return rows


def make_tile_reader(
    schema: pa.Schema,
    tile_size: int,
    overlap: int,
    resampling: str,
    report_error: Callable[[list[dict[str, Any]]], None],
) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """Build the mapInArrow function: block rows in, tile rows out.

    Parameters
    ----------
    schema : pyarrow.Schema
        Arrow schema of the ``tiles`` table.
    report_error : callable
        Receives a ``rejected`` record when a block cannot be read (an accumulator's
        ``add`` on the driver side), so the driver can reject the whole scene.
    """

    def read_tiles(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        with rasterio.Env(**GDAL_ENV):
            for batch in batches:
                for rec in batch.to_pylist():
                    scene = json.loads(rec["scene"])
                    block = ReadBlock(*(rec[k] for k in ReadBlock.__dataclass_fields__))
                    try:
                        rows = tiles_from_block(scene, block, tile_size, overlap, resampling)
                    except SceneError as e:
                        report_error([scene_error_row(e)])
                        continue
                    if rows:
                        yield pa.RecordBatch.from_pylist(rows, schema=schema)

    return read_tiles


@contextmanager
def _closing(datasets: dict[str, Any]) -> Iterator[None]:
    try:
        yield
    finally:
        for ds in datasets.values():
            ds.close()


FILE_SCHEMA = (
    "scene_id string, path string, size long, modification_time long, "
    "partition_values string, stats string, n_tiles long"
)


def file_stats(table: pa.Table, keys: Iterable[str] = ("scene_id", "tile_row", "tile_col")) -> str:
    """Delta ``add`` statistics for the key columns (numRecords, min/max, null counts)."""
    keys = list(keys)
    lo = {k: min(table.column(k).to_pylist()) for k in keys}
    hi = {k: max(table.column(k).to_pylist()) for k in keys}
    return json.dumps(
        {
            "numRecords": table.num_rows,
            "minValues": lo,
            "maxValues": hi,
            "nullCount": {k: 0 for k in keys},
        }
    )


def write_table_file(
    table_path: str,
    table: pa.Table,
    partition_values: dict[str, str],
    keys: Iterable[str],
    zstd_level: int,
) -> dict[str, Any]:
    """Write ``table`` as one ZSTD Parquet file under ``table_path`` (Hive-style partition
    folders) and return its :data:`FILE_SCHEMA` record (path relative to the table)."""
    import os
    import uuid

    import pyarrow.parquet as pq

    folder = "/".join(f"{k}={v}" for k, v in partition_values.items())
    name = f"part-{uuid.uuid4().hex}.zstd.parquet"
    rel = f"{folder}/{name}" if folder else name
    full = f"{table_path}/{rel}"
    os.makedirs(os.path.dirname(full), exist_ok=True)
    pq.write_table(table, full, compression="zstd", compression_level=zstd_level)
    st = os.stat(full)
    return {
        "scene_id": (
            table.column("scene_id")[0].as_py()
            if table.num_rows and "scene_id" in table.column_names
            else None
        ),
        "path": rel,
        "size": st.st_size,
        "modification_time": int(st.st_mtime * 1000),
        "partition_values": json.dumps(partition_values),
        "stats": file_stats(table, keys),
        "n_tiles": table.num_rows,
    }


def make_tile_file_writer(
    table_path: str,
    schema: pa.Schema,
    partition_by: tuple[str, ...],
    tile_size: int,
    overlap: int,
    resampling: str,
    zstd_level: int,
    report_error: Callable[[list[dict[str, Any]]], None],
) -> Callable[[Iterable[dict[str, Any]]], Iterator[dict[str, Any]]]:
    """Build the RDD ``mapPartitions`` function that writes each block's tiles as one
    Parquet file.

    Input records are read blocks (``scene`` recipe JSON + window, see
    :func:`pipelines.ingest.block_records`). Pixels never cross into the JVM: the Python
    worker writes the file (ZSTD at ``zstd_level``) under ``table_path/<col>=<value>/...``
    and returns one small :data:`FILE_SCHEMA` record per file for the driver to commit.
    """
    data_schema = pa.schema([f for f in schema if f.name not in partition_by])

    def write_files(blocks: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        datasets: dict[str, Any] = {}  # files stay open across the task's blocks
        with rasterio.Env(**GDAL_ENV), _closing(datasets):
            for rec in blocks:
                scene = json.loads(rec["scene"])
                block = ReadBlock(*(rec[k] for k in ReadBlock.__dataclass_fields__))
                try:
                    rows = tiles_from_block(scene, block, tile_size, overlap, resampling, datasets)
                except SceneError as e:
                    report_error([scene_error_row(e)])
                    continue
                if not rows:
                    continue
                parts = {p: str(scene[p]) for p in partition_by}
                table = pa.Table.from_pylist(rows, schema=data_schema)
                yield write_table_file(table_path, table, parts, TILE_KEYS, zstd_level)

    return write_files
