"""Accuracy of a classifier on held-out pixels: confusion counts, per-class scores and an
interval for the overall accuracy.

Pure numpy (no pyspark, no I/O): the training job computes these on the driver from the
collected held-out sample (scikit-learn) or from (polygon, label, prediction) counts that
Spark aggregated (MLlib).

Decisions
---------
* **Accuracy interval.** Held-out pixels of one polygon are not independent, so the 95 %
  interval of the overall accuracy is a *cluster* bootstrap (:func:`cluster_bootstrap`):
  the held-out polygons are resampled with replacement (2000 resamples, seeded), the
  pixel accuracy (correct pixels / pixels of the drawn polygons, a polygon drawn twice
  counting twice) is recomputed for each, and the 2.5th and 97.5th percentiles
  (``numpy.quantile``, linear interpolation) are the bounds. With fewer than two held-out
  polygons there is no interval (``None``): one cluster says nothing about the spread.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from udfs.models import ModelError

#: Resamples of the cluster bootstrap and the level of its interval.
N_BOOTSTRAP = 2000
CI_LEVEL = 0.95
CI_METHOD = (
    "percentile bootstrap over held-out polygons (resampled with replacement, "
    f"{N_BOOTSTRAP} resamples, pixel accuracy of each resample)"
)


def cluster_bootstrap(
    correct: ArrayLike,
    total: ArrayLike,
    n_boot: int = N_BOOTSTRAP,
    level: float = CI_LEVEL,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of a pooled ratio, resampling clusters (polygons).

    Parameters
    ----------
    correct, total : array of float, shape (k,)
        Per cluster: correctly classified pixels and pixels (weights allowed).
    n_boot : int
        Resamples; each draws ``k`` clusters with replacement (seeded).
    level : float
        Coverage of the interval, within (0, 1).
    seed : int
        Seed of the draws (numpy ``default_rng``).

    Returns
    -------
    (float, float) or None
        The ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of
        ``sum(correct of drawn) / sum(total of drawn)``; None with fewer than two clusters.
    """
    c = np.asarray(correct, dtype=np.float64)
    t = np.asarray(total, dtype=np.float64)
    if c.shape != t.shape or c.ndim != 1:
        raise ModelError(f"correct and total must be 1-D of one length, got {c.shape}, {t.shape}")
    if (t <= 0).any() or (c < 0).any() or (c > t).any():
        raise ModelError("every cluster needs total > 0 and 0 <= correct <= total")
    if not 0.0 < level < 1.0 or n_boot < 1:
        raise ModelError(f"need 0 < level < 1 and n_boot >= 1, got {level}, {n_boot}")
    k = len(c)
    if k < 2:
        return None
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot, dtype=np.float64)
    chunk = max(1, 2_000_000 // k)  # bounds the (resamples, clusters) count matrix
    for start in range(0, n_boot, chunk):
        n = min(chunk, n_boot - start)
        draws = rng.multinomial(k, np.full(k, 1.0 / k), size=n).astype(np.float64)
        stats[start : start + n] = (draws @ c) / (draws @ t)
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def classification_metrics(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    classes: Mapping[int, str],
    sample_weight: ArrayLike | None = None,
    groups: ArrayLike | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Overall accuracy with its interval, per-class precision / recall / F1, confusion matrix.

    Parameters
    ----------
    y_true, y_pred : array of int
        Class codes (reference, predicted).
    classes : mapping of int to str
        Code -> name of every class; rows and columns of the confusion matrix follow the
        sorted codes.
    sample_weight : array, optional
        Row weights (counts when rows are aggregated ``(true, pred)`` pairs).
    groups : array of int, optional
        Polygon id of each row: enables the cluster-bootstrap interval
        (:func:`cluster_bootstrap`).
    seed : int
        Seed of the bootstrap.

    Returns
    -------
    dict
        ``overall_accuracy``, ``n`` (pixels), ``per_class`` (name -> precision, recall,
        f1, support), ``macro_f1``, ``labels`` (codes), ``label_names``,
        ``confusion_matrix`` (rows = reference, columns = predicted; pixel counts), and
        ``accuracy_ci`` (``[low, high]`` or None), ``ci_level``, ``ci_method``,
        ``n_polygons`` (distinct ``groups``; None without them).
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    codes = sorted(int(c) for c in classes)
    yt = np.asarray(y_true, dtype=np.int64)
    yp = np.asarray(y_pred, dtype=np.int64)
    w = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    n = float(len(yt) if w is None else w.sum())
    if n == 0:
        raise ModelError("no held-out pixels to evaluate the model on")
    correct = (yt == yp) if w is None else (yt == yp) * w
    p, r, f, s = precision_recall_fscore_support(
        yt, yp, labels=codes, sample_weight=w, zero_division=0
    )
    cm = confusion_matrix(yt, yp, labels=codes, sample_weight=w)
    ci: tuple[float, float] | None = None
    n_polygons = None
    if groups is not None:
        g = np.asarray(groups, dtype=np.int64)
        if g.shape != yt.shape:
            raise ModelError(f"groups must have one id per row, got {g.shape} for {yt.shape}")
        ids, gi = np.unique(g, return_inverse=True)
        weight = np.ones(len(yt)) if w is None else w
        total = np.bincount(gi, weights=weight, minlength=len(ids))
        right = np.bincount(gi, weights=np.asarray(correct, np.float64), minlength=len(ids))
        keep = total > 0
        n_polygons = int(keep.sum())
        ci = cluster_bootstrap(right[keep], total[keep], seed=seed)
    return {
        "overall_accuracy": float(np.sum(correct) / n),
        "accuracy_ci": None if ci is None else [ci[0], ci[1]],
        "ci_level": CI_LEVEL,
        "ci_method": CI_METHOD if groups is not None else "none (no polygon ids)",
        "n_polygons": n_polygons,
        "n": int(round(n)),
        "macro_f1": float(np.mean(f)),
        "per_class": {
            classes[c]: {
                "code": c,
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(round(float(s[i]))),
            }
            for i, c in enumerate(codes)
        },
        "labels": codes,
        "label_names": [classes[c] for c in codes],
        "confusion_matrix": np.rint(cm).astype(np.int64).tolist(),
    }
