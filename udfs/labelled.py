"""Executor side of training: ``tiles`` rows -> labelled core pixels (a mapInArrow reader).

A thin Arrow wrapper around the kernels of :mod:`udfs.labels` (rasterize the polygons in a
tile's own grid, map blocks) and the pixel view's reader
(:func:`udfs.feature_udfs.make_pixel_reader`); no pyspark. The driver side
(:func:`pipelines.training_data.labelled_pixels`) broadcasts the polygons and builds the
output schema.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import shapely

from udfs.feature_udfs import tile_core
from udfs.features import core_mask
from udfs.labels import NO_LABEL, map_block, pixel_centres, rasterize_polygons

#: Tile columns the labelling reader needs besides the pixel columns.
LABEL_GEO_COLUMNS = ("transform", "crs_epsg", "row_off", "col_off", "bbox_wgs84")


def make_labelled_reader(
    pixel_reader: Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]],
    labels: Any,
    tiling: Mapping[str, tuple[int, int]],
    features: Sequence[str],
    block_m: float,
    schema: pa.Schema,
) -> Callable[[Iterable[pa.RecordBatch]], Iterable[pa.RecordBatch]]:
    """mapInArrow function: ``tiles`` rows -> labelled pixel rows (see :func:`labelled_schema`).

    ``labels`` is a broadcast of ``{"crs", "wkb", "codes", "bbox"}`` (bbox in lon/lat; the
    list position is the polygon id); ``tiling`` maps scene_id -> ``(tile_size, overlap)``.
    Per tile: the polygons whose lon/lat box meets the tile's are rasterized in the tile's
    grid and cut to the tile's core (:func:`udfs.feature_udfs.tile_core`: with
    ``ingest.overlap > 0`` the margin belongs to a neighbour tile, which samples it), so
    every scene pixel is sampled once; a tile without a labelled core pixel is not
    decoded. Labelled core pixels with finite features are kept, with their polygon id and
    map block (:func:`udfs.labels.map_block`, side ``block_m`` CRS units).
    """

    def read(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        lab = labels.value
        tree = shapely.STRtree(shapely.box(*np.asarray(lab["bbox"], dtype=np.float64).T))
        for batch in batches:
            for row in batch.to_pylist():
                cand = tree.query(shapely.box(*row["bbox_wgs84"]))
                if len(cand) == 0:
                    continue
                raster, polygon = rasterize_polygons(
                    [(lab["wkb"][i], lab["codes"][i], int(i)) for i in cand],
                    row["transform"],
                    row["height"],
                    row["width"],
                    row["crs_epsg"],
                    lab["crs"],
                )
                size, _ = tiling[row["scene_id"]]
                raster[~core_mask(raster.shape, tile_core(row, {"tile_size": size}))] = NO_LABEL
                if not raster.any():
                    continue
                one = pa.RecordBatch.from_pylist([row], schema=batch.schema)
                for px in pixel_reader(iter([one])):
                    out = _label_batch(px, row, raster, polygon, features, block_m)
                    if out is not None:
                        yield pa.RecordBatch.from_arrays(
                            [out[f.name] for f in schema], schema=schema
                        )

    return read


def _label_batch(
    px: pa.RecordBatch,
    tile: Mapping[str, Any],
    raster: np.ndarray,
    polygon: np.ndarray,
    features: Sequence[str],
    block_m: float,
) -> dict[str, pa.Array] | None:
    r = px.column("row").to_numpy()
    c = px.column("col").to_numpy()
    label = raster[r, c].astype(np.int32)
    keep = label > 0
    for name in features:
        keep &= np.isfinite(px.column(name).to_numpy(zero_copy_only=False))
    if not keep.any():
        return None
    idx = pa.array(np.flatnonzero(keep))
    out = {name: px.column(name).take(idx) for name in px.schema.names}
    x, y = pixel_centres(tile["transform"], r[keep], c[keep])
    out["scene_row"] = pa.array((r[keep] + tile["row_off"]).astype(np.int32))
    out["scene_col"] = pa.array((c[keep] + tile["col_off"]).astype(np.int32))
    out["label"] = pa.array(label[keep])
    out["polygon"] = pa.array(polygon[r[keep], c[keep]].astype(np.int32))
    out["block"] = pa.array(map_block(x, y, block_m, tile["crs_epsg"]))
    return out
