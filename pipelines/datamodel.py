"""The data model: every table's name, schema, key and partitioning, on one screen.

Pixel columns (``tiles`` bands and ``valid``, ``predictions`` ``classes`` and
``confidence``) are encoded as :mod:`udfs.tiling` states, on the tile's grid. ``valid``
marks the pixels that hold data in every reflectance band (quality bands such as ``qa``
and ``radsat`` do not count). Columns that a sensor lacks are null (Landsat has no
``rededge1``), and so is an optional band the product lacks (Landsat ``radsat`` where a
catalogue omits ``QA_RADSAT``; ``scenes.bands`` then does not list it).

``predictions.classes`` holds class codes of dtype ``predictions.dtype`` (uint8, or uint16
for codes above 254) with ``NODATA_CLASS`` (0) where a pixel was masked (nodata, cloud,
shadow, snow, saturated) or a feature was not finite; ``confidence`` holds the
probability of that class in percent as uint8 (0..100) with ``NODATA_CONFIDENCE`` (255)
where the class is 0 (both constants are :mod:`udfs.inference`'s).

``composites`` band columns hold float32 reflectance (the per-pixel median, NaN where no
observation was valid) and ``count`` uint16 valid observations, in the same encoding
(see :mod:`udfs.composites`).
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

from udfs.composites import COMPOSITE_BANDS as COMPOSITE_BANDS  # defined with its kernel
from udfs.inference import NODATA_CLASS as NODATA_CLASS  # one definition, re-exported
from udfs.inference import NODATA_CONFIDENCE as NODATA_CONFIDENCE
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
        # running (written when the run starts) | succeeded | failed | killed (a later run
        # found the process of a `running` row on its host gone)
        _f("status", StringType(), False),
        _f("started", TimestampType(), False),
        _f("ended", TimestampType(), False),  # = started while running; killed: when found
        _f("host", StringType()),  # driver host name and process id: whether it still runs
        _f("pid", LongType()),
    ]
)


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


COMPOSITES = StructType(
    [
        # key: grid, period, tile. grid_id digests sensor, CRS, scene transform and size,
        # tile_size and overlap (scenes of one S2 MGRS tile share it; sensors never do)
        _f("grid_id", StringType(), False),
        _f("period", StringType(), False),  # 2024-06 (month), 2024-Q2 (quarter), 2024 (year)
        _f("tile_row", IntegerType(), False),
        _f("tile_col", IntegerType(), False),
        _f("period_kind", StringType(), False),  # month | quarter | year
        _f("period_start", DateType(), False),  # first day of the period
        _f("period_end", DateType(), False),  # last day of the period (inclusive)
        _f("sensor", StringType(), False),
        _f("crs_epsg", IntegerType()),
        _f("transform", ArrayType(DoubleType())),  # as in tiles
        _f("bounds", _BOUNDS),
        _f("bbox_wgs84", _BOUNDS),
        _f("row_off", IntegerType(), False),
        _f("col_off", IntegerType(), False),
        _f("width", IntegerType(), False),
        _f("height", IntegerType(), False),
        _f("dtype", StringType(), False),  # float32: numpy dtype of the band columns
        _f("n_scenes", IntegerType(), False),  # observations stacked (scenes with the tile)
        _f("scene_ids", ArrayType(StringType()), False),  # sorted
        # digest of the scenes (id + ingest run), masks and composite policy: a new or
        # rebuilt scene changes it, and the (grid, period)'s rows are replaced
        _f("composite_digest", StringType(), False),
        _f("count", BinaryType(), False),  # uint16 per pixel: valid observations
        # per-pixel median of masked surface (toa for S2 L1C) reflectance, float32, NaN
        # where count is 0; null where the sensor lacks the band
        *[_f(c, BinaryType()) for c in COMPOSITE_BANDS],
        _f("run_id", StringType(), False),
    ]
)


# Analysis tables (pipelines/aggregate.py). A region is a polygon of the regions file
# (``region_set`` = the file's name without suffix) or, without a file, a scene's whole
# footprint (``region_set`` ``scene``, ``region_id`` ``scene``). A pixel belongs to a
# region when its centre is inside; overlapping regions each get it. Pixel areas come from
# the scene grid's transform (CRS units: metres; geographic scene CRSs are refused).
REGION_KEY_FIELDS = [
    _f("region_set", StringType(), False),
    _f("region_id", StringType(), False),
    _f("region_name", StringType()),
]
_AGG_TRAILER = [
    _f("region_hectares", DoubleType()),  # polygon area in the scene CRS (shapely), ha
    _f("regions_digest", StringType(), False),  # regions file content + id/name columns
    # digest of everything the row's values derive from (regions, scene's ingest run,
    # feature settings / predictions run): a rebuilt upstream scene changes it
    _f("inputs_digest", StringType(), False),
    _f("run_id", StringType(), False),
]

CLASS_AREA = StructType(
    [
        *REGION_KEY_FIELDS,
        _f("scene_id", StringType(), False),
        _f("sensor", StringType(), False),
        _f("acquired_date", DateType(), False),
        _f("model_id", StringType(), False),
        _f("class_code", IntegerType(), False),  # every class of the model, zeros included
        _f("class_name", StringType()),
        _f("pixels", LongType(), False),  # region pixels of this class
        _f("hectares", DoubleType(), False),  # pixels x pixel area / 10 000
        _f("class_fraction", DoubleType()),  # of the region's observed area; NaN if none
        _f("observed_hectares", DoubleType(), False),  # pixels with a class (any)
        # region pixels on the scene grid (with data or not); 0: outside the scene
        _f("grid_pixels", LongType(), False),
        # 1 - observed / region_hectares, in 0..1: cloud, shadow, nodata, outside the scene
        _f("unobserved_fraction", DoubleType(), False),
        _f("pixel_m2", DoubleType(), False),  # area of one pixel of the scene grid
        *_AGG_TRAILER,
    ]
)

_VALUE_STATS = [
    _f("count", LongType(), False),  # valid pixels with a finite value
    *[_f(n, DoubleType()) for n in ("mean", "std", "p10", "p50", "p90")],  # NaN if count 0
]

INDEX_TIMESERIES = StructType(
    [
        *REGION_KEY_FIELDS,
        _f("scene_id", StringType(), False),
        _f("sensor", StringType(), False),
        _f("acquired_date", DateType(), False),
        _f("index", StringType(), False),  # lower-case index name (ndvi)
        *_VALUE_STATS,
        _f("grid_pixels", LongType(), False),  # region pixels on the scene grid
        _f("valid_pixels", LongType(), False),  # of them neither nodata nor masked
        _f("unobserved_fraction", DoubleType(), False),  # 1 - valid area / region area
        *_AGG_TRAILER,
    ]
)

INDEX_MONTHLY = StructType(
    [
        *REGION_KEY_FIELDS,
        _f("sensor", StringType(), False),
        _f("month", StringType(), False),  # yyyy-MM
        _f("index", StringType(), False),
        _f("scenes", IntegerType(), False),  # scenes of the month pooled
        *_VALUE_STATS,  # over the valid pixels of every scene of the month
        *_AGG_TRAILER,
    ]
)

# index_timeseries on the composites (aggregate.composites): one row per region, grid,
# period and index, from the per-pixel median reflectance of the period (cloud-free)
COMPOSITE_INDEX = StructType(
    [
        *REGION_KEY_FIELDS,
        _f("grid_id", StringType(), False),  # composites.grid_id
        _f("period", StringType(), False),  # composites.period (2024-06, 2024-Q2, 2024)
        _f("period_kind", StringType(), False),  # month | quarter | year
        _f("period_start", DateType(), False),
        _f("period_end", DateType(), False),
        _f("sensor", StringType(), False),
        _f("index", StringType(), False),  # lower-case index name (ndvi)
        *_VALUE_STATS,  # over the region's composite pixels with a finite index
        _f("grid_pixels", LongType(), False),  # region pixels on the grid
        _f("valid_pixels", LongType(), False),  # of them with >= 1 valid observation
        _f("unobserved_fraction", DoubleType(), False),  # 1 - valid area / region area
        _f("n_scenes", IntegerType(), False),  # scenes in the period's composite
        *_AGG_TRAILER,
    ]
)

CHANGE = StructType(
    [
        *REGION_KEY_FIELDS,
        _f("model_id", StringType(), False),
        _f("from_period", StringType(), False),  # aggregate.change_from
        _f("to_period", StringType(), False),
        # the scene grid compared on: "EPSG:32631 10,0,600000,0,-10,5700000 512x512";
        # pixels are only compared with pixels of the same grid
        _f("grid", StringType(), False),
        _f("from_class", IntegerType(), False),
        _f("to_class", IntegerType(), False),
        _f("pixels", LongType(), False),  # observed (classified) in both periods
        _f("hectares", DoubleType(), False),
        _f("from_scenes", ArrayType(StringType()), False),
        _f("to_scenes", ArrayType(StringType()), False),
        *_AGG_TRAILER,
    ]
)


@dataclass(frozen=True)
class Table:
    """A table of the lakehouse: name, schema, merge key and partition columns.

    ``group``: the key prefix one run writes as a unit (a scene's tiles, a model's
    predictions of a scene); concurrent runs are arbitrated per group at commit time
    (:meth:`pipelines.lakehouse.Lakehouse.commit_files`). Empty: per key.
    """

    name: str
    schema: StructType
    key: tuple[str, ...]
    partition_by: tuple[str, ...] = ()
    group: tuple[str, ...] = ()


TABLES = {
    t.name: t
    for t in (
        Table("scenes", SCENES, ("scene_id",), group=("scene_id",)),
        Table(
            "tiles",
            TILES,
            ("scene_id", "tile_row", "tile_col"),
            ("sensor", "acq_month"),
            ("scene_id",),
        ),
        Table(
            "tile_features",
            TILE_FEATURES,
            ("scene_id", "tile_row", "tile_col"),
            group=("scene_id",),
        ),
        Table("models", MODELS, ("model_id",), group=("model_id",)),
        Table(
            "predictions",
            PREDICTIONS,
            ("model_id", "scene_id", "tile_row", "tile_col"),
            ("model_id",),
            ("model_id", "scene_id"),
        ),
        Table(
            "tile_predictions",
            TILE_PREDICTIONS,
            ("model_id", "scene_id", "tile_row", "tile_col"),
            group=("model_id", "scene_id"),
        ),
        Table(
            "composites",
            COMPOSITES,
            ("grid_id", "period", "tile_row", "tile_col"),
            ("sensor", "period"),
        ),
        Table(
            "class_area",
            CLASS_AREA,
            ("region_set", "region_id", "scene_id", "model_id", "class_code"),
        ),
        Table(
            "index_timeseries", INDEX_TIMESERIES, ("region_set", "region_id", "scene_id", "index")
        ),
        Table(
            "index_monthly",
            INDEX_MONTHLY,
            ("region_set", "region_id", "sensor", "month", "index"),
        ),
        Table(
            "composite_index",
            COMPOSITE_INDEX,
            ("region_set", "region_id", "grid_id", "period", "index"),
        ),
        Table(
            "change",
            CHANGE,
            (
                "region_set",
                "region_id",
                "model_id",
                "from_period",
                "to_period",
                "grid",
                "from_class",
                "to_class",
            ),
        ),
        Table("rejected", REJECTED, ("run_id", "href", "scene_id", "stage")),
        Table("runs", RUNS, ("run_id",), group=("run_id",)),
    )
}
