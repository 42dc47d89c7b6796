"""Digital numbers to reflectance: ``reflectance = DN * scale + offset``.

Pure numpy kernels (no pyspark, no I/O). Reflectance is unitless (nominally 0..1; the
linear scaling can give slightly negative values or values above 1, which are kept:
clipping is an analysis decision, not a unit conversion).

Conventions
-----------
Sentinel-2 L2A (and L1C)
    ``reflectance = (DN + BOA_ADD_OFFSET) / QUANTIFICATION_VALUE``, i.e.
    ``scale = 1 / Q`` and ``offset = BOA_ADD_OFFSET / Q`` (:func:`s2_scaling`).
    ``QUANTIFICATION_VALUE`` (``BOA_QUANTIFICATION_VALUE`` in L2A, ``QUANTIFICATION_VALUE``
    in L1C) is 10000. ``BOA_ADD_OFFSET`` (``RADIO_ADD_OFFSET`` in L1C) is -1000 from
    processing baseline 04.00 (products from 25 January 2022 on) and 0 (absent) before,
    so the same DN 1500 is 0.15 before and 0.05 after the change. Read both from the
    product metadata; never assume them.
Landsat Collection 2 Level-2 surface reflectance
    ``reflectance = DN * 2.75e-5 - 0.2`` (USGS; the MTL's ``REFLECTANCE_MULT_BAND_n`` and
    ``REFLECTANCE_ADD_BAND_n``), i.e. ``scale = 2.75e-5``, ``offset = -0.2``.

In both products DN 0 is nodata, and becomes NaN here.
"""

from __future__ import annotations

import math

import numpy as np

#: Sentinel-2 QUANTIFICATION_VALUE of every processing baseline so far.
S2_QUANTIFICATION_VALUE = 10000.0

#: Landsat Collection 2 Level-2 surface reflectance scaling (USGS).
LANDSAT_C2L2_SCALE = 2.75e-5
LANDSAT_C2L2_OFFSET = -0.2


def s2_scaling(
    boa_add_offset: float, quantification: float = S2_QUANTIFICATION_VALUE
) -> tuple[float, float]:
    """Sentinel-2 ``(scale, offset)`` from the product's offset and quantification value.

    Parameters
    ----------
    boa_add_offset : float
        ``BOA_ADD_OFFSET`` (L2A) or ``RADIO_ADD_OFFSET`` (L1C) of the band, in DN:
        -1000 from processing baseline 04.00, 0 before.
    quantification : float
        ``QUANTIFICATION_VALUE``, in DN per unit reflectance (10000).

    Returns
    -------
    (scale, offset) : tuple of float
        ``scale = 1 / quantification`` (reflectance per DN) and
        ``offset = boa_add_offset / quantification`` (reflectance), for
        :func:`to_reflectance`.

    Raises
    ------
    ValueError
        ``quantification`` is not a positive finite number, or ``boa_add_offset`` is not
        finite.
    """
    q = float(quantification)
    off = float(boa_add_offset)
    if not (math.isfinite(q) and q > 0):
        raise ValueError(f"QUANTIFICATION_VALUE must be a positive number, got {quantification!r}")
    if not math.isfinite(off):
        raise ValueError(f"BOA_ADD_OFFSET must be a finite number, got {boa_add_offset!r}")
    return 1.0 / q, off / q


def to_reflectance(
    dn: np.ndarray, scale: float, offset: float, nodata: float | None = 0
) -> np.ndarray:
    """Scale digital numbers to reflectance.

    Parameters
    ----------
    dn : ndarray, shape (rows, cols) (any shape works)
        Digital numbers, uint16 as stored in the products; float32 input (NaN for
        missing) and other integer dtypes are accepted.
    scale : float
        Reflectance per DN (``1e-4`` for Sentinel-2, ``2.75e-5`` for Landsat C2 L2).
    offset : float
        Reflectance added after scaling (``BOA_ADD_OFFSET / Q`` for Sentinel-2,
        ``-0.2`` for Landsat C2 L2).
    nodata : number or None
        DN that marks "no data" (0 in both products); None: no DN is nodata.

    Returns
    -------
    ndarray of float32, same shape as ``dn``
        ``dn * scale + offset``, computed in float64 and rounded once to float32.
        Unitless reflectance. NaN where ``dn == nodata``, where ``dn`` is NaN or
        infinite, or where the result does not fit float32.

    Raises
    ------
    TypeError
        ``dn`` is not an integer or float array (bool, complex, object).
    ValueError
        ``scale`` or ``offset`` is not finite, or ``scale`` is not positive.
    """
    arr = np.asarray(dn)
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise TypeError(f"DN must be an integer or float array, got dtype {arr.dtype}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    if not math.isfinite(offset):
        raise ValueError(f"offset must be a finite number, got {offset!r}")

    # float64 first: 65535 * 2.75e-5 - 0.2 in float32 would round twice. The cast to
    # float64 is exact, so multiplying with dtype=float64 casts on the fly (one pass).
    with np.errstate(over="ignore", invalid="ignore"):
        wide = np.multiply(arr, scale, dtype=np.float64)
        wide += offset
        out = wide.astype(np.float32)
    bad = ~np.isfinite(out)
    if nodata is not None:
        bad |= arr == nodata
    if bad.any():
        out[bad] = np.nan
    return out
