"""Per-pixel median composites of one tile position over a period: numpy kernels and one
thin Arrow wrapper (no pyspark, no I/O).

A composite stacks every observation of one tile of one grid (same sensor, CRS, scene
transform and tiling: the scenes of one Sentinel-2 MGRS tile on different dates) within a
period, masks each observation exactly as the features stage does, scales it to
reflectance with its own scene's scaling and takes the median over time, pixel by pixel.

Decisions
---------
* **Reflectance, not DN.** The median is taken over reflectance (float32, unitless), each
  observation scaled with its own ``scenes.scaling``: Sentinel-2 products before and
  after baseline 04.00 store the same reflectance as DNs 1000 apart, so a median of DNs
  would mix two scales. Values are the measured ones (slightly negative reflectance is
  kept, as in :func:`udfs.features.reflectance_layers`).
* **The features stage's masks.** An observation of a pixel is valid where
  :func:`udfs.features.tile_quality` with the job's :class:`udfs.masks.MaskSettings`
  does not mask it (nodata, invalid: saturation, valid DN range, QA_RADSAT; and the
  configured SCL classes / QA_PIXEL flags) *and* every reflectance band is finite. A
  pixel is valid or not as a whole, so every band's median is over the same
  observations and ``count`` is one array, not one per band.
* **Median by** :func:`numpy.nanmedian` **semantics**, along time, in float32: masked
  observations are NaN and ignored; an even number of valid observations gives the mean
  of the two middle values; a pixel with no valid observation is NaN in every band and
  has ``count`` 0.
* ``count``: valid observations per pixel, uint16 (:data:`COUNT_DTYPE`; a period holds
  far fewer than 65535 observations of one pixel).
* The whole stored tile is composited, overlap included (as the ``predictions``
  rasters): the tiles of one grid share their windows, so composites tile the grid the
  way the tiles do.
* Observations of different sensors or shapes are never stacked (:class:`ValueError`):
  grids of different sensors differ, and the driver groups by grid.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from udfs.features import TileDataError, decode_tile, reflectance_layers, tile_quality
from udfs.masks import MaskSettings
from udfs.sensors import BAND_COLUMNS, SENSORS
from udfs.tiling import decode_array, encode_array

#: Period kinds of a composite (``aggregate.composite_period``): ``month`` (``2024-06``),
#: ``quarter`` (``2024-Q2``) or ``year`` (``2024``) of the acquisition date (UTC).
PERIOD_KINDS = ("month", "quarter", "year")

#: Reflectance band columns of ``composites``: every sensor's reflectance bands, in
#: ``tiles`` order (no quality columns: a composite has no ``qa``).
COMPOSITE_BANDS = tuple(
    c
    for c in BAND_COLUMNS
    if any(b.common == c for s in SENSORS.values() for b in s.reflectance_bands)
)

#: dtype of the composite's reflectance columns (NaN: no valid observation).
VALUE_DTYPE = np.dtype("float32")
#: dtype of the ``count`` column (valid observations per pixel).
COUNT_DTYPE = np.dtype("uint16")


@dataclass(frozen=True)
class Observation:
    """One tile of one scene, as decoded DN.

    Attributes
    ----------
    sensor_key : str
        Key of :data:`udfs.sensors.SENSORS`.
    dn : mapping of str to ndarray, shape (rows, cols)
        The tile's band columns as DN (:func:`udfs.features.decode_tile`), ``qa`` (and
        ``radsat``) included.
    scaling : mapping of str to (float, float)
        Product band name -> ``(scale, offset)`` of the observation's scene
        (``scenes.scaling``).
    """

    sensor_key: str
    dn: Mapping[str, np.ndarray]
    scaling: Mapping[str, tuple[float, float]]


@dataclass(frozen=True)
class Composite:
    """The median composite of one tile position.

    Attributes
    ----------
    bands : dict of str to ndarray, shape (rows, cols), float32
        Reflectance band column -> per-pixel median (unitless); NaN where ``count`` is 0.
    count : ndarray, shape (rows, cols), uint16
        Valid observations of each pixel.
    """

    bands: dict[str, np.ndarray]
    count: np.ndarray


def masked_reflectance(
    obs: Observation, masks: MaskSettings | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Reflectance of one observation with masked pixels set to NaN.

    Parameters
    ----------
    obs : Observation
        One decoded tile.
    masks : MaskSettings, optional
        Quality classes and flags to mask (default :data:`udfs.masks.DEFAULT_MASKS`).

    Returns
    -------
    (dict of str to ndarray, ndarray)
        Reflectance band column -> float32 ``(rows, cols)`` array, NaN where the pixel is
        not valid; and the bool ``(rows, cols)`` valid mask (not masked and every band
        finite).
    """
    q = tile_quality(obs.sensor_key, obs.dn, masks)
    refl = reflectance_layers(obs.sensor_key, obs.dn, obs.scaling)
    valid = ~q.masked
    for arr in refl.values():
        valid &= np.isfinite(arr)
    for arr in refl.values():
        arr[~valid] = np.nan
    return refl, valid


def nanmedian_time(stack: np.ndarray) -> np.ndarray:
    """Median along axis 0 ignoring NaN, as :func:`numpy.nanmedian`, without its warning.

    Parameters
    ----------
    stack : ndarray, shape (time, rows, cols), float
        NaN marks a missing observation.

    Returns
    -------
    ndarray, shape (rows, cols), float32
        NaN where every observation of a pixel is NaN (also for ``time == 0``).
    """
    stack = np.asarray(stack, dtype=VALUE_DTYPE)
    if stack.shape[0] == 0:
        return np.full(stack.shape[1:], np.nan, VALUE_DTYPE)
    with warnings.catch_warnings():
        # "All-NaN slice encountered": a pixel never observed clear is NaN by design.
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.asarray(np.nanmedian(stack, axis=0), dtype=VALUE_DTYPE)


def median_composite(
    observations: Sequence[Observation], masks: MaskSettings | None = None
) -> Composite:
    """Per-pixel median of the masked reflectance of observations of one tile position.

    Parameters
    ----------
    observations : sequence of Observation
        At least one; all of one sensor and one tile shape.
    masks : MaskSettings, optional
        Quality classes and flags to mask (default :data:`udfs.masks.DEFAULT_MASKS`).

    Returns
    -------
    Composite
        One float32 median per reflectance band of the sensor and the uint16 count of
        valid observations (see the module's Decisions).

    Raises
    ------
    ValueError
        No observation, or observations of different sensors or shapes.
    """
    if not observations:
        raise ValueError("a composite needs at least one observation")
    sensors = sorted({o.sensor_key for o in observations})
    if len(sensors) > 1:
        raise ValueError(f"observations of one composite must share a sensor, got {sensors}")
    layers = [masked_reflectance(o, masks) for o in observations]
    shapes = sorted({valid.shape for _, valid in layers})
    if len(shapes) > 1:
        raise ValueError(f"observations of one composite must share a shape, got {shapes}")
    count = np.stack([valid for _, valid in layers]).sum(axis=0, dtype=np.int64)
    bands = {
        b.common: nanmedian_time(np.stack([refl[b.common] for refl, _ in layers]))
        for b in SENSORS[sensors[0]].reflectance_bands
    }
    return Composite(bands, np.asarray(count, dtype=COUNT_DTYPE))


def decode_composite(row: Mapping[str, Any]) -> Composite:
    """The arrays of a ``composites`` row (bands the sensor lacks are null and left out)."""
    h, w = row["height"], row["width"]
    bands = {
        b.common: decode_array(row[b.common], row["dtype"], h, w)
        for b in SENSORS[row["sensor"]].reflectance_bands
    }
    return Composite(bands, decode_array(row["count"], COUNT_DTYPE.name, h, w))


# --------------------------------------------------------------------------- Arrow wrapper

#: ``composites`` columns copied from the group's first ``tiles`` row (one grid: the same).
GEOMETRY_COLUMNS = (
    "tile_row",
    "tile_col",
    "sensor",
    "crs_epsg",
    "transform",
    "bounds",
    "bbox_wgs84",
    "row_off",
    "col_off",
    "width",
    "height",
)


def make_composite_builder(
    scenes: Mapping[str, Mapping[str, Any]],
    groups: Mapping[tuple[str, str], Mapping[str, Any]],
    masks: MaskSettings | None,
    extra: Mapping[str, Any],
    schema: pa.Schema,
    report_error: Callable[[list[dict[str, Any]]], None],
) -> Callable[[pa.Table], pa.Table]:
    """``applyInArrow`` function: the ``tiles`` rows of one (grid, period, tile) -> one
    ``composites`` row.

    ``scenes`` maps scene_id -> ``sensor`` and ``scaling`` (band -> (scale, offset));
    ``groups`` maps (grid_id, period) -> the row's planned columns (``period_kind``,
    ``period_start``, ``period_end``, ``composite_digest``); input rows need ``grid_id``,
    ``period``, the :data:`GEOMETRY_COLUMNS`, ``scene_id``, ``dtype`` and the band columns.
    A tile whose arrays cannot be decoded is reported (``rejected`` record, stage
    ``composites``) and left out of the composite.
    """
    names = schema.names

    def build(table: pa.Table) -> pa.Table:
        rows = sorted(table.to_pylist(), key=lambda r: r["scene_id"])
        observations, used, errors = [], [], []
        for row in rows:
            scene = scenes[row["scene_id"]]
            try:
                dn = decode_tile(row, scene["sensor"])
            except TileDataError as e:
                errors.append(
                    {
                        "href": f"tiles/{row['scene_id']}/{row['tile_row']}/{row['tile_col']}",
                        "scene_id": row["scene_id"],
                        "stage": "composites",
                        "error_class": "BadTile",
                        "reason": f"tile ({row['tile_row']}, {row['tile_col']}): {e}",
                    }
                )
                continue
            scaling = {k: (float(v[0]), float(v[1])) for k, v in scene["scaling"].items()}
            observations.append(Observation(scene["sensor"], dn, scaling))
            used.append(row["scene_id"])
        if errors:
            report_error(errors)
        if not observations:
            return schema.empty_table()
        comp = median_composite(observations, masks)
        first = rows[0]
        out: dict[str, Any] = {c: first[c] for c in GEOMETRY_COLUMNS}
        out.update(groups[(first["grid_id"], first["period"])])
        out.update(
            grid_id=first["grid_id"],
            period=first["period"],
            dtype=VALUE_DTYPE.name,
            n_scenes=len(used),
            scene_ids=used,
            count=encode_array(comp.count),
            **{k: encode_array(v) for k, v in comp.bands.items()},
            **extra,
        )
        return pa.Table.from_pylist([{n: out.get(n) for n in names}], schema=schema)

    return build
