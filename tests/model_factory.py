"""Tiny real models for tests: a scikit-learn forest on random data, written as ONNX bundles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from udfs.models import ModelBundle, sklearn_to_onnx, write_onnx_bundle


def tiny_model(n_features: int = 3, seed: int = 0):
    """A 16-tree forest with classes 2, 5, 7; returns (model, X, y)."""
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(600, n_features)).astype(np.float32)
    y = np.where(X[:, 0] > 0.3, 2, np.where(X[:, 1] > 0, 5, 7))
    return RandomForestClassifier(n_estimators=16, random_state=0).fit(X, y), X, y


def tiny_metadata(names: list[str], sensors: list[str] | None = None, **extra: Any) -> dict:
    return {
        "model_id": "m1",
        "trainer": "sklearn",
        "feature_names": names,
        "scaling": {"formula": "reflectance = DN * scale + offset"},
        "classes": [{"code": c, "name": n} for c, n in ((2, "a"), (5, "b"), (7, "c"))],
        "sensors": sensors or ["sentinel2-l2a"],
        "training_run_id": "r1",
        "metrics": {},
        "created": "2024-01-01T00:00:00+00:00",
        **extra,
    }


def tiny_onnx(n_features: int = 3) -> bytes:
    """The serialized ONNX model of :func:`tiny_model`."""
    return sklearn_to_onnx(tiny_model(n_features)[0], n_features)


def tiny_bundle(
    path: Path, names: list[str], sensors: list[str] | None = None, **extra: Any
) -> ModelBundle:
    """A bundle at ``path`` whose model takes ``len(names)`` features."""
    model, _, _ = tiny_model(len(names))
    meta = tiny_metadata(names, sensors, model_id=f"tiny-{path.name}", **extra)
    return write_onnx_bundle(path, model, meta)
