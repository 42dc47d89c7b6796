"""Training job: label polygons + pixel features -> a land-cover classifier bundle.

Flow of :func:`train`: read the label polygons (GeoJSON or GeoParquet, any CRS,
:mod:`pipelines.labels_io`) on the driver -> pick the tiles whose ``bbox_wgs84`` meets a
polygon (a small join on tile metadata, no pixels) -> refuse to mix top-of-atmosphere and
surface reflectance -> broadcast the polygons -> executors rasterize them in each tile's
own grid, explode the tile's valid pixels (:func:`pipelines.features.pixel_features`'s
kernel) and keep the labelled *core* pixels (each scene pixel once with
``ingest.overlap > 0``), with their polygon id and map block (:mod:`udfs.labelled`) -> the
driver groups polygons and blocks (connected components) and holds out whole groups
(:func:`udfs.labels.assign_split`; only a (polygon, block, count) table is collected) ->
a per-(split, class) Bernoulli sample sized for the cap (``sampleBy``; these steps are in
:mod:`pipelines.training_data`) -> either trainer of :mod:`pipelines.trainers`

* ``sklearn``: the capped sample is collected (bounded driver memory: at most about
  ``max_per_class`` rows per class and split), a RandomForest is fitted and written as
  ONNX, or
* ``mllib``: a Spark MLlib RandomForest is fitted on the distributed sample
  (VectorAssembler over the same feature columns) and saved as a Spark model,

-> metrics on the held-out polygons, with a cluster-bootstrap 95 % interval of the
overall accuracy (:func:`udfs.metrics.classification_metrics`) -> a model bundle
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
import logging
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import SparkSession

from pipelines.config import Config, load_config
from pipelines.features import scene_table
from pipelines.jobs import Job, job_parser, run_main
from pipelines.labels_io import read_labels
from pipelines.lakehouse import Lakehouse
from pipelines.preflight import require_features, require_file
from pipelines.runs import Run, phase
from pipelines.trainers import (
    FAMILIES,
    N_TREES,
    TRAINERS,
    TrainerInput,
    TrainResult,
    bundle_metadata,
    train_mllib,
    train_sklearn,
)
from pipelines.training_data import (
    block_size_m,
    feature_columns,
    labelled_pixels,
    select_tiles,
    split_polygons,
    split_warnings,
    stratum_sample,
    with_split,
)
from udfs.errors import ConfigError
from udfs.labels import LabelError
from udfs.models import ModelError, RadiometryError, load_bundle, training_radiometry

JOB = "train"
log = logging.getLogger("eo")


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
    family: str | None = None,
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
    family = family or config.train.family
    if family not in FAMILIES:
        raise ConfigError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    if family != "forest" and trainer != "sklearn":
        raise ConfigError(
            f"train.family={family} needs train.trainer=sklearn (MLlib trains forests here)"
        )
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
        meta = bundle_metadata(
            model_id=model_id,
            trainer=trainer,
            features=features,
            indices=config.features.indices,
            radiometry=radiometry,
            scenes=info,
            scene_ids=scene_ids_used,
            sensors=sensors_used,
            labels=labels,
            class_column=class_column,
            run_id=run.run_id,
            split=split,
            split_params={
                "block_px": block_px,
                "block_m": block_m,
                "test_fraction": test_fraction,
                "seed": seed,
            },
            warnings=warnings,
            labelled_counts=counts,
        )
        fit = train_sklearn if trainer == "sklearn" else train_mllib
        model, sample = fit(
            TrainerInput(
                sampled,
                features,
                labels.classes,
                meta,
                out,
                max_per_class,
                test_cap,
                seed,
                n_trees,
                family,
            )
        )
        return TrainResult(out, load_bundle(out).metadata, model, sample, scene_ids_used, split)
    finally:
        labelled.unpersist()


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
        out, as whole groups of polygons and blocks), ``seed``, ``n_trees``, ``family``
        (``forest`` | ``boosting``; default ``train.family``),
        ``scene_ids`` / ``sensors`` (restrict the scenes), ``model_out`` (default
        ``<train.models_dir>/<model_id>``), ``run`` (the :class:`Run` to record into).
    """
    return train_model(spark, lake, config, labels_path, **options).bundle_path


# ----------------------------------------------------------------------------- the job


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = job_parser("train", __doc__.split("\n")[0])
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
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> Config:
    """Profile + flags + ``--set`` overrides, validated (before Spark starts)."""
    flags = (
        "labels", "class_column", "trainer", "max_per_class", "block_px", "test_fraction",
        "seed", "trees",
    )  # fmt: skip
    overrides = [f"storage.root={args.root}"] if args.root else []
    overrides += [
        f"train.{flag}={getattr(args, flag)}" for flag in flags if getattr(args, flag) is not None
    ]
    return load_config(args.profile, [*overrides, *args.set])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def plan(config: Config) -> Job:
        t = config.train
        # Usage problems stop here (exit code 2), before Spark starts: nothing written.
        require_file(t.labels, "labels", "--labels")
        require_features(config, JOB)
        results: list[TrainResult] = []

        def work(spark: SparkSession, lake: Lakehouse, run: Run) -> None:
            results.append(
                train_model(
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
            )

        return Job(
            work,
            lambda run, lake: summary(run.run_id, results[0]),
            source=lambda lake: t.labels,
            refused=(ConfigError, LabelError, RadiometryError),
        )

    return run_main(JOB, lambda: config_from_args(args), plan, verbose=args.verbose)


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
