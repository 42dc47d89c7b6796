"""Training job: label polygons + pixel features -> a land-cover classifier bundle.

Flow of :func:`train`: read the label polygons (GeoJSON or GeoParquet, any CRS) on the
driver -> pick the tiles whose ``bbox_wgs84`` meets a polygon (a small join on tile
metadata, no pixels) -> refuse to mix top-of-atmosphere and surface reflectance ->
broadcast the polygons -> executors rasterize them in each tile's own grid, explode the
tile's valid pixels (:func:`pipelines.features.pixel_features`'s kernel) and keep the
labelled *core* pixels (each scene pixel once with ``ingest.overlap > 0``), with their
polygon id and map block -> the driver groups polygons and blocks (connected components)
and holds out whole groups (:func:`udfs.labels.assign_split`; only a (polygon, block,
count) table is collected) -> a per-(split, class) Bernoulli sample sized for the cap
(``sampleBy``) -> either

* ``sklearn``: the capped sample is collected (bounded driver memory: at most about
  ``max_per_class`` rows per class and split), a RandomForest is fitted and written as
  ONNX, or
* ``mllib``: a Spark MLlib RandomForest is fitted on the distributed sample
  (VectorAssembler over the same feature columns) and saved as a Spark model,

-> metrics on the held-out polygons, with a cluster-bootstrap 95 % interval of the
overall accuracy (:func:`udfs.models.classification_metrics`) -> a model bundle
(:mod:`udfs.models`) whose metadata lists the polygons of each side.

Decisions
---------
* The held-out set is a set of whole polygons: no polygon and no map block feeds both
  sides (the conventions are in :mod:`udfs.labels`). Overall accuracy is measured on the
  class-capped held-out sample (at most ``max_test_per_class`` pixels per class), so it
  weighs classes more evenly than the map does; the interval resamples its polygons.
* Models never mix radiometries: scenes of sensors with different
  :attr:`udfs.sensors.Sensor.radiometry` raise :class:`udfs.models.RadiometryError` (exit
  code 2); the bundle records its ``radiometry``.

Run with ``python -m pipelines.train --labels data/demo/labels.geojson`` or
``spark-submit pipelines/train.py ...``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import IntegerType, LongType, StructField, StructType
from rasterio.warp import transform_geom
from shapely.geometry import MultiPolygon, Polygon, shape
from shapely.geometry.base import BaseGeometry

from pipelines.config import Config, load_config
from pipelines.features import pixel_schema, scene_table
from pipelines.lakehouse import Lakehouse
from pipelines.runs import Run, phase, record_run
from pipelines.session import build_session
from udfs.errors import ConfigError, PipelineError
from udfs.feature_udfs import TILE_COLUMNS, make_pixel_reader
from udfs.labels import (
    NO_LABEL,
    LabelError,
    Split,
    assign_split,
    map_block,
    overlap_links,
    pixel_centres,
    rasterize_polygons,
    sample_fractions,
    stratified_cap,
)
from udfs.models import (
    ModelError,
    RadiometryError,
    classification_metrics,
    load_bundle,
    predict_pixels,
    training_radiometry,
    write_metadata,
    write_onnx_bundle,
)
from udfs.sensors import SENSORS
from udfs.tiling import core_slices

JOB = "train"
log = logging.getLogger("eo")

TRAINERS = ("sklearn", "mllib")
#: Trees per forest. A power of two keeps every vote fraction (k / 64) exact in float32,
#: so the ONNX model's probabilities, and with them its classes (ties included), equal
#: scikit-learn's float64 ones exactly.
N_TREES = 64
#: What the bundle metadata says about the inputs of each radiometry.
RADIOMETRY_WORDS = {
    "surface": "surface reflectance",
    "toa": "top-of-atmosphere reflectance (not surface reflectance)",
}
SPLIT_METHOD = (
    "whole groups held out: connected components of polygon <-> map block "
    "(block_m squares of each CRS) and overlapping polygons, visited in "
    "splitmix64(group ^ seed) order until test_fraction of the labelled pixels; "
    "see udfs/labels.py"
)


# ----------------------------------------------------------------------------- labels


@dataclass(frozen=True)
class Labels:
    """Label polygons in their own CRS, with their class codes.

    Attributes
    ----------
    geoms : list of shapely Polygon / MultiPolygon
        In ``crs``.
    codes : ndarray of int32
        Class code of each polygon (1 .. 32767).
    classes : dict of int to str
        Code -> class name of every class present.
    crs : str
        CRS of the polygons as text rasterio reads (``EPSG:4326``, WKT or PROJJSON).
    path : str
        The file they came from.
    """

    geoms: list[BaseGeometry]
    codes: np.ndarray
    classes: dict[int, str]
    crs: str
    path: str = ""
    wgs84: list[BaseGeometry] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.geoms)


def _codes_for(names: list[Any], given: list[Any] | None, path: str) -> tuple[np.ndarray, dict]:
    """Class codes for each feature: ``given`` codes (checked), else 1..n by sorted name."""
    if given is not None and all(c is not None for c in given):
        classes: dict[int, str] = {}
        for name, code in zip(names, given, strict=True):
            try:
                code_int = int(code)
            except (TypeError, ValueError) as e:
                raise LabelError(f"labels {path}: class code {code!r} is not an integer") from e
            if classes.setdefault(code_int, str(name)) != str(name):
                raise LabelError(
                    f"labels {path}: class code {code_int} names both "
                    f"{classes[code_int]!r} and {name!r}"
                )
        codes = np.asarray([int(c) for c in given], dtype=np.int32)
    else:
        if all(isinstance(n, (int, np.integer)) for n in names):
            classes = {int(n): str(n) for n in names}
            codes = np.asarray(names, dtype=np.int32)
        else:
            ordered = sorted({str(n) for n in names})
            classes = {i + 1: n for i, n in enumerate(ordered)}
            lookup = {n: c for c, n in classes.items()}
            codes = np.asarray([lookup[str(n)] for n in names], dtype=np.int32)
    bad = [int(c) for c in codes if not 1 <= c <= 32767]
    if bad:
        raise LabelError(f"labels {path}: class codes must be 1..32767, got {bad[0]}")
    return codes, classes


def _check_polygon(geom: BaseGeometry, i: int, path: str) -> BaseGeometry:
    if not isinstance(geom, (Polygon, MultiPolygon)):
        raise LabelError(f"labels {path}: feature {i} is a {geom.geom_type}, expected polygons")
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    return geom


def read_labels(path: str | Path, class_column: str = "class_name") -> Labels:
    """Read label polygons from GeoJSON (EPSG:4326) or GeoParquet (the file's CRS).

    ``class_column`` names the class of each polygon. When a ``class_code`` column is
    present too (the demo labels) its codes are used and checked for consistency;
    otherwise integer classes are their own codes and names get codes 1..n in sorted
    order. Raises :class:`udfs.labels.LabelError` naming the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise LabelError(f"labels file not found: {path}")
    if path.suffix.lower() in (".parquet", ".geoparquet", ".pq"):
        geoms, names, given, crs = _read_geoparquet(path, class_column)
    else:
        geoms, names, given, crs = _read_geojson(path, class_column)
    if not geoms:
        raise LabelError(f"labels {path}: no polygons")
    codes, classes = _codes_for(names, given, str(path))
    geoms = [_check_polygon(g, i, str(path)) for i, g in enumerate(geoms)]
    wgs84 = [
        shape(transform_geom(crs, "EPSG:4326", shapely.geometry.mapping(g)))
        if crs != "EPSG:4326"
        else g
        for g in geoms
    ]
    return Labels(geoms, codes, classes, crs, str(path), wgs84)


def _read_geojson(path: Path, column: str):
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LabelError(f"labels {path}: not readable GeoJSON: {e}") from e
    feats = doc.get("features") if isinstance(doc, dict) else None
    if doc.get("type") == "Feature":
        feats = [doc]
    if not isinstance(feats, list):
        raise LabelError(f"labels {path}: expected a GeoJSON FeatureCollection")
    # RFC 7946 GeoJSON is lon/lat; a legacy "crs" member (GeoJSON 2008) may name another.
    crs = (doc.get("crs") or {}).get("properties", {}).get("name") or "EPSG:4326"
    if "CRS84" in crs:
        crs = "EPSG:4326"
    geoms, names, codes = [], [], []
    for i, feat in enumerate(feats):
        props = feat.get("properties") or {}
        if feat.get("geometry") is None:
            continue
        if column not in props:
            raise LabelError(
                f"labels {path}: feature {i} has no property {column!r} "
                f"(properties: {', '.join(sorted(props)) or 'none'})"
            )
        geoms.append(shape(feat["geometry"]))
        names.append(props[column])
        codes.append(props.get("class_code") if column != "class_code" else None)
    return geoms, names, codes if all(c is not None for c in codes) else None, crs


def _geoparquet_crs(meta: dict, column: str) -> str:
    crs = meta.get("columns", {}).get(column, {}).get("crs", "missing")
    if crs == "missing":
        return "EPSG:4326"  # GeoParquet: an absent crs means OGC:CRS84 (lon/lat)
    if crs is None:
        raise LabelError(f"geometry column {column!r} has an undefined CRS (crs: null)")
    ident = crs.get("id", {}) if isinstance(crs, dict) else {}
    if ident.get("authority") == "EPSG":
        return f"EPSG:{ident['code']}"
    if ident.get("authority") == "OGC" and str(ident.get("code")) == "CRS84":
        return "EPSG:4326"
    return json.dumps(crs) if isinstance(crs, dict) else str(crs)


def _read_geoparquet(path: Path, column: str):
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise LabelError(f"labels {path}: not a readable Parquet file: {e}") from e
    raw = (table.schema.metadata or {}).get(b"geo")
    if raw is None:
        raise LabelError(f"labels {path}: no 'geo' metadata, not a GeoParquet file")
    meta = json.loads(raw)
    geom_col = meta.get("primary_column", "geometry")
    encoding = meta.get("columns", {}).get(geom_col, {}).get("encoding", "WKB")
    if encoding.upper() != "WKB":
        raise LabelError(f"labels {path}: geometry encoding {encoding!r}, only WKB is read")
    if column not in table.column_names:
        raise LabelError(
            f"labels {path}: no column {column!r} (columns: {', '.join(table.column_names)})"
        )
    try:
        crs = _geoparquet_crs(meta, geom_col)
    except LabelError as e:
        raise LabelError(f"labels {path}: {e}") from e
    wkb = table.column(geom_col).to_pylist()
    keep = [i for i, g in enumerate(wkb) if g is not None]
    geoms = list(shapely.from_wkb([wkb[i] for i in keep]))
    names = [table.column(column)[i].as_py() for i in keep]
    codes = None
    if column != "class_code" and "class_code" in table.column_names:
        codes = [table.column("class_code")[i].as_py() for i in keep]
    return geoms, names, codes, crs


# ----------------------------------------------------------------------------- tiles


def feature_columns(sensors: Sequence[str], indices: Sequence[str]) -> list[str]:
    """Model inputs: the reflectance bands every sensor has (pixel view order), then indices."""
    if not sensors:
        raise ModelError("no sensors to train on")
    bands = [f.name for f in pixel_schema([]) if f.dataType.typeName() == "float"]
    have = [{b.common for b in SENSORS[s].reflectance_bands} for s in sensors]
    return [b for b in bands if all(b in h for h in have)] + [i.lower() for i in indices]


def select_tiles(
    lake: Lakehouse,
    labels: Labels,
    scene_ids: Sequence[str] | None = None,
    usable_only: bool = True,
) -> list[tuple[str, int, int]]:
    """Keys of the tiles whose ``bbox_wgs84`` intersects a label polygon.

    Only tile metadata (key and bbox, no pixels) reaches the driver.
    """
    tiles = lake.read("tiles").select("scene_id", "tile_row", "tile_col", "bbox_wgs84")
    if scene_ids:
        tiles = tiles.filter(F.col("scene_id").isin(list(scene_ids)))
    if usable_only:
        ok = lake.read("tile_features").filter("usable").select("scene_id", "tile_row", "tile_col")
        tiles = tiles.join(ok, ["scene_id", "tile_row", "tile_col"], "left_semi")
    rows = tiles.collect()
    if not rows:
        return []
    tree = shapely.STRtree(labels.wgs84)
    boxes = shapely.box(*np.asarray([r.bbox_wgs84 for r in rows], dtype=np.float64).T)
    hit = np.unique(tree.query(boxes, predicate="intersects")[0])
    return sorted((rows[i].scene_id, rows[i].tile_row, rows[i].tile_col) for i in hit)


# ----------------------------------------------------------------------------- executors


def labelled_schema(indices: Sequence[str]) -> StructType:
    """Pixel view columns + position in the scene grid, label, polygon id and map block."""
    return StructType(
        [
            *pixel_schema(list(indices)).fields,
            StructField("scene_row", IntegerType(), False),
            StructField("scene_col", IntegerType(), False),
            StructField("label", IntegerType(), False),
            StructField("polygon", IntegerType(), False),  # position in the labels file
            StructField("block", LongType(), False),  # udfs.labels.map_block
        ]
    )


#: Tile columns the labelling reader needs besides the pixel columns.
GEO_COLUMNS = ("transform", "crs_epsg", "row_off", "col_off", "bbox_wgs84")


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
    grid and cut to the tile's core (:func:`udfs.tiling.core_slices`: with
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
                core = np.zeros(raster.shape, dtype=bool)
                size, _ = tiling[row["scene_id"]]
                core[
                    core_slices(
                        row["tile_row"],
                        row["tile_col"],
                        row["row_off"],
                        row["col_off"],
                        row["height"],
                        row["width"],
                        size,
                    )
                ] = True
                raster[~core] = NO_LABEL
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


def labelled_pixels(
    spark: SparkSession,
    lake: Lakehouse,
    config: Config,
    labels: Labels,
    tiles: Sequence[tuple[str, int, int]],
    features: Sequence[str],
    block_m: float,
) -> DataFrame:
    """Lazy DataFrame of labelled core pixels of ``tiles``: features + label, polygon, block."""
    indices = list(config.features.indices)
    scene_ids = sorted({t[0] for t in tiles})
    scenes = scene_table(lake, scene_ids)
    tiling = {
        r.scene_id: (int(r.tile_size), int(r.overlap or 0))
        for r in lake.read("scenes")
        .filter(F.col("scene_id").isin(scene_ids))
        .select("scene_id", "tile_size", "overlap")
        .collect()
    }
    # The same masks as the features job and the pixel view (features.scl_masked, ...).
    pixel_reader = make_pixel_reader(
        scenes, indices, to_arrow_schema(pixel_schema(indices)), masks=config.features.masks()
    )
    payload = {
        "crs": labels.crs,
        "wkb": [shapely.to_wkb(g) for g in labels.geoms],
        "codes": [int(c) for c in labels.codes],
        "bbox": [list(g.bounds) for g in labels.wgs84],
    }
    bc = spark.sparkContext.broadcast(payload)
    schema = labelled_schema(indices)
    reader = make_labelled_reader(
        pixel_reader, bc, tiling, list(features), block_m, to_arrow_schema(schema)
    )
    keys = spark.createDataFrame(list(tiles), "scene_id string, tile_row int, tile_col int")
    picked = lake.read("tiles").join(
        F.broadcast(keys), ["scene_id", "tile_row", "tile_col"], "left_semi"
    )
    return picked.select(*TILE_COLUMNS, *GEO_COLUMNS).mapInArrow(reader, schema)


def block_size_m(lake: Lakehouse, scene_ids: Sequence[str], block_px: int) -> float:
    """Block side in CRS units: ``block_px`` x the finest pixel size of ``scene_ids``."""
    rows = (
        lake.read("scenes")
        .filter(F.col("scene_id").isin(list(scene_ids)))
        .select(F.min("resolution").alias("res"))
        .collect()
    )
    res = rows[0]["res"] if rows else None
    if res is None or not res > 0:
        raise ModelError(f"no pixel size (scenes.resolution) for scene(s) {', '.join(scene_ids)}")
    return float(block_px) * float(res)


def split_polygons(
    labelled: DataFrame, labels: Labels, test_fraction: float, seed: int
) -> tuple[Split, dict[str, int]]:
    """Assign whole groups of polygons and blocks to train or test (driver side).

    Only the (polygon, block, pixel count) table reaches the driver. Returns the
    :class:`udfs.labels.Split` and the labelled pixels per ``"<split>:<code>"`` stratum.
    """
    pairs = labelled.groupBy("polygon", "block").count().toArrow()
    pol = pairs.column("polygon").to_numpy().astype(np.int64)
    split = assign_split(
        pol,
        pairs.column("block").to_numpy(),
        pairs.column("count").to_numpy(),
        labels.codes,
        test_fraction,
        seed,
        overlap_links(labels.geoms),
    )
    counts: dict[str, int] = {}
    for code, n, test in zip(split.classes, split.pixels, split.test, strict=True):
        key = f"{'test' if test else 'train'}:{int(code)}"
        counts[key] = counts.get(key, 0) + int(n)
    return split, counts


def with_split(spark: SparkSession, labelled: DataFrame, split: Split) -> DataFrame:
    """``labelled`` + a ``split`` column (``train`` | ``test``) from the polygon's side."""
    sides = spark.createDataFrame(
        [
            (int(p), "test" if t else "train")
            for p, t in zip(split.polygons, split.test, strict=True)
        ],
        "polygon int, split string",
    )
    return labelled.join(F.broadcast(sides), "polygon")


def split_warnings(split: Split, classes: Mapping[int, str]) -> list[str]:
    """Plain-words warnings for classes the split could not put on both sides."""
    out = []
    for code in split.one_group:
        out.append(
            f"class {classes[code]} ({code}): all its polygons form one group (they share "
            "blocks), so it is on one side only; draw polygons further apart or use smaller "
            "blocks"
        )
    for code in split.missing_test:
        out.append(f"class {classes[code]} ({code}) has no held-out pixels: not evaluated")
    for code in split.missing_train:
        out.append(f"class {classes[code]} ({code}) has no training pixels: never predicted")
    return out


# ----------------------------------------------------------------------------- sampling


@dataclass
class Sample:
    """The collected, capped training and test rows (numpy)."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    test_rows: dict[str, np.ndarray]  # scene_id, scene_row, scene_col, polygon, block of X_test
    train_rows: dict[str, np.ndarray] = field(default_factory=dict)  # the same of X_train


def stratum_sample(
    labelled: DataFrame, counts: Mapping[str, int], cap: int, test_cap: int, seed: int
) -> DataFrame:
    """Bernoulli sample per ``split:label`` stratum sized to keep ~``cap`` rows each.

    ``counts`` maps ``"train:<code>"`` / ``"test:<code>"`` to pixel counts; training strata
    are sized for ``cap``, held-out ones for ``test_cap``.
    """
    fractions = {
        **sample_fractions({k: n for k, n in counts.items() if k.startswith("train:")}, cap),
        **sample_fractions({k: n for k, n in counts.items() if k.startswith("test:")}, test_cap),
    }
    strat = labelled.withColumn("stratum", F.concat_ws(":", "split", F.col("label").cast("string")))
    return strat.sampleBy("stratum", fractions, seed)


def collect_sample(
    sampled: DataFrame, features: Sequence[str], cap: int, test_cap: int, seed: int
) -> Sample:
    """Collect the (already capped-by-fraction) sample and trim it to exactly the caps."""
    where = ("scene_row", "scene_col", "polygon", "block")
    cols = [*features, "label", "split", "scene_id", *where]
    table = sampled.select(*cols).toArrow()
    split = np.asarray(table.column("split").to_pylist())
    y = table.column("label").to_numpy().astype(np.int32)
    X = np.column_stack(
        [table.column(f).to_numpy(zero_copy_only=False).astype(np.float32) for f in features]
    )
    scene = np.asarray(table.column("scene_id").to_pylist(), dtype=object)
    out = {}
    for name, c in (("train", cap), ("test", test_cap)):
        idx = np.flatnonzero(split == name)
        idx = idx[stratified_cap(y[idx], c, seed)]
        out[name] = idx

    def rows(idx: np.ndarray) -> dict[str, np.ndarray]:
        return {"scene_id": scene[idx], **{k: table.column(k).to_numpy()[idx] for k in where}}

    train, test = out["train"], out["test"]
    return Sample(X[train], y[train], X[test], y[test], rows(test), rows(train))


# ----------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    """What :func:`train_model` produced: the bundle and, for tests, model, sample, split."""

    bundle_path: Path
    metadata: dict[str, Any]
    model: Any = None
    sample: Sample | None = None
    scene_ids: list[str] = field(default_factory=list)
    split: Split | None = None


def fit_sklearn(X: np.ndarray, y: np.ndarray, seed: int, n_trees: int = N_TREES) -> Any:
    """A scikit-learn RandomForest fitted on the capped sample.

    Fully grown trees (pure leaves) and a power-of-two tree count make the ONNX export
    reproduce scikit-learn's classes exactly (see :data:`N_TREES`).
    """
    from sklearn.ensemble import RandomForestClassifier

    model = RandomForestClassifier(n_estimators=n_trees, random_state=seed, n_jobs=-1)
    return model.fit(X, y)


def fit_mllib(
    train_df: DataFrame, features: Sequence[str], codes: Sequence[int], seed: int, n_trees: int
) -> Any:
    """A Spark MLlib RandomForest on the distributed sample (label index = code order)."""
    from pyspark.ml.classification import RandomForestClassifier

    assembled = _assemble(train_df, features, codes)
    rf = RandomForestClassifier(
        featuresCol="features",
        labelCol="label_idx",
        numTrees=n_trees,
        maxDepth=14,
        featureSubsetStrategy="sqrt",
        seed=seed,
    )
    return rf.fit(assembled)


def _assemble(df: DataFrame, features: Sequence[str], codes: Sequence[int]) -> DataFrame:
    from pyspark.ml.feature import VectorAssembler

    codes_arr = F.array(*[F.lit(int(c)) for c in codes])
    indexed = df.withColumn(
        "label_idx", (F.array_position(codes_arr, F.col("label")) - 1).cast("double")
    )
    return VectorAssembler(inputCols=list(features), outputCol="features").transform(indexed)


def mllib_metrics(
    model: Any,
    test_df: DataFrame,
    features: Sequence[str],
    classes: Mapping[int, str],
    seed: int = 0,
) -> dict[str, Any]:
    """Held-out metrics of a Spark model: (polygon, label, prediction) counts from Spark."""
    codes = sorted(classes)
    pred = model.transform(_assemble(test_df, features, codes))
    pairs = pred.groupBy("polygon", "label", "prediction").count().collect()
    y_true = [int(r["label"]) for r in pairs]
    y_pred = [codes[int(r["prediction"])] for r in pairs]
    weight = [int(r["count"]) for r in pairs]
    polygon = [int(r["polygon"]) for r in pairs]
    return classification_metrics(
        y_true, y_pred, classes, sample_weight=weight, groups=polygon, seed=seed
    )


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("scikit-learn", "skl2onnx", "onnxruntime", "pyspark", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def train_model(
    spark: SparkSession,
    lake: Lakehouse,
    config: Config,
    labels_path: str | Path,
    *,
    class_column: str = "class_name",
    trainer: str = "sklearn",
    max_per_class: int = 5000,
    max_test_per_class: int | None = None,
    block_px: int = 512,
    test_fraction: float = 0.3,
    seed: int = 0,
    n_trees: int = N_TREES,
    scene_ids: Sequence[str] | None = None,
    sensors: Sequence[str] | None = None,
    model_out: str | Path | None = None,
    run: Run | None = None,
) -> TrainResult:
    """Train a pixel classifier from label polygons; write its bundle. See :func:`train`."""
    if trainer not in TRAINERS:
        raise ConfigError(f"trainer must be one of {', '.join(TRAINERS)}, got {trainer!r}")
    if max_per_class <= 0:
        raise ConfigError(f"max_per_class must be > 0, got {max_per_class}")
    test_cap = max_test_per_class or max_per_class
    run = run or Run(config, job=JOB, source=str(labels_path))
    with phase("labels"):
        labels = read_labels(labels_path, class_column)
    log.info("%d label polygon(s), classes %s, CRS %s", len(labels), labels.classes, labels.crs)
    with phase("tile selection"):
        scene_filter = list(scene_ids or [])
        if sensors:
            scenes = scene_table(lake)
            scene_filter = [
                s
                for s, v in scenes.items()
                if v["sensor"] in sensors and (not scene_ids or s in scene_ids)
            ]
            if not scene_filter:
                raise ModelError(f"no ingested scene of sensor(s) {', '.join(sensors)}")
        tiles = select_tiles(lake, labels, scene_filter or None)
    if not tiles:
        raise ModelError(
            f"no usable tile intersects the {len(labels)} label polygon(s) of {labels.path}"
        )
    scene_ids_used = sorted({t[0] for t in tiles})
    info = scene_table(lake, scene_ids_used)
    sensors_used = sorted({v["sensor"] for v in info.values()})
    radiometry = training_radiometry(sensors_used)  # refuses TOA mixed with surface
    features = feature_columns(sensors_used, config.features.indices)
    block_m = block_size_m(lake, scene_ids_used, block_px)
    run.seen = len(tiles)
    run.ingested = scene_ids_used
    log.info("%d tile(s) of %d scene(s) (%s) meet the labels", len(tiles), len(info), sensors_used)

    labelled = labelled_pixels(spark, lake, config, labels, tiles, features, block_m).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    try:
        with phase("split"):
            split, counts = split_polygons(labelled, labels, test_fraction, seed)
        warnings = split_warnings(split, labels.classes)
        for w in warnings:
            log.warning("split: %s", w)
        if split.pixels_train == 0 or split.pixels_test == 0:
            raise ModelError(
                f"the split left {split.pixels_train} training and {split.pixels_test} "
                f"held-out labelled pixels ({split.n_groups} group(s) of polygons and blocks): "
                f"use a smaller block size (now {block_px} px) or more, farther apart labels"
            )
        sampled = stratum_sample(
            with_split(spark, labelled, split), counts, max_per_class, test_cap, seed
        )
        model_id = (
            f"landcover-{trainer}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{run.run_id[:6]}"
        )
        out = Path(model_out) if model_out else Path(config.train.models_dir) / model_id
        split_counts = {
            "n_groups": split.n_groups,
            "n_groups_test": split.n_groups_test,
            "n_polygons_train": len(split.train_polygons),
            "n_polygons_test": len(split.test_polygons),
            "pixels_train": split.pixels_train,
            "pixels_test": split.pixels_test,
        }
        meta: dict[str, Any] = {
            "model_id": model_id,
            "trainer": trainer,
            "feature_names": features,
            "bands": [f for f in features if f not in {i.lower() for i in config.features.indices}],
            "indices": [i.lower() for i in config.features.indices],
            "radiometry": radiometry,
            "scaling": {
                "input": f"{RADIOMETRY_WORDS[radiometry]} (unitless) and spectral indices",
                "formula": "reflectance = DN * scale + offset",
                "source": "scenes.scaling (per scene and band)",
                "per_scene": {s: v["scaling"] for s, v in sorted(info.items())},
            },
            "classes": [{"code": c, "name": n} for c, n in sorted(labels.classes.items())],
            "sensors": sensors_used,
            "scenes": scene_ids_used,
            "training_run_id": run.run_id,
            "labels": {
                "path": str(labels.path),
                "class_column": class_column,
                "crs": labels.crs,
                "polygons": len(labels),
            },
            "split": {
                "method": SPLIT_METHOD,
                "block_px": block_px,
                "block_m": block_m,
                "test_fraction": test_fraction,
                "seed": seed,
                **split_counts,
                "warnings": warnings,
                # Polygon ids: positions in the labels file (0-based).
                "train_polygons": split.train_polygons,
                "test_polygons": split.test_polygons,
            },
            "labelled_pixels": counts,
            "created": datetime.now(timezone.utc).isoformat(),
            "versions": _versions(),
        }
        if trainer == "sklearn":
            with phase("collect sample"):
                sample = collect_sample(sampled, features, max_per_class, test_cap, seed)
            with phase("fit sklearn"):
                model = fit_sklearn(sample.X_train, sample.y_train, seed, n_trees)
            metrics = classification_metrics(
                sample.y_test,
                model.predict(sample.X_test),
                labels.classes,
                groups=sample.test_rows["polygon"],
                seed=seed,
            )
            meta.update(
                estimator="sklearn.ensemble.RandomForestClassifier",
                params={"n_estimators": n_trees, "random_state": seed},
                sample={
                    "max_per_class": max_per_class,
                    "max_test_per_class": test_cap,
                    "train": _class_counts(sample.y_train),
                    "test": _class_counts(sample.y_test),
                },
                metrics={**metrics, **split_counts, "warnings": warnings},
            )
            with phase("write bundle"):
                bundle = write_onnx_bundle(out, model, meta)
                onnx_classes, _ = predict_pixels(bundle, sample.X_test)
                agree = float(np.mean(onnx_classes == model.predict(sample.X_test)))
                if agree < 1.0:
                    log.warning("ONNX model agrees with scikit-learn on %.4f of pixels", agree)
                bundle.metadata["onnx_agreement"] = agree
                write_metadata(out, bundle.metadata)
            return TrainResult(out, load_bundle(out).metadata, model, sample, scene_ids_used, split)
        train_df = sampled.filter("split = 'train'")
        test_df = sampled.filter("split = 'test'")
        codes = sorted(labels.classes)
        with phase("fit mllib"):
            model = fit_mllib(train_df, features, codes, seed, n_trees)
        with phase("mllib metrics"):
            metrics = mllib_metrics(model, test_df, features, labels.classes, seed)
        meta.update(
            estimator="pyspark.ml.classification.RandomForestClassifier",
            params={"numTrees": n_trees, "maxDepth": 14, "seed": seed},
            format="spark",
            model_file="spark_model",
            model_classes=codes,
            sample={"max_per_class": max_per_class, "max_test_per_class": test_cap},
            metrics={**metrics, **split_counts, "warnings": warnings},
        )
        out.mkdir(parents=True, exist_ok=True)
        model.write().overwrite().save(str((out / "spark_model").resolve()))
        write_metadata(out, meta)
        return TrainResult(out, load_bundle(out).metadata, model, None, scene_ids_used, split)
    finally:
        labelled.unpersist()


def _class_counts(y: np.ndarray) -> dict[str, int]:
    codes, n = np.unique(y, return_counts=True)
    return {str(int(c)): int(k) for c, k in zip(codes, n, strict=True)}


def train(
    spark: SparkSession,
    lake: Lakehouse,
    config: Config,
    labels_path: str | Path,
    **options: Any,
) -> Path:
    """Train a land-cover classifier and write its bundle; returns the bundle folder.

    Parameters
    ----------
    labels_path : str or Path
        GeoJSON (EPSG:4326) or GeoParquet (any CRS) polygons with a class column.
    **options
        ``class_column`` (``class_name``), ``trainer`` (``sklearn`` | ``mllib``),
        ``max_per_class`` (5000 training pixels per class; ``max_test_per_class``
        defaults to it), ``block_px`` (512: side of the map blocks, in pixels of the finest
        training scene), ``test_fraction`` (about 0.3 of the labelled pixels are held
        out, as whole groups of polygons and blocks), ``seed``, ``n_trees``,
        ``scene_ids`` / ``sensors`` (restrict the scenes), ``model_out`` (default
        ``<train.models_dir>/<model_id>``), ``run`` (the :class:`Run` to record into).
    """
    return train_model(spark, lake, config, labels_path, **options).bundle_path


# ----------------------------------------------------------------------------- the job


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="train", description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="local", help="conf/<profile>.yaml or a YAML path")
    p.add_argument("--root", help="table root folder (storage.root)")
    # Defaults come from the profile's train section (conf/<profile>.yaml).
    p.add_argument("--labels", help="GeoJSON / GeoParquet polygons (train.labels)")
    p.add_argument("--class-column", help="property holding the class (train.class_column)")
    p.add_argument("--trainer", choices=TRAINERS, help="train.trainer")
    p.add_argument("--max-per-class", type=int, help="training pixels per class")
    p.add_argument("--max-test-per-class", type=int, help="held-out pixels per class")
    p.add_argument("--block-px", type=int, help="spatial block side in pixels (train.block_px)")
    p.add_argument("--test-fraction", type=float, help="share of held-out labelled pixels")
    p.add_argument("--seed", type=int)
    p.add_argument("--trees", type=int, help="trees per forest (train.trees)")
    p.add_argument("--scenes", help="comma-separated scene ids to train on (default: all)")
    p.add_argument("--sensors", help="comma-separated sensors to train on (default: all)")
    p.add_argument("--model-out", help="bundle folder (default <train.models_dir>/<model_id>)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    flags = (
        "labels", "class_column", "trainer", "max_per_class", "block_px", "test_fraction",
        "seed", "trees",
    )  # fmt: skip
    try:
        overrides = [f"storage.root={args.root}"] if args.root else []
        overrides += [
            f"train.{flag}={getattr(args, flag)}"
            for flag in flags
            if getattr(args, flag) is not None
        ]
        config = load_config(args.profile, [*overrides, *args.set])
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    t = config.train
    spark = build_session(config)
    lake = Lakehouse(spark, config.storage)
    run = Run(config, job=JOB, source=t.labels)
    status = "failed"
    try:
        result = train_model(
            spark,
            lake,
            config,
            t.labels,
            class_column=t.class_column,
            trainer=t.trainer,
            max_per_class=t.max_per_class,
            max_test_per_class=args.max_test_per_class,
            block_px=t.block_px,
            test_fraction=t.test_fraction,
            seed=t.seed,
            n_trees=t.trees,
            scene_ids=args.scenes.split(",") if args.scenes else None,
            sensors=args.sensors.split(",") if args.sensors else None,
            model_out=args.model_out,
            run=run,
        )
        status = "succeeded"
    except PipelineError as e:
        print(f"train failed: {e}", file=sys.stderr)
        return 2 if isinstance(e, (ConfigError, LabelError, RadiometryError)) else 1
    finally:
        record_run(spark, lake, run, status)
    print(summary(run.run_id, result))
    return 0


def summary(run_id: str, result: TrainResult) -> str:
    """The job's printed report: accuracy, its interval, what it rests on, per class."""
    meta = result.metadata
    m = meta["metrics"]
    ci = m.get("accuracy_ci")
    interval = (
        f"{m['ci_level']:.0%} interval [{ci[0]:.3f}, {ci[1]:.3f}]"
        if ci
        else "no interval (fewer than 2 held-out polygons)"
    )
    lines = [
        f"train run {run_id}: model {meta['model_id']} ({meta['trainer']}, "
        f"{meta.get('radiometry', '?')} reflectance) on {len(result.scene_ids)} scene(s) "
        f"-> {result.bundle_path}",
        f"  held-out overall accuracy {m['overall_accuracy']:.3f}, {interval}, on {m['n']} "
        f"pixels of {m['n_polygons']} held-out polygon(s)",
        f"  split: {m['n_polygons_train']} training / {m['n_polygons_test']} held-out "
        f"polygons in {m['n_groups']} group(s) of polygons and blocks; labelled pixels "
        f"{m['pixels_train']} / {m['pixels_test']}",
        f"  interval: {m['ci_method']}",
    ]
    lines += [f"  warning: {w}" for w in m.get("warnings", [])]
    lines += [
        f"  {name:12s} precision {pc['precision']:.3f} recall {pc['recall']:.3f} "
        f"f1 {pc['f1']:.3f} support {pc['support']}"
        for name, pc in m["per_class"].items()
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
