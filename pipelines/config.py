"""Configuration: YAML profiles in ``conf/`` parsed into frozen, validated dataclasses.

A job loads one profile (``conf/local.yaml`` by default), applies ``--set section.key=value``
overrides from the command line, and validates the result before Spark starts. An unknown
key or a bad value raises :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, get_args, get_type_hints

import yaml

from udfs.composites import PERIOD_KINDS
from udfs.errors import ConfigError
from udfs.masks import (
    DEFAULT_QA_FLAGS,
    DEFAULT_SCL_MASKED,
    MaskSettings,
    check_min_confidence,
    check_qa_flags,
    check_scl_classes,
)

#: Profiles are looked up in $EO_CONF_DIR, then ./conf, then the repository's conf/ (the
#: last is absent when the code runs from a --py-files zip or a wheel).
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def conf_file(name: str) -> Path | None:
    """First ``name`` found in $EO_CONF_DIR, ./conf, the repository's conf/; else None."""
    dirs = [Path(d) for d in (os.environ.get("EO_CONF_DIR"),) if d]
    for d in [*dirs, Path.cwd() / "conf", CONF_DIR]:
        if (d / name).is_file():
            return d / name
    return None


def profile_path(profile: str) -> Path:
    """The YAML file of a profile name (``local``) or the path itself when one is given."""
    path = Path(profile)
    if path.suffix:
        return path
    return conf_file(f"{profile}.yaml") or CONF_DIR / f"{profile}.yaml"


RESAMPLING_METHODS = ("nearest", "bilinear", "cubic", "average", "mode")


@dataclass(frozen=True)
class SparkConfig:
    """How the SparkSession is built (see :mod:`pipelines.session`)."""

    master: str | None = "local[2]"
    app_name: str = "eo-lakehouse"
    shuffle_partitions: int = 4
    #: One row can hold a whole tile (14 bands x 256 x 256 x 2 bytes ~ 1.8 MB), so Arrow
    #: batches are counted in tiles, not in the default 10 000 rows.
    arrow_max_records_per_batch: int = 16
    ui: bool = False
    #: Maven coordinates resolved by Spark's Ivy at start (Delta's jar is added by session).
    packages: tuple[str, ...] = ()
    #: Local jar files used instead of Maven resolution (see README "Jars without Ivy").
    jars: tuple[str, ...] = ()
    conf: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _positive("spark.shuffle_partitions", self.shuffle_partitions)
        _positive("spark.arrow_max_records_per_batch", self.arrow_max_records_per_batch)


@dataclass(frozen=True)
class StorageConfig:
    """Where tables live and in which format."""

    root: str = "output/lakehouse"
    format: str = "delta"
    #: Parquet codec level for pixel columns: ZSTD level 1 writes ~2x faster than the
    #: default level 3 for ~5 % larger files (bench/ingest_bench.py, PERFORMANCE-NOTES.md).
    zstd_level: int = 1

    def __post_init__(self) -> None:
        if self.format not in ("delta", "parquet"):
            raise ConfigError(f"storage.format must be 'delta' or 'parquet', got {self.format!r}")
        if not 1 <= self.zstd_level <= 22:
            raise ConfigError(f"storage.zstd_level must be 1..22, got {self.zstd_level}")


@dataclass(frozen=True)
class IngestConfig:
    """How scenes are cut into tiles."""

    source: str = "data/demo"
    tile_size: int = 256
    overlap: int = 0
    #: Resampling of 20 m / 60 m bands onto the 10 m grid. ``nearest`` keeps DNs exact
    #: (the default of odc-stac and stackstac); quality bands always use ``nearest``.
    resampling: str = "nearest"
    #: Side of the square window one executor task reads, in tiles; rounded so that reads
    #: cover whole internal blocks of the files (reading windows smaller than the file's
    #: blocks decodes each block several times).
    tiles_per_read: int = 4
    strict: bool = False
    rebuild: bool = False
    #: How tiles reach the table. ``arrow``: each executor's Python worker writes its
    #: block as a Parquet file and the driver commits all files in one transaction, so
    #: pixels never pass through the JVM (bench/ingest_bench.py: the JVM path moves binary
    #: columns at ~140 MB/s here). ``spark``: a MERGE through Spark's writer. ``auto``:
    #: ``arrow`` for tables on a local or mounted file system and Delta tables on
    #: ``s3://`` / ``s3a://`` (delta-rs commits with conditional writes), ``spark`` for
    #: Parquet tables on an object store.
    writer: str = "auto"
    #: Bands to tile, by common name (``red``, ``nir``), product name (``B04``) or alias;
    #: empty: every band of the sensor. The quality bands (``qa``, ``radsat``) are always
    #: tiled: masks need them. Bands not tiled are null columns in ``tiles``, and the
    #: features and classify jobs refuse a scene that lacks a band they need.
    bands: tuple[str, ...] = ()
    #: Where STAC hrefs and files reached through symlinks may resolve (input policy,
    #: :mod:`pipelines.discover`): local folders (relative ones from the current folder)
    #: or URL prefixes (``s3://bucket/prefix/``, ``https://host/path/``). The folder of
    #: each source (a scene folder, or the folder of a STAC file) is always allowed; an
    #: href anywhere else, any ``/vsi*`` path and any URL not under one of these is
    #: rejected without being read.
    allowed_roots: tuple[str, ...] = ()
    #: Which scenes a run examines (:mod:`pipelines.incremental`): ``all`` (every scene of
    #: the source; ingested ones are skipped by id), ``watermark`` (what is new since the
    #: last succeeded ingest run of this source, by ``watermark_by``) or an ISO date or
    #: time (``2024-07-01``: from then on). Scenes left unread count as skipped.
    since: str = "all"
    #: What "new" means: ``acquired`` (acquisition time: the date in the product name, a
    #: STAC item's datetime) or ``arrival`` (when the product's files changed last: local
    #: change time, S3 LastModified).
    watermark_by: str = "acquired"
    #: Days before the watermark that are examined again: late arrivals (acquired: more
    #: than the provider's publication delay). Products found already ingested there are
    #: skipped from their listing, unread.
    lookback_days: float = 7.0

    def __post_init__(self) -> None:
        _positive("ingest.tile_size", self.tile_size)
        from pipelines.incremental import WATERMARK_BY, parse_since

        try:
            parse_since(self.since)
        except ValueError as e:
            raise ConfigError(
                f"ingest.since must be all, watermark or an ISO date/time (2024-07-01), "
                f"got {self.since!r}"
            ) from e
        if self.watermark_by not in WATERMARK_BY:
            raise ConfigError(
                f"ingest.watermark_by must be acquired or arrival, got {self.watermark_by!r}"
            )
        if not 0 <= self.lookback_days <= 36600:  # NaN and inf fail too
            raise ConfigError(
                f"ingest.lookback_days must be 0..36600 days, got {self.lookback_days}"
            )
        for root in self.allowed_roots:
            _check_root(root)
        from udfs.sensors import SENSORS

        known = {k for s in SENSORS.values() for b in s.bands for k in b.keys}
        unknown = [b for b in self.bands if b.lower() not in known]
        if unknown:
            commons = sorted({b.common for s in SENSORS.values() for b in s.bands})
            raise ConfigError(
                f"ingest.bands: unknown band {unknown[0]!r} (common names: {', '.join(commons)};"
                f" product names such as B04 or SR_B4 work too)"
            )
        if self.writer not in ("auto", "arrow", "spark"):
            raise ConfigError(f"ingest.writer must be auto, arrow or spark, got {self.writer!r}")
        _positive("ingest.tiles_per_read", self.tiles_per_read)
        if not 0 <= self.overlap < self.tile_size // 2:
            raise ConfigError(
                f"ingest.overlap must be 0 <= overlap < tile_size/2, got {self.overlap}"
            )
        if self.resampling not in RESAMPLING_METHODS:
            raise ConfigError(
                f"ingest.resampling must be one of {RESAMPLING_METHODS}, got {self.resampling!r}"
            )

    def band_columns(self, sensor_key: str) -> tuple[str, ...]:
        """``tiles`` columns tiled for a sensor: its bands named in ``bands`` (every band
        when empty) and its quality bands, in the sensor's band order."""
        from udfs.sensors import SENSORS

        wanted = {b.lower() for b in self.bands}
        return tuple(
            b.common
            for b in SENSORS[sensor_key].bands
            if not wanted or b.role == "quality" or wanted & set(b.keys)
        )

    def tiling_digest(self) -> str:
        """Digest of the settings that change tile contents; stored per scene."""
        keys: dict[str, Any] = {
            "tile_size": self.tile_size,
            "overlap": self.overlap,
            "resampling": self.resampling,
        }
        if self.bands:  # absent when every band is tiled: digests of older tables still hold
            from udfs.sensors import SENSORS

            # Per sensor, the columns tiled: ``B04`` and ``red`` give the same digest.
            keys["bands"] = {k: sorted(self.band_columns(k)) for k in sorted(SENSORS)}
        return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


#: Version of the rules that turn DN into feature values (masks, reflectance/index policy,
#: core-only counts), part of the features digest: features computed under older rules are
#: refused unless rebuilt. 2: issue 9 (negative reflectance, physical index ranges,
#: saturation and valid ranges, unknown L1C cloud cover, overlap counted once).
FEATURES_POLICY_VERSION = 2


@dataclass(frozen=True)
class FeaturesConfig:
    """How ``tile_features`` (and the pixel feature view, classify and chips) are computed."""

    indices: tuple[str, ...] = ("NDVI", "EVI", "SAVI", "NDWI", "MNDWI", "NDBI", "NBR", "NDMI")
    #: Tiles whose cloud fraction is above this keep their row but get usable = false.
    max_cloud_fraction: float = 0.5
    rebuild: bool = False
    #: ``arrow``: executors read the tiles' Parquet files with pyarrow (pixels never pass
    #: through the JVM); ``spark``: read through Spark; ``auto``: arrow for local tables.
    reader: str = "auto"
    #: Reflectance bands summarised in ``stats``, by ``tiles`` column (``red``, ``nir08``);
    #: ``[all]``: every reflectance band of the sensor; ``[]``: none (indices only). Bands
    #: a sensor lacks are skipped for it. Index inputs are read whatever this says, and
    #: every stored band still takes part in the validity mask.
    bands: tuple[str, ...] = ("all",)
    #: Statistics per layer (``count`` is always computed): count, mean, std, min, max,
    #: p10, p50, p90. Percentiles are exact (numpy's linear method) and cost about as much
    #: as the other statistics together; statistics left out are null in ``stats``.
    statistics: tuple[str, ...] = ("count", "mean", "std", "min", "max", "p10", "p50", "p90")
    #: Sentinel-2 L2A SCL classes masked (0 no data and 1 saturated/defective are always
    #: masked as invalid, listed or not): 3 cloud shadow, 8/9 cloud medium/high, 10 cirrus,
    #: 11 snow.
    scl_masked: tuple[int, ...] = tuple(sorted(DEFAULT_SCL_MASKED))
    #: Landsat C2 QA_PIXEL single-bit flags masked (fill is always masked as nodata).
    qa_pixel_flags: tuple[str, ...] = DEFAULT_QA_FLAGS
    #: Landsat QA_PIXEL confidence field -> level (1 low, 2 medium, 3 high) from which a
    #: pixel is masked too, e.g. ``{cloud_confidence: 2}``; empty: none.
    qa_pixel_min_confidence: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from udfs.indices import INDICES

        unknown = [i for i in self.indices if i not in INDICES]
        if unknown:
            raise ConfigError(
                f"features.indices: unknown index {unknown[0]!r} (known: {', '.join(INDICES)})"
            )
        if not 0.0 <= self.max_cloud_fraction <= 1.0:
            raise ConfigError(
                f"features.max_cloud_fraction must be within 0..1, got {self.max_cloud_fraction}"
            )
        if self.reader not in ("auto", "arrow", "spark"):
            raise ConfigError(f"features.reader must be auto, arrow or spark, got {self.reader!r}")
        from udfs.indices import INDEX_BAND_NAMES
        from udfs.stats import STAT_NAMES

        bad = [b for b in self.bands if b not in (*INDEX_BAND_NAMES, "all")]
        if bad or ("all" in self.bands and len(self.bands) > 1):
            raise ConfigError(
                f"features.bands: expected [all], [] or reflectance columns "
                f"({', '.join(INDEX_BAND_NAMES)}), got {list(self.bands)!r}"
            )
        unknown_stats = [k for k in self.statistics if k not in STAT_NAMES]
        if unknown_stats:
            raise ConfigError(
                f"features.statistics: unknown statistic {unknown_stats[0]!r} "
                f"(known: {', '.join(STAT_NAMES)})"
            )
        checks: tuple[tuple[str, Callable[[], object]], ...] = (
            ("scl_masked", lambda: check_scl_classes(self.scl_masked)),
            ("qa_pixel_flags", lambda: check_qa_flags(self.qa_pixel_flags)),
            ("qa_pixel_min_confidence", lambda: check_min_confidence(self.qa_pixel_min_confidence)),
        )
        for key, check in checks:
            try:
                check()
            except ConfigError as e:
                raise ConfigError(f"features.{key}: {e}") from e

    def masks(self) -> MaskSettings:
        """The mask settings jobs pass to their executors."""
        return MaskSettings(self.scl_masked, self.qa_pixel_flags, self.qa_pixel_min_confidence)

    def band_set(self) -> frozenset[str] | None:
        """The reflectance columns to summarise; None: all of them (``[all]``)."""
        return None if "all" in self.bands else frozenset(self.bands)

    def stat_names(self) -> tuple[str, ...]:
        """The statistics to compute, in ``STAT_NAMES`` order, ``count`` included."""
        from udfs.stats import check_statistics

        return check_statistics(self.statistics)

    def digest(self) -> str:
        """Digest of the settings that change feature values (not max_cloud_fraction)."""
        from udfs.stats import STAT_NAMES

        m = self.masks()
        keys: dict[str, Any] = {
            "indices": sorted(self.indices),
            "scl_masked": list(m.scl_classes),
            "qa_pixel_flags": sorted(m.qa_flags),
            "qa_pixel_min_confidence": [list(kv) for kv in m.qa_min_confidence],
            "policy": FEATURES_POLICY_VERSION,
        }
        # Absent at their defaults, so digests of tables written before these keys hold.
        if self.band_set() is not None:
            keys["bands"] = sorted(self.band_set() or ())
        if self.stat_names() != STAT_NAMES:
            keys["statistics"] = list(self.stat_names())
        return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TrainConfig:
    """Defaults of the training job (``pipelines/train.py``; flags override them)."""

    labels: str = "data/demo/labels.geojson"
    class_column: str = "class_name"
    trainer: str = "sklearn"
    #: Training pixels per class (the held-out set has the same cap by default).
    max_per_class: int = 5000
    #: Side of the spatial blocks of the scene grid that go whole to train or test. 512 px
    #: (5 km of Sentinel-2) keeps correlated neighbours on one side; small scenes need less.
    block_px: int = 512
    test_fraction: float = 0.3
    seed: int = 0
    trees: int = 64
    #: Bundles are written to ``<models_dir>/<model_id>``.
    models_dir: str = "output/models"
    #: Model family of the ``sklearn`` trainer: ``forest`` (random forest of ``trees``
    #: fully grown trees) or ``boosting`` (HistGradientBoosting, 100 rounds of 31-leaf
    #: trees). Chosen by held-out accuracy and prediction speed: see README "Models".
    family: str = "forest"

    def __post_init__(self) -> None:
        if self.trainer not in ("sklearn", "mllib"):
            raise ConfigError(f"train.trainer must be sklearn or mllib, got {self.trainer!r}")
        if self.family not in ("forest", "boosting"):
            raise ConfigError(f"train.family must be forest or boosting, got {self.family!r}")
        if self.family != "forest" and self.trainer != "sklearn":
            raise ConfigError(
                f"train.family={self.family} needs train.trainer=sklearn (MLlib trains forests)"
            )
        for key in ("max_per_class", "block_px", "trees"):
            _positive(f"train.{key}", getattr(self, key))
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"train.test_fraction must be within 0..1, got {self.test_fraction}")


@dataclass(frozen=True)
class ClassifyConfig:
    """How ``pipelines/classify.py`` finds its model and inputs."""

    #: A bundle folder, or ``latest``: the newest bundle under ``train.models_dir``.
    model: str = "latest"
    #: ``auto``: ingest when the ``tiles`` table is missing; ``always``; ``never``.
    ingest: str = "auto"
    #: Recompute predictions this model already made (e.g. after a changed bundle).
    rebuild: bool = False
    #: ``arrow``: workers read the tiles' Parquet files and write the ``predictions`` files,
    #: committed by the driver (local tables); ``spark``: tiles read and results MERGEd
    #: through Spark (any storage); ``auto``: ``arrow`` for local tables.
    reader: str = "auto"

    def __post_init__(self) -> None:
        if self.ingest not in ("auto", "always", "never"):
            raise ConfigError(f"classify.ingest must be auto, always or never, got {self.ingest!r}")
        if self.reader not in ("auto", "arrow", "spark"):
            raise ConfigError(f"classify.reader must be auto, arrow or spark, got {self.reader!r}")
        if not self.model:
            raise ConfigError("classify.model must name a bundle folder or be 'latest'")


_PERIOD_FORMATS = (("%Y-%m-%d", "YYYY-MM-DD"), ("%Y-%m", "YYYY-MM"))


def parse_period(key: str, text: str) -> tuple[date, date]:
    """First and last day (inclusive) of a ``YYYY-MM-DD`` day or a ``YYYY-MM`` month."""
    for fmt, _ in _PERIOD_FORMATS:
        try:
            start = datetime.strptime(text, fmt).date()
        except ValueError:
            continue
        if fmt == "%Y-%m":
            nxt = date(start.year + start.month // 12, start.month % 12 + 1, 1)
            return start, date.fromordinal(nxt.toordinal() - 1)
        return start, start
    raise ConfigError(f"{key} must be a date YYYY-MM-DD or a month YYYY-MM, got {text!r}")


@dataclass(frozen=True)
class AggregateConfig:
    """What ``pipelines/aggregate.py`` aggregates, and over which regions."""

    #: GeoJSON, GeoParquet or GeoPackage of areas of interest (any CRS); None: each
    #: scene's whole footprint is the one region (``region_set`` ``scene``).
    regions: str | None = None
    region_id_column: str = "id"
    region_name_column: str = "name"
    #: ``latest`` (the newest row of ``models``), a model id, or ``all``.
    model: str = "latest"
    #: Also write ``index_monthly`` (pixels of every scene of a month, per sensor).
    monthly: bool = True
    #: ``change``: from one period to another (``YYYY-MM-DD`` or ``YYYY-MM``); both or none.
    change_from: str | None = None
    change_to: str | None = None
    #: Used by the composites job: build ``composites``, per ``composite_period``.
    composites: bool = True
    composite_period: str = "month"

    def __post_init__(self) -> None:
        for key in ("region_id_column", "region_name_column", "model"):
            if not getattr(self, key):
                raise ConfigError(f"aggregate.{key} must not be empty")
        if self.regions is not None and not self.regions.strip():
            raise ConfigError("aggregate.regions must be a file path or null")
        if (self.change_from is None) != (self.change_to is None):
            raise ConfigError(
                "aggregate.change_from and aggregate.change_to go together: set both or neither"
            )
        if self.change_from is not None and self.change_to is not None:
            a = parse_period("aggregate.change_from", self.change_from)
            b = parse_period("aggregate.change_to", self.change_to)
            if a[1] >= b[0]:
                raise ConfigError(
                    f"aggregate.change_from ({self.change_from}) must end before "
                    f"aggregate.change_to ({self.change_to}) starts"
                )
        if self.composite_period not in PERIOD_KINDS:
            raise ConfigError(
                f"aggregate.composite_period must be {', '.join(PERIOD_KINDS[:-1])} or "
                f"{PERIOD_KINDS[-1]}, got {self.composite_period!r}"
            )


@dataclass(frozen=True)
class Config:
    """The whole configuration of a job run."""

    spark: SparkConfig = field(default_factory=SparkConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    aggregate: AggregateConfig = field(default_factory=AggregateConfig)

    def digest(self) -> str:
        """Stable digest of the whole configuration (recorded in ``runs``)."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _check_root(root: str) -> None:
    """Raise :class:`ConfigError` for an ``ingest.allowed_roots`` entry that is empty or a
    URL without a host or bucket (``s3://``)."""
    from urllib.parse import urlsplit

    if not root.strip():
        raise ConfigError("ingest.allowed_roots: an entry is empty")
    if "://" in root and not root.startswith("file://") and not urlsplit(root).netloc:
        raise ConfigError(
            f"ingest.allowed_roots: {root!r} names no host or bucket "
            f"(expected e.g. s3://bucket/prefix/ or https://host/path/)"
        )


def _positive(key: str, value: int) -> None:
    if value <= 0:
        raise ConfigError(f"{key} must be > 0, got {value}")


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Coerce a YAML or command-line value to the annotated type, naming ``key`` on failure."""
    text = str(typ)
    try:
        if typ is bool or text == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "yes", "1", "on"):
                return True
            if str(value).lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError(value)
        if typ is float or text == "float":
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if typ is int or text == "int":
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if text.startswith("tuple"):
            if isinstance(value, str):  # command line: comma-separated
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)):
                raise ValueError(value)
            item = (get_args(typ) or (str,))[0]
            return tuple(_coerce(key, v, item) for v in value)
        if text.startswith("dict"):
            if isinstance(value, str):  # command line: key:value,key:value ("" is empty)
                pairs = [p.split(":", 1) for p in value.split(",") if p.strip()]
                if any(len(p) != 2 for p in pairs):
                    raise ValueError(value)
                value = {k.strip(): v.strip() for k, v in pairs}
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise ValueError(value)
            _, item = get_args(typ) or (str, str)
            return {str(k): _coerce(key, v, item) for k, v in value.items()}
        if "None" in text and (value is None or str(value).lower() in ("none", "null")):
            return None
        return str(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{key}: cannot read {value!r} as {text}") from e


def _section(name: str, cls: type, values: dict[str, Any]) -> Any:
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown key {name}.{unknown[0]} (known keys of {name}: {', '.join(sorted(known))})"
        )
    return cls(**{k: _coerce(f"{name}.{k}", v, hints[k]) for k, v in values.items()})


def build_config(data: dict[str, Any]) -> Config:
    """Validate a nested mapping (a parsed profile) into a :class:`Config`."""
    sections = {f.name: f for f in dataclasses.fields(Config)}
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ConfigError(f"unknown section {unknown[0]!r} (known: {', '.join(sections)})")
    hints = get_type_hints(Config)
    parts = {}
    for name, value in data.items():
        if value is None:
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"section {name!r} must be a mapping, got {type(value).__name__}")
        parts[name] = _section(name, hints[name], value)
    return Config(**parts)


def parse_override(text: str) -> tuple[str, str, str]:
    """Split ``section.key=value`` into its three parts."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    path, value = text.split("=", 1)
    section, key = path.split(".", 1)
    return section, key, value


def load_config(profile: str = "local", overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load ``conf/<profile>.yaml`` (or a YAML file path) and apply overrides.

    Parameters
    ----------
    profile : str
        Profile name in ``conf/`` (``local``, ``cluster``) or a path to a YAML file.
    overrides : sequence of str
        ``section.key=value`` items, applied after the profile.
    """
    path = profile_path(profile)
    if not path.is_file():
        raise ConfigError(f"config profile not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    for item in overrides:
        section, key, value = parse_override(item)
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise ConfigError(f"section {section!r} must be a mapping")
        if key.startswith("conf."):
            data[section].setdefault("conf", {})[key[5:]] = value
        else:
            data[section][key] = value
    return build_config(data)
