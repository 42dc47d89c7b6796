"""The one place that builds the SparkSession.

Extras are composed as functions that take a builder and return it (the way
``delta.configure_spark_with_delta_pip`` does). Library code never calls ``getOrCreate()``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from pipelines.config import Config, SparkConfig, StorageConfig, conf_file


def ivy_settings() -> Path | None:
    """conf/ivysettings.xml (Maven Central only, see the file), where it can be found."""
    return conf_file("ivysettings.xml")


def delta_package() -> str:
    """Maven coordinates of the Delta jar matching the installed pyspark and delta-spark."""
    from importlib.metadata import version

    import pyspark

    spark_mm = ".".join(pyspark.__version__.split(".")[:2])
    return f"io.delta:delta-spark_{spark_mm}_2.13:{version('delta-spark')}"


def under_spark_submit() -> bool:
    """True when spark-submit launched this driver (the JVM already exists)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def with_base(builder: SparkSession.Builder, cfg: SparkConfig) -> SparkSession.Builder:
    """Master (unless spark-submit chose it), app name, UTC, small shuffles, UI, Arrow."""
    if cfg.master and not under_spark_submit():
        builder = builder.master(cfg.master)
    builder = (
        builder.appName(cfg.app_name)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
        .config("spark.ui.enabled", str(cfg.ui).lower())
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config(
            "spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.arrow_max_records_per_batch)
        )
        .config("spark.sql.adaptive.enabled", "true")
        # tiles has 31 columns: without this every plan print warns that it was truncated.
        .config("spark.sql.debug.maxToStringFields", "100")
    )
    if not under_spark_submit():
        # Executors' Python must be the driver's (the virtual environment). pyspark reads
        # PYSPARK_PYTHON when the context starts; spark.pyspark.python is for spark-submit.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = builder.config("spark.pyspark.python", os.environ["PYSPARK_PYTHON"])
    for key, value in cfg.conf.items():
        builder = builder.config(key, value)
    return builder


def with_delta(builder: SparkSession.Builder, cfg: SparkConfig) -> SparkSession.Builder:
    """Delta's SQL extension and catalog; its jar from Maven (Ivy-cached) or local jars."""
    builder = builder.config(
        "spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension"
    ).config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
    # Insert-only MERGE of freshly read tiles: do not copy the source aside first.
    builder = builder.config("spark.databricks.delta.merge.materializeSource", "none")
    # Delta rebuilds a table's state from its log in 50 partitions by default: far too many
    # tasks for the small logs of these tables (each costs a task launch).
    builder = builder.config(
        "spark.databricks.delta.snapshotPartitions", str(max(2, cfg.shuffle_partitions))
    )
    if under_spark_submit():
        return builder  # jars come from spark-submit (--packages or spark-defaults.conf)
    if cfg.jars:
        return builder.config("spark.jars", ",".join(cfg.jars))
    packages = [delta_package(), *cfg.packages]
    builder = builder.config("spark.jars.packages", ",".join(packages))
    settings = ivy_settings()
    if settings is not None:  # else Spark's own resolvers
        builder = builder.config("spark.jars.ivySettings", str(settings))
    return builder


def with_parquet(builder: SparkSession.Builder, storage: StorageConfig) -> SparkSession.Builder:
    """ZSTD at a cheap level for the pixel columns (see StorageConfig.zstd_level)."""
    return builder.config("spark.sql.parquet.compression.codec", "zstd").config(
        "spark.hadoop.parquet.compression.codec.zstd.level", str(storage.zstd_level)
    )


def build_session(config: Config) -> SparkSession:
    """Create (or return the running) SparkSession for ``config``."""
    builder = with_parquet(with_base(SparkSession.builder, config.spark), config.storage)
    if config.storage.format == "delta":
        builder = with_delta(builder, config.spark)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def spark_defaults(python: str = sys.executable, driver_log4j: Path | None = None) -> str:
    """``spark-defaults.conf`` text that lets plain ``spark-submit`` run the jobs with Delta.

    ``make setup`` writes it into the virtual environment's pyspark (``$SPARK_HOME/conf``),
    which is where a cluster keeps the same settings.
    """
    lines = {
        "spark.jars.packages": delta_package(),
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.pyspark.python": python,
        "spark.pyspark.driver.python": python,
    }
    settings = ivy_settings()
    if settings is not None:
        lines["spark.jars.ivySettings"] = str(settings.resolve())
    if driver_log4j is not None:
        # The driver only: master and worker daemons keep Spark's own INFO logging.
        lines["spark.driver.extraJavaOptions"] = f"-Dlog4j2.configurationFile={driver_log4j}"
    return "".join(f"{k} {v}\n" for k, v in lines.items())


#: Spark's own logging for the driver of spark-submit runs: warnings only (its default is
#: INFO, which buries the jobs' summaries).
LOG4J2 = """rootLogger.level = warn
rootLogger.appenderRef.stdout.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex
"""


def write_spark_defaults() -> Path:
    """Write :func:`spark_defaults` to the installed pyspark's ``conf/spark-defaults.conf``
    (and the driver's warnings-only log4j2 configuration beside it)."""
    import pyspark

    conf_dir = Path(pyspark.__file__).resolve().parent / "conf"
    conf_dir.mkdir(exist_ok=True)
    log4j = conf_dir / "eo-driver-log4j2.properties"
    log4j.write_text(LOG4J2)
    path = conf_dir / "spark-defaults.conf"
    path.write_text(spark_defaults(driver_log4j=log4j))
    return path
