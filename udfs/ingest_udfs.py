"""Thin Arrow/pandas wrappers that run the ingest reads inside executor Python workers.

They only convert between Arrow batches and the kernels of :mod:`udfs.reader` /
:mod:`udfs.tiling`; errors become records (scene, file, stage, reason) instead of
failing the task, so one bad scene never stops the others.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import rasterio
from rasterio.crs import CRS
from rasterio.warp import transform_bounds

from udfs.errors import ConfigError, SceneError
from udfs.reader import GDAL_ENV, SceneSource, inspect_scene, read_block, scene_error_row
from udfs.sensors import BAND_COLUMNS, SENSORS
from udfs.tiling import (
    ReadBlock,
    block_tiles,
    encode_mask,
    encode_tiles,
    tile_transform,
    window_bounds,
)

INSPECT_SCHEMA = "scene_id string, info string, error string"
TILE_KEYS = ("scene_id", "tile_row", "tile_col")
#: Tiles per Parquet row group in ``tiles`` and ``predictions`` files: one, so a reader
#: that needs a few tiles of a file (the aggregate job, for regions) decodes those tiles
#: only, not the file's other tiles (a row group's column chunk is decompressed whole).
#: Readers of whole files combine row groups (:func:`udfs.feature_udfs.file_row_groups`).
TILES_PER_ROW_GROUP = 1


def check_tiled_bands(
    tiled: Mapping[str, Collection[str]], needed: Mapping[str, Collection[str]], what: str
) -> None:
    """Refuse scenes whose tiles lack a band the caller needs (``ingest.bands``).

    Parameters
    ----------
    tiled : mapping of str to collection of str
        scene_id -> band columns its tiles hold (``scenes.bands[].column``).
    needed : mapping of str to collection of str
        scene_id -> band columns the caller reads for that scene (e.g. the bands of a
        model's features and indices, for the scene's sensor).
    what : str
        Who needs them, for the message (``model m1``, ``features.indices``).

    Raises
    ------
    ConfigError
        Naming the first scene (sorted), the missing band columns, the count of scenes
        affected and the key to set.
    """
    short = {s: sorted(set(cols) - set(tiled.get(s, ()))) for s, cols in sorted(needed.items())}
    short = {s: m for s, m in short.items() if m}
    if not short:
        return
    scene, missing = next(iter(short.items()))
    raise ConfigError(
        f"{what} needs band(s) {', '.join(missing)} but scene {scene} was ingested without "
        f"them ({len(short)} scene(s) affected; tiled: {', '.join(tiled.get(scene, ())) or '-'})."
        f" Add them to ingest.bands (empty: every band) and re-ingest those scenes with "
        f"--rebuild."
    )


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


def block_table(
    scene: dict[str, Any],
    block: ReadBlock,
    tile_size: int,
    overlap: int,
    resampling: str,
    schema: pa.Schema,
    datasets: dict[str, Any] | None = None,
) -> pa.Table:
    """Read one block and build its ``tiles`` rows (pixel columns encoded), row-major.

    Parameters
    ----------
    scene : dict
        Scene recipe (:func:`pipelines.ingest.block_records`): grid, bands, CRS, dates.
    block : ReadBlock
        Window of the scene grid (pixels) holding whole tiles.
    tile_size, overlap : int
        Tile side and overlap in pixels of the scene grid.
    resampling : str
        Method for coarser reflectance bands (quality bands: always nearest).
    schema : pyarrow.Schema
        Arrow schema of the rows: ``tiles``, or ``tiles`` without its partition columns.
    datasets : dict, optional
        href -> open dataset, kept open across blocks by the caller.

    Returns
    -------
    pyarrow.Table
        One row per tile. Band columns hold the tile's DNs of dtype ``dtype`` (nodata =
        the sensor's nodata DN), encoded as :mod:`udfs.tiling` states, column-wise from
        the block arrays (:func:`udfs.tiling.encode_tiles`); columns the sensor lacks
        are null, and so is an optional band the product lacks (``radsat`` without
        ``QA_RADSAT``: the scene's ``bands`` do not list it), and so is a band the
        scene's ``bands`` leave out (``ingest.bands``). ``valid`` marks pixels that hold
        data in every tiled reflectance band (role ``reflectance``; quality bands never
        count).
    """
    sensor = SENSORS[scene["sensor"]]
    dtype = np.result_type(*[np.dtype(b["dtype"]) for b in scene["bands"]])
    arrays = read_block(scene, block, resampling, datasets)
    windows = block_tiles(block, scene["height"], scene["width"], tile_size, overlap)
    cuts = [
        (w.row_off - block.row_off, w.col_off - block.col_off, w.height, w.width) for w in windows
    ]
    valid = np.ones((block.height, block.width), dtype=bool)
    for b in sensor.reflectance_bands:
        if b.common in arrays:  # bands not tiled (``ingest.bands``) do not count
            valid &= arrays[b.common] != sensor.nodata
    tile_valid = [valid[r : r + h, c : c + w] for r, c, h, w in cuts]
    grid = tuple(scene["transform"])
    bounds = [window_bounds(grid, w.row_off, w.col_off, w.height, w.width) for w in windows]
    crs = CRS.from_wkt(scene["crs_wkt"])
    n = len(windows)
    columns: dict[str, Any] = {
        "scene_id": [scene["scene_id"]] * n,
        "tile_row": [w.tile_row for w in windows],
        "tile_col": [w.tile_col for w in windows],
        "sensor": [scene["sensor"]] * n,
        "acquired_date": [date.fromisoformat(scene["acquired_date"])] * n,
        "acq_month": [scene["acq_month"]] * n,
        "crs_epsg": [scene["crs_epsg"]] * n,
        "transform": [list(tile_transform(grid, w.row_off, w.col_off)) for w in windows],
        "bounds": [list(b) for b in bounds],
        "bbox_wgs84": [list(transform_bounds(crs, "EPSG:4326", *b, densify_pts=5)) for b in bounds],
        "row_off": [w.row_off for w in windows],
        "col_off": [w.col_off for w in windows],
        "width": [w.width for w in windows],
        "height": [w.height for w in windows],
        "dtype": [dtype.name] * n,
        "valid_fraction": [float(v.mean()) for v in tile_valid],
        "valid": [encode_mask(v) for v in tile_valid],
    }
    for c in BAND_COLUMNS:
        columns[c] = (
            encode_tiles(arrays[c], cuts, dtype) if c in arrays else pa.nulls(n, pa.binary())
        )
    return pa.Table.from_pydict({f.name: columns[f.name] for f in schema}, schema=schema)


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
                        table = block_table(scene, block, tile_size, overlap, resampling, schema)
                    except SceneError as e:
                        report_error([scene_error_row(e)])
                        continue
                    yield from table.to_batches()

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
    row_group_rows: int | None = None,
    owner: str = "",
    store: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Write ``table`` as one ZSTD Parquet file under ``table_path`` (Hive-style partition
    folders) and return its :data:`FILE_SCHEMA` record (path relative to the table).

    ``table_path``: a local path, or an ``s3://`` / ``s3a://`` URI; there the file goes
    through a ``pyarrow.fs.S3FileSystem`` built from ``store`` (the recipe of
    :func:`udfs.storage.store_options`: endpoint, TLS, region; credentials are found by
    this process, never passed). One PUT of the whole file: S3 has no partial objects, so
    an interrupted write leaves nothing (a file is there whole or not at all).

    ``owner``: the id of the run writing it, in the file name (``part-run<owner>-<uuid>``):
    concurrent runs see in a table snapshot which run wrote a scene's rows
    (:func:`pipelines.lakehouse.file_owner`).

    ``row_group_rows``: rows per Parquet row group (None: pyarrow's default, one group
    for a file of tiles); pixel tables pass :data:`TILES_PER_ROW_GROUP`.
    """
    import os
    import time
    import uuid

    import pyarrow.parquet as pq

    from udfs.storage import filesystem, is_object_store

    folder = "/".join(f"{k}={v}" for k, v in partition_values.items())
    tag = f"run{owner}-" if owner else ""
    name = f"part-{tag}{uuid.uuid4().hex}.zstd.parquet"
    rel = f"{folder}/{name}" if folder else name
    remote = is_object_store(table_path)
    if remote:
        fs, base = filesystem(table_path, store or {})
        full, sink = f"{base}/{rel}", pa.BufferOutputStream()
    else:
        full = f"{table_path}/{rel}"
        os.makedirs(os.path.dirname(full), exist_ok=True)
    # Pixel columns (binary: one encoded raster per row) get neither a dictionary nor
    # min/max statistics: every value is distinct, so the writer would hash and compare
    # each raster for nothing (profile, bench/ingest_bench.py). Small columns keep both,
    # for row-group pruning on the keys.
    small = [f.name for f in table.schema if not pa.types.is_binary(f.type)]
    pq.write_table(
        table,
        sink if remote else full,
        compression="zstd",
        compression_level=zstd_level,
        row_group_size=row_group_rows,
        use_dictionary=small,
        write_statistics=small,
    )
    if remote:
        data = sink.getvalue()
        with fs.open_output_stream(full) as out:
            out.write(data)
        size, mtime_ms = data.size, int(time.time() * 1000)
    else:
        st = os.stat(full)
        size, mtime_ms = st.st_size, int(st.st_mtime * 1000)
    return {
        "scene_id": (
            table.column("scene_id")[0].as_py()
            if table.num_rows and "scene_id" in table.column_names
            else None
        ),
        "path": rel,
        "size": size,
        "modification_time": mtime_ms,
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
    owner: str = "",
    store: Mapping[str, str] | None = None,
) -> Callable[[Iterable[dict[str, Any]]], Iterator[dict[str, Any]]]:
    """Build the RDD ``mapPartitions`` function that writes each block's tiles as one
    Parquet file (named after run ``owner``, see :func:`write_table_file`).

    ``table_path`` is a local path or an ``s3://`` URI; ``store`` the object-store recipe
    captured on the driver (:func:`udfs.storage.store_options`; no credentials: each
    worker finds its own, e.g. from ``spark.executorEnv.AWS_*`` or an instance role).

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
                    table = block_table(
                        scene, block, tile_size, overlap, resampling, data_schema, datasets
                    )
                except SceneError as e:
                    report_error([scene_error_row(e)])
                    continue
                if not table.num_rows:
                    continue
                parts = {p: str(scene[p]) for p in partition_by}
                yield write_table_file(
                    table_path,
                    table,
                    parts,
                    TILE_KEYS,
                    zstd_level,
                    TILES_PER_ROW_GROUP,
                    owner,
                    store,
                )

    return write_files
