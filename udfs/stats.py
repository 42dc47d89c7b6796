"""Per-tile statistics of index or reflectance arrays, and valid / cloud fractions.

Pure numpy kernels (no pyspark, no I/O). Statistics are taken over the pixels that are
both marked valid and finite; NaN and inf values are never counted. Values keep the
input's units (reflectance and indices are unitless); they are computed in float64
(mean, std, the percentiles' interpolation) or are input values themselves (min, max and
the order statistics the percentiles interpolate between, selected in the input dtype).

Decisions
---------
* Percentiles use numpy's default ``'linear'`` method (type 7 of Hyndman & Fan), the
  same numbers as ``np.nanpercentile(values[valid], q)``.
* ``std`` is the population standard deviation (``ddof=0``): a tile's pixels are the
  whole population being described, and a single valid pixel has std 0, not NaN.
* No valid pixel: ``count`` is 0 and every other statistic is NaN.
* Only the statistics asked for are computed (``features.statistics``); ``count`` always.
  A layer is reduced as a 1-D array of its valid values (:func:`layer_statistics`): no
  NaN-filled stack, no full sort. Percentiles take one single-rank ``partition`` each on
  what the previous one left (:func:`order_statistics`): exact, and about a fifth of a
  sort or of a multi-rank ``np.partition`` here.
* :func:`fractions`: ``valid_fraction = pixels neither nodata nor masked / all pixels``;
  ``cloud_fraction = cloud pixels with data / pixels with data``. A denominator of 0
  (an empty array, or a tile with no data at all) gives NaN, not 0: a tile without data
  has unknown cloud cover, and reporting 0 % would claim a clear sky. For the same
  reason a product without a quality band (Sentinel-2 L1C, ``cloud_known=False``) has
  ``cloud_fraction`` NaN: unknown is not zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

#: Keys of the statistics dicts, in column order.
STAT_NAMES: tuple[str, ...] = ("count", "mean", "std", "min", "max", "p10", "p50", "p90")

#: Percentiles reported, in percent, matching the ``pNN`` keys of :data:`STAT_NAMES`.
PERCENTILES: tuple[int, ...] = (10, 50, 90)


def _lerp(a: float, b: float, t: float) -> float:
    """numpy's own linear interpolation (``numpy.lib._function_base_impl._lerp``), on
    Python floats (IEEE doubles: the same operations, the same result)."""
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t


def check_statistics(stats: Iterable[str]) -> tuple[str, ...]:
    """The statistics named in ``stats``, in :data:`STAT_NAMES` order, ``count`` always
    included; raises ``ValueError`` naming an unknown one."""
    wanted = set(stats)
    unknown = sorted(wanted - set(STAT_NAMES))
    if unknown:
        raise ValueError(f"unknown statistic {unknown[0]!r} (known: {', '.join(STAT_NAMES)})")
    return tuple(k for k in STAT_NAMES if k == "count" or k in wanted)


def layer_statistics(
    values: np.ndarray, stats: Sequence[str] = STAT_NAMES, overwrite_input: bool = False
) -> dict[str, float | int]:
    """Statistics of a 1-D array of valid, finite values (already masked).

    Parameters
    ----------
    values : ndarray of float, shape (n,)
        The valid pixels of one layer, in their own units; every value must be finite
        (callers drop NaN / inf first: :func:`finite`).
    stats : sequence of str
        Which of :data:`STAT_NAMES` to compute (others are left out of the result;
        ``count`` is always there).
    overwrite_input : bool
        Let the percentiles reorder ``values`` in place instead of a copy (as numpy's
        ``percentile(..., overwrite_input=True)``); the values themselves are unchanged.

    Returns
    -------
    dict
        ``count`` (int) and the requested statistics (float; the module's Decisions).
        With ``n == 0`` every statistic but ``count`` is NaN.

    Notes
    -----
    Cost is what one plain numpy user pays: mean and std in float64 (one cast, squared
    deviations in place), the percentiles from single-rank partitions of the values in
    their own dtype (selection is exact, so the result equals ``np.percentile`` of the
    float64 values), and with percentiles min and max from the two outer parts the
    partitions leave (a tenth of the values each) rather than from two whole passes;
    nothing is sorted.
    """
    x = np.asarray(values).reshape(-1)
    n = x.size
    out: dict[str, float | int] = {"count": int(n)}
    want = [k for k in STAT_NAMES[1:] if k in stats]
    if n == 0:
        out.update({k: math.nan for k in want})
        return out
    # numpy's own pairwise sums, not np.dot: BLAS would start threads of its own inside
    # each Spark worker (two workers x two BLAS threads on two cores).
    if "mean" in want or "std" in want:
        x64 = x.astype(np.float64)
        mean = float(np.add.reduce(x64)) / n
        if "mean" in want:
            out["mean"] = mean
        if "std" in want:
            dev = np.subtract(x64, mean, out=x64)
            out["std"] = math.sqrt(float(np.add.reduce(np.multiply(dev, dev, out=dev))) / n)
    qs = [q for q in PERCENTILES if f"p{q}" in want]
    if qs:
        last = n - 1
        pos = [last * (q / 100.0) for q in qs]
        lo = [math.floor(p) for p in pos]
        part = x if overwrite_input else np.array(x, copy=True)
        ranked, bounds = _select(part, lo)
        for q, p, i in zip(qs, pos, lo, strict=True):
            a, b = ranked[i]
            out[f"p{q}"] = _lerp(a, b, p - i)
        # The lowest selected rank k1 leaves every value below it in part[:k1 + 1],
        # the highest, k3, every value above it in part[k3:]: the extremes are there.
        if "min" in want:
            out["min"] = float(part[: bounds[1]].min())
        if "max" in want:
            out["max"] = float(part[bounds[-2] - 1 :].max())
    else:
        if "min" in want:
            out["min"] = float(x.min())
        if "max" in want:
            out["max"] = float(x.max())
    return {k: out[k] for k in STAT_NAMES if k in out}


def order_statistics(values: np.ndarray, ranks: Sequence[int]) -> dict[int, tuple[float, float]]:
    """The ``k``-th and ``k+1``-th smallest values (0-based; the last one twice at the
    end) of a 1-D array of finite values, for each ``k`` of ``ranks``.

    One single-rank ``partition`` per rank, each on the slice the previous ones left
    between two known ranks, and the ``k+1``-th as the minimum of the part above ``k``.
    numpy's multi-rank ``np.partition(x, [k1, k2, ...])`` does the same work several
    times over (here 1.2 ms for six ranks of 60 000 float32 against 0.1 ms for one).
    """
    x = np.array(values, copy=True).reshape(-1)  # partitioned in place
    return _select(x, ranks)[0]


def _select(
    x: np.ndarray, ranks: Sequence[int]
) -> tuple[dict[int, tuple[float, float]], list[int]]:
    """:func:`order_statistics` of ``x``, partitioning ``x`` itself (1-D, non-empty).

    Returns the ranks' values and the known boundaries ``[0, k1 + 1, k2 + 1, ..., n]``
    for the sorted ranks ``k1 < k2 < ...``: no value of ``x[:k1]`` is above ``x[k1]``,
    none of ``x[k1 + 1:k2]`` is below it or above ``x[k2]``, and so on.
    """
    last = x.size - 1
    out: dict[int, tuple[float, float]] = {}
    # Known boundaries: everything in x[b0:b1] lies between x[b0 - 1] and x[b1].
    bounds = [0, x.size]
    for k in sorted(set(ranks)):
        i = next(j for j in range(len(bounds) - 1) if bounds[j] <= k < bounds[j + 1])
        b0, b1 = bounds[i], bounds[i + 1]
        part = x[b0:b1]
        part.partition(k - b0)
        bounds.insert(i + 1, k + 1)
        nxt = x[k + 1 : b1]
        above = float(nxt.min()) if nxt.size else float(x[min(k + 1, last)])
        out[k] = (float(x[k]), above)
    return out, bounds


def counted_statistics(
    counts: np.ndarray, values: np.ndarray, stats: Sequence[str] = STAT_NAMES
) -> dict[str, float | int]:
    """:func:`layer_statistics` of a layer given as a histogram over a value table.

    For integer data seen through a monotone table (DN -> reflectance): the layer holds
    ``counts[i]`` pixels of value ``values[i]``. Order statistics are exact (the ``k``-th
    value is the table entry where the cumulative count passes ``k``), so min, max and
    the percentiles equal :func:`layer_statistics` of the pixels; mean and std are the
    same float64 sums in another order. Costs a ``bincount`` instead of a gather, a cast
    and three selections per layer.

    Parameters
    ----------
    counts : ndarray of int, shape (m,)
        Pixels per table entry (``np.bincount`` of the layer's valid DN).
    values : ndarray of float, shape (>= m,)
        The table, non-decreasing wherever it is finite (a scale > 0); entries that are
        NaN or inf (nodata DN) are not counted.
    stats : sequence of str
        Which of :data:`STAT_NAMES` to compute (``count`` always).

    Returns
    -------
    dict
        As :func:`layer_statistics`.
    """
    c = np.asarray(counts)
    v = np.asarray(values)[: c.size]
    idx = np.flatnonzero(c)
    vals = v[idx].astype(np.float64)
    ok = np.isfinite(vals)
    if not ok.all():
        idx, vals = idx[ok], vals[ok]
    cnt = c[idx].astype(np.float64)
    n = int(cnt.sum())
    out: dict[str, float | int] = {"count": n}
    want = [k for k in STAT_NAMES[1:] if k in stats]
    if n == 0:
        out.update({k: math.nan for k in want})
        return out
    if "mean" in want or "std" in want:
        mean = float(np.add.reduce(cnt * vals)) / n
        out["mean"] = mean
        dev = vals - mean
        out["std"] = math.sqrt(float(np.add.reduce(cnt * dev * dev)) / n)
    out["min"], out["max"] = float(vals[0]), float(vals[-1])
    qs = [q for q in PERCENTILES if f"p{q}" in want]
    if qs:
        cum = np.cumsum(cnt)
        last = n - 1
        for q in qs:
            pos = last * (q / 100.0)
            lo = math.floor(pos)
            hi = min(lo + 1, last)
            at = np.searchsorted(cum, [lo, hi], side="right")
            out[f"p{q}"] = _lerp(float(vals[at[0]]), float(vals[at[1]]), pos - lo)
    return {k: out[k] for k in STAT_NAMES if k in out and (k == "count" or k in want)}


def finite(values: np.ndarray) -> np.ndarray:
    """``values`` without NaN and inf (the array itself, uncopied, when all are finite)."""
    ok = np.isfinite(values)
    return values if ok.all() else values[ok]


def stack_statistics(
    values: np.ndarray, valid: np.ndarray, stats: Sequence[str] = STAT_NAMES
) -> dict[str, np.ndarray]:
    """Statistics of each layer of a stack, over its valid and finite pixels.

    Parameters
    ----------
    values : ndarray of float, shape (n, rows, cols)
        ``n`` layers of one tile (e.g. one per index), in their own units (unitless for
        reflectance and indices). NaN and inf are treated as not valid.
    valid : ndarray of bool, shape (rows, cols) or (n, rows, cols)
        True for pixels to include; a 2-D mask applies to every layer.
    stats : sequence of str
        Which of :data:`STAT_NAMES` to compute (``count`` always); default all.

    Returns
    -------
    dict of str to ndarray, each of shape (n,)
        Keys: the requested :data:`STAT_NAMES`: ``count`` (int64), ``mean``, ``std``
        (ddof=0), ``min``, ``max``, ``p10``, ``p50``, ``p90`` (float64). Where a layer has
        no valid pixel, ``count`` is 0 and the others are NaN.

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
    names = check_statistics(stats)
    m = np.broadcast_to(m, v.shape)
    per_layer = [layer_statistics(finite(v[i][m[i]]), names) for i in range(v.shape[0])]
    out = {k: np.array([s[k] for s in per_layer], np.float64) for k in names}
    out["count"] = out["count"].astype(np.int64)
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
