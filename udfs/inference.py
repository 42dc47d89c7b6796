"""One tile's land-cover map: pixel features -> classifier -> class and confidence rasters.

Pure numpy (no pyspark, no I/O): the classifier comes in as a ``predict`` callable, so
the same kernel runs inside executor Python workers (onnxruntime session cached per
worker) and in tests or benchmarks with any model.

Decisions
---------
* The class and confidence rasters cover the **whole stored tile** (overlap included),
  so each tile's map stands alone; the counts (``pixel_count``, ``classified_count``,
  ``class_counts``, ``mean_confidence``) cover its **core** only, so a sum over tiles
  counts every scene pixel once (:func:`udfs.tiling.core_slices`).
* Pixels are masked with the job's :class:`udfs.masks.MaskSettings`, and features follow
  the index policy of :mod:`udfs.indices` (NaN feature -> the model gives no class).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from udfs.features import Core, core_mask, pixel_table
from udfs.masks import MaskSettings

#: Class code of pixels without a prediction (masked, nodata, non-finite feature).
NODATA_CLASS = 0
#: Confidence (uint8 percent) of pixels without a prediction.
NODATA_CONFIDENCE = 255

Predict = Callable[[NDArray[np.float32]], tuple[NDArray[np.int32], NDArray[np.float32]]]


def feature_matrix(columns: Mapping[str, np.ndarray], feature_names: Sequence[str]) -> np.ndarray:
    """Stack pixel-view columns into the model's ``(n, f)`` float32 matrix, in model order.

    Raises KeyError naming the feature a column is missing for.
    """
    missing = [f for f in feature_names if f not in columns]
    if missing:
        raise KeyError(f"no pixel column for feature(s) {', '.join(missing)}")
    # Stacking feature-major then transposing in one blocked copy is ~3x faster than
    # writing each feature into a strided column of the (n, f) matrix.
    stacked = np.stack([np.asarray(columns[name], dtype=np.float32) for name in feature_names])
    return np.ascontiguousarray(stacked.T)


def class_dtype(codes: Sequence[int]) -> np.dtype:
    """Smallest unsigned dtype of the class raster: uint8 for codes up to 254, else uint16."""
    top = max((int(c) for c in codes), default=0)
    if top > np.iinfo(np.uint16).max - 1:
        raise ValueError(f"class code {top} does not fit a uint16 class raster")
    return np.dtype(np.uint8) if top <= 254 else np.dtype(np.uint16)


def classify_tile(
    sensor_key: str,
    dn: Mapping[str, np.ndarray],
    scaling: Mapping[str, tuple[float, float]],
    feature_names: Sequence[str],
    indices: Sequence[str],
    predict: Predict,
    codes: Sequence[int],
    masks: MaskSettings | None = None,
    core: Core = None,
) -> dict[str, Any]:
    """Classify every valid pixel of one tile.

    Parameters
    ----------
    sensor_key : str
        Key of :data:`udfs.sensors.SENSORS`.
    dn : mapping of str to ndarray, shape (rows, cols)
        Decoded DN arrays by ``tiles`` column (``qa`` included).
    scaling : mapping
        Product band name -> ``(scale, offset)``; reflectance = DN * scale + offset.
    feature_names : sequence of str
        The model's inputs in order (band columns and lower-case index names).
    indices : sequence of str
        Index names (upper case) to compute: those among ``feature_names``.
    predict : callable
        ``(n, f) float32 -> (classes int32 (n,), confidence float32 (n,))``; class 0 and
        confidence 0 for rows it cannot classify.
    codes : sequence of int
        Every class code of the model (for the counts).
    masks : MaskSettings, optional
        Quality classes and flags to mask (default :data:`udfs.masks.DEFAULT_MASKS`).
    core : (slice, slice), optional
        The tile's core (:func:`udfs.tiling.core_slices`): the counts cover it only.
        None: the whole tile.

    Returns
    -------
    dict
        ``classes``: ndarray (rows, cols) of :func:`class_dtype`, :data:`NODATA_CLASS`
        where masked; ``confidence``: ndarray (rows, cols) uint8, probability of the class
        in percent (rounded), :data:`NODATA_CONFIDENCE` where there is no class (both over
        the whole tile); over the core only: ``pixel_count``, ``classified_count``,
        ``class_counts`` (code -> pixels, every code of ``codes``), ``mean_confidence``
        (mean probability over classified pixels, float; NaN when none).
    """
    shape = next(iter(dn.values())).shape
    cols = pixel_table(sensor_key, dn, scaling, indices, masks)
    X = feature_matrix(cols, feature_names)
    pred, prob = predict(X)
    dtype = class_dtype(codes)
    classes = np.full(shape, NODATA_CLASS, dtype=dtype)
    confidence = np.full(shape, NODATA_CONFIDENCE, dtype=np.uint8)
    rows, colidx = cols["row"], cols["col"]
    classes[rows, colidx] = pred.astype(dtype)
    has = pred != NODATA_CLASS
    pct = np.rint(prob[has].astype(np.float64) * 100.0).astype(np.uint8)
    confidence[rows[has], colidx[has]] = pct
    in_core = core_mask(shape, core)
    counted = has & in_core[rows, colidx]
    labelled = pred[counted]
    counts = np.bincount(labelled, minlength=max((int(c) for c in codes), default=0) + 1)
    return {
        "classes": classes,
        "confidence": confidence,
        "pixel_count": int(in_core.sum()),
        "classified_count": int(counted.sum()),
        "class_counts": {int(c): int(counts[int(c)]) for c in codes},
        "mean_confidence": (
            float(prob[counted].astype(np.float64).mean()) if counted.any() else np.nan
        ),
    }
