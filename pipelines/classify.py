"""Classify job: scenes -> tiles -> features -> per-pixel land-cover maps in Delta.

Flow of :func:`main`: load config -> open and validate the model bundle (before Spark
starts: a missing or broken model stops here) -> start Spark -> check that every sensor
in the data (ingested, or about to be) can feed the model (a mismatch stops here, nothing
written) -> ingest when asked or when ``tiles`` is missing -> features (incremental) ->
classify the scenes this model has not classified yet: executors read tiles, mask them
with the ``features`` mask settings, compute the model's features, predict with the model
loaded once per Python worker, and emit per tile a class raster and a confidence raster
(the whole stored tile) and class counts (the tile's core only: sums over tiles count
each scene pixel once whatever ``ingest.overlap``) -> write ``predictions`` and
``tile_predictions`` (keyed by model id, so models can be compared on the same tiles;
local tables: the workers write the files and the driver commits them, else MERGE) ->
record the model in ``models``, rejected tiles and the run.

Run with ``spark-submit pipelines/classify.py`` (no arguments: the demo data and the
newest model under ``output/models``) or ``python -m pipelines.classify``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import StructType

from pipelines.aggregate import analysis_stages
from pipelines.config import Config, load_config
from pipelines.datamodel import MODELS, PREDICTIONS, TABLES, TILE_PREDICTIONS
from pipelines.discover import discover
from pipelines.features import features, file_groups, scene_table, tile_input, use_file_reader
from pipelines.ingest import ingest, tiled_bands
from pipelines.jobs import Job, Stage, job_parser, run_main
from pipelines.lakehouse import Decide, Held, Lakehouse, replace_held
from pipelines.preflight import class_counts, classify_plan, classify_settled, table_exists
from pipelines.runs import ListParam, Run, done_by_lines, live_runs, phase
from pipelines.scheduling import grouped_rdd
from udfs.errors import ConfigError, SceneError
from udfs.feature_udfs import TILE_COLUMNS
from udfs.inference_udfs import (
    PREDICTION_GEO_COLUMNS,
    ModelRef,
    make_tile_classifier,
    make_tile_classifier_writer,
)
from udfs.ingest_udfs import check_tiled_bands
from udfs.models import (
    METADATA,
    ModelBundle,
    ModelError,
    check_data,
    index_names,
    load_bundle,
    model_bands,
    model_sha256,
)

JOB = "classify"
log = logging.getLogger("eo")

#: One row per classified tile: ``predictions`` columns + ``tile_predictions`` counts.
CLASSIFIED = StructType(
    [
        *PREDICTIONS.fields,
        *[f for f in TILE_PREDICTIONS.fields if f.name not in PREDICTIONS.fieldNames()],
    ]
)


# ----------------------------------------------------------------------------- the model


def resolve_model(config: Config) -> Path:
    """The bundle folder to apply: ``classify.model``, or the newest under ``models_dir``.

    ``latest`` picks the bundle whose ``metadata.json`` has the greatest ``created`` time.
    Raises :class:`ModelError` when there is none, saying how to make one.
    """
    name = config.classify.model
    if name != "latest":
        return Path(name)
    root = Path(config.train.models_dir)
    found = []
    for meta in root.glob(f"*/{METADATA}") if root.is_dir() else []:
        try:
            found.append((load_bundle(meta.parent).metadata["created"], meta.parent))
        except ModelError as e:
            log.warning("skipping %s: %s", meta.parent, e)
    if not found:
        raise ModelError(
            f"no model bundle under {root}: train one with `python -m pipelines.train` "
            f"(or `make demo`), or name a bundle folder with --model"
        )
    return max(found)[1]


def load_model(config: Config) -> ModelBundle:
    """Open and validate the bundle to apply; only ONNX bundles are applied per pixel."""
    bundle = load_bundle(resolve_model(config))
    if bundle.format != "onnx":
        raise ModelError(
            f"model {bundle.model_id} ({bundle.path}) is a {bundle.format!r} bundle "
            f"(trainer {bundle.metadata['trainer']}); classify applies ONNX bundles in the "
            f"executors' Python workers: train with --trainer sklearn"
        )
    return bundle


def data_sensors(config: Config, lake: Lakehouse, will_ingest: bool) -> list[str]:
    """Sensors of the scenes the run will classify: ingested ones and, when ingest runs,
    those discovery finds in the source (a driver-side listing; nothing is read)."""
    sensors = {v["sensor"] for v in scene_table(lake).values()} if lake.exists("scenes") else set()
    if will_ingest:
        sensors |= {
            c.sensor
            for c in discover(config.ingest.source, config.ingest.allowed_roots)
            if not isinstance(c, SceneError)
        }
    return sorted(sensors)


def model_row(bundle: ModelBundle, sha256: str) -> dict[str, Any]:
    """The ``models`` row of a bundle."""
    meta = bundle.metadata
    return {
        "model_id": bundle.model_id,
        "trainer": meta["trainer"],
        "format": bundle.format,
        "path": str(bundle.path.resolve()),
        "model_sha256": sha256,
        "feature_names": bundle.feature_names,
        "classes": [{"code": int(c["code"]), "name": c["name"]} for c in meta["classes"]],
        "sensors": bundle.sensors,
        "training_run_id": meta["training_run_id"],
        "overall_accuracy": meta["metrics"].get("overall_accuracy"),
        "metrics_json": json.dumps(meta["metrics"], sort_keys=True),
        "created": str(meta["created"]),
        "registered_at": datetime.now(timezone.utc),
    }


def register_model(spark: SparkSession, lake: Lakehouse, bundle: ModelBundle, sha: str) -> None:
    """Add the bundle's ``models`` row unless its id is there (local tables: no Spark job)."""
    row = model_row(bundle, sha)
    if not (lake.local and lake.format == "delta"):
        lake.merge("models", spark.createDataFrame([row], MODELS))
        return
    import deltalake

    path = lake.local_path("models")
    if lake.exists("models"):
        ids = deltalake.DeltaTable(path).to_pyarrow_table(columns=["model_id"]).column(0)
        if bundle.model_id in ids.to_pylist():
            return
    lake.append_arrow("models", pa.Table.from_pylist([row], schema=to_arrow_schema(MODELS)))


# ----------------------------------------------------------------------------- transforms


def classified_scenes(lake: Lakehouse, model_id: str) -> set[str]:
    """Scenes with ``tile_predictions`` rows of ``model_id`` (local tables: delta-rs, a few
    ms; a Spark query costs seconds here)."""
    if lake.local:
        import pyarrow.dataset as ds

        try:
            t = lake.read_arrow("tile_predictions", ["scene_id"], ds.field("model_id") == model_id)
            return set(t.column(0).to_pylist())
        except ValueError:  # reader features delta-rs lacks: Spark below
            pass
    if not lake.exists("tile_predictions"):
        return set()
    rows = lake.read("tile_predictions").filter(F.col("model_id") == model_id)
    return {r.scene_id for r in rows.select("scene_id").distinct().collect()}


def plan_scenes(run: Run, lake: Lakehouse, model_id: str) -> dict[str, dict[str, Any]]:
    """Scenes this model has not classified yet (all of them with ``classify.rebuild``)."""
    done = classified_scenes(lake, model_id)
    scenes = scene_table(lake)
    if run.config.classify.rebuild and done:
        for name in ("predictions", "tile_predictions"):
            if lake.exists(name):
                lake.delete_where(name, F.col("model_id") == model_id)
        done = set()
    run.skipped = sorted(s for s in scenes if s in done)
    return {s: v for s, v in scenes.items() if s not in done}


def classified_frame(
    spark: SparkSession,
    lake: Lakehouse,
    run: Run,
    todo: dict[str, dict[str, Any]],
    model: ModelRef,
    errors: Any,
) -> DataFrame:
    """One :data:`CLASSIFIED` row per tile of the scenes in ``todo``, computed on executors."""
    source, from_files = tile_input(
        spark,
        lake,
        run.config.classify.reader,
        list(todo),
        (*TILE_COLUMNS, *PREDICTION_GEO_COLUMNS),
    )
    classify_fn = make_tile_classifier(
        todo,
        model,
        {"run_id": run.run_id},
        to_arrow_schema(CLASSIFIED),
        errors.add,
        from_files=from_files,
        masks=run.config.features.masks(),
    )
    return source.mapInArrow(classify_fn, CLASSIFIED)


def merge_frames(
    spark: SparkSession,
    lake: Lakehouse,
    run: Run,
    todo: dict[str, dict[str, Any]],
    model: ModelRef,
    errors: Any,
) -> None:
    """Tables anywhere (object stores): results through Spark, MERGEd into both tables."""
    frame = classified_frame(spark, lake, run, todo, model, errors)
    # Both tables come from one pass over the pixels: cache the (small) results.
    frame = frame.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        lake.merge("predictions", frame)
        # tile_predictions last: a scene counts as done once its counts are written.
        lake.merge("tile_predictions", frame)
    finally:
        frame.unpersist()


def write_files(
    spark: SparkSession,
    lake: Lakehouse,
    run: Run,
    todo: dict[str, dict[str, Any]],
    model: ModelRef,
    errors: Any,
) -> None:
    """Local tables: workers write ``predictions`` files, the driver commits them, then
    appends ``tile_predictions``; no DataFrame job (see ``ingest.writer``).

    The commit is decided per scene against the tables as they are then
    (:func:`prediction_decider`): scenes another run classified meanwhile are left to it
    (``run.skipped``, ``run.done_by``) and this run's files of them deleted; rows a stopped
    run left are replaced in the same commit, so the key stays unique.
    """
    lake.ensure(TABLES["predictions"])  # before executors write into its folder
    writer = make_tile_classifier_writer(
        todo,
        model,
        {"run_id": run.run_id},
        to_arrow_schema(PREDICTIONS),
        TILE_PREDICTIONS.fieldNames(),
        lake.local_path("predictions"),
        run.config.storage.zstd_level,
        errors.add,
        masks=run.config.features.masks(),
    )
    groups = file_groups(spark, lake, list(todo))
    out = grouped_rdd(spark, groups).mapPartitions(writer).collect()
    done = lake.commit_files(
        "predictions", [o["file"] for o in out if "file" in o], run.run_id,
        prediction_decider(lake, run),
    )  # fmt: skip
    left = {g[1]: other for g, other in done.left.items()}
    for scene_id, other in sorted(left.items()):
        run.done_by[scene_id] = other
        del todo[scene_id]
    run.skipped = sorted({*run.skipped, *left})
    # tile_predictions last: a scene counts as done once its counts are written.
    tiles = [o["tile"] for o in out if "tile" in o and o["tile"]["scene_id"] not in left]
    table = pa.Table.from_pylist(tiles, schema=to_arrow_schema(TILE_PREDICTIONS))
    # The scene's predictions are this run's alone now: its counts replace any older ones.
    lake.append_arrow(
        "tile_predictions", table, run.config.storage.zstd_level, run.run_id, replace_held
    )


def prediction_decider(lake: Lakehouse, run: Run) -> Decide:
    """Per (model, scene), at the ``predictions`` commit: leave it to the run that
    recorded its maps and counts meanwhile, or to a run still running that committed its
    maps; else write it, replacing what a stopped run (or a ``--rebuild`` that deleted the
    maps) left."""

    def decide(held: dict[tuple, Held]) -> dict[tuple, str | None]:
        import pyarrow.dataset as ds

        model_ids = sorted({g[0] for g in held})
        t = lake.read_arrow(
            "tile_predictions", ["model_id", "scene_id", "run_id"],
            ds.field("model_id").isin(model_ids),
        )  # fmt: skip
        counted = {(r["model_id"], r["scene_id"]): r["run_id"] for r in t.to_pylist()}
        owners = {o for h in held.values() for o in h.owners if o and o != run.run_id}
        alive = live_runs(lake.spark, lake, owners) if owners else set()
        out: dict[tuple, str | None] = {}
        for g, h in held.items():
            pending = sorted(o for o in h.owners if o in alive)
            if g in counted and h.files:  # counts without maps: deleted by a --rebuild
                out[g] = counted[g]
            else:
                out[g] = pending[0] if pending else None
        return out

    return decide


def classify(spark: SparkSession, lake: Lakehouse, run: Run, bundle: ModelBundle) -> Run:
    """Classify every scene ``bundle`` has not classified yet into the prediction tables."""
    if classify_settled(run, lake, bundle.model_id):  # decided from two small Delta logs
        return run
    with phase("plan"):
        todo = plan_scenes(run, lake, bundle.model_id)
        check_data(bundle, [v["sensor"] for v in todo.values()])
        check_tiled_bands(
            tiled_bands(lake, list(todo)),
            {s: model_bands(bundle, v["sensor"]) for s, v in todo.items()},
            f"model {bundle.model_id}",
        )
        run.seen = sum(v["n_tiles"] or 0 for v in todo.values())
    sha = model_sha256(bundle)
    with phase("register model"):
        register_model(spark, lake, bundle, sha)
    errors = spark.sparkContext.accumulator([], ListParam())
    if todo:
        blob = spark.sparkContext.broadcast(bundle.model_path.read_bytes())
        model = ModelRef(
            bundle.model_id,
            sha,
            tuple(bundle.feature_names),
            tuple(index_names(bundle)),
            tuple(int(c) for c in bundle.model_classes),
            blob,
        )
        try:
            with phase(f"classify {len(todo)} scene(s) with {bundle.model_id}"):
                if use_file_reader(run.config.classify.reader, lake):
                    write_files(spark, lake, run, todo, model, errors)
                else:
                    merge_frames(spark, lake, run, todo, model, errors)
        finally:
            blob.unpersist()
    # The accumulator may see a tile twice if Spark re-runs a task: one record per tile.
    rejected = [e for e in {e["href"]: e for e in errors.value}.values()
                if e.get("scene_id") in todo]  # fmt: skip
    run.rejected.extend(rejected)
    run.ingested = sorted(todo)
    run.tiles_written = sum(v["n_tiles"] or 0 for v in todo.values()) - len(rejected)
    return run


# ----------------------------------------------------------------------------- the job


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = job_parser("classify", __doc__.split("\n")[0])
    p.add_argument("--source", help="scenes to ingest first (ingest.source)")
    p.add_argument("--model", help="model bundle folder, or 'latest' (classify.model)")
    p.add_argument(
        "--ingest", choices=("auto", "always", "never"), help="run ingest first (classify.ingest)"
    )
    p.add_argument("--rebuild", action="store_true", help="redo this model's predictions")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = []
    for flag, key in (
        ("root", "storage.root"),
        ("source", "ingest.source"),
        ("model", "classify.model"),
        ("ingest", "classify.ingest"),
    ):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    if args.rebuild:
        overrides.append("classify.rebuild=true")
    return load_config(args.profile, [*overrides, *args.set])


def summary(run: Run, lake: Lakehouse, bundle: ModelBundle) -> str:
    lines = [
        f"classify run {run.run_id}: model {bundle.model_id}; {len(run.ingested)} scene(s) "
        f"classified, {len(run.skipped)} already done, {run.tiles_written} tiles written, "
        f"{len(run.rejected)} tile(s) rejected",
        *done_by_lines(run, "classified"),
    ]
    if table_exists(lake, "tile_predictions"):
        names = bundle.class_names
        counts = class_counts(lake, bundle.model_id)  # local Delta: no Spark job
        total = sum(counts.values()) or 1
        for code, n in counts.items():
            lines.append(f"  {names.get(code, code)!s:<12} {n:>10} px  {n / total:6.1%}")
    for name in ("predictions", "tile_predictions", "models"):
        lines.append(f"  {name:<16} {lake.path(name)}")
    return "\n".join(lines)


def upstream(config: Config, bundle: ModelBundle, lake: Lakehouse) -> list[Stage]:
    """Ingest (when asked, or when ``tiles`` is missing) and features, run before classify.

    Raises :class:`ModelError` when a sensor of the data (ingested, or about to be) cannot
    feed ``bundle``: the job stops before anything is written.
    """
    mode = config.classify.ingest
    will_ingest = mode == "always" or (mode == "auto" and not lake.exists("tiles"))
    sensors = data_sensors(config, lake, will_ingest)
    check_data(bundle, sensors)
    if will_ingest:  # ingest.bands must keep what the model reads: refuse before ingesting
        short = {
            s: sorted(model_bands(bundle, s) - set(config.ingest.band_columns(s))) for s in sensors
        }
        short = {s: m for s, m in short.items() if m}
        if short:
            s, m = next(iter(short.items()))
            raise ConfigError(
                f"model {bundle.model_id} needs band(s) {', '.join(m)} of {s} but ingest.bands "
                f"({', '.join(config.ingest.bands)}) leaves them out: add them to ingest.bands "
                f"(empty: every band)"
            )
    stages = [Stage("ingest", ingest, config.ingest.source)] if will_ingest else []
    return [*stages, Stage("features", features, lake.path("tiles"))]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def plan(config: Config) -> Job:
        bundle = load_model(config)  # before Spark starts: nothing is written on failure
        classify_plan(config, bundle)  # says what runs; source, tiles, sensors vs the model
        return Job(
            lambda spark, lake, run: classify(spark, lake, run, bundle),
            lambda run, lake: summary(run, lake, bundle),
            source=lambda lake: str(bundle.path),
            upstream=lambda lake: upstream(config, bundle, lake),
            # The analysis tables of this model's maps (issue 11), each its own run.
            downstream=lambda lake: analysis_stages(config, lake, [bundle.model_id]),
        )

    return run_main(JOB, lambda: config_from_args(args), plan, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
