"""One tile's features: quality mask -> surface reflectance -> indices -> statistics.

Pure numpy composition of :mod:`udfs.masks`, :mod:`udfs.reflectance`,
:mod:`udfs.indices` and :mod:`udfs.stats` (no pyspark, no I/O).

Decisions
---------
* Bands are told apart by their role in :data:`udfs.sensors.SENSORS`, never by column
  name: only ``reflectance`` bands are scaled, summarised and fed to indices; ``quality``
  bands (``qa``: SCL / QA_PIXEL, ``radsat``: Landsat QA_RADSAT) only build the mask.
* Reflectance layers keep the measured value, negative ones included; the index
  policy (NaN where an input is negative or the result leaves the index's physical
  range) lives in :func:`udfs.indices.compute_indices` alone.
* **Overlap counted once.** With ``ingest.overlap > 0`` a stored tile holds pixels of
  its neighbours' cores too. Counts, fractions and statistics (:func:`tile_features`)
  and the pixel view (:func:`pixel_table`) use the tile's *core* only
  (``core``, from :func:`udfs.tiling.core_slices`), so a sum over tiles counts every
  scene pixel once. Pixel positions stay positions in the stored tile.
* **Only what is configured.** ``bands`` (``features.bands``) and ``stats``
  (``features.statistics``) choose the layers and statistics; index inputs are scaled
  whatever ``bands`` says, and every reflectance band the tile holds takes part in the
  validity mask, summarised or not (a band not ingested, ``ingest.bands``, does not).
  Only the kept pixels are scaled and combined: each layer is a 1-D array of exactly the
  values its statistics need.
* **Unknown is not zero.** A sensor without a quality band (Sentinel-2 L1C) has an
  unknown cloud cover per pixel: ``cloud_fraction`` is NaN (the scene-level cloud cover
  of the product's metadata stays in ``scenes.cloud_cover``).
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from udfs.indices import compute_indices, index_columns, index_values
from udfs.masks import MaskSettings, QualityMask, quality_mask
from udfs.reflectance import to_reflectance
from udfs.sensors import SENSORS
from udfs.stats import (
    STAT_NAMES,
    check_statistics,
    counted_statistics,
    finite,
    fractions,
    layer_statistics,
)
from udfs.tiling import decode_array

DEFAULT_INDICES = ("NDVI", "EVI", "SAVI", "NDWI", "MNDWI", "NDBI", "NBR", "NDMI")

#: Rows and columns of a tile's core (:func:`udfs.tiling.core_slices`); None: whole tile.
Core = tuple[slice, slice] | None


class TileDataError(ValueError):
    """A tile's stored arrays are missing or do not match its declared shape."""


def decode_tile(
    row: Mapping[str, Any], sensor_key: str, needed: Collection[str] | None = None
) -> dict[str, np.ndarray]:
    """Decode the band columns a sensor has from a ``tiles`` row.

    Returns column -> ``(height, width)`` array of ``row['dtype']`` (a view of the row's
    buffer: any object with the buffer protocol, ``bytes`` or a ``uint8`` array). An
    optional band (:attr:`udfs.sensors.Band.optional`, Landsat ``QA_RADSAT``) whose column
    is null is left out of the result; so is, when ``needed`` is given, a reflectance band
    outside ``needed`` (tiles of an ``ingest.bands`` subset hold null columns). Raises
    :class:`TileDataError` naming the band when a required (or needed) column is null or
    any column's byte length does not match ``height x width x itemsize``.
    """
    h, w, dtype = row["height"], row["width"], row["dtype"]
    out = {}
    for band in SENSORS[sensor_key].bands:
        buf = row.get(band.common)
        if buf is None:
            unneeded = needed is not None and band.common not in needed
            if band.optional or (unneeded and band.role == "reflectance"):
                continue
            size = h * w * np.dtype(dtype).itemsize
            raise TileDataError(
                f"band {band.name} (column {band.common}) is missing: null where "
                f"{size} bytes ({h}x{w} {dtype}) were expected"
            )
        try:
            out[band.common] = decode_array(buf, dtype, h, w)
        except ValueError as e:
            raise TileDataError(f"band {band.name} (column {band.common}): {e}") from e
    return out


def reflectance_dn(sensor_key: str, dn: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The DN arrays of the sensor's reflectance bands only (by band role), by column;
    bands absent from ``dn`` (not ingested, see :func:`decode_tile`) are left out."""
    return {b.common: dn[b.common] for b in SENSORS[sensor_key].reflectance_bands if b.common in dn}


def tile_quality(
    sensor_key: str, dn: Mapping[str, np.ndarray], masks: MaskSettings | None = None
) -> QualityMask:
    """:func:`udfs.masks.quality_mask` of one decoded tile (``qa`` and ``radsat`` from ``dn``).

    ``radsat`` absent from ``dn`` (a null optional column) means saturation unknown.
    """
    return quality_mask(
        sensor_key,
        dn.get("qa"),
        reflectance_dn(sensor_key, dn),
        radsat=dn.get("radsat"),
        masks=masks,
    )


def reflectance_layers(
    sensor_key: str, dn: Mapping[str, np.ndarray], scaling: Mapping[str, tuple[float, float]]
) -> dict[str, np.ndarray]:
    """Reflectance (float32, unitless, NaN for nodata) of each reflectance band.

    ``scaling`` maps the product band name (``B04``, ``SR_B4``) to ``(scale, offset)``,
    as recorded in ``scenes.scaling``. The measured value is kept: slightly negative
    reflectance (Sentinel-2 from baseline 04.00, DN below 1000) stays negative here.
    Surface reflectance for L2A / Landsat L2, top-of-atmosphere for L1C
    (:attr:`udfs.sensors.Sensor.radiometry`).
    """
    sensor = SENSORS[sensor_key]
    out = {}
    for band in sensor.reflectance_bands:
        if band.common not in dn:  # not ingested or not needed (see decode_tile)
            continue
        scale, offset = scaling.get(band.name, (sensor.default_scale, sensor.default_offset))
        arr = dn[band.common]
        if arr.dtype == np.uint16 and arr.size > _LUT_MIN_PIXELS:
            # The same numbers as to_reflectance, looked up: one gather instead of a
            # float64 cast, multiply-add, float32 cast and two tests per pixel.
            out[band.common] = reflectance_lut(scale, offset, sensor.nodata).take(arr)
        else:
            out[band.common] = to_reflectance(arr, scale, offset, nodata=sensor.nodata)
    return out


#: Below this many pixels a 65 536-entry table costs more than computing directly.
_LUT_MIN_PIXELS = 4096


@functools.lru_cache(maxsize=64)
def reflectance_lut(scale: float, offset: float, nodata: float | None) -> np.ndarray:
    """``to_reflectance`` of every uint16 DN: float32, shape (65536,), read-only; a
    scene's bands share a few (scale, offset) pairs, so the tables are cached."""
    lut = to_reflectance(np.arange(65536, dtype=np.uint16), scale, offset, nodata=nodata)
    lut.setflags(write=False)
    return lut


def _crop(dn: Mapping[str, np.ndarray], core: Core) -> dict[str, np.ndarray]:
    if core is None:
        return dict(dn)
    return {k: v[core] for k, v in dn.items()}


def core_mask(shape: tuple[int, int], core: Core) -> np.ndarray:
    """Bool ``shape`` array, True on the core's pixels (everywhere when ``core`` is None)."""
    if core is None:
        return np.ones(shape, bool)
    out = np.zeros(shape, bool)
    out[core] = True
    return out


def summarised_bands(
    sensor_key: str, dn: Collection[str], bands: Collection[str] | None = None
) -> list[str]:
    """Reflectance columns of ``sensor_key`` present in ``dn`` and named in ``bands``
    (None: all of them), in the sensor's band order."""
    return [
        b.common
        for b in SENSORS[sensor_key].reflectance_bands
        if b.common in dn and (bands is None or b.common in bands)
    ]


def needed_columns(
    sensor_key: str, indices: Sequence[str], bands: Collection[str] | None = None
) -> set[str]:
    """Reflectance columns :func:`tile_features` needs: the summarised ``bands`` (None:
    every reflectance band of the sensor) and the inputs of ``indices``."""
    every = [b.common for b in SENSORS[sensor_key].reflectance_bands]
    out = set(summarised_bands(sensor_key, every, bands))
    for cols in index_columns(indices, sensor_key).values():
        out.update(cols.values())
    return out


def tile_features(
    sensor_key: str,
    dn: Mapping[str, np.ndarray],
    scaling: Mapping[str, tuple[float, float]],
    indices: Sequence[str] = DEFAULT_INDICES,
    masks: MaskSettings | None = None,
    core: Core = None,
    bands: Collection[str] | None = None,
    stats: Sequence[str] = STAT_NAMES,
) -> dict[str, Any]:
    """Masks, fractions and per-band / per-index statistics of one tile's core.

    Parameters
    ----------
    sensor_key : str
        Key of :data:`udfs.sensors.SENSORS`.
    dn : mapping of str to ndarray, shape (rows, cols)
        Decoded DN arrays by ``tiles`` column (quality columns ``qa`` / ``radsat``
        included where the sensor has them). Every reflectance band present takes part in
        the validity mask (nodata, saturation, valid range), summarised or not.
    scaling : mapping
        Product band name -> ``(scale, offset)``; reflectance = DN * scale + offset.
    indices : sequence of str
        Index names of :data:`udfs.indices.INDICES`.
    masks : MaskSettings, optional
        Quality classes and flags to mask (default :data:`udfs.masks.DEFAULT_MASKS`).
    core : (slice, slice), optional
        The tile's core (:func:`udfs.tiling.core_slices`); every number is computed over
        it only. None: the whole tile (no overlap).
    bands : collection of str, optional
        Reflectance columns to summarise (``features.bands``); None: every reflectance
        band in ``dn``. Columns the sensor lacks are ignored.
    stats : sequence of str
        Statistics to compute (``features.statistics``, :data:`udfs.stats.STAT_NAMES`;
        ``count`` always); default all.

    Returns
    -------
    dict
        ``pixel_count`` (core pixels), ``valid_count`` (core pixels neither nodata nor
        masked), ``valid_fraction``, ``cloud_fraction`` (see :func:`udfs.stats.fractions`;
        NaN where the sensor has no quality band) and ``stats``: layer name (lower-case
        band column or index) -> the requested statistics over valid pixels with a finite
        value (an index's ``count`` leaves out pixels where the index is NaN by the
        policy of :mod:`udfs.indices`).
    """
    names = check_statistics(stats)
    dn = _crop(dn, core)
    q = tile_quality(sensor_key, dn, masks)
    keep = ~q.masked
    summarised = summarised_bands(sensor_key, dn, bands)
    needed = needed_columns(sensor_key, indices, summarised) & set(dn)
    # Scale and combine the kept pixels only (1-D): each layer is then exactly the values
    # its statistics need, with no NaN-filling pass and no stacked float64 copy.
    flat = {c: dn[c][keep] for c in needed}
    index_cols = needed_columns(sensor_key, indices, ()) & set(dn)
    refl = reflectance_layers(sensor_key, {c: flat[c] for c in index_cols}, scaling)
    idx = index_values(refl, list(indices), sensor_key)
    out: dict[str, dict[str, float | int]] = {}
    sensor = SENSORS[sensor_key]
    for c in summarised:
        x = flat[c]
        if x.dtype == np.uint16 and x.size > _LUT_MIN_PIXELS:
            # A band is DN through a monotone table: its statistics from a histogram
            # (exact order statistics) instead of scaling, gathering and selecting.
            band = next(b for b in sensor.reflectance_bands if b.common == c)
            scale, offset = scaling.get(band.name, (sensor.default_scale, sensor.default_offset))
            lut = reflectance_lut(scale, offset, sensor.nodata)
            out[c] = counted_statistics(np.bincount(x), lut, names)
        else:
            layer = refl[c] if c in refl else reflectance_layers(sensor_key, {c: x}, scaling)[c]
            out[c] = layer_statistics(finite(layer), names)
    for name, v in idx.items():  # new arrays of defined values: reordered in place
        out[name.lower()] = layer_statistics(v, names, overwrite_input=True)
    valid_fraction, cloud_fraction = fractions(q.nodata, q.cloud, q.masked, q.cloud_known)
    return {
        "pixel_count": int(keep.size),
        "valid_count": int(keep.sum()),
        "valid_fraction": float(valid_fraction),
        "cloud_fraction": float(cloud_fraction),
        "stats": out,
    }


def pixel_table(
    sensor_key: str,
    dn: Mapping[str, np.ndarray],
    scaling: Mapping[str, tuple[float, float]],
    indices: Sequence[str] = DEFAULT_INDICES,
    masks: MaskSettings | None = None,
    core: Core = None,
) -> dict[str, np.ndarray]:
    """Per-pixel features of one tile's valid (unmasked) pixels, as flat columns.

    Parameters are those of :func:`tile_features`. With ``core`` only the core's pixels
    are emitted (each scene pixel once over all tiles); without it, every valid pixel of
    the tile.

    Returns
    -------
    dict of str to ndarray, each of length n (the valid pixels emitted)
        ``row`` and ``col`` (int32, pixel position in the stored tile, overlap
        included), one float32 column per reflectance band (``tiles`` column names,
        unitless, measured value) and per index (lower-case names; NaN where the index
        is undefined, see :mod:`udfs.indices`).
    """
    q = tile_quality(sensor_key, dn, masks)
    keep = ~q.masked & core_mask(q.masked.shape, core)
    rows, cols = np.nonzero(keep)
    # Scale and combine only the kept pixels (1-D): cheaper than whole tiles then a gather.
    refl_dn = reflectance_dn(sensor_key, dn)
    refl = reflectance_layers(sensor_key, {k: v[keep] for k, v in refl_dn.items()}, scaling)
    idx = compute_indices(refl, list(indices), sensor_key)
    out: dict[str, np.ndarray] = {"row": rows.astype(np.int32), "col": cols.astype(np.int32)}
    out.update(refl)
    for k, v in idx.items():
        out[k.lower()] = v
    return out
