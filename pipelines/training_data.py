"""What a model learns from and is tested on: labelled pixels, the held-out split, the sample.

Driver side of training (:mod:`pipelines.train` calls these in order): pick the tiles
that meet the label polygons (tile metadata only) -> a lazy DataFrame of labelled core
pixels, read on the executors by :mod:`udfs.labelled` -> whole groups of polygons and map
blocks held out (:func:`udfs.labels.assign_split`, over a small (polygon, block, pixels)
table) -> a per-(split, class) Bernoulli sample sized for the caps (``sampleBy``) -> for
the scikit-learn trainer, that sample collected and trimmed to exactly the caps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import shapely
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import IntegerType, LongType, StructField, StructType

from pipelines.config import Config
from pipelines.features import pixel_schema, scene_table
from pipelines.labels_io import Labels
from pipelines.lakehouse import Lakehouse
from udfs.feature_udfs import TILE_COLUMNS, make_pixel_reader
from udfs.labelled import LABEL_GEO_COLUMNS, make_labelled_reader
from udfs.labels import (
    Split,
    assign_split,
    overlap_links,
    sample_fractions,
    stratified_cap,
)
from udfs.models import ModelError
from udfs.sensors import SENSORS

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


# ----------------------------------------------------------------------------- labelled pixels


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
    return picked.select(*TILE_COLUMNS, *LABEL_GEO_COLUMNS).mapInArrow(reader, schema)


# ----------------------------------------------------------------------------- the split


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
