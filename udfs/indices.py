"""Spectral indices, defined once as data, and evaluated safely over reflectance arrays.

Pure numpy kernels (no pyspark, no I/O). An index is one line of :data:`INDEX_FORMULAS`:
its name and an arithmetic formula over *index band names* (``blue``, ``green``,
``red``, ``nir``, ``swir16``, ``swir22`` ...). The formula is parsed once, at import,
into a small tree of numpy operations; only numbers, band names, ``+ - * / **``, unary
minus and the functions in :data:`FORMULA_FUNCTIONS` are allowed, so no string is ever
passed to ``eval`` and a typo fails at import, naming the index.

Index band names are resolved to ``tiles`` columns per sensor by
:data:`SENSOR_BAND_MAP`: ``nir`` is the broad NIR band, Sentinel-2 B08 (column ``nir``);
Landsat OLI and TM store their NIR band under the STAC common name ``nir08``, so there
``nir`` reads column ``nir08``.

Nodata: results are float32 reflectance-derived values (unitless); every non-finite
result (x/0, 0/0, NaN or inf in an input) is NaN.

Formulas follow the Awesome Spectral Indices catalogue (``spyndex``); NDWI is McFeeters'
(green, nir), not Gao's NDMI-like one.

Decisions
---------
This module is the **one place** where the negative-reflectance policy is applied; tile
statistics, the pixel feature view, classify and anything else that evaluates an index
go through :func:`compute_indices`.

* **Reflectance layers keep the measured value.** ``(DN + BOA_ADD_OFFSET) / Q`` may be
  slightly negative over dark targets (water, shadow) from Sentinel-2 processing
  baseline 04.00 on. ESA introduced the offset precisely so that these values are no
  longer clamped to 0 (clamping biases the mean of dark targets upwards), Sen2Cor's
  product definition keeps them, and Earth Engine's ``COPERNICUS/S2_SR_HARMONIZED`` and
  Sentinel Hub's ``harmonizeValues`` are the tools that clamp them, for backward
  compatibility only. Band statistics and model features therefore see the measured,
  possibly negative value.
* **An index is evaluated only where every input reflectance is >= 0**; elsewhere it is
  NaN. The published formulas (and the ranges below) assume physical reflectance in
  0..1: two slightly negative reflectances give NDVI = -3, a number with no meaning.
  Reflectance above 1 (bright cloud edges, specular glint) is a physical measurement
  and is used.
* **Each index has a physical range, stored as data beside its formula**
  (:data:`INDEX_RANGES`). A result outside it is NaN, never clipped into a wrong value:
  normalized differences lie in [-1, 1] by construction for non-negative inputs; SAVI
  with L = 0.5 in [-1.5, 1.5] (Huete 1988: ``(1 + L)`` times a ratio within [-1, 1]);
  EVI in [-1, 1], the range Huete et al. (2002) and the MODIS EVI products document
  (Earth Engine's MODIS EVI collections: "ranges in value from -1.0 to 1.0"). EVI's
  denominator ``nir + 6 red - 7.5 blue + 1`` approaches 0 over bright blue targets
  (cloud, snow), where the formula gives arbitrarily large values: those are NaN.
* NaN counts as invalid: the statistics' per-layer ``count`` shows how many pixels an
  index lost to the policy.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np

from udfs.errors import PipelineError
from udfs.masks import UnknownSensorError
from udfs.sensors import BAND_COLUMNS, SENSORS

#: Value of an index where it is undefined.
INDEX_NODATA = np.float32(np.nan)

#: name -> formula over index band names. Adding an index is adding one line.
INDEX_FORMULAS: Mapping[str, str] = MappingProxyType(
    {
        "NDVI": "(nir - red) / (nir + red)",
        # EVI: G=2.5, C1=6, C2=7.5, L=1
        "EVI": "2.5 * (nir - red) / (nir + 6 * red - 7.5 * blue + 1)",
        # SAVI: L=0.5
        "SAVI": "(1 + 0.5) * (nir - red) / (nir + red + 0.5)",
        "NDWI": "(green - nir) / (green + nir)",  # McFeeters 1996
        "MNDWI": "(green - swir16) / (green + swir16)",
        "NDBI": "(swir16 - nir) / (swir16 + nir)",
        "NBR": "(nir - swir22) / (nir + swir22)",
        "NDMI": "(nir - swir16) / (nir + swir16)",
    }
)

#: name -> (lowest, highest) physical value of the index, inclusive. A result outside
#: it is NaN (see the module's Decisions). Every index of :data:`INDEX_FORMULAS` has one.
INDEX_RANGES: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        "NDVI": (-1.0, 1.0),
        "EVI": (-1.0, 1.0),  # Huete et al. 2002; the MODIS EVI products' documented range
        "SAVI": (-1.5, 1.5),  # (1 + L) x [-1, 1] with L = 0.5
        "NDWI": (-1.0, 1.0),
        "MNDWI": (-1.0, 1.0),
        "NDBI": (-1.0, 1.0),
        "NBR": (-1.0, 1.0),
        "NDMI": (-1.0, 1.0),
    }
)

#: Range of an index parsed without one (:func:`parse_formula`): any finite value.
UNBOUNDED = (-np.inf, np.inf)

#: Functions a formula may call.
FORMULA_FUNCTIONS: Mapping[str, Callable[..., Any]] = MappingProxyType(
    {"sqrt": np.sqrt, "abs": np.abs}
)

#: Index band names a formula may use: the reflectance columns of ``tiles``, by band role
#: (quality columns such as ``qa`` and ``radsat`` are never reflectance).
INDEX_BAND_NAMES: tuple[str, ...] = tuple(
    c
    for c in BAND_COLUMNS
    if any(b.common == c for s in SENSORS.values() for b in s.reflectance_bands)
)

#: Per sensor, index band names that read a differently named column.
_COLUMN_OVERRIDES: Mapping[str, Mapping[str, str]] = {
    "landsat-c2l2": {"nir": "nir08"},  # OLI band 5, 0.85-0.88 um
    "landsat-c2l2-tm": {"nir": "nir08"},  # TM/ETM+ band 4, 0.77-0.90 um
}


def _band_map(sensor_key: str) -> Mapping[str, str]:
    columns = {b.common for b in SENSORS[sensor_key].reflectance_bands}
    mapping = {c: c for c in INDEX_BAND_NAMES if c in columns}
    overrides = _COLUMN_OVERRIDES.get(sensor_key, {})
    assert set(overrides.values()) <= columns, (sensor_key, overrides)
    return MappingProxyType({**mapping, **overrides})


#: sensor key -> index band name -> ``tiles`` column. A band missing here does not exist
#: for that sensor.
SENSOR_BAND_MAP: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {key: _band_map(key) for key in SENSORS}
)


class SpectralIndexError(PipelineError, KeyError):
    """Base of the index errors; a KeyError whose ``str`` is the plain message."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class UnknownIndexError(SpectralIndexError):
    """An index name is not in :data:`INDEX_FORMULAS`."""

    def __init__(self, index: str) -> None:
        self.index = index
        super().__init__(f"unknown spectral index {index!r}; expected one of {sorted(INDICES)}")


class MissingIndexBandError(SpectralIndexError):
    """A band an index needs is not available for the sensor, or absent from the input."""

    def __init__(self, index: str, band: str, sensor_key: str, column: str | None) -> None:
        self.index, self.band, self.sensor_key, self.column = index, band, sensor_key, column
        if column is None:
            msg = f"index {index} needs band {band!r}, which sensor {sensor_key} does not have"
        else:
            msg = (
                f"index {index} needs band {band!r} (column {column!r} for {sensor_key}), "
                "which is missing from the input"
            )
        super().__init__(msg)


class FormulaError(PipelineError, ValueError):
    """An index formula uses something other than numbers, bands and arithmetic."""


class SpectralIndex(NamedTuple):
    """One spectral index, parsed from its formula.

    Attributes
    ----------
    name : str
        Index name (``NDVI``).
    formula : str
        The formula as written in :data:`INDEX_FORMULAS`.
    bands : tuple of str
        Index band names the formula uses, in order of first appearance.
    fn : callable
        ``fn(bands)`` evaluates the formula over a mapping of index band name to float64
        array; no error-state handling or nodata mapping (see :func:`compute_indices`).
    valid_range : (float, float)
        Physical range of the index, inclusive; results outside it are NaN.
    """

    name: str
    formula: str
    bands: tuple[str, ...]
    fn: Callable[[Mapping[str, np.ndarray]], Any]
    valid_range: tuple[float, float] = UNBOUNDED


_BINARY: Mapping[type, Callable[[Any, Any], Any]] = {
    ast.Add: np.add,
    ast.Sub: np.subtract,
    ast.Mult: np.multiply,
    ast.Div: np.true_divide,
    ast.Pow: np.power,
}
_UNARY: Mapping[type, Callable[[Any], Any]] = {ast.USub: np.negative, ast.UAdd: np.positive}

_Node = Callable[[Mapping[str, np.ndarray]], Any]


def _compile(node: ast.AST, name: str, seen: list[str]) -> _Node:
    """Turn a whitelisted expression tree into nested closures."""
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, (int, float))
        and not isinstance(node.value, bool)
    ):
        value = float(node.value)
        return lambda b: value
    if isinstance(node, ast.Name):
        band = node.id
        if band not in INDEX_BAND_NAMES:
            raise FormulaError(
                f"index {name}: unknown band {band!r}; expected one of {list(INDEX_BAND_NAMES)}"
            )
        if band not in seen:
            seen.append(band)
        return lambda b: b[band]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        op = _BINARY[type(node.op)]
        left, right = _compile(node.left, name, seen), _compile(node.right, name, seen)
        return lambda b: op(left(b), right(b))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        uop = _UNARY[type(node.op)]
        operand = _compile(node.operand, name, seen)
        return lambda b: uop(operand(b))
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in FORMULA_FUNCTIONS
        and len(node.args) == 1
        and not node.keywords
    ):
        func = FORMULA_FUNCTIONS[node.func.id]
        arg = _compile(node.args[0], name, seen)
        return lambda b: func(arg(b))
    raise FormulaError(
        f"index {name}: {ast.unparse(node)!r} is not allowed in a formula "
        "(numbers, band names, + - * / **, unary -, "
        f"{', '.join(FORMULA_FUNCTIONS)} only)"
    )


def parse_formula(
    name: str, formula: str, valid_range: tuple[float, float] = UNBOUNDED
) -> SpectralIndex:
    """Parse one index formula into a :class:`SpectralIndex`.

    Parameters
    ----------
    name : str
        Index name, for messages.
    formula : str
        Arithmetic over index band names (:data:`INDEX_BAND_NAMES`).
    valid_range : (float, float)
        Physical range of the index, inclusive (default: any finite value).

    Raises
    ------
    FormulaError
        Syntax error, unknown band, anything but arithmetic, numbers and the functions
        of :data:`FORMULA_FUNCTIONS`, or a range whose low end is above its high end.
    """
    lo, hi = (float(v) for v in valid_range)
    if not lo <= hi:
        raise FormulaError(f"index {name}: valid range {valid_range!r} is empty")
    try:
        tree = ast.parse(formula, mode="eval")
    except SyntaxError as e:
        raise FormulaError(f"index {name}: cannot parse formula {formula!r}: {e.msg}") from e
    seen: list[str] = []
    fn = _compile(tree.body, name, seen)
    if not seen:
        raise FormulaError(f"index {name}: formula {formula!r} uses no band")
    return SpectralIndex(name=name, formula=formula, bands=tuple(seen), fn=fn, valid_range=(lo, hi))


assert set(INDEX_RANGES) == set(INDEX_FORMULAS), "every index needs a physical range"

#: name -> parsed index (formula, required bands, evaluator, physical range).
INDICES: Mapping[str, SpectralIndex] = MappingProxyType(
    {
        name: parse_formula(name, formula, INDEX_RANGES[name])
        for name, formula in INDEX_FORMULAS.items()
    }
)


def _spectral_index(name: str) -> SpectralIndex:
    try:
        return INDICES[name]
    except KeyError:
        raise UnknownIndexError(name) from None


def index_columns(names: Sequence[str], sensor_key: str) -> dict[str, dict[str, str]]:
    """Which ``tiles`` column feeds each band of each index, for one sensor.

    Parameters
    ----------
    names : sequence of str
        Index names (keys of :data:`INDICES`).
    sensor_key : str
        Sensor key (``sentinel2-l2a``, ``landsat-c2l2`` ...).

    Returns
    -------
    dict
        ``{index: {index band name: column}}``, e.g. for Landsat
        ``{"NDVI": {"nir": "nir08", "red": "red"}}``.

    Raises
    ------
    UnknownIndexError, UnknownSensorError
        Unknown index name or sensor key.
    MissingIndexBandError
        The sensor has no band the index needs (``column`` is None in the error).
    """
    if sensor_key not in SENSOR_BAND_MAP:
        raise UnknownSensorError(sensor_key)
    band_map = SENSOR_BAND_MAP[sensor_key]
    out: dict[str, dict[str, str]] = {}
    for name in names:
        index = _spectral_index(name)
        cols: dict[str, str] = {}
        for band in index.bands:
            if band not in band_map:
                raise MissingIndexBandError(name, band, sensor_key, None)
            cols[band] = band_map[band]
        out[name] = cols
    return out


def compute_indices(
    bands: Mapping[str, np.ndarray], names: Sequence[str], sensor_key: str
) -> dict[str, np.ndarray]:
    """Evaluate spectral indices over one tile.

    Parameters
    ----------
    bands : mapping of str to ndarray, shape (rows, cols)
        Reflectance (unitless, nominally 0..1) keyed by ``tiles`` column name
        (``nir08`` for Landsat NIR), float32 or float64, already NaN where masked.
        Columns no index needs are ignored.
    names : sequence of str
        Index names (keys of :data:`INDICES`), e.g. ``["NDVI", "NBR"]``.
    sensor_key : str
        Sensor of the tile, selects the column map (:data:`SENSOR_BAND_MAP`).

    Returns
    -------
    dict of str to ndarray of float32, shape (rows, cols)
        One array per index, in the order of ``names``. Unitless. NaN (nodata) wherever
        an input band is NaN, inf or negative (see the module's Decisions), where the
        result is not finite (x/0, 0/0), and where it lies outside the index's physical
        range (:attr:`SpectralIndex.valid_range`, e.g. EVI where its denominator is near
        0). Nothing is ever clipped: every value returned is the formula's own.

    Raises
    ------
    UnknownIndexError, UnknownSensorError
        Unknown index name or sensor key (both KeyError).
    MissingIndexBandError
        A band an index needs is not available for the sensor or absent from ``bands``
        (a KeyError naming the index, the band and the column). Checked for every index
        before anything is computed.
    TypeError
        A band is not a float array (DN must go through
        :func:`udfs.reflectance.to_reflectance` first).
    ValueError
        The bands an index needs differ in shape.
    """
    out: dict[str, np.ndarray] = {}
    for name, value, ok in _evaluate(bands, names, sensor_key):
        result = value.astype(np.float32)
        np.copyto(result, INDEX_NODATA, where=~ok)
        out[name] = result
    return out


def index_values(
    bands: Mapping[str, np.ndarray], names: Sequence[str], sensor_key: str
) -> dict[str, np.ndarray]:
    """The defined values of each index, for statistics: what :func:`compute_indices`
    gives without its NaN (and without +-inf), as a 1-D array.

    Parameters and errors are those of :func:`compute_indices`; ``bands`` may have any
    shape (1-D: the kept pixels of a tile).

    Returns
    -------
    dict of str to ndarray of float32, shape (n_defined,)
        Per index, in the order of ``names``: the float32 values of the pixels where the
        index is defined (every input reflectance finite and >= 0, the result inside the
        index's physical range), in pixel order. Unitless. Each array is new (the caller
        may sort it in place).
    """
    out: dict[str, np.ndarray] = {}
    for name, value, ok in _evaluate(bands, names, sensor_key):
        kept = value[ok].astype(np.float32)
        lo, hi = INDICES[name].valid_range
        if not (math.isfinite(lo) and math.isfinite(hi)):
            # Finite in float64 but beyond float32: compute_indices would give +-inf.
            kept = kept[np.isfinite(kept)]
        out[name] = kept
    return out


def _evaluate(
    bands: Mapping[str, np.ndarray], names: Sequence[str], sensor_key: str
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, float64 value, defined)`` of each index in ``names``, in order: the one
    place where the policy of the module's Decisions is applied (``defined`` is False
    where an input is not finite or negative, or the value is outside the index's range).

    """
    columns = index_columns(names, sensor_key)
    for name, cols in columns.items():
        for band, col in cols.items():
            if col not in bands:
                raise MissingIndexBandError(name, band, sensor_key, col)

    needed = {col for cols in columns.values() for col in cols.values()}
    arrays: dict[str, np.ndarray] = {}
    for col in needed:
        arr = np.asarray(bands[col])
        if not np.issubdtype(arr.dtype, np.floating):
            raise TypeError(
                f"band {col!r} must be float reflectance, got dtype {arr.dtype} "
                "(convert DN with to_reflectance first)"
            )
        arrays[col] = arr.astype(np.float64, copy=False)
    shapes = {col: a.shape for col, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"{sensor_key}: index bands must share a shape, got {shapes}")

    # A NaN or inf reflectance is no measurement: the index is nodata there even where
    # the formula would give a finite number (x / inf = 0). A negative one is a measured
    # value, but outside the domain the index's formula is defined on.
    # ``a >= 0`` is False for NaN; +inf is the one non-finite value that passes it.
    usable: dict[str, np.ndarray] = {}
    # Indices over the same columns (NDVI, SAVI: red, nir) share one input mask.
    inputs_ok: dict[frozenset[str], np.ndarray] = {}
    for name, cols in columns.items():
        index = INDICES[name]
        inputs = {band: arrays[col] for band, col in cols.items()}
        key = frozenset(cols.values())
        if key not in inputs_ok:
            for c in key - set(usable):
                usable[c] = (arrays[c] >= 0) & (arrays[c] < np.inf)
            inputs_ok[key] = np.logical_and.reduce([usable[c] for c in sorted(key)])
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            value = np.asarray(index.fn(inputs), dtype=np.float64)
            lo, hi = index.valid_range
            # The range is tested in float64, before rounding: 1 + 1e-9 is out of range
            # even though it rounds to 1.0 in float32. NaN fails every comparison; with a
            # finite range so does +-inf, otherwise test finiteness too.
            if lo == -hi and math.isfinite(hi):
                ok = np.abs(value) <= hi
            else:
                ok = (value >= lo) & (value <= hi)
                if not (math.isfinite(lo) and math.isfinite(hi)):
                    ok &= np.isfinite(value)
        ok &= inputs_ok[key]
        yield name, value, ok
