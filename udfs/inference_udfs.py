"""Thin Arrow wrapper running :func:`udfs.inference.classify_tile` in executor Python workers.

The model arrives as a broadcast of its ONNX bytes and becomes one onnxruntime session
per worker process (:func:`udfs.models.session_from_bytes`; a random forest: one session
per few trees, :func:`udfs.models.forest_parts`); Python workers are reused across tasks,
so a model is loaded once per worker, not once per batch or tile.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from udfs.feature_udfs import (
    TILE_COLUMNS,
    _scaling,
    decoded_tiles,
    file_row_groups,
    tile_core,
    tile_tables,
)
from udfs.inference import class_dtype, classify_tile
from udfs.masks import MaskSettings
from udfs.models import predict_with_session, session_from_bytes
from udfs.tiling import encode_array

#: Tile columns the classifier copies into ``predictions`` besides the pixel columns
#: (``row_off`` / ``col_off`` also place the tile's core, for the counts).
PREDICTION_GEO_COLUMNS = ("crs_epsg", "transform", "bounds", "row_off", "col_off")


@dataclass(frozen=True)
class ModelRef:
    """What executors need of a model: identity, inputs, classes and its bytes.

    Attributes
    ----------
    model_id, sha256 : str
        Bundle id and digest of the ONNX file (the worker's session cache key).
    feature_names : tuple of str
        Inputs in order; ``indices`` the (upper-case) indices among them.
    codes : tuple of int
        Class codes in the order of the model's probability columns.
    blob : object
        A Spark broadcast of the ONNX bytes (``.value``), or the bytes themselves.
    """

    model_id: str
    sha256: str
    feature_names: tuple[str, ...]
    indices: tuple[str, ...]
    codes: tuple[int, ...]
    blob: Any

    def model_bytes(self) -> bytes:
        return self.blob if isinstance(self.blob, bytes) else self.blob.value

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return predict_with_session(
            lambda: session_from_bytes(self.sha256, self.model_bytes), self.codes, X
        )


def classified_rows(
    rows: Sequence[Mapping[str, Any]],
    scenes: Mapping[str, Mapping[str, Any]],
    model: ModelRef,
    extra: Mapping[str, Any],
    report_error: Callable[[list[dict[str, Any]]], None],
    masks: MaskSettings | None = None,
) -> list[dict[str, Any]]:
    """One output row per tile (``predictions`` + ``tile_predictions`` columns).

    The rasters cover the whole tile; the counts its core only (``scenes`` carries each
    scene's ``tile_size``), see :func:`udfs.inference.classify_tile`. ``masks``: the
    quality classes and flags to mask (None: the defaults).
    """
    out: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    dtype = class_dtype(model.codes)
    for row, scene, dn in decoded_tiles(rows, scenes, "classify", errors):
        r = classify_tile(
            scene["sensor"],
            dn,
            _scaling(scene),
            model.feature_names,
            model.indices,
            model.predict,
            model.codes,
            masks,
            tile_core(row, scene),
        )
        mean = r["mean_confidence"]
        out.append(
            {
                "model_id": model.model_id,
                **{k: row[k] for k in ("scene_id", "tile_row", "tile_col", "width", "height")},
                **{k: row[k] for k in PREDICTION_GEO_COLUMNS},
                "sensor": scene["sensor"],
                "acquired_date": scene["acquired_date"],
                "dtype": dtype.name,
                "classes": encode_array(r["classes"].astype(dtype, copy=False)),
                "confidence": encode_array(r["confidence"]),
                "pixel_count": r["pixel_count"],
                "classified_count": r["classified_count"],
                "class_counts": list(r["class_counts"].items()),
                "mean_confidence": None if mean != mean else mean,
                **extra,
            }
        )
    if errors:
        report_error(errors)
    return out


def make_tile_classifier(
    scenes: Mapping[str, Mapping[str, Any]],
    model: ModelRef,
    extra: Mapping[str, Any],
    schema: pa.Schema,
    report_error: Callable[[list[dict[str, Any]]], None],
    from_files: bool = False,
    masks: MaskSettings | None = None,
) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """mapInArrow function: ``tiles`` rows (or their files' paths) -> classified tiles."""
    columns = (*TILE_COLUMNS, *PREDICTION_GEO_COLUMNS)

    def classify(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for tiles in tile_tables(batches, from_files, columns):
            rows = classified_rows(tiles.to_pylist(), scenes, model, extra, report_error, masks)
            if rows:
                yield pa.RecordBatch.from_pylist(rows, schema=schema)

    return classify


def make_tile_classifier_writer(
    scenes: Mapping[str, Mapping[str, Any]],
    model: ModelRef,
    extra: Mapping[str, Any],
    predictions_schema: pa.Schema,
    tile_fields: Sequence[str],
    table_path: str,
    zstd_level: int,
    report_error: Callable[[list[dict[str, Any]]], None],
    masks: MaskSettings | None = None,
) -> Callable[[Iterable[str]], Iterator[dict[str, Any]]]:
    """RDD ``mapPartitions`` function: tiles Parquet files -> ``predictions`` files + rows.

    For each input file the worker classifies its tiles, writes their ``predictions`` rows
    as one Parquet file under ``table_path/model_id=<id>/`` (rasters never pass through
    the JVM) and yields ``{"file": record}`` (:data:`udfs.ingest_udfs.FILE_SCHEMA`, for the
    driver to commit) and one ``{"tile": row}`` per tile with the ``tile_fields`` of
    ``tile_predictions``.
    """
    from udfs.ingest_udfs import TILE_KEYS, TILES_PER_ROW_GROUP, write_table_file

    columns = (*TILE_COLUMNS, *PREDICTION_GEO_COLUMNS)
    data_schema = pa.schema([f for f in predictions_schema if f.name != "model_id"])

    def classify(paths: Iterable[str]) -> Iterator[dict[str, Any]]:
        for tiles in file_row_groups(paths, columns):
            rows = classified_rows(tiles.to_pylist(), scenes, model, extra, report_error, masks)
            if not rows:
                continue
            table = pa.Table.from_pylist(rows, schema=data_schema)
            parts = {"model_id": model.model_id}
            record = write_table_file(
                table_path, table, parts, TILE_KEYS, zstd_level, TILES_PER_ROW_GROUP,
                str(extra.get("run_id", "")),
            )  # fmt: skip
            yield {"file": record}
            for r in rows:
                yield {"tile": {k: r[k] for k in tile_fields}}

    return classify
