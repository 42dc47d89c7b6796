"""What a job decides before Spark starts: usage problems, and "nothing to do".

Every job's plan (:func:`pipelines.jobs.run_main`, step 2) calls the checks here; they
read the file system and the small tables' Delta logs only, so they cost milliseconds
where a SparkSession and its first queries cost 10 s or more.

Decisions
---------
* A usage problem (a source path that does not exist, a table root without the tables a
  job needs, a labels or regions file that is not there, a model that does not fit the
  data) raises :class:`UsageError` (exit code 2) before the SparkSession exists, so a
  refused run leaves nothing behind: no ``runs`` or ``rejected`` row, no folder. Its
  message names absolute paths and the command to run next.
* A table "exists" here when its Delta log (``_delta_log/*.json``) or, for Parquet, its
  ``_SUCCESS`` marker is there. Roots on object stores are not checked before Spark (that
  needs Spark's file systems): there the jobs find out as before, after Spark starts.
* "Nothing to do" (:func:`ingest_settled`, :func:`features_settled`,
  :func:`classify_settled`) reads only the columns that decide it (scene ids and
  digests) with :meth:`pipelines.lakehouse.Lakehouse.read_arrow`. Whatever it cannot
  decide (an object-store root, a reader feature delta-rs lacks, a stale or rejected
  input) answers "not settled": the job then does its full planning through Spark, as
  before, and nothing is lost but the few milliseconds of the check.
* Row counts in summaries (:func:`row_count`) come from the Delta log's per-file
  statistics (``numRecords``), not from a scan.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, cast

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from pipelines.config import Config, StorageConfig
from udfs.errors import ConfigError, SceneError

if TYPE_CHECKING:
    from pipelines.lakehouse import Lakehouse
    from pipelines.runs import Run
    from udfs.models import ModelBundle


class UsageError(ConfigError):
    """The job cannot do what was asked as given: exit code 2, before Spark starts."""


def say(job: str, text: str) -> None:
    """Tell the user what the job decided (one line on stdout, flushed at once)."""
    print(f"{job}: {text}", flush=True)


def absolute(path: str) -> str:
    """``path`` as an absolute local path (URIs unchanged), for messages."""
    return path if "://" in path else os.path.abspath(path)


def absolute_sources(source: str) -> str:
    """A comma-separated source list with every local path made absolute, for messages."""
    return ", ".join(absolute(s.strip()) for s in source.split(",") if s.strip())


def is_local(root: str) -> bool:
    """True for a local table root (a plain path or ``file:``), as the Lakehouse decides."""
    return "://" not in root or root.startswith("file:")


def root_path(storage: StorageConfig) -> str:
    """The table root as an absolute local path (``file:`` stripped); URIs unchanged."""
    root = storage.root.rstrip("/")
    if not is_local(root):
        return root
    return os.path.abspath(root.removeprefix("file://").removeprefix("file:"))


def has_table(storage: StorageConfig, name: str) -> bool | None:
    """Whether table ``name`` exists under the root; None when that needs Spark (URIs)."""
    if not is_local(storage.root):
        return None
    path = os.path.join(root_path(storage), name)
    if storage.format == "parquet":
        return os.path.exists(os.path.join(path, "_SUCCESS"))
    log = os.path.join(path, "_delta_log")
    return os.path.isdir(log) and any(
        f.endswith(".json") or f.endswith(".checkpoint.parquet") for f in os.listdir(log)
    )


def driver_lake(config: Config) -> Lakehouse:
    """A :class:`Lakehouse` without a SparkSession, for Spark-free reads and appends.

    Only its Spark-free methods may be used (``path``, ``read_arrow``, ``append_arrow``,
    ``commit_files``, ``ensure`` on local Delta tables): a job that finds nothing to do
    records its run and prints its summary without starting Spark.
    """
    from pyspark.sql import SparkSession

    from pipelines.lakehouse import Lakehouse

    return Lakehouse(cast(SparkSession, None), config.storage)


def spark_free(config: Config) -> bool:
    """Whether the no-op path can work without Spark: local Delta tables."""
    return is_local(config.storage.root) and config.storage.format == "delta"


# ----------------------------------------------------------------------------- usage problems


def check_source(config: Config) -> list[str]:
    """The local paths of ``ingest.source``, made absolute; raises :class:`UsageError`
    when one of them does not exist (URIs are not checked: they are read as given)."""
    parts = [s.strip() for s in config.ingest.source.split(",") if s.strip()]
    if not parts:
        raise UsageError(
            "no source given (ingest.source is empty): pass --source with a scene folder or "
            "a STAC JSON file (several: comma-separated)"
        )
    missing = [p for p in parts if "://" not in p and not os.path.exists(p)]
    if missing:
        relative = any(not os.path.isabs(p) for p in missing)
        raise UsageError(
            f"source {', '.join(absolute(p) for p in missing)} does not exist"
            + (f" (relative paths are read from the current folder {os.getcwd()})" if relative
               else "")
            + ": pass --source with a scene folder or a STAC JSON file (several: "
            "comma-separated), e.g. --source data/demo/scenes after `make demo`"
        )  # fmt: skip
    return [absolute(p) for p in parts]


def ingest_command(root: str) -> str:
    return f"python -m pipelines.ingest --root {root} --source <scene folder or STAC JSON>"


def require_tiles(config: Config, job: str) -> None:
    """Raise :class:`UsageError` when the root holds no ``tiles`` table (local roots)."""
    storage = config.storage
    if has_table(storage, "tiles") is not False:
        return
    root = root_path(storage)
    where = (
        f"the table root {root} does not exist"
        if not os.path.exists(root)
        else f"there is no tiles table under {root}"
    )
    raise UsageError(
        f"{where}: {job} needs ingested scenes. Run ingest first: `{ingest_command(root)}` "
        f"(or `python -m pipelines.classify --root {root} --source ...`, which ingests and "
        "computes features itself); or pass --root with the folder you ingested into"
    )


def require_features(config: Config, job: str) -> None:
    """Raise :class:`UsageError` when the root holds no ``tile_features`` (local roots)."""
    require_tiles(config, job)
    if has_table(config.storage, "tile_features") is not False:
        return
    root = root_path(config.storage)
    raise UsageError(
        f"there is no tile_features table under {root}: {job} trains on computed features. "
        f"Run the features job first: `python -m pipelines.features --root {root}`"
    )


def require_file(path: str | None, what: str, flag: str) -> None:
    """Raise :class:`UsageError` when a local input file (labels, regions) is missing."""
    if path is None or "://" in path or os.path.exists(path):
        return
    raise UsageError(f"{what} file not found: {absolute(path)}: pass {flag} with an existing file")


def classify_plan(config: Config, bundle: ModelBundle) -> bool:
    """Before Spark: check classify's inputs and say what will happen; returns whether
    ingest runs first.

    Ingest runs when ``classify.ingest`` is ``always``, or ``auto`` and the root holds no
    ``tiles``. Raises :class:`UsageError` for a missing source or for no tiles with
    ``--ingest never``, and :class:`udfs.models.ModelError` when the sensors of the data
    (ingested, or found in the source) cannot feed the model, naming both.
    """
    from pipelines.discover import discover
    from udfs.models import check_data

    b = bundle
    storage, mode = config.storage, config.classify.ingest
    root = root_path(storage)
    tiles = has_table(storage, "tiles")
    how = (
        f"the newest bundle under {absolute(config.train.models_dir)}"
        if config.classify.model == "latest"
        else "as given"
    )
    say("classify", f"model {b.model_id} at {b.path.resolve()} ({how})")
    if tiles is None:  # an object store: upstream() decides with Spark, as before
        return mode == "always"
    if not tiles and mode == "never":
        raise UsageError(
            f"there is no tiles table under {root} and --ingest never was given: run "
            f"`{ingest_command(root)}` first, or drop --ingest never to ingest "
            f"{absolute_sources(config.ingest.source)}"
        )
    will_ingest = mode == "always" or not tiles
    sensors: set[str] = set()
    if tiles and spark_free(config):
        lake = driver_lake(config)
        try:
            sensors |= set(lake.read_arrow("scenes", ["sensor"]).column(0).to_pylist())
        except ValueError:
            pass  # delta-rs cannot read it: upstream() checks with Spark
    if will_ingest:
        sources = check_source(config)
        found = discover(config.ingest.source, config.ingest.allowed_roots)
        scenes = [c for c in found if not isinstance(c, SceneError)]
        sensors |= {c.sensor for c in scenes}
        why = "asked with --ingest always" if tiles else f"no tiles under {root} yet"
        say(
            "classify",
            f"{why}: ingest runs first on {', '.join(sources)} ({len(scenes)} scene(s) found"
            + (f", {len(found) - len(scenes)} input(s) that are not scenes" if
               len(found) > len(scenes) else "")
            + ")",
        )  # fmt: skip
    check_data(b, sorted(sensors))
    return will_ingest


# ----------------------------------------------------------------------------- nothing to do


def _arrow(lake: Lakehouse, name: str, columns: list[str], where: object = None) -> pa.Table | None:
    """``read_arrow``, or None where delta-rs cannot answer (then Spark decides)."""
    if not lake.local:
        return None
    try:
        return lake.read_arrow(name, columns, where)
    except ValueError:
        return None


def ingest_settled(run: Run, lake: Lakehouse) -> bool:
    """True when every scene the run would examine is already ingested with this tiling
    and no input would be rejected; fills ``run.seen`` and ``run.skipped`` then, as the
    full ingest would (and prints its incremental decision line).

    Discovery is the run's own (:func:`pipelines.incremental.discover_new`): with
    ``ingest.since`` set, products before the window or already in ``scenes`` are passed
    from their listing, unread, so a daily run's check costs the day's new products, not
    the archive. Discovery lists folders and parses catalogues (no raster is opened);
    ``scenes`` is read for two columns. Anything else (new, re-tiled, duplicated or bad
    inputs) is left to the full ingest.
    """
    from pipelines import incremental

    found = incremental.discover_new(lake, run.config)
    if any(isinstance(c, SceneError) for c in found.candidates):
        return False
    ids = [str(c.scene_id) for c in found.candidates]
    if len(set(ids)) != len(ids):
        return False
    if ids:
        scenes = _arrow(
            lake, "scenes", ["scene_id", "tiling_digest"], ds.field("scene_id").isin(ids)
        )
        if scenes is None:
            return False
        cols = (scenes.column(c).to_pylist() for c in scenes.column_names)
        existing = dict(zip(*cols, strict=True))
        digest = run.config.ingest.tiling_digest()
        if any(existing.get(i) != digest for i in ids):
            return False
    run.seen, run.skipped = len(ids), sorted(ids)
    if line := incremental.account(run, found):
        print(line, flush=True)
    return True


def features_settled(run: Run, lake: Lakehouse) -> bool:
    """True when every ingested scene has features of this configuration; fills
    ``run.skipped`` then. Scenes with features of other settings are left to the full
    planning (which refuses them, or rebuilds them with ``--rebuild``)."""
    scenes = _arrow(lake, "scenes", ["scene_id"])
    done = _arrow(lake, "tile_features", ["scene_id", "features_digest"])
    if scenes is None or done is None:
        return False
    digest = run.config.features.digest()
    digests = set(zip(done.column(0).to_pylist(), done.column(1).to_pylist(), strict=True))
    if any(d != digest for _, d in digests):
        return False
    ids = set(scenes.column(0).to_pylist())
    if not ids <= {s for s, _ in digests}:
        return False
    run.skipped = sorted(ids)
    return True


def classify_settled(run: Run, lake: Lakehouse, model_id: str) -> bool:
    """True when ``model_id`` has classified every ingested scene (and ``--rebuild`` was
    not given); fills ``run.skipped`` then."""
    if run.config.classify.rebuild:
        return False
    scenes = _arrow(lake, "scenes", ["scene_id"])
    done = _arrow(lake, "tile_predictions", ["scene_id"], ds.field("model_id") == model_id)
    if scenes is None or done is None:
        return False
    ids = set(scenes.column(0).to_pylist())
    if not ids or not ids <= set(done.column(0).to_pylist()):
        return False  # (no scene at all: the full path still registers the model)
    run.skipped = sorted(ids)
    return True


# ----------------------------------------------------------------------------- summaries


def row_count(lake: Lakehouse, name: str) -> int:
    """Rows of table ``name`` (0 when it does not exist).

    Local Delta tables: the sum of the log's per-file ``numRecords``; local Parquet: the
    files' footers; elsewhere a Spark count.
    """
    path = lake.local_path(name)
    if lake.local and lake.format == "delta":
        import deltalake

        try:
            dt = deltalake.DeltaTable(path)
        except deltalake.exceptions.TableNotFoundError:
            return 0
        acts = pa.table(dt.get_add_actions(flatten=True))
        if acts.num_rows == 0:
            return 0
        if "num_records" in acts.column_names and acts.column("num_records").null_count == 0:
            return int(pc.sum(acts.column("num_records")).as_py())
    elif lake.local:
        if not os.path.exists(os.path.join(path, "_SUCCESS")):
            return 0
        return int(ds.dataset(path, format="parquet", partitioning="hive").count_rows())
    return lake.read(name).count() if lake.exists(name) else 0


def table_exists(lake: Lakehouse, name: str) -> bool:
    """``lake.exists`` without Spark for local roots."""
    if lake.local:
        storage = StorageConfig(root=lake.root, format=lake.format)
        return bool(has_table(storage, name))
    return lake.exists(name)


def class_counts(lake: Lakehouse, model_id: str) -> dict[int, int]:
    """Pixels per class code of ``model_id`` over ``tile_predictions``."""
    out: dict[int, int] = {}
    if lake.local and lake.format == "delta":
        try:
            t = lake.read_arrow(
                "tile_predictions", ["class_counts"], ds.field("model_id") == model_id
            )
        except ValueError:
            t = None
        if t is not None:
            for counts in t.column(0).to_pylist():
                for code, n in counts or []:
                    out[code] = out.get(code, 0) + n
            return dict(sorted(out.items()))
    from pyspark.sql import functions as F

    rows = (
        lake.read("tile_predictions")
        .filter(F.col("model_id") == model_id)
        .select(F.explode("class_counts").alias("code", "n"))
        .groupBy("code")
        .agg(F.sum("n").alias("n"))
        .orderBy("code")
        .collect()
    )
    return {r.code: r.n for r in rows}
