"""Thin Arrow wrappers running :mod:`udfs.features` inside executor Python workers.

Two ways in, one kernel: :func:`make_feature_reader` either reads the ``tiles`` Parquet
files itself with pyarrow (pixels never pass through the JVM) or
takes tile rows from a Spark DataFrame. Bad tiles are reported as ``rejected`` records.

Both readers compute over each tile's core only (:func:`tile_core`: the tile's
``row_off`` / ``col_off`` and the scene's ``tile_size``), so sums over ``tile_features``
or over the pixel view count each scene pixel once whatever ``ingest.overlap`` was, and
mask with the job's :class:`udfs.masks.MaskSettings` (``masks=None``: the defaults).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from udfs.features import (
    Core,
    TileDataError,
    decode_tile,
    needed_columns,
    pixel_table,
    tile_features,
)
from udfs.masks import MaskSettings
from udfs.sensors import BAND_COLUMNS, SENSORS
from udfs.stats import STAT_NAMES
from udfs.tiling import core_slices

TILE_COLUMNS = ("scene_id", "tile_row", "tile_col", "width", "height", "dtype", *BAND_COLUMNS)
#: ``tiles`` columns that place a tile in the scene grid, needed for its core.
CORE_COLUMNS = ("row_off", "col_off")


def tile_tables(
    batches: Iterable[pa.RecordBatch], from_files: bool, columns: Sequence[str]
) -> Iterator[pa.RecordBatch | pa.Table]:
    """Tile rows from mapInArrow input: the batches themselves, or with ``from_files`` the
    ``columns`` of the ``tiles`` Parquet files named in a ``path`` column, read a few row
    groups at a time (pixels then never pass through the JVM)."""
    for batch in batches:
        if from_files:
            yield from file_row_groups(batch.column("path").to_pylist(), columns)
        else:
            yield batch


def file_row_groups(
    paths: Iterable[str], columns: Sequence[str], max_rows: int = 16
) -> Iterator[pa.Table]:
    """The ``columns`` of ``tiles`` Parquet files, in chunks of whole row groups.

    Consecutive row groups of a file are read together up to ``max_rows`` rows (a chunk
    holds at least one row group), so memory stays bounded by a few tiles while files of
    one tile per row group (:data:`udfs.ingest_udfs.TILES_PER_ROW_GROUP`) are still
    handled many tiles at a time.
    """
    for path in paths:
        pf = pq.ParquetFile(path)
        chunk: list[int] = []
        rows = 0
        for rg in range(pf.num_row_groups):
            n = pf.metadata.row_group(rg).num_rows
            if chunk and rows + n > max_rows:
                yield pf.read_row_groups(chunk, columns=list(columns))
                chunk, rows = [], 0
            chunk.append(rg)
            rows += n
        if chunk:
            yield pf.read_row_groups(chunk, columns=list(columns))


def binary_views(column: pa.ChunkedArray | pa.Array) -> list[np.ndarray | None]:
    """Each value of a binary column as a ``uint8`` view of Arrow's buffer (None where
    null), without copying the pixels into Python ``bytes`` as ``to_pylist`` does."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    out: list[np.ndarray | None] = []
    for chunk in chunks:
        if len(chunk) == 0:
            continue
        if chunk.null_count == len(chunk):  # all null (a band not ingested): no buffers
            out.extend([None] * len(chunk))
            continue
        _, offsets_buf, data_buf = chunk.buffers()
        wide = pa.types.is_large_binary(chunk.type)
        offsets = np.frombuffer(offsets_buf, np.int64 if wide else np.int32)
        offsets = offsets[chunk.offset : chunk.offset + len(chunk) + 1]
        data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.empty(0, np.uint8)
        valid = chunk.is_valid().to_numpy(zero_copy_only=False)
        out.extend(
            data[offsets[i] : offsets[i + 1]] if valid[i] else None for i in range(len(chunk))
        )
    return out


def table_rows(table: pa.Table | pa.RecordBatch) -> list[dict[str, Any]]:
    """Rows of a ``tiles`` table as dicts: binary (band) columns as ``uint8`` views
    (:func:`binary_views`), every other column as Python values."""
    cols: dict[str, list[Any]] = {}
    for name, column in zip(table.schema.names, table.columns, strict=True):
        if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
            cols[name] = binary_views(column)
        else:
            cols[name] = column.to_pylist()
    return [dict(zip(cols, values, strict=True)) for values in zip(*cols.values(), strict=True)]


def bad_tile(row: Mapping[str, Any], stage: str, error: Exception) -> dict[str, Any]:
    """A ``rejected`` record for a tile whose arrays cannot be decoded."""
    return {
        "href": f"tiles/{row['scene_id']}/{row['tile_row']}/{row['tile_col']}",
        "scene_id": row["scene_id"],
        "stage": stage,
        "error_class": "BadTile",
        "reason": f"tile ({row['tile_row']}, {row['tile_col']}): {error}",
    }


def decoded_tiles(
    rows: Iterable[Mapping[str, Any]],
    scenes: Mapping[str, Mapping[str, Any]],
    stage: str,
    errors: list[dict[str, Any]],
    needed: Callable[[str], Collection[str]] | None = None,
) -> Iterator[tuple[Mapping[str, Any], Mapping[str, Any], dict[str, np.ndarray]]]:
    """``(row, scene, DN arrays)`` of the tile rows of the scenes in ``scenes`` (others
    skipped); a tile whose arrays cannot be decoded goes to ``errors`` (:func:`bad_tile`).
    ``needed(sensor)``: the reflectance columns the caller needs (None: every required
    band); other null reflectance columns (not ingested) are then left out."""
    for row in rows:
        scene = scenes.get(row["scene_id"])
        if scene is None:
            continue
        try:
            sensor = scene["sensor"]
            dn = decode_tile(row, sensor, None if needed is None else needed(sensor))
        except TileDataError as e:
            errors.append(bad_tile(row, stage, e))
            continue
        yield row, scene, dn


def _scaling(scene: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    return {k: (float(v[0]), float(v[1])) for k, v in scene["scaling"].items()}


def tile_core(row: Mapping[str, Any], scene: Mapping[str, Any]) -> Core:
    """The core of a ``tiles`` row (:func:`udfs.tiling.core_slices`).

    ``row`` needs ``tile_row``, ``tile_col``, ``height``, ``width`` and
    :data:`CORE_COLUMNS`; ``scene`` its ``tile_size`` (``scenes.tile_size``). A scene
    without a recorded tile size has no known overlap: None (the whole tile).

    Raises
    ------
    KeyError
        ``row`` lacks ``row_off`` / ``col_off`` (select :data:`CORE_COLUMNS` too).
    """
    size = scene.get("tile_size")
    if not size:
        return None
    missing = [c for c in CORE_COLUMNS if c not in row]
    if missing:
        raise KeyError(f"tile rows need {', '.join(missing)} to find their core")
    return core_slices(
        row["tile_row"],
        row["tile_col"],
        row["row_off"],
        row["col_off"],
        row["height"],
        row["width"],
        int(size),
    )


def feature_rows(
    rows: Sequence[Mapping[str, Any]],
    scenes: Mapping[str, Mapping[str, Any]],
    indices: Sequence[str],
    max_cloud_fraction: float,
    extra: Mapping[str, Any],
    report_error: Callable[[list[dict[str, Any]]], None],
    masks: MaskSettings | None = None,
    bands: Collection[str] | None = None,
    stats: Sequence[str] = STAT_NAMES,
) -> list[dict[str, Any]]:
    """``tile_features`` rows for tile rows of the scenes in ``scenes`` (others skipped).

    ``bands`` (None: every reflectance band) and ``stats`` select the layers and the
    statistics (:func:`udfs.features.tile_features`); a tile lacking a column they or
    ``indices`` need is rejected, naming the band.

    ``usable`` means *known* to be clear enough: at least one valid pixel and a known
    cloud fraction at most ``max_cloud_fraction``. A sensor without a quality band
    (Sentinel-2 L1C) has an unknown (NaN) cloud fraction, so its tiles are never usable.
    ``radiometry`` is the sensor's (``surface`` or ``toa``), so top-of-atmosphere rows are
    never mistaken for surface reflectance.
    """
    out: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    need: dict[str, set[str]] = {}

    def needed(sensor: str) -> set[str]:
        if sensor not in need:
            need[sensor] = needed_columns(sensor, indices, bands)
        return need[sensor]

    for row, scene, dn in decoded_tiles(rows, scenes, "features", errors, needed):
        sensor = scene["sensor"]
        core = tile_core(row, scene)
        f = tile_features(sensor, dn, _scaling(scene), indices, masks, core, bands, stats)
        cloud = f["cloud_fraction"]
        known = cloud == cloud  # NaN: unknown
        out.append(
            {
                "scene_id": row["scene_id"],
                "tile_row": row["tile_row"],
                "tile_col": row["tile_col"],
                "sensor": sensor,
                "radiometry": SENSORS[sensor].radiometry,
                "acquired_date": scene["acquired_date"],
                "pixel_count": f["pixel_count"],
                "valid_count": f["valid_count"],
                "valid_fraction": f["valid_fraction"],
                "cloud_fraction": cloud,
                "usable": f["valid_count"] > 0 and known and cloud <= max_cloud_fraction,
                "stats": list(f["stats"].items()),
                **extra,
            }
        )
    if errors:
        report_error(errors)
    return out


def make_feature_reader(
    scenes: Mapping[str, Mapping[str, Any]],
    indices: Sequence[str],
    max_cloud_fraction: float,
    extra: Mapping[str, Any],
    schema: pa.Schema,
    report_error: Callable[[list[dict[str, Any]]], None],
    from_files: bool = False,
    masks: MaskSettings | None = None,
    bands: Collection[str] | None = None,
    stats: Sequence[str] = STAT_NAMES,
) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """mapInArrow function producing ``tile_features`` rows.

    Input batches hold ``tiles`` rows (:data:`TILE_COLUMNS` and :data:`CORE_COLUMNS`), or
    with ``from_files`` a ``path`` column of tiles Parquet files that the worker reads
    itself, a few row groups at a time. ``masks``: the quality classes and flags to mask
    (None: the defaults); ``bands`` / ``stats``: what to summarise (:func:`feature_rows`).
    Pixels are read as views of the Arrow buffers (:func:`table_rows`), never copied to
    Python ``bytes``.
    """

    def read(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        keep_freed_memory()
        for tiles in tile_tables(batches, from_files, (*TILE_COLUMNS, *CORE_COLUMNS)):
            rows = feature_rows(
                table_rows(tiles),
                scenes,
                indices,
                max_cloud_fraction,
                extra,
                report_error,
                masks,
                bands,
                stats,
            )
            if rows:
                yield pa.RecordBatch.from_pylist(rows, schema=schema)

    return read


def make_feature_mapper(
    scenes: Mapping[str, Mapping[str, Any]],
    indices: Sequence[str],
    max_cloud_fraction: float,
    extra: Mapping[str, Any],
    masks: MaskSettings | None = None,
    bands: Collection[str] | None = None,
    stats: Sequence[str] = STAT_NAMES,
) -> Callable[[Iterable[str]], Iterator[tuple[bool, dict[str, Any]]]]:
    """RDD ``mapPartitions`` function: ``tiles`` Parquet file paths -> ``(True, row)`` for
    each ``tile_features`` row (dicts of :func:`feature_rows`) and ``(False, record)`` for
    each rejected tile (:func:`bad_tile`).

    The files are read here, a few row groups at a time (:func:`file_row_groups`), so
    pixels never pass through the JVM, and the rows go back to the driver as they are (one
    small dict per tile): no DataFrame, no Arrow round trip through Spark. Rejected tiles
    come back with the rows rather than through an accumulator: the function then holds
    nothing but this module's code and plain data, and a fresh Python worker imports
    ``udfs`` only (an accumulator's parameter class would make it import the driver's
    ``pipelines`` modules, pyspark.sql and rasterio among them: ~1 s per worker here).
    Other arguments are those of :func:`make_feature_reader`.
    """

    def run(paths: Iterable[str]) -> Iterator[tuple[bool, dict[str, Any]]]:
        keep_freed_memory()
        errors: list[dict[str, Any]] = []
        for tiles in file_row_groups(list(paths), (*TILE_COLUMNS, *CORE_COLUMNS)):
            rows = feature_rows(
                table_rows(tiles),
                scenes,
                indices,
                max_cloud_fraction,
                extra,
                errors.extend,
                masks,
                bands,
                stats,
            )
            yield from ((True, r) for r in rows)
            yield from ((False, e) for e in errors)
            errors.clear()

    return run


#: glibc ``mallopt`` parameters: ``M_TRIM_THRESHOLD`` and ``M_MMAP_THRESHOLD``.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(mmap_threshold: int = 64 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Let this process's allocator reuse freed numpy buffers instead of returning them.

    A tile's layers are arrays of a few hundred KB, allocated and freed many times per
    tile. glibc serves such sizes with ``mmap`` (and gives the pages back on ``free``)
    or trims the heap's top, so each new array page-faults its pages in again: 0.15 to
    0.9 million faults for the 484 tiles of the 5490 px bench scene in one process, up
    to a third of the kernel's time, against 15-20 thousand with these settings.
    Buffers up to ``mmap_threshold`` bytes then come from the heap, and up to
    ``trim_threshold`` bytes of free heap are kept (the peak is unchanged; the process
    keeps it). Returns False, changing nothing, where the C library has no ``mallopt``
    (not glibc).
    """
    libc = _libc()
    if libc is None:
        return False
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
        and libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )


@functools.cache
def _libc() -> Any:
    """The C library with a ``mallopt``, once per process (``find_library`` runs
    ``ldconfig``: tens of ms, at the start of every task otherwise); None without one."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt  # noqa: B018  (the attribute lookup is the test)
    except (OSError, AttributeError):
        return None
    return libc


def make_pixel_reader(
    scenes: Mapping[str, Mapping[str, Any]],
    indices: Sequence[str],
    schema: pa.Schema,
    masks: MaskSettings | None = None,
) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """mapInArrow function: ``tiles`` rows -> one row per valid core pixel (pixel view).

    Input rows need :data:`TILE_COLUMNS` and :data:`CORE_COLUMNS`; ``scenes`` maps
    scene_id -> sensor, scaling, acquired_date and tile_size
    (``pipelines.features.scene_table``). Only the tile's core pixels are emitted, so a
    sum over the view counts every scene pixel once; ``row`` / ``col`` stay positions in
    the stored tile. ``masks``: the quality classes and flags to mask (None: defaults).
    """
    names = [f.name for f in schema]

    def explode(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            # Undecodable tiles are left out: the features job rejects them with a reason.
            for row, scene, dn in decoded_tiles(batch.to_pylist(), scenes, "pixels", []):
                sensor = scene["sensor"]
                core = tile_core(row, scene)
                cols = pixel_table(sensor, dn, _scaling(scene), indices, masks, core)
                n = len(cols["row"])
                if n == 0:
                    continue
                arrays = []
                for name in names:
                    if name in cols:
                        arrays.append(pa.array(cols[name], type=schema.field(name).type))
                    elif name in ("scene_id", "sensor", "radiometry"):
                        value = {
                            "scene_id": row["scene_id"],
                            "sensor": sensor,
                            "radiometry": SENSORS[sensor].radiometry,
                        }[name]
                        arrays.append(pa.array([value] * n, pa.string()))
                    elif name in ("tile_row", "tile_col"):
                        arrays.append(pa.array([row[name]] * n, pa.int32()))
                    elif name == "acquired_date":
                        arrays.append(pa.array([scene["acquired_date"]] * n, pa.date32()))
                    else:
                        arrays.append(pa.nulls(n, schema.field(name).type))
                yield pa.RecordBatch.from_arrays(arrays, schema=schema)

    return explode
