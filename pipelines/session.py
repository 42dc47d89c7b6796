"""The one place that builds the SparkSession.

Extras are composed as functions that take a builder and return it (the way
``delta.configure_spark_with_delta_pip`` does). Library code never calls ``getOrCreate()``.

Console
-------
Quiet unless ``verbose`` (the jobs' ``--verbose``):

* Dependency resolution: Delta's jars are resolved by Ivy once (``spark.jars.packages``);
  the jar files Ivy retrieved are then listed in :data:`JARS_CACHE` and later sessions
  pass them as ``spark.jars``, so Ivy does not run again. The one run that resolves writes
  the driver JVM's console output (Ivy's report, JVM warnings) into
  ``<storage.root>/_logs/spark-startup.log`` instead of the console.
* Spark's own logging: errors only (``conf/log4j2-quiet.properties`` for the driver JVM,
  ``setLogLevel("ERROR")``); ``verbose`` keeps Spark's default (warnings).
* Progress: Spark's console progress bar (stages, tasks done / total) when stdout and
  stderr are a terminal, off otherwise (logs and pipes get no control characters).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
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


#: AWS SDK v2 modules S3A needs (s3, its transfer manager, sts for assumed roles), at the
#: version hadoop-aws was built against. Instead of the SDK's ``bundle`` jar, which
#: hadoop-aws names but which weighs ~640 MB (it shades every AWS service): these and their
#: dependencies are ~17 MB. Hadoop 3.4.2 (pyspark 4.1) builds against SDK 2.29.52.
AWS_SDK_MODULES = ("s3", "s3-transfer-manager", "sts")
AWS_SDK_VERSIONS = {"3.4.2": "2.29.52", "3.4.1": "2.24.6"}


def hadoop_version() -> str:
    """Version of the Hadoop client jars of the Spark that runs this driver.

    ``$SPARK_HOME/jars`` first: under ``spark-submit`` pyspark is imported from
    ``python/lib/pyspark.zip``, whose folder holds no jars; else the installed pyspark's.
    """
    import pyspark

    home = os.environ.get("SPARK_HOME")
    jars = Path(home) / "jars" if home else Path(pyspark.__file__).resolve().parent / "jars"
    if not jars.is_dir():
        jars = Path(pyspark.__file__).resolve().parent / "jars"
    for jar in sorted(jars.glob("hadoop-client-api-*.jar")):
        return jar.stem.removeprefix("hadoop-client-api-")
    raise RuntimeError(f"no hadoop-client-api jar in {jars}")


def s3_packages() -> list[str]:
    """Maven coordinates of S3A (``hadoop-aws`` matching pyspark's Hadoop) and the SDK."""
    hadoop = hadoop_version()
    sdk = AWS_SDK_VERSIONS.get(hadoop)
    if sdk is None:
        raise RuntimeError(
            f"no AWS SDK version known for Hadoop {hadoop}: add it to AWS_SDK_VERSIONS "
            "(hadoop-project's aws-java-sdk-v2.version)"
        )
    return [
        f"org.apache.hadoop:hadoop-aws:{hadoop}",
        *(f"software.amazon.awssdk:{m}:{sdk}" for m in AWS_SDK_MODULES),
    ]


#: Left out of every resolution: the SDK bundle (see :data:`AWS_SDK_MODULES`).
JAR_EXCLUDES = "software.amazon.awssdk:bundle"


def uses_object_store(config: Config) -> bool:
    """Whether the tables or the scenes of ``config`` live on S3 (``s3://``/``s3a://``)."""
    places = [config.storage.root, *str(config.ingest.source or "").split(",")]
    return any(p.strip().startswith(("s3://", "s3a://")) for p in places)


def s3a_settings(env: dict[str, str] | None = None) -> dict[str, str]:
    """Hadoop S3A settings from the environment: endpoint, addressing, TLS, region.

    Credentials are not copied: S3A's default chain reads ``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY`` (and profiles, web identity, instance roles) itself. ``s3://``
    URIs are served by S3A too, so one URI works for Spark, GDAL and delta-rs.

    Parameters
    ----------
    env : mapping, optional
        Environment to read (default ``os.environ``). ``AWS_ENDPOINT_URL_S3`` or
        ``AWS_ENDPOINT_URL`` (e.g. ``http://127.0.0.1:9000`` for MinIO) selects a custom
        endpoint with path-style addressing; ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` the
        region.
    """
    env = dict(os.environ if env is None else env)
    out = {
        "spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "spark.hadoop.fs.AbstractFileSystem.s3.impl": "org.apache.hadoop.fs.s3a.S3A",
    }
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        out["spark.hadoop.fs.s3a.endpoint"] = endpoint
        out["spark.hadoop.fs.s3a.path.style.access"] = "true"
        out["spark.hadoop.fs.s3a.connection.ssl.enabled"] = str(
            endpoint.startswith("https://")
        ).lower()
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        out["spark.hadoop.fs.s3a.endpoint.region"] = region
    return out


def with_s3(builder: SparkSession.Builder, config: Config) -> SparkSession.Builder:
    """S3A settings (:func:`s3a_settings`) when the tables or scenes are on S3."""
    if not uses_object_store(config):
        return builder
    for key, value in s3a_settings().items():
        if key not in config.spark.conf:
            builder = builder.config(key, value)
    return builder


#: Jar files Ivy resolved for a package list (``{"packages": [...], "jars": [...]}`` per
#: entry), beside Spark's default Ivy cache.
JARS_CACHE = Path.home() / ".ivy2.5.2" / "eo-lakehouse-jars.json"


def cached_jars(packages: list[str]) -> list[str] | None:
    """The jar files resolved before for ``packages``, when every one is still there."""
    try:
        entries = json.loads(JARS_CACHE.read_text())
    except (OSError, ValueError):
        return None
    for entry in entries if isinstance(entries, list) else []:
        jars = entry.get("jars") or []
        if entry.get("packages") == packages and jars and all(os.path.isfile(j) for j in jars):
            return list(jars)
    return None


def remember_jars(packages: list[str], spark_jars: str) -> None:
    """Record the jars a session resolved for ``packages`` (its ``spark.jars``)."""
    jars = [j.removeprefix("file://").removeprefix("file:") for j in spark_jars.split(",") if j]
    if not jars or not all(os.path.isfile(j) for j in jars):
        return
    try:
        entries = json.loads(JARS_CACHE.read_text())
    except (OSError, ValueError):
        entries = []
    entries = [e for e in entries if isinstance(e, dict) and e.get("packages") != packages]
    JARS_CACHE.parent.mkdir(parents=True, exist_ok=True)
    tmp = JARS_CACHE.with_suffix(".tmp")
    tmp.write_text(json.dumps([*entries, {"packages": packages, "jars": jars}], indent=1))
    tmp.replace(JARS_CACHE)  # atomic: concurrent jobs never read half a file


def quiet_log4j() -> Path | None:
    """conf/log4j2-quiet.properties (errors only), where it can be found."""
    return conf_file("log4j2-quiet.properties")


def console_is_terminal() -> bool:
    """Whether a person watches the console: Spark's progress bar only then."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def under_spark_submit() -> bool:
    """True when spark-submit launched this driver (the JVM already exists)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def with_base(
    builder: SparkSession.Builder, cfg: SparkConfig, verbose: bool = True
) -> SparkSession.Builder:
    """Master (unless spark-submit chose it), app name, UTC, small shuffles, UI, Arrow;
    the progress bar on a terminal; errors-only JVM logging unless ``verbose``."""
    if cfg.master and not under_spark_submit():
        builder = builder.master(cfg.master)
    builder = (
        builder.appName(cfg.app_name)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
        .config("spark.ui.enabled", str(cfg.ui).lower())
        .config("spark.ui.showConsoleProgress", str(console_is_terminal()).lower())
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
        log4j = quiet_log4j()
        java_options = "spark.driver.extraJavaOptions"
        if not verbose and log4j is not None and java_options not in cfg.conf:
            # Read when the driver JVM starts: also silences the warnings of its first seconds.
            builder = builder.config(java_options, f"-Dlog4j2.configurationFile={log4j}")
    for key, value in cfg.conf.items():
        builder = builder.config(key, value)
    return builder


def with_delta(
    builder: SparkSession.Builder, cfg: SparkConfig, s3: bool = False
) -> SparkSession.Builder:
    """Delta's SQL extension and catalog; its jar from Maven (Ivy-cached) or local jars.

    ``s3``: also S3A's jars (:func:`s3_packages`), for tables or scenes on S3.
    """
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
    return with_packages(builder, cfg, session_packages(cfg, s3))


def with_packages(
    builder: SparkSession.Builder, cfg: SparkConfig, packages: list[str]
) -> SparkSession.Builder:
    """The jars of ``packages``: resolved by Ivy once, then the cached jar files."""
    if under_spark_submit():
        return builder  # jars come from spark-submit (--packages or spark-defaults.conf)
    if cfg.jars:
        return builder.config("spark.jars", ",".join(cfg.jars))
    jars = cached_jars(packages)
    if jars is not None:  # resolved before: no Ivy run (seconds, and ~55 lines of output)
        # Empty packages also override spark-defaults.conf's (make setup writes them there).
        return builder.config("spark.jars", ",".join(jars)).config("spark.jars.packages", "")
    builder = builder.config("spark.jars.packages", ",".join(packages))
    builder = builder.config("spark.jars.excludes", JAR_EXCLUDES)
    settings = ivy_settings()
    if settings is not None:  # else Spark's own resolvers
        builder = builder.config("spark.jars.ivySettings", str(settings))
    return builder


def session_packages(cfg: SparkConfig, s3: bool = False) -> list[str]:
    """Maven packages of a session: Delta's, S3A's when ``s3``, then ``spark.packages``."""
    return [delta_package(), *(s3_packages() if s3 else []), *cfg.packages]


def with_parquet(builder: SparkSession.Builder, storage: StorageConfig) -> SparkSession.Builder:
    """ZSTD at a cheap level for the pixel columns (see StorageConfig.zstd_level)."""
    return builder.config("spark.sql.parquet.compression.codec", "zstd").config(
        "spark.hadoop.parquet.compression.codec.zstd.level", str(storage.zstd_level)
    )


@contextlib.contextmanager
def jvm_console_to(log: Path | None) -> Iterator[None]:
    """Point this process's stdout and stderr at ``log`` while the driver JVM is launched.

    The JVM inherits them for its whole life, so its console output (Ivy's report, JVM
    warnings, Spark's logging) goes to the file; Python's own streams are restored at once.
    None: nothing changes.
    """
    if log is None:
        yield
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


def startup_log(config: Config, verbose: bool) -> Path | None:
    """Where the driver JVM's console goes while Ivy resolves jars for the first time:
    ``<root>/_logs/spark-startup.log`` (local roots; else the temp folder). None when
    nothing is to be hidden (verbose, a running JVM, jars given or already resolved)."""
    import tempfile

    from pyspark import SparkContext

    from pipelines.preflight import is_local, root_path

    spark = config.spark
    packages = session_packages(spark, uses_object_store(config))
    if (
        verbose
        or under_spark_submit()
        or SparkContext._active_spark_context is not None
        or config.storage.format != "delta"
        or spark.jars
        or cached_jars(packages) is not None
    ):
        return None
    root = root_path(config.storage)
    folder = Path(root) / "_logs" if is_local(config.storage.root) else Path(tempfile.gettempdir())
    return folder / "spark-startup.log"


def build_session(config: Config, verbose: bool = True) -> SparkSession:
    """Create (or return the running) SparkSession for ``config``.

    ``verbose`` False (the jobs' default): the quiet console of the module docstring.
    """
    base = with_base(SparkSession.builder, config.spark, verbose)
    builder = with_parquet(base, config.storage)
    builder = with_s3(builder, config)
    if config.storage.format == "delta":
        builder = with_delta(builder, config.spark, uses_object_store(config))
    elif uses_object_store(config):
        builder = with_packages(builder, config.spark, session_packages(config.spark, True)[1:])
    log = startup_log(config, verbose)
    if log is not None:
        print(f"resolving Spark's Delta jars once (log: {log})", file=sys.stderr, flush=True)
    with jvm_console_to(log):
        spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN" if verbose else "ERROR")
    resolved = spark.sparkContext.getConf().get("spark.jars.packages")
    if resolved and not under_spark_submit():
        remember_jars([p for p in resolved.split(",") if p], spark.conf.get("spark.jars") or "")
    return spark


def spark_defaults(
    python: str = sys.executable, driver_log4j: Path | None = None, object_store: bool = False
) -> str:
    """``spark-defaults.conf`` text that lets plain ``spark-submit`` run the jobs with Delta.

    ``make setup`` writes it into the virtual environment's pyspark (``$SPARK_HOME/conf``),
    which is where a cluster keeps the same settings. ``object_store``: S3A's jars too
    (:func:`s3_packages`; the container image has them), and ``s3://`` served by S3A.
    """
    packages = [delta_package(), *(s3_packages() if object_store else [])]
    lines = {
        "spark.jars.packages": ",".join(packages),
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.pyspark.python": python,
        "spark.pyspark.driver.python": python,
    }
    if object_store:
        lines["spark.jars.excludes"] = JAR_EXCLUDES
        lines.update({k: v for k, v in s3a_settings({}).items()})
    jars = cached_jars(packages)
    comment = ""
    if jars is not None:  # resolved before: spark-submit need not run Ivy
        comment = f"# spark.jars: {lines.pop('spark.jars.packages')}, as Ivy resolved it\n"
        lines = {"spark.jars": ",".join(jars), **lines}
        lines.pop("spark.jars.excludes", None)
    settings = ivy_settings()
    if settings is not None and jars is None:
        lines["spark.jars.ivySettings"] = str(settings.resolve())
    if driver_log4j is not None:
        # The driver only: master and worker daemons keep Spark's own INFO logging.
        lines["spark.driver.extraJavaOptions"] = f"-Dlog4j2.configurationFile={driver_log4j}"
    return comment + "".join(f"{k} {v}\n" for k, v in lines.items())


#: Spark's own logging for the driver of spark-submit runs: warnings only (its default is
#: INFO, which buries the jobs' summaries), less the notices every local run prints (no
#: native Hadoop library, the host name resolving to a loopback address: nothing to act on).
LOG4J2 = """rootLogger.level = warn
logger.nativecode.name = org.apache.hadoop.util.NativeCodeLoader
logger.nativecode.level = error
logger.utils.name = org.apache.spark.util.Utils
logger.utils.level = error
rootLogger.appenderRef.stdout.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex
"""


def write_spark_defaults(object_store: bool = False) -> Path:
    """Write :func:`spark_defaults` to the installed pyspark's ``conf/spark-defaults.conf``
    (and the driver's warnings-only log4j2 configuration beside it)."""
    import pyspark

    conf_dir = Path(pyspark.__file__).resolve().parent / "conf"
    conf_dir.mkdir(exist_ok=True)
    log4j = conf_dir / "eo-driver-log4j2.properties"
    log4j.write_text(LOG4J2)
    path = conf_dir / "spark-defaults.conf"
    path.write_text(spark_defaults(driver_log4j=log4j, object_store=object_store))
    return path
