"""One tile's features: quality mask -> surface reflectance -> indices -> statistics.

Pure numpy composition of :mod:`udfs.masks`, :mod:`udfs.reflectance`,
:mod:`udfs.indices` and :mod:`udfs.stats` (no pyspark, no I/O).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from udfs.indices import compute_indices
from udfs.masks import quality_mask
from udfs.reflectance import to_reflectance
from udfs.sensors import SENSORS
from udfs.stats import STAT_NAMES, fractions, stack_statistics
from udfs.tiling import decode_array

DEFAULT_INDICES = ("NDVI", "EVI", "SAVI", "NDWI", "MNDWI", "NDBI", "NBR", "NDMI")


class TileDataError(ValueError):
    """A tile's stored arrays are missing or do not match its declared shape."""


def decode_tile(row: Mapping[str, Any], sensor_key: str) -> dict[str, np.ndarray]:
    """Decode the band columns a sensor has from a ``tiles`` row.

    Returns column -> ``(height, width)`` array of ``row['dtype']``. Raises
    :class:`TileDataError` naming the band when a column is null or its byte length does
    not match ``height x width x itemsize``.
    """
    h, w, dtype = row["height"], row["width"], row["dtype"]
    out = {}
    for band in SENSORS[sensor_key].bands:
        buf = row.get(band.common)
        if buf is None:
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


def reflectance_layers(
    sensor_key: str, dn: Mapping[str, np.ndarray], scaling: Mapping[str, tuple[float, float]]
) -> dict[str, np.ndarray]:
    """Surface reflectance (float32, unitless, NaN for nodata) of each reflectance band.

    ``scaling`` maps the product band name (``B04``, ``SR_B4``) to ``(scale, offset)``,
    as recorded in ``scenes.scaling``.
    """
    sensor = SENSORS[sensor_key]
    out = {}
    for band in sensor.reflectance_bands:
        scale, offset = scaling.get(band.name, (sensor.default_scale, sensor.default_offset))
        out[band.common] = to_reflectance(dn[band.common], scale, offset, nodata=sensor.nodata)
    return out


def tile_features(
    sensor_key: str,
    dn: Mapping[str, np.ndarray],
    scaling: Mapping[str, tuple[float, float]],
    indices: Sequence[str] = DEFAULT_INDICES,
) -> dict[str, Any]:
    """Masks, fractions and per-band / per-index statistics of one tile.

    Parameters
    ----------
    sensor_key : str
        Key of :data:`udfs.sensors.SENSORS`.
    dn : mapping of str to ndarray, shape (rows, cols)
        Decoded DN arrays by ``tiles`` column (``qa`` included where the sensor has one).
    scaling : mapping
        Product band name -> ``(scale, offset)``; reflectance = DN * scale + offset.
    indices : sequence of str
        Index names of :data:`udfs.indices.INDICES`.

    Returns
    -------
    dict
        ``pixel_count``, ``valid_count`` (pixels neither nodata nor masked),
        ``valid_fraction``, ``cloud_fraction`` (see :func:`udfs.stats.fractions`) and
        ``stats``: layer name (lower-case band column or index) -> statistics over valid
        pixels (:data:`udfs.stats.STAT_NAMES`).
    """
    refl_dn = {k: v for k, v in dn.items() if k != "qa"}
    q = quality_mask(sensor_key, dn.get("qa"), refl_dn)
    refl = reflectance_layers(sensor_key, dn, scaling)
    keep = ~q.masked
    for arr in refl.values():
        arr[~keep] = np.nan
    idx = compute_indices(refl, list(indices), sensor_key)
    names = [*refl.keys(), *(n.lower() for n in idx)]
    stack = np.stack([*refl.values(), *idx.values()])
    stats = stack_statistics(stack, keep)
    valid_fraction, cloud_fraction = fractions(q.nodata, q.cloud, q.masked)
    return {
        "pixel_count": int(keep.size),
        "valid_count": int(keep.sum()),
        "valid_fraction": float(valid_fraction),
        "cloud_fraction": float(cloud_fraction),
        "stats": {
            name: {s: _num(stats[s][i], s) for s in STAT_NAMES} for i, name in enumerate(names)
        },
    }


def _num(v: Any, stat: str) -> float | int:
    return int(v) if stat == "count" else float(v)


def pixel_table(
    sensor_key: str,
    dn: Mapping[str, np.ndarray],
    scaling: Mapping[str, tuple[float, float]],
    indices: Sequence[str] = DEFAULT_INDICES,
) -> dict[str, np.ndarray]:
    """Per-pixel features of one tile's valid (unmasked) pixels, as flat columns.

    Returns ``row`` and ``col`` (int32, pixel position in the tile), one float32 column per
    reflectance band (``tiles`` column names) and per index (lower-case names), all of
    length ``valid_count``.
    """
    refl_dn = {k: v for k, v in dn.items() if k != "qa"}
    q = quality_mask(sensor_key, dn.get("qa"), refl_dn)
    keep = ~q.masked
    rows, cols = np.nonzero(keep)
    # Scale and combine only the kept pixels (1-D): cheaper than whole tiles then a gather.
    refl = reflectance_layers(sensor_key, {k: v[keep] for k, v in refl_dn.items()}, scaling)
    idx = compute_indices(refl, list(indices), sensor_key)
    out: dict[str, np.ndarray] = {"row": rows.astype(np.int32), "col": cols.astype(np.int32)}
    out.update(refl)
    for k, v in idx.items():
        out[k.lower()] = v
    return out
