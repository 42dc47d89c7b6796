"""Per-tile statistics of index or reflectance arrays, and valid / cloud fractions.

Pure numpy kernels (no pyspark, no I/O). Statistics are taken over the pixels that are
both marked valid and finite; NaN and inf values are never counted. Values keep the
input's units (reflectance and indices are unitless); they are computed in float64.

Decisions
---------
* Percentiles use numpy's default ``'linear'`` method (type 7 of Hyndman & Fan), the
  same numbers as ``np.nanpercentile(values[valid], q)``.
* ``std`` is the population standard deviation (``ddof=0``): a tile's pixels are the
  whole population being described, and a single valid pixel has std 0, not NaN.
* No valid pixel: ``count`` is 0 and every other statistic is NaN.
* :func:`fractions`: ``valid_fraction = pixels neither nodata nor masked / all pixels``;
  ``cloud_fraction = cloud pixels with data / pixels with data``. A denominator of 0
  (an empty array, or a tile with no data at all) gives NaN, not 0: a tile without data
  has unknown cloud cover, and reporting 0 % would claim a clear sky. For the same
  reason a product without a quality band (Sentinel-2 L1C, ``cloud_known=False``) has
  ``cloud_fraction`` NaN: unknown is not zero.
"""

from __future__ import annotations

import numpy as np

#: Keys of the statistics dicts, in column order.
STAT_NAMES: tuple[str, ...] = ("count", "mean", "std", "min", "max", "p10", "p50", "p90")

#: Percentiles reported, in percent, matching the ``pNN`` keys of :data:`STAT_NAMES`.
PERCENTILES: tuple[int, ...] = (10, 50, 90)


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """numpy's own linear interpolation (``numpy.lib._function_base_impl._lerp``)."""
    diff = b - a
    return np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)


def stack_statistics(values: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics of each layer of a stack, over its valid and finite pixels.

    Parameters
    ----------
    values : ndarray of float, shape (n, rows, cols)
        ``n`` layers of one tile (e.g. one per index), in their own units (unitless for
        reflectance and indices). NaN and inf are treated as not valid.
    valid : ndarray of bool, shape (rows, cols) or (n, rows, cols)
        True for pixels to include; a 2-D mask applies to every layer.

    Returns
    -------
    dict of str to ndarray, each of shape (n,)
        Keys :data:`STAT_NAMES`: ``count`` (int64), ``mean``, ``std`` (ddof=0), ``min``,
        ``max``, ``p10``, ``p50``, ``p90`` (float64). Where a layer has no valid pixel,
        ``count`` is 0 and the others are NaN.

    Raises
    ------
    ValueError
        ``values`` is not 3-D, or ``valid`` does not broadcast to it.
    TypeError
        ``valid`` is not boolean.
    """
    v = np.asarray(values)
    if v.ndim != 3:
        raise ValueError(f"values must have shape (n, rows, cols), got shape {v.shape}")
    m = np.asarray(valid)
    if m.dtype != np.bool_:
        raise TypeError(f"valid must be a boolean mask, got dtype {m.dtype}")
    if m.shape not in (v.shape, v.shape[1:]):
        raise ValueError(f"valid has shape {m.shape}, expected {v.shape[1:]} or {v.shape}")

    n = v.shape[0]
    m = np.broadcast_to(m, v.shape).reshape(n, -1)
    v = v.reshape(n, -1).astype(np.float64, copy=False)
    ok = m & np.isfinite(v)
    count = ok.sum(axis=1)
    out: dict[str, np.ndarray] = {"count": count}
    nan = np.full(n, np.nan)
    if v.shape[1] == 0:  # empty tile: nothing to sort or index
        out.update({k: nan.copy() for k in STAT_NAMES[1:]})
        return out

    x = np.where(ok, v, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(ok, x, 0.0).sum(axis=1) / count
        dev = np.where(ok, x - mean[:, None], 0.0)
        std = np.sqrt((dev * dev).sum(axis=1) / count)
    out["mean"], out["std"] = mean, std

    # One sort per layer gives min, max and every percentile; NaN sorts last.
    srt = np.sort(x, axis=1)
    last = np.maximum(count - 1, 0)
    has = count > 0
    out["min"] = np.where(has, srt[:, 0], np.nan)
    out["max"] = np.where(has, np.take_along_axis(srt, last[:, None], axis=1)[:, 0], np.nan)
    for q in PERCENTILES:
        pos = last * (q / 100.0)
        lo = np.floor(pos).astype(np.intp)
        hi = np.minimum(lo + 1, last)
        a = np.take_along_axis(srt, lo[:, None], axis=1)[:, 0]
        b = np.take_along_axis(srt, hi[:, None], axis=1)[:, 0]
        with np.errstate(invalid="ignore"):
            out[f"p{q}"] = np.where(has, _lerp(a, b, pos - lo), np.nan)
    return out


def tile_statistics(values: np.ndarray, valid: np.ndarray) -> dict[str, float | int]:
    """Statistics of one array over its valid and finite pixels.

    Parameters
    ----------
    values : ndarray of float, shape (rows, cols)
        One index or band of one tile (unitless for reflectance and indices).
    valid : ndarray of bool, shape (rows, cols)
        True for pixels to include.

    Returns
    -------
    dict
        ``count`` (int) and ``mean``, ``std`` (population, ddof=0), ``min``, ``max``,
        ``p10``, ``p50``, ``p90`` (float, linear-interpolated percentiles), in the input's
        units. With no valid finite pixel: count 0 and NaN for the rest.
    """
    v = np.asarray(values)
    m = np.asarray(valid)
    if v.ndim != 2:
        raise ValueError(f"values must have shape (rows, cols), got shape {v.shape}")
    if m.shape != v.shape:
        raise ValueError(f"valid has shape {m.shape}, expected {v.shape}")
    stats = stack_statistics(v[None], m)
    return {k: (int(a[0]) if k == "count" else float(a[0])) for k, a in stats.items()}


def fractions(
    nodata: np.ndarray,
    cloud: np.ndarray,
    masked: np.ndarray | None = None,
    cloud_known: bool = True,
) -> tuple[float, float]:
    """Valid fraction and cloud fraction of one tile.

    Parameters
    ----------
    nodata : ndarray of bool, shape (rows, cols)
        Pixels without a measurement (:attr:`udfs.masks.QualityMask.nodata`).
    cloud : ndarray of bool, shape (rows, cols)
        Cloud and cloud-shadow pixels (:attr:`udfs.masks.QualityMask.cloud`).
    masked : ndarray of bool, shape (rows, cols), optional
        Every pixel dropped for whatever reason (:attr:`udfs.masks.QualityMask.masked`);
        default ``nodata | cloud``. ``nodata`` is always counted as masked.
    cloud_known : bool
        False when the product says nothing about clouds (no quality band,
        :attr:`udfs.masks.QualityMask.cloud_known`): ``cloud_fraction`` is then NaN.

    Returns
    -------
    valid_fraction : float
        ``count(~(nodata | masked)) / size``, in 0..1; NaN for an empty array.
    cloud_fraction : float
        ``count(cloud & ~nodata) / count(~nodata)``, in 0..1; NaN when no pixel has
        data (0/0) or ``cloud_known`` is False: unknown cloud cover is not 0.
    """
    no = np.asarray(nodata)
    cl = np.asarray(cloud)
    mk = cl if masked is None else np.asarray(masked)
    for label, a in (("nodata", no), ("cloud", cl), ("masked", mk)):
        if a.dtype != np.bool_:
            raise TypeError(f"{label} must be a boolean mask, got dtype {a.dtype}")
        if a.shape != no.shape:
            raise ValueError(f"{label} has shape {a.shape}, expected {no.shape}")
    mk = mk | no
    total = no.size
    with_data = total - int(no.sum())
    valid_fraction = (total - int(mk.sum())) / total if total else float("nan")
    known = cloud_known and with_data > 0
    cloud_fraction = int((cl & ~no).sum()) / with_data if known else float("nan")
    return valid_fraction, cloud_fraction
