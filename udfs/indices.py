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
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping, Sequence
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

#: Functions a formula may call.
FORMULA_FUNCTIONS: Mapping[str, Callable[..., Any]] = MappingProxyType(
    {"sqrt": np.sqrt, "abs": np.abs}
)

#: Index band names a formula may use (the reflectance columns of ``tiles``).
INDEX_BAND_NAMES: tuple[str, ...] = tuple(c for c in BAND_COLUMNS if c != "qa")

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
    """

    name: str
    formula: str
    bands: tuple[str, ...]
    fn: Callable[[Mapping[str, np.ndarray]], Any]


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


def parse_formula(name: str, formula: str) -> SpectralIndex:
    """Parse one index formula into a :class:`SpectralIndex`.

    Parameters
    ----------
    name : str
        Index name, for messages.
    formula : str
        Arithmetic over index band names (:data:`INDEX_BAND_NAMES`).

    Raises
    ------
    FormulaError
        Syntax error, unknown band, or anything but arithmetic, numbers and the functions
        of :data:`FORMULA_FUNCTIONS`.
    """
    try:
        tree = ast.parse(formula, mode="eval")
    except SyntaxError as e:
        raise FormulaError(f"index {name}: cannot parse formula {formula!r}: {e.msg}") from e
    seen: list[str] = []
    fn = _compile(tree.body, name, seen)
    if not seen:
        raise FormulaError(f"index {name}: formula {formula!r} uses no band")
    return SpectralIndex(name=name, formula=formula, bands=tuple(seen), fn=fn)


#: name -> parsed index (formula, required bands, evaluator).
INDICES: Mapping[str, SpectralIndex] = MappingProxyType(
    {name: parse_formula(name, formula) for name, formula in INDEX_FORMULAS.items()}
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
        an input band is NaN or inf, or the result is not finite (x/0, 0/0). Finite
        results are not clipped (EVI can be far outside -1..1 where its denominator is near 0).

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
    # the formula would give a finite number (x / inf = 0).
    finite = {col: np.isfinite(a) for col, a in arrays.items()}
    out: dict[str, np.ndarray] = {}
    for name, cols in columns.items():
        inputs = {band: arrays[col] for band, col in cols.items()}
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            result = np.asarray(INDICES[name].fn(inputs), dtype=np.float64).astype(np.float32)
        bad = ~np.isfinite(result)
        for col in cols.values():
            bad |= ~finite[col]
        result[bad] = INDEX_NODATA
        out[name] = result
    return out
