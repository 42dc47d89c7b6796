"""Training job: label polygons + pixel features -> a land-cover classifier bundle.

Flow of :func:`train`: read the label polygons (GeoJSON or GeoParquet, any CRS) on the
driver -> pick the tiles whose ``bbox_wgs84`` meets a polygon (a small join on tile
metadata, no pixels) -> broadcast the polygons -> executors rasterize them in each tile's
own grid, explode the tile's valid pixels (:func:`pipelines.features.pixel_features`'s
kernel) and keep the labelled ones, with their spatial block and split -> class counts
-> a per-(split, class) Bernoulli sample sized for the cap (``sampleBy``) -> either

* ``sklearn``: the capped sample is collected (bounded driver memory: at most about
  ``max_per_class`` rows per class and split), a RandomForest is fitted and written as
  ONNX, or
* ``mllib``: a Spark MLlib RandomForest is fitted on the distributed sample
  (VectorAssembler over the same feature columns) and saved as a Spark model,

-> metrics on the held-out blocks -> a model bundle (:mod:`udfs.models`).

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
from pyspark.sql.types import IntegerType, LongType, StringType, StructField, StructType
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
    LabelError,
    held_out,
    rasterize_labels,
    sample_fractions,
    spatial_block,
    stratified_cap,
)
from udfs.models import (
    ModelError,
    classification_metrics,
    load_bundle,
    predict_pixels,
    write_metadata,
    write_onnx_bundle,
)
from udfs.sensors import SENSORS

JOB = "train"
log = logging.getLogger("eo")

TRAINERS = ("sklearn", "mllib")
#: Trees per forest. A power of two keeps every vote fraction (k / 64) exact in float32,
#: so the ONNX model's probabilities, and with them its classes (ties included), equal
#: scikit-learn's float64 ones exactly.
N_TREES = 64


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
    """Pixel view columns + position in the scene grid, label, block and split."""
    return StructType(
        [
            *pixel_schema(list(indices)).fields,
            StructField("scene_row", IntegerType(), False),
            StructField("scene_col", IntegerType(), False),
            StructField("label", IntegerType(), False),
            StructField("block", LongType(), False),
            StructField("split", StringType(), False),
        ]
    )


#: Tile columns the labelling reader needs besides the pixel columns.
GEO_COLUMNS = ("transform", "crs_epsg", "row_off", "col_off", "bbox_wgs84")


def make_labelled_reader(
    pixel_reader: Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]],
    labels: Any,
    tiling: Mapping[str, tuple[int, int]],
    features: Sequence[str],
    block_px: int,
    test_fraction: float,
    seed: int,
    schema: pa.Schema,
) -> Callable[[Iterable[pa.RecordBatch]], Iterable[pa.RecordBatch]]:
    """mapInArrow function: ``tiles`` rows -> labelled pixel rows (see :func:`labelled_schema`).

    ``labels`` is a broadcast of ``{"crs", "wkb", "codes", "bbox"}`` (bbox in lon/lat);
    ``tiling`` maps scene_id -> ``(tile_size, overlap)``. Per tile: the polygons whose
    lon/lat box meets the tile's are rasterized in the tile's grid; a tile without a
    labelled pixel is not decoded. Only core pixels (not the overlap, which belongs to a
    neighbour tile too) with a label and finite features are kept.
    """

    def read(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        lab = labels.value
        tree = shapely.STRtree(shapely.box(*np.asarray(lab["bbox"], dtype=np.float64).T))
        for batch in batches:
            for row in batch.to_pylist():
                cand = tree.query(shapely.box(*row["bbox_wgs84"]))
                if len(cand) == 0:
                    continue
                raster = rasterize_labels(
                    [(lab["wkb"][i], lab["codes"][i]) for i in cand],
                    row["transform"],
                    row["height"],
                    row["width"],
                    row["crs_epsg"],
                    lab["crs"],
                )
                if not raster.any():
                    continue
                one = pa.RecordBatch.from_pylist([row], schema=batch.schema)
                for px in pixel_reader(iter([one])):
                    out = _label_batch(
                        px, row, raster, tiling, features, block_px, test_fraction, seed
                    )
                    if out is not None:
                        yield pa.RecordBatch.from_arrays(
                            [out[f.name] for f in schema], schema=schema
                        )

    return read


def _label_batch(
    px: pa.RecordBatch,
    tile: Mapping[str, Any],
    raster: np.ndarray,
    tiling: Mapping[str, tuple[int, int]],
    features: Sequence[str],
    block_px: int,
    test_fraction: float,
    seed: int,
) -> dict[str, pa.Array] | None:
    r = px.column("row").to_numpy()
    c = px.column("col").to_numpy()
    size, _ = tiling[tile["scene_id"]]
    sr = r + tile["row_off"]
    sc = c + tile["col_off"]
    core = (sr // size == tile["tile_row"]) & (sc // size == tile["tile_col"])
    label = raster[r, c].astype(np.int32)
    keep = core & (label > 0)
    for name in features:
        keep &= np.isfinite(px.column(name).to_numpy(zero_copy_only=False))
    if not keep.any():
        return None
    idx = pa.array(np.flatnonzero(keep))
    out = {name: px.column(name).take(idx) for name in px.schema.names}
    block = spatial_block(sr[keep], sc[keep], block_px)
    test = held_out(block, test_fraction, seed)
    out["scene_row"] = pa.array(sr[keep].astype(np.int32))
    out["scene_col"] = pa.array(sc[keep].astype(np.int32))
    out["label"] = pa.array(label[keep])
    out["block"] = pa.array(block)
    out["split"] = pa.array(np.where(test, "test", "train"))
    return out


def labelled_pixels(
    spark: SparkSession,
    lake: Lakehouse,
    config: Config,
    labels: Labels,
    tiles: Sequence[tuple[str, int, int]],
    features: Sequence[str],
    block_px: int,
    test_fraction: float,
    seed: int,
) -> DataFrame:
    """Lazy DataFrame of labelled pixels of ``tiles``: features + label + block + split."""
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
    pixel_reader = make_pixel_reader(scenes, indices, to_arrow_schema(pixel_schema(indices)))
    payload = {
        "crs": labels.crs,
        "wkb": [shapely.to_wkb(g) for g in labels.geoms],
        "codes": [int(c) for c in labels.codes],
        "bbox": [list(g.bounds) for g in labels.wgs84],
    }
    bc = spark.sparkContext.broadcast(payload)
    schema = labelled_schema(indices)
    reader = make_labelled_reader(
        pixel_reader,
        bc,
        tiling,
        list(features),
        block_px,
        test_fraction,
        seed,
        to_arrow_schema(schema),
    )
    keys = spark.createDataFrame(list(tiles), "scene_id string, tile_row int, tile_col int")
    picked = lake.read("tiles").join(
        F.broadcast(keys), ["scene_id", "tile_row", "tile_col"], "left_semi"
    )
    return picked.select(*TILE_COLUMNS, *GEO_COLUMNS).mapInArrow(reader, schema)


# ----------------------------------------------------------------------------- sampling


@dataclass
class Sample:
    """The collected, capped training and test rows (numpy)."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    test_rows: dict[str, np.ndarray]  # scene_id, scene_row, scene_col, block of X_test


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
    cols = [*features, "label", "split", "scene_id", "scene_row", "scene_col", "block"]
    table = sampled.select(*cols).toArrow()
    split = np.asarray(table.column("split").to_pylist())
    y = table.column("label").to_numpy().astype(np.int32)
    X = np.column_stack(
        [table.column(f).to_numpy(zero_copy_only=False).astype(np.float32) for f in features]
    )
    out = {}
    for name, c in (("train", cap), ("test", test_cap)):
        idx = np.flatnonzero(split == name)
        idx = idx[stratified_cap(y[idx], c, seed)]
        out[name] = idx
    test = out["test"]
    rows = {
        "scene_id": np.asarray(table.column("scene_id").to_pylist(), dtype=object)[test],
        **{k: table.column(k).to_numpy()[test] for k in ("scene_row", "scene_col", "block")},
    }
    return Sample(X[out["train"]], y[out["train"]], X[test], y[test], rows)


# ----------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    """What :func:`train_model` produced: the bundle and, for tests, the model and sample."""

    bundle_path: Path
    metadata: dict[str, Any]
    model: Any = None
    sample: Sample | None = None
    scene_ids: list[str] = field(default_factory=list)


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
    model: Any, test_df: DataFrame, features: Sequence[str], classes: Mapping[int, str]
) -> dict[str, Any]:
    """Held-out metrics of a Spark model: (label, prediction) counts aggregated in Spark."""
    codes = sorted(classes)
    pred = model.transform(_assemble(test_df, features, codes))
    pairs = pred.groupBy("label", "prediction").count().collect()
    y_true = [int(r["label"]) for r in pairs]
    y_pred = [codes[int(r["prediction"])] for r in pairs]
    weight = [int(r["count"]) for r in pairs]
    return classification_metrics(y_true, y_pred, classes, sample_weight=weight)


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
    features = feature_columns(sensors_used, config.features.indices)
    run.seen = len(tiles)
    run.ingested = scene_ids_used
    log.info("%d tile(s) of %d scene(s) (%s) meet the labels", len(tiles), len(info), sensors_used)

    labelled = labelled_pixels(
        spark, lake, config, labels, tiles, features, block_px, test_fraction, seed
    ).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        with phase("class counts"):
            counts = {
                f"{r['split']}:{r['label']}": int(r["count"])
                for r in labelled.groupBy("split", "label").count().collect()
            }
        n_train = sum(v for k, v in counts.items() if k.startswith("train:"))
        n_test = sum(v for k, v in counts.items() if k.startswith("test:"))
        if n_train == 0 or n_test == 0:
            raise ModelError(
                f"the spatial split left {n_train} training and {n_test} held-out labelled "
                f"pixels: use a smaller block size (now {block_px} px) or more labels"
            )
        sampled = stratum_sample(labelled, counts, max_per_class, test_cap, seed)
        model_id = (
            f"landcover-{trainer}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{run.run_id[:6]}"
        )
        out = Path(model_out) if model_out else Path(config.train.models_dir) / model_id
        meta: dict[str, Any] = {
            "model_id": model_id,
            "trainer": trainer,
            "feature_names": features,
            "bands": [f for f in features if f not in {i.lower() for i in config.features.indices}],
            "indices": [i.lower() for i in config.features.indices],
            "scaling": {
                "input": "surface reflectance (unitless) and spectral indices",
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
                "method": "spatial blocks of the scene grid, splitmix64(block id ^ seed)",
                "block_px": block_px,
                "test_fraction": test_fraction,
                "seed": seed,
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
                sample.y_test, model.predict(sample.X_test), labels.classes
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
                metrics=metrics,
            )
            with phase("write bundle"):
                bundle = write_onnx_bundle(out, model, meta)
                onnx_classes, _ = predict_pixels(bundle, sample.X_test)
                agree = float(np.mean(onnx_classes == model.predict(sample.X_test)))
                if agree < 1.0:
                    log.warning("ONNX model agrees with scikit-learn on %.4f of pixels", agree)
                bundle.metadata["onnx_agreement"] = agree
                write_metadata(out, bundle.metadata)
            return TrainResult(out, load_bundle(out).metadata, model, sample, scene_ids_used)
        train_df = sampled.filter("split = 'train'")
        test_df = sampled.filter("split = 'test'")
        codes = sorted(labels.classes)
        with phase("fit mllib"):
            model = fit_mllib(train_df, features, codes, seed, n_trees)
        with phase("mllib metrics"):
            metrics = mllib_metrics(model, test_df, features, labels.classes)
        meta.update(
            estimator="pyspark.ml.classification.RandomForestClassifier",
            params={"numTrees": n_trees, "maxDepth": 14, "seed": seed},
            format="spark",
            model_file="spark_model",
            model_classes=codes,
            sample={"max_per_class": max_per_class, "max_test_per_class": test_cap},
            metrics=metrics,
        )
        out.mkdir(parents=True, exist_ok=True)
        model.write().overwrite().save(str((out / "spark_model").resolve()))
        write_metadata(out, meta)
        return TrainResult(out, load_bundle(out).metadata, model, None, scene_ids_used)
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
        defaults to it), ``block_px`` (512: side of the spatial blocks of the scene grid),
        ``test_fraction`` (0.3 of the blocks are held out), ``seed``, ``n_trees``,
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
    p.add_argument("--test-fraction", type=float, help="share of held-out blocks")
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
        return 2 if isinstance(e, (ConfigError, LabelError)) else 1
    finally:
        record_run(spark, lake, run, status)
    m = result.metadata["metrics"]
    print(
        f"train run {run.run_id}: model {result.metadata['model_id']} ({t.trainer}) on "
        f"{len(result.scene_ids)} scene(s); held-out overall accuracy "
        f"{m['overall_accuracy']:.3f} on {m['n']} pixels -> {result.bundle_path}"
    )
    for name, pc in m["per_class"].items():
        print(
            f"  {name:12s} precision {pc['precision']:.3f} recall {pc['recall']:.3f} "
            f"f1 {pc['f1']:.3f} support {pc['support']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
