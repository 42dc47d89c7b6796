"""The data model: every table's name, schema, key and partitioning, on one screen.

Pixel encoding (``tiles`` band columns): raw little-endian, C-order bytes of a
``(height, width)`` array of dtype ``tiles.dtype`` (see :mod:`udfs.tiling`); ``valid`` is
the bit-packed (``np.packbits``) mask of pixels that hold data in every reflectance band
(quality bands such as ``qa`` and ``radsat`` do not count). Columns that a sensor lacks are
null (Landsat has no ``rededge1``), and so is an optional band the product lacks (Landsat
``radsat`` where a catalogue omits ``QA_RADSAT``; ``scenes.bands`` then does not list it).

``predictions`` uses the same encoding on the tile's grid: ``classes`` holds class codes
of dtype ``predictions.dtype`` (uint8, or uint16 for codes above 254) with
``NODATA_CLASS`` (0) where a pixel was masked (nodata, cloud, shadow, snow, saturated)
or a feature was not finite; ``confidence`` holds the probability of that class in
percent as uint8 (0..100) with ``NODATA_CONFIDENCE`` (255) where the class is 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    BooleanType,
    DateType,
    DoubleType,
    IntegerType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from udfs.sensors import BAND_COLUMNS


def _f(name: str, typ, nullable: bool = True) -> StructField:
    return StructField(name, typ, nullable)


_BOUNDS = ArrayType(DoubleType())  # [minx, miny, maxx, maxy]

SCENES = StructType(
    [
        _f("scene_id", StringType(), False),
        _f("sensor", StringType(), False),
        _f("platform", StringType()),  # STAC convention: sentinel-2a, landsat-8
        _f("acquired", TimestampType(), False),  # UTC
        _f("acquired_date", DateType(), False),
        _f("processing_level", StringType()),  # as the product says: L2A, L1C, L2SP, L2SR
        # S2 processing baseline (``05.10``, L1C too); Landsat: Collection number (``02``)
        _f("processing_baseline", StringType()),
        # ``surface`` (S2 L2A, Landsat C2 L2 SR) or ``toa`` (S2 L1C top of atmosphere):
        # models never mix the two
        _f("radiometry", StringType()),
        _f("crs_epsg", IntegerType()),
        _f("crs_wkt", StringType()),
        _f("width", IntegerType(), False),  # scene grid, pixels
        _f("height", IntegerType(), False),
        _f("resolution", DoubleType()),  # metres per pixel of the scene grid
        _f("transform", ArrayType(DoubleType())),  # affine a, b, c, d, e, f
        _f("bounds", _BOUNDS),  # scene CRS
        _f("bbox_wgs84", _BOUNDS),  # lon/lat
        _f("footprint_wgs84", StringType()),  # GeoJSON polygon
        _f("cloud_cover", DoubleType()),  # percent, from the product metadata
        _f(
            "bands",
            ArrayType(
                StructType(
                    [
                        _f("name", StringType()),
                        _f("column", StringType()),
                        _f("resolution", DoubleType()),
                        _f("href", StringType()),
                        _f("dtype", StringType()),
                    ]
                )
            ),
        ),
        _f(
            "scaling",
            MapType(
                StringType(),
                StructType(
                    [  # reflectance = DN * scale + offset
                        _f("scale", DoubleType()),
                        _f("offset", DoubleType()),
                    ]
                ),
            ),
        ),
        # what gave ``scaling`` (udfs.metadata.SCALING_SOURCES): ``metadata`` (MTD offset
        # list, MTL REFLECTANCE_*), ``baseline rule`` (S2 without an offset list: -1000 DN
        # from baseline 04.00, 0 before), ``date rule``, ``stac raster:bands``,
        # ``stac offset applied`` or ``sensor default``; several joined by " + "
        _f("scaling_source", StringType()),
        _f("nodata", IntegerType()),
        _f("source", StringType()),  # folder or STAC item the scene came from
        _f("layout", StringType()),
        _f("tile_size", IntegerType()),
        _f("overlap", IntegerType()),
        _f("resampling", StringType()),
        _f("tiling_digest", StringType()),
        _f("n_tiles", IntegerType()),
        _f("run_id", StringType()),
        _f("ingested_at", TimestampType()),
    ]
)

TILE_KEY_FIELDS = [
    _f("scene_id", StringType(), False),
    _f("tile_row", IntegerType(), False),
    _f("tile_col", IntegerType(), False),
]

TILES = StructType(
    [
        *TILE_KEY_FIELDS,
        _f("sensor", StringType(), False),
        _f("acquired_date", DateType(), False),
        _f("acq_month", StringType(), False),  # yyyy-MM, partition column
        _f("crs_epsg", IntegerType()),
        _f("transform", ArrayType(DoubleType())),  # affine of the tile's upper-left pixel
        _f("bounds", _BOUNDS),
        _f("bbox_wgs84", _BOUNDS),
        _f("row_off", IntegerType(), False),  # tile origin in the scene grid
        _f("col_off", IntegerType(), False),
        _f("width", IntegerType(), False),
        _f("height", IntegerType(), False),
        _f("dtype", StringType(), False),  # numpy dtype of every band column
        _f("valid_fraction", DoubleType()),
        _f("valid", BinaryType()),
        *[_f(c, BinaryType()) for c in BAND_COLUMNS],  # pixel columns last
    ]
)

STAT_STRUCT = StructType(
    [
        _f("count", LongType()),
        *[_f(n, DoubleType()) for n in ("mean", "std", "min", "max", "p10", "p50", "p90")],
    ]
)

TILE_FEATURES = StructType(
    [
        *TILE_KEY_FIELDS,
        _f("sensor", StringType(), False),
        # ``surface`` or ``toa`` (S2 L1C): top-of-atmosphere stats are not surface ones
        _f("radiometry", StringType(), False),
        _f("acquired_date", DateType(), False),
        # Counts, fractions and stats cover the tile's core only (each scene pixel once,
        # whatever ingest.overlap), so sums over tiles are scene totals.
        _f("pixel_count", LongType(), False),
        _f("valid_count", LongType(), False),  # neither nodata nor masked (cloud, snow ...)
        _f("valid_fraction", DoubleType()),  # valid_count / pixel_count
        # cloud+shadow / pixels with data; NaN if no data or no quality band (S2 L1C)
        _f("cloud_fraction", DoubleType()),
        # known to be clear enough: valid_count > 0 and a known cloud <= max_cloud_fraction
        _f("usable", BooleanType(), False),
        # layer (band column or lower-case index name) -> statistics over valid pixels;
        # reflectance (measured value, may be < 0) and indices (NaN where an input is < 0
        # or outside the index's range: not counted) are unitless
        _f("stats", MapType(StringType(), STAT_STRUCT)),
        _f("features_digest", StringType(), False),
        _f("run_id", StringType(), False),
    ]
)

REJECTED = StructType(
    [
        _f("run_id", StringType(), False),
        _f("job", StringType(), False),
        _f("href", StringType()),
        _f("scene_id", StringType()),
        _f("stage", StringType(), False),  # discover | inspect | read | features | classify
        _f("error_class", StringType(), False),
        _f("reason", StringType(), False),
        _f("rejected_at", TimestampType(), False),
    ]
)

RUNS = StructType(
    [
        _f("run_id", StringType(), False),
        _f("job", StringType(), False),
        _f("config_digest", StringType(), False),
        _f("source", StringType()),
        _f("inputs_seen", LongType(), False),
        _f("ingested", LongType(), False),
        _f("skipped", LongType(), False),
        _f("rejected", LongType(), False),
        _f("tiles_written", LongType(), False),
        _f("status", StringType(), False),  # succeeded | failed
        _f("started", TimestampType(), False),
        _f("ended", TimestampType(), False),
    ]
)


NODATA_CLASS = 0
NODATA_CONFIDENCE = 255

MODEL_KEY_FIELDS = [_f("model_id", StringType(), False), *TILE_KEY_FIELDS]

PREDICTIONS = StructType(
    [
        *MODEL_KEY_FIELDS,
        _f("sensor", StringType(), False),
        _f("acquired_date", DateType(), False),
        _f("crs_epsg", IntegerType()),
        _f("transform", ArrayType(DoubleType())),  # as in tiles
        _f("bounds", _BOUNDS),
        _f("row_off", IntegerType(), False),
        _f("col_off", IntegerType(), False),
        _f("width", IntegerType(), False),
        _f("height", IntegerType(), False),
        _f("dtype", StringType(), False),  # numpy dtype of classes
        _f("classes", BinaryType(), False),  # class code per pixel, 0 = no class
        _f("confidence", BinaryType(), False),  # uint8 percent, 255 = no class
        _f("run_id", StringType(), False),
    ]
)

TILE_PREDICTIONS = StructType(
    [
        *MODEL_KEY_FIELDS,
        _f("sensor", StringType(), False),
        _f("acquired_date", DateType(), False),
        # Counts cover the tile's core only (each scene pixel once, whatever
        # ingest.overlap); the ``predictions`` rasters cover the whole stored tile.
        _f("pixel_count", LongType(), False),
        _f("classified_count", LongType(), False),  # pixels with a class (not 0)
        _f("class_counts", MapType(IntegerType(), LongType())),  # every model class, 0s too
        _f("mean_confidence", DoubleType()),  # mean probability of the chosen class; null if none
        _f("run_id", StringType(), False),
    ]
)

MODELS = StructType(
    [
        _f("model_id", StringType(), False),
        _f("trainer", StringType(), False),
        _f("format", StringType(), False),
        _f("path", StringType(), False),  # bundle folder it was applied from
        _f("model_sha256", StringType(), False),  # of the model file
        _f("feature_names", ArrayType(StringType()), False),
        _f(
            "classes",
            ArrayType(StructType([_f("code", IntegerType()), _f("name", StringType())])),
            False,
        ),
        _f("sensors", ArrayType(StringType()), False),
        _f("training_run_id", StringType()),
        _f("overall_accuracy", DoubleType()),  # on the held-out blocks, from the bundle
        _f("metrics_json", StringType()),
        _f("created", StringType()),
        _f("registered_at", TimestampType(), False),
    ]
)


@dataclass(frozen=True)
class Table:
    """A table of the lakehouse: name, schema, merge key and partition columns."""

    name: str
    schema: StructType
    key: tuple[str, ...]
    partition_by: tuple[str, ...] = ()


TABLES = {
    t.name: t
    for t in (
        Table("scenes", SCENES, ("scene_id",)),
        Table("tiles", TILES, ("scene_id", "tile_row", "tile_col"), ("sensor", "acq_month")),
        Table("tile_features", TILE_FEATURES, ("scene_id", "tile_row", "tile_col")),
        Table("models", MODELS, ("model_id",)),
        Table(
            "predictions",
            PREDICTIONS,
            ("model_id", "scene_id", "tile_row", "tile_col"),
            ("model_id",),
        ),
        Table(
            "tile_predictions", TILE_PREDICTIONS, ("model_id", "scene_id", "tile_row", "tile_col")
        ),
        Table("rejected", REJECTED, ("run_id", "href", "scene_id", "stage")),
        Table("runs", RUNS, ("run_id",)),
    )
}
