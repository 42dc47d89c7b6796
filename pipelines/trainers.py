"""The trainers and the bundle they write: scikit-learn (ONNX) and Spark MLlib forests.

Driver side. Both trainers take the per-(split, class) sample of
:mod:`pipelines.training_data`, fit a RandomForest on its training side, measure it on
its held-out side (:func:`udfs.metrics.classification_metrics`: overall accuracy with a
cluster-bootstrap interval over held-out polygons) and write a model bundle
(:mod:`udfs.models`) whose metadata :func:`bundle_metadata` builds:

* ``sklearn``: the capped sample is collected (bounded driver memory: at most about
  ``max_per_class`` rows per class and split), a RandomForest is fitted and written as
  ONNX; the ONNX model's agreement with scikit-learn is recorded (``onnx_agreement``).
* ``mllib``: a Spark MLlib RandomForest is fitted on the distributed sample
  (VectorAssembler over the same feature columns) and saved as a Spark model.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.labels_io import Labels
from pipelines.runs import phase
from pipelines.training_data import Sample, collect_sample
from udfs.labels import Split
from udfs.metrics import classification_metrics
from udfs.models import predict_pixels, write_metadata, write_onnx_bundle

log = logging.getLogger("eo")

TRAINERS = ("sklearn", "mllib")
#: Trees per forest. A power of two keeps every vote fraction (k / 64) exact in float32,
#: so the ONNX model's probabilities, and with them its classes (ties included), equal
#: scikit-learn's float64 ones exactly.
N_TREES = 64
#: What the bundle metadata says about the inputs of each radiometry.
RADIOMETRY_WORDS = {
    "surface": "surface reflectance",
    "toa": "top-of-atmosphere reflectance (not surface reflectance)",
}
SPLIT_METHOD = (
    "whole groups held out: connected components of polygon <-> map block "
    "(block_m squares of each CRS) and overlapping polygons, visited in "
    "splitmix64(group ^ seed) order until test_fraction of the labelled pixels; "
    "see udfs/labels.py"
)


@dataclass
class TrainResult:
    """What :func:`train_model` produced: the bundle and, for tests, model, sample, split."""

    bundle_path: Path
    metadata: dict[str, Any]
    model: Any = None
    sample: Sample | None = None
    scene_ids: list[str] = field(default_factory=list)
    split: Split | None = None


#: Model families of the ``sklearn`` trainer (``train.family``).
FAMILIES = ("forest", "boosting")
#: Gradient boosting settings: scikit-learn's defaults (31 leaves per tree, learning rate
#: 0.1) with a fixed number of rounds and no early stopping, so the model (and its
#: prediction cost: rounds x classes trees) does not depend on a random validation split.
BOOSTING_PARAMS: dict[str, Any] = {"max_iter": 100, "early_stopping": False}


def estimator_params(family: str, seed: int, n_trees: int = N_TREES) -> tuple[str, dict[str, Any]]:
    """Class path and parameters of the scikit-learn estimator of a family."""
    if family == "forest":
        return "sklearn.ensemble.RandomForestClassifier", {
            "n_estimators": n_trees,
            "random_state": seed,
        }
    if family == "boosting":
        return "sklearn.ensemble.HistGradientBoostingClassifier", {
            **BOOSTING_PARAMS,
            "random_state": seed,
        }
    raise ValueError(f"unknown model family {family!r} (known: {', '.join(FAMILIES)})")


def fit_sklearn(
    X: np.ndarray, y: np.ndarray, seed: int, n_trees: int = N_TREES, family: str = "forest"
) -> Any:
    """A scikit-learn classifier of ``family`` fitted on the capped sample.

    ``forest``: fully grown trees (pure leaves) and a power-of-two tree count make the
    ONNX export reproduce scikit-learn's classes exactly (see :data:`N_TREES`).
    ``boosting``: :data:`BOOSTING_PARAMS` (``n_trees`` is not used); the ONNX model
    sums leaf values in float32, so a pixel whose two best classes are within float32
    rounding may differ from scikit-learn (``onnx_agreement`` in the bundle says how often).
    """
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

    _, params = estimator_params(family, seed, n_trees)
    if family == "forest":
        return RandomForestClassifier(**params, n_jobs=-1).fit(X, y)
    return HistGradientBoostingClassifier(**params).fit(X, y)


def fit_mllib(
    train_df: DataFrame, features: Sequence[str], codes: Sequence[int], seed: int, n_trees: int
) -> Any:
    """A Spark MLlib RandomForest on the distributed sample (label index = code order)."""
    from pyspark.ml.classification import RandomForestClassifier

    assembled = assemble(train_df, features, codes)
    rf = RandomForestClassifier(
        featuresCol="features",
        labelCol="label_idx",
        numTrees=n_trees,
        maxDepth=14,
        featureSubsetStrategy="sqrt",
        seed=seed,
    )
    return rf.fit(assembled)


def assemble(df: DataFrame, features: Sequence[str], codes: Sequence[int]) -> DataFrame:
    from pyspark.ml.feature import VectorAssembler

    codes_arr = F.array(*[F.lit(int(c)) for c in codes])
    indexed = df.withColumn(
        "label_idx", (F.array_position(codes_arr, F.col("label")) - 1).cast("double")
    )
    return VectorAssembler(inputCols=list(features), outputCol="features").transform(indexed)


def mllib_metrics(
    model: Any,
    test_df: DataFrame,
    features: Sequence[str],
    classes: Mapping[int, str],
    seed: int = 0,
) -> dict[str, Any]:
    """Held-out metrics of a Spark model: (polygon, label, prediction) counts from Spark."""
    codes = sorted(classes)
    pred = model.transform(assemble(test_df, features, codes))
    pairs = pred.groupBy("polygon", "label", "prediction").count().collect()
    y_true = [int(r["label"]) for r in pairs]
    y_pred = [codes[int(r["prediction"])] for r in pairs]
    weight = [int(r["count"]) for r in pairs]
    polygon = [int(r["polygon"]) for r in pairs]
    return classification_metrics(
        y_true, y_pred, classes, sample_weight=weight, groups=polygon, seed=seed
    )


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("scikit-learn", "skl2onnx", "onnxruntime", "pyspark", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def _class_counts(y: np.ndarray) -> dict[str, int]:
    codes, n = np.unique(y, return_counts=True)
    return {str(int(c)): int(k) for c, k in zip(codes, n, strict=True)}


#: The split's counts, in the bundle's ``split`` metadata and repeated in its metrics.
SPLIT_COUNT_KEYS = (
    "n_groups",
    "n_groups_test",
    "n_polygons_train",
    "n_polygons_test",
    "pixels_train",
    "pixels_test",
)


def split_counts(split: Split) -> dict[str, int]:
    """Groups, polygons and labelled pixels on each side of ``split`` (:data:`SPLIT_COUNT_KEYS`)."""
    values = (
        split.n_groups,
        split.n_groups_test,
        len(split.train_polygons),
        len(split.test_polygons),
        split.pixels_train,
        split.pixels_test,
    )
    return dict(zip(SPLIT_COUNT_KEYS, values, strict=True))


def bundle_metadata(
    *,
    model_id: str,
    trainer: str,
    features: Sequence[str],
    indices: Sequence[str],
    radiometry: str,
    scenes: Mapping[str, Mapping[str, Any]],
    scene_ids: Sequence[str],
    sensors: Sequence[str],
    labels: Labels,
    class_column: str,
    run_id: str,
    split: Split,
    split_params: Mapping[str, Any],
    warnings: Sequence[str],
    labelled_counts: Mapping[str, int],
) -> dict[str, Any]:
    """The bundle's ``metadata.json`` before fitting (the trainers add estimator, params,
    sample and metrics).

    ``scenes`` is the scene table of the training scenes (:func:`pipelines.features.
    scene_table`: their scaling is recorded); ``split_params`` holds ``block_px``,
    ``block_m``, ``test_fraction`` and ``seed``; ``labelled_counts`` the labelled pixels
    per ``"<split>:<code>"`` stratum.
    """
    lower = [i.lower() for i in indices]
    return {
        "model_id": model_id,
        "trainer": trainer,
        "feature_names": list(features),
        "bands": [f for f in features if f not in set(lower)],
        "indices": lower,
        "radiometry": radiometry,
        "scaling": {
            "input": f"{RADIOMETRY_WORDS[radiometry]} (unitless) and spectral indices",
            "formula": "reflectance = DN * scale + offset",
            "source": "scenes.scaling (per scene and band)",
            "per_scene": {s: v["scaling"] for s, v in sorted(scenes.items())},
        },
        "classes": [{"code": c, "name": n} for c, n in sorted(labels.classes.items())],
        "sensors": list(sensors),
        "scenes": list(scene_ids),
        "training_run_id": run_id,
        "labels": {
            "path": str(labels.path),
            "class_column": class_column,
            "crs": labels.crs,
            "polygons": len(labels),
        },
        "split": {
            "method": SPLIT_METHOD,
            **split_params,
            **split_counts(split),
            "warnings": list(warnings),
            # Polygon ids: positions in the labels file (0-based).
            "train_polygons": split.train_polygons,
            "test_polygons": split.test_polygons,
        },
        "labelled_pixels": labelled_counts,
        "created": datetime.now(timezone.utc).isoformat(),
        "versions": _versions(),
    }


@dataclass(frozen=True)
class TrainerInput:
    """What either trainer takes.

    Attributes
    ----------
    sampled : DataFrame
        The per-(split, class) sample (:func:`pipelines.training_data.stratum_sample`),
        lazy, with ``split`` and ``label`` columns.
    features : sequence of str
        The model's input columns, in order.
    classes : mapping of int to str
        Class code -> name of every labelled class.
    meta : mapping
        The bundle's metadata so far (:func:`bundle_metadata`).
    out : Path
        The bundle folder to write.
    cap, test_cap : int
        Training / held-out pixels per class.
    seed, n_trees : int
        Random seed and trees per forest.
    family : str
        ``forest`` or ``boosting`` (:data:`FAMILIES`; the ``sklearn`` trainer only).
    """

    sampled: DataFrame
    features: Sequence[str]
    classes: Mapping[int, str]
    meta: Mapping[str, Any]
    out: Path
    cap: int
    test_cap: int
    seed: int
    n_trees: int = N_TREES
    family: str = "forest"


def train_sklearn(t: TrainerInput) -> tuple[Any, Sample]:
    """Collect the sample, fit scikit-learn, measure it, write an ONNX bundle to ``t.out``.

    Returns the fitted estimator and the collected sample.
    """
    with phase("collect sample"):
        sample = collect_sample(t.sampled, t.features, t.cap, t.test_cap, t.seed)
    with phase("fit sklearn"):
        model = fit_sklearn(sample.X_train, sample.y_train, t.seed, t.n_trees, t.family)
    estimator, params = estimator_params(t.family, t.seed, t.n_trees)
    metrics = classification_metrics(
        sample.y_test,
        model.predict(sample.X_test),
        t.classes,
        groups=sample.test_rows["polygon"],
        seed=t.seed,
    )
    meta = {
        **t.meta,
        "family": t.family,
        "estimator": estimator,
        "params": params,
        "sample": {
            "max_per_class": t.cap,
            "max_test_per_class": t.test_cap,
            "train": _class_counts(sample.y_train),
            "test": _class_counts(sample.y_test),
        },
        "metrics": {**metrics, **_split_metrics(t.meta)},
    }
    with phase("write bundle"):
        bundle = write_onnx_bundle(t.out, model, meta)
        onnx_classes, _ = predict_pixels(bundle, sample.X_test)
        agree = float(np.mean(onnx_classes == model.predict(sample.X_test)))
        if agree < 1.0:
            log.warning("ONNX model agrees with scikit-learn on %.4f of pixels", agree)
        bundle.metadata["onnx_agreement"] = agree
        write_metadata(t.out, bundle.metadata)
    return model, sample


def train_mllib(t: TrainerInput) -> tuple[Any, None]:
    """Fit Spark MLlib on the distributed sample, measure it, save a Spark bundle to ``t.out``.

    Returns the fitted model and ``None`` (nothing is collected).
    """
    train_df = t.sampled.filter("split = 'train'")
    test_df = t.sampled.filter("split = 'test'")
    codes = sorted(t.classes)
    with phase("fit mllib"):
        model = fit_mllib(train_df, t.features, codes, t.seed, t.n_trees)
    with phase("mllib metrics"):
        metrics = mllib_metrics(model, test_df, t.features, t.classes, t.seed)
    meta = {
        **t.meta,
        "family": "forest",
        "estimator": "pyspark.ml.classification.RandomForestClassifier",
        "params": {"numTrees": t.n_trees, "maxDepth": 14, "seed": t.seed},
        "format": "spark",
        "model_file": "spark_model",
        "model_classes": codes,
        "sample": {"max_per_class": t.cap, "max_test_per_class": t.test_cap},
        "metrics": {**metrics, **_split_metrics(t.meta)},
    }
    t.out.mkdir(parents=True, exist_ok=True)
    model.write().overwrite().save(str((t.out / "spark_model").resolve()))
    write_metadata(t.out, meta)
    return model, None


def _split_metrics(meta: Mapping[str, Any]) -> dict[str, Any]:
    """What the metrics repeat of the split: its counts and warnings."""
    split = meta["split"]
    return {**{k: split[k] for k in SPLIT_COUNT_KEYS}, "warnings": split["warnings"]}
