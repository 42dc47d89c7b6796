"""Pixel quality masks: Sentinel-2 SCL, Landsat Collection 2 QA_PIXEL and QA_RADSAT,
nodata, saturation and valid DN ranges.

Pure numpy kernels (no pyspark, no I/O). Every mask is a boolean array of the input's
shape, ``(rows, cols)`` for one tile, and **True means "mask this pixel"** (exclude it).
Over 500 lines on purpose: the SCL, QA_PIXEL, DN and dispatch kernels share the code
tables, :class:`MaskSettings` and the definitions below; in one file the whole masking
policy is read in one place.

Four questions are kept apart so that statistics can report them separately
(:class:`QualityMask`):

``nodata``
    The pixel has no measurement: DN equal to the band's nodata value (0) in any
    reflectance band, SCL class 0, or the QA_PIXEL fill bit.
``invalid``
    ``nodata``, or a measurement that cannot be trusted whatever the weather, by the
    product's own definitions (:class:`udfs.sensors.Sensor`): the sensor's saturated DN
    (Sentinel-2 ``SATURATED`` = 65535) in any reflectance band, SCL class 1 (saturated
    or defective), a DN outside the sensor's documented valid range in any reflectance
    band (Landsat Collection 2 SR: 7273..43636), a ``QA_RADSAT`` saturation bit set for
    any reflectance band, or a quality code outside the product's range.
``cloud``
    Cloud or cloud shadow, for the *cloud fraction*: SCL 3, 8, 9, 10, or QA_PIXEL bits
    dilated cloud, cirrus, cloud, cloud shadow. Reported whatever the masking choice.
    Unknown (``cloud_known`` False) for a sensor without a quality band (Sentinel-2
    L1C): there ``cloud`` is all False and means "not known to be cloud", never "clear".
``masked``
    What the features stage drops: ``invalid`` plus the configured quality classes or
    flags (:class:`MaskSettings`; by default clouds, cloud shadows, cirrus and snow).

Decisions
---------
* SCL values outside the defined classes 0..11 (including NaN or non-integral values of a
  float array) are **masked** and counted as ``invalid``: an unknown code cannot be
  trusted, and treating it as clear would let garbage into the statistics. They are never
  counted as cloud.
* QA_PIXEL and QA_RADSAT values outside 0..65535 (or NaN in a float array) are masked
  likewise.
* ``QA_RADSAT`` is an optional band (some catalogues omit it). Without it, saturation of
  a Landsat pixel is **unknown** and only the valid DN range applies; the scene is not
  assumed saturation-free, it simply has no such test. With it, a set bit masks the
  pixel only through a band the pipeline reads as reflectance (bit 3 is OLI band 4,
  ``SR_B4``); bits of bands not read (OLI band 9, TM/ETM+ thermal band 6) and the
  terrain-occlusion bit (11) are not saturation of a reflectance band and are ignored.
* Saturation and valid ranges are per product, from :data:`udfs.sensors.SENSORS`:
  Sentinel-2 writes 65535 for a saturated pixel and documents no valid range; Landsat
  Collection 2 Level-2 SR writes no saturated DN (its saturation lives in QA_RADSAT) and
  documents 7273..43636 (reflectance 0..1) as valid. So a Landsat DN below 7273
  (negative reflectance) is invalid, while a Sentinel-2 negative reflectance is kept as
  measured (see :mod:`udfs.indices`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from udfs.errors import ConfigError, PipelineError
from udfs.sensors import QA_PIXEL_BITS, QA_PIXEL_CONFIDENCE, SCL_CLASSES, SENSORS, Sensor

#: SCL classes masked by default: no data, saturated/defective, cloud shadows, cloud
#: medium and high probability, thin cirrus, snow.
DEFAULT_SCL_MASKED: frozenset[int] = frozenset({0, 1, 3, 8, 9, 10, 11})

#: SCL classes counted as cloud (numerator of the cloud fraction).
SCL_CLOUD_CLASSES: frozenset[int] = frozenset({3, 8, 9, 10})

#: SCL classes that mean "no measurement" and "untrustworthy measurement".
SCL_NODATA_CLASSES: frozenset[int] = frozenset({0})
SCL_INVALID_CLASSES: frozenset[int] = frozenset({0, 1})

#: QA_PIXEL single-bit flags masked by default.
DEFAULT_QA_FLAGS: tuple[str, ...] = (
    "fill",
    "dilated_cloud",
    "cirrus",
    "cloud",
    "cloud_shadow",
    "snow",
)

#: QA_PIXEL flags counted as cloud (numerator of the cloud fraction).
QA_CLOUD_FLAGS: tuple[str, ...] = ("dilated_cloud", "cirrus", "cloud", "cloud_shadow")

_SCL_MAX = max(SCL_CLASSES)
_QA_MAX = np.iinfo(np.uint16).max


class UnknownSensorError(PipelineError, KeyError):
    """A sensor key is not in :data:`udfs.sensors.SENSORS`."""

    def __init__(self, sensor_key: str) -> None:
        self.sensor_key = sensor_key
        super().__init__(f"unknown sensor key {sensor_key!r}; expected one of {sorted(SENSORS)}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class QualityMask(NamedTuple):
    """Per-pixel quality of one tile; every field is a bool array of shape (rows, cols).

    Attributes
    ----------
    nodata : ndarray of bool
        No measurement (nodata DN in any band, SCL 0, QA_PIXEL fill).
    invalid : ndarray of bool
        ``nodata`` or saturated/defective or unknown quality code.
    cloud : ndarray of bool
        Cloud or cloud shadow (for the cloud fraction), whether masked or not.
    masked : ndarray of bool
        Pixels to drop: ``invalid`` or a configured quality class/flag.
    cloud_known : bool
        Whether the product says which pixels are cloud (False for a sensor without a
        quality band, Sentinel-2 L1C: ``cloud`` is then all False and means nothing).
    """

    nodata: np.ndarray
    invalid: np.ndarray
    cloud: np.ndarray
    masked: np.ndarray
    cloud_known: bool = True


@dataclass(frozen=True)
class MaskSettings:
    """Which quality classes and flags count as masked: what jobs pass to executors.

    Built from the ``features.scl_masked``, ``features.qa_pixel_flags`` and
    ``features.qa_pixel_min_confidence`` configuration keys; validated on construction
    (:class:`udfs.errors.ConfigError` naming the offending value). Frozen, hashable and
    picklable. Invalid pixels (nodata, saturation, valid range) are masked whatever these
    settings say.

    Attributes
    ----------
    scl_classes : tuple of int
        Sentinel-2 L2A SCL classes to mask, sorted (default :data:`DEFAULT_SCL_MASKED`).
    qa_flags : tuple of str
        Landsat QA_PIXEL single-bit flags to mask (default :data:`DEFAULT_QA_FLAGS`).
    qa_min_confidence : tuple of (str, int)
        Landsat QA_PIXEL two-bit confidence fields and the level (1 low, 2 medium,
        3 high) from which a pixel is masked, sorted by field (default: none). A mapping
        is accepted too.
    """

    scl_classes: tuple[int, ...] = tuple(sorted(DEFAULT_SCL_MASKED))
    qa_flags: tuple[str, ...] = DEFAULT_QA_FLAGS
    qa_min_confidence: Any = ()

    def __post_init__(self) -> None:
        scl = tuple(sorted(set(check_scl_classes(self.scl_classes))))
        flags = tuple(dict.fromkeys(check_qa_flags(self.qa_flags)))
        conf = self.qa_min_confidence
        items = conf.items() if isinstance(conf, Mapping) else conf
        confidence = tuple(sorted(check_min_confidence(dict(items)).items()))
        object.__setattr__(self, "scl_classes", scl)
        object.__setattr__(self, "qa_flags", flags)
        object.__setattr__(self, "qa_min_confidence", confidence)

    @property
    def min_confidence(self) -> dict[str, int]:
        """``qa_min_confidence`` as a dict (field -> level)."""
        return dict(self.qa_min_confidence)


# --------------------------------------------------------------------------- codes


def _codes(values: np.ndarray, max_code: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a quality array into (codes as intp, unknown) with unknown codes set to 0.

    ``unknown`` is True where the value is not an integer in ``0..max_code`` (negative,
    too large, NaN, inf or non-integral).
    """
    arr = np.asarray(values)
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise TypeError(f"quality band must be an integer or float array, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        with np.errstate(invalid="ignore"):
            known = np.isfinite(arr) & (arr >= 0) & (arr <= max_code) & (arr == np.floor(arr))
    else:
        known = (arr >= 0) & (arr <= max_code)
    codes = np.where(known, arr, 0).astype(np.intp)
    return codes, ~known


def check_scl_classes(classes: Iterable[int]) -> tuple[int, ...]:
    """Validate SCL classes to mask; returns them as a tuple of int.

    Raises
    ------
    udfs.errors.ConfigError
        A value is not an integer class of :data:`udfs.sensors.SCL_CLASSES` (0..11).
    """
    if isinstance(classes, (str, bytes)):
        raise ConfigError(f"SCL classes must be a list of integers, got {classes!r}")
    out = tuple(classes)
    bad = [
        c
        for c in out
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c not in SCL_CLASSES
    ]
    if bad:
        raise ConfigError(
            f"SCL classes must be integers in 0..{_SCL_MAX} ({dict(SCL_CLASSES)}), got {bad}"
        )
    return tuple(int(c) for c in out)


def check_qa_flags(flags: Iterable[str]) -> tuple[str, ...]:
    """Validate QA_PIXEL single-bit flag names; returns them as a tuple.

    Raises
    ------
    udfs.errors.ConfigError
        A name is not a key of :data:`udfs.sensors.QA_PIXEL_BITS`.
    """
    if isinstance(flags, (str, bytes)):
        raise ConfigError(f"QA_PIXEL flags must be a list of names, got {flags!r}")
    out = tuple(flags)
    unknown = [f for f in out if f not in QA_PIXEL_BITS]
    if unknown:
        raise ConfigError(
            f"unknown QA_PIXEL flag(s) {unknown}; expected some of {list(QA_PIXEL_BITS)}"
        )
    return out


def check_min_confidence(thresholds: Mapping[str, int] | None) -> dict[str, int]:
    """Validate QA_PIXEL confidence thresholds (field -> 1, 2 or 3); returns a dict.

    Raises
    ------
    udfs.errors.ConfigError
        Unknown confidence field, or a level other than 1 (low), 2 (medium), 3 (high):
        0 would mask every pixel.
    """
    out = dict(thresholds or {})
    unknown_fields = [k for k in out if k not in QA_PIXEL_CONFIDENCE]
    if unknown_fields:
        raise ConfigError(
            f"unknown QA_PIXEL confidence field(s) {unknown_fields}; "
            f"expected some of {list(QA_PIXEL_CONFIDENCE)}"
        )
    bad = {
        k: v
        for k, v in out.items()
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v not in (1, 2, 3)
    }
    if bad:
        raise ConfigError(f"QA_PIXEL confidence thresholds must be 1, 2 or 3, got {bad}")
    return {k: int(v) for k, v in out.items()}


def _scl_lookup(scl: np.ndarray, classes: Iterable[int], *, unknown: bool) -> np.ndarray:
    lut = np.zeros(_SCL_MAX + 1, dtype=bool)
    lut[list(check_scl_classes(classes))] = True
    codes, is_unknown = _codes(scl, _SCL_MAX)
    out = lut[codes]
    if unknown:
        out |= is_unknown
    else:
        out &= ~is_unknown
    return out


# --------------------------------------------------------------------------- SCL


def scl_mask(scl: np.ndarray, masked_classes: Iterable[int] = DEFAULT_SCL_MASKED) -> np.ndarray:
    """Mask Sentinel-2 L2A pixels by Scene Classification (SCL) class.

    Parameters
    ----------
    scl : ndarray, shape (rows, cols)
        SCL codes (uint8 in the product; any integer dtype, or float with NaN for
        missing, is accepted). Categorical, no units.
    masked_classes : iterable of int
        SCL classes to mask (see :data:`udfs.sensors.SCL_CLASSES`). Default
        :data:`DEFAULT_SCL_MASKED`: 0 no data, 1 saturated/defective, 3 cloud shadows,
        8 cloud medium probability, 9 cloud high probability, 10 thin cirrus, 11 snow.

    Returns
    -------
    ndarray of bool, shape (rows, cols)
        True where the pixel is masked. Values outside 0..11 (negative, > 11, NaN,
        non-integral) are always masked.

    Raises
    ------
    udfs.errors.ConfigError
        A class in ``masked_classes`` is not an SCL class (0..11).
    TypeError
        ``scl`` is not a numeric array.
    """
    return _scl_lookup(scl, masked_classes, unknown=True)


def scl_cloud(scl: np.ndarray) -> np.ndarray:
    """Cloud and cloud-shadow pixels of an SCL array: classes 3, 8, 9, 10.

    Parameters
    ----------
    scl : ndarray, shape (rows, cols)
        SCL codes.

    Returns
    -------
    ndarray of bool, shape (rows, cols)
        True for cloud shadows, cloud medium/high probability and thin cirrus. Unknown
        codes (outside 0..11) are False here: they are reported as invalid, not cloud.
    """
    return _scl_lookup(scl, SCL_CLOUD_CLASSES, unknown=False)


# --------------------------------------------------------------------------- QA_PIXEL


def _flag_bits(flags: Iterable[str]) -> int:
    flags = check_qa_flags(flags)
    bits = 0
    for f in flags:
        bits |= 1 << QA_PIXEL_BITS[f]
    return bits


def qa_pixel_mask(
    qa: np.ndarray,
    flags: Iterable[str] = DEFAULT_QA_FLAGS,
    min_confidence: Mapping[str, int] | None = None,
) -> np.ndarray:
    """Mask Landsat Collection 2 QA_PIXEL pixels by bit flags and confidence fields.

    Parameters
    ----------
    qa : ndarray, shape (rows, cols)
        QA_PIXEL words (uint16 in the product; any integer dtype, or float with NaN for
        missing, is accepted). Bit-packed, no units.
    flags : iterable of str
        Single-bit flags (keys of :data:`udfs.sensors.QA_PIXEL_BITS`) whose set bit masks
        the pixel. Default :data:`DEFAULT_QA_FLAGS`: fill (bit 0), dilated cloud (1),
        cirrus (2), cloud (3), cloud shadow (4), snow (5).
    min_confidence : mapping of str to int, optional
        Two-bit confidence fields (keys of :data:`udfs.sensors.QA_PIXEL_CONFIDENCE`) to
        threshold: ``{"cloud_confidence": 3}`` also masks pixels whose cloud confidence
        field (bits 8-9) is >= 3 (high). Values 0 none, 1 low, 2 medium, 3 high;
        thresholds must be 1..3 (0 would mask every pixel).

    Returns
    -------
    ndarray of bool, shape (rows, cols)
        True where any selected flag is set, any confidence field reaches its threshold,
        or the value is not a uint16 word (negative, > 65535, NaN, non-integral).

    Raises
    ------
    udfs.errors.ConfigError
        Unknown flag or confidence field, or a threshold outside 1..3.
    TypeError
        ``qa`` is not a numeric array.
    """
    bits = _flag_bits(flags)
    thresholds = check_min_confidence(min_confidence)

    words, unknown = _codes(qa, _QA_MAX)
    out = (words & bits) != 0
    for field, threshold in thresholds.items():
        out |= ((words >> QA_PIXEL_CONFIDENCE[field]) & 0b11) >= threshold
    return out | unknown


def qa_cloud(qa: np.ndarray) -> np.ndarray:
    """Cloud pixels of a QA_PIXEL array: dilated cloud, cirrus, cloud or cloud shadow bit.

    Parameters
    ----------
    qa : ndarray, shape (rows, cols)
        QA_PIXEL words.

    Returns
    -------
    ndarray of bool, shape (rows, cols)
        True where bit 1, 2, 3 or 4 is set. Values that are not uint16 words are False
        (reported as invalid, not cloud).
    """
    words, unknown = _codes(qa, _QA_MAX)
    return ((words & _flag_bits(QA_CLOUD_FLAGS)) != 0) & ~unknown


def qa_fill(qa: np.ndarray) -> np.ndarray:
    """Fill (no data) pixels of a QA_PIXEL array: bit 0 set.

    Returns
    -------
    ndarray of bool, shape (rows, cols)
        True where the fill bit is set. Values that are not uint16 words are False.
    """
    words, unknown = _codes(qa, _QA_MAX)
    return ((words & _flag_bits(("fill",))) != 0) & ~unknown


# --------------------------------------------------------------------------- DN masks


def nodata_mask(arr: np.ndarray, nodata: float | None = 0) -> np.ndarray:
    """Pixels equal to the nodata value; NaN is always nodata in a float array.

    Parameters
    ----------
    arr : ndarray, shape (rows, cols)
        DN (uint16) or reflectance (float) of one band.
    nodata : number or None
        The band's nodata value (0 for Sentinel-2 and Landsat C2 DN). ``None``: only NaN
        counts. NaN is accepted and means the same as ``None`` for float arrays.

    Returns
    -------
    ndarray of bool, shape (rows, cols)
    """
    arr = np.asarray(arr)
    out = np.isnan(arr) if np.issubdtype(arr.dtype, np.floating) else np.zeros(arr.shape, bool)
    if nodata is not None and not (isinstance(nodata, (float, np.floating)) and np.isnan(nodata)):
        out |= arr == nodata
    return out


def saturated_mask(arr: np.ndarray, saturated_value: float | None) -> np.ndarray:
    """Pixels at or above the saturation DN.

    Parameters
    ----------
    arr : ndarray, shape (rows, cols)
        DN of one band (uint16 in the products).
    saturated_value : number or None
        The product's saturated DN (:attr:`udfs.sensors.Sensor.saturated_dn`, 65535 for
        Sentinel-2). ``None`` disables the test (Landsat flags saturation in QA_RADSAT).

    Returns
    -------
    ndarray of bool, shape (rows, cols)
        True where ``arr >= saturated_value`` (NaN is False: that is nodata).
    """
    arr = np.asarray(arr)
    if saturated_value is None:
        return np.zeros(arr.shape, bool)
    with np.errstate(invalid="ignore"):
        return arr >= saturated_value


def out_of_range_mask(arr: np.ndarray, valid_range: tuple[float, float] | None) -> np.ndarray:
    """Pixels whose DN lies outside the product's documented valid range.

    Parameters
    ----------
    arr : ndarray, shape (rows, cols)
        DN of one band (uint16 in the products).
    valid_range : (number, number) or None
        Lowest and highest valid DN, inclusive (:attr:`udfs.sensors.Sensor.valid_range`,
        Landsat C2 SR 7273..43636). ``None`` disables the test.

    Returns
    -------
    ndarray of bool, shape (rows, cols)
        True where ``arr < lo`` or ``arr > hi`` (NaN is False: that is nodata). The
        nodata DN (0) is outside Landsat's range, so it is flagged here too; it is
        reported as nodata by :func:`nodata_mask` as well.
    """
    arr = np.asarray(arr)
    if valid_range is None:
        return np.zeros(arr.shape, bool)
    lo, hi = valid_range
    with np.errstate(invalid="ignore"):
        return (arr < lo) | (arr > hi)


def radsat_mask(radsat: np.ndarray, sensor_key: str) -> np.ndarray:
    """Pixels whose Landsat ``QA_RADSAT`` word flags saturation of a reflectance band.

    Parameters
    ----------
    radsat : ndarray, shape (rows, cols)
        QA_RADSAT words (uint16 in the product; float with NaN accepted). Bit-packed.
    sensor_key : str
        Selects the bit of each reflectance band
        (:attr:`udfs.sensors.Sensor.saturation_bits`: Collection 2, bit ``n - 1`` is
        band ``n``; OLI ``SR_B4`` is bit 3, TM/ETM+ ``SR_B7`` is bit 6).

    Returns
    -------
    ndarray of bool, shape (rows, cols)
        True where any bit of a band the sensor reads as reflectance is set, or the
        value is not a uint16 word (negative, > 65535, NaN, non-integral). Other bits
        (band 9, thermal, terrain occlusion) are ignored.

    Raises
    ------
    UnknownSensorError
        Unknown ``sensor_key``.
    ValueError
        The sensor has no QA_RADSAT saturation bits.
    """
    sensor = _sensor(sensor_key)
    reflectance = {b.name for b in sensor.reflectance_bands}
    bits = 0
    for band, bit in sensor.saturation_bits.items():
        if band in reflectance:
            bits |= 1 << bit
    if not bits:
        raise ValueError(f"{sensor_key} has no QA_RADSAT saturation bits")
    words, unknown = _codes(radsat, _QA_MAX)
    return ((words & bits) != 0) | unknown


def _dn_masks(
    arrays: list[np.ndarray],
    shape: tuple[int, ...],
    nodata: float | None,
    saturated_value: float | None,
    valid_range: tuple[float, float] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(nodata in any band, saturated or out of range in any band)`` of one tile's DN.

    The same answers as :func:`nodata_mask`, :func:`saturated_mask` and
    :func:`out_of_range_mask` OR-ed over the bands. For integer bands of one dtype they
    come from the pixel-wise minimum and maximum over the bands: a band is at or above
    the saturated DN (or above the range) somewhere exactly where the maximum is, below
    the range where the minimum is, and equal to a nodata DN that is the dtype's lowest
    value (0 for the products' uint16) where the minimum is. Two passes over each band
    instead of three tests and three ORs.
    """
    dtypes = {a.dtype for a in arrays}
    fast = len(dtypes) == 1 and np.issubdtype(next(iter(dtypes)), np.integer)
    if not fast:  # float bands (NaN is nodata, never the minimum), mixed dtypes, none
        no = np.zeros(shape, bool)
        bad = np.zeros(shape, bool)
        for a in arrays:
            no |= nodata_mask(a, nodata)
            bad |= saturated_mask(a, saturated_value)
            bad |= out_of_range_mask(a, valid_range)
        return no, bad
    low = np.minimum(arrays[0], arrays[-1])
    high = np.maximum(arrays[0], arrays[-1])
    for a in arrays[1:-1]:
        np.minimum(low, a, out=low)
        np.maximum(high, a, out=high)
    lowest = np.iinfo(low.dtype).min
    if nodata is None:
        no = np.zeros(shape, bool)
    elif nodata == lowest:
        no = low == nodata
    else:  # a nodata DN inside the dtype's range: any band equal to it
        no = np.zeros(shape, bool)
        for a in arrays:
            no |= a == nodata
    bad = np.zeros(shape, bool) if saturated_value is None else high >= saturated_value
    if valid_range is not None:
        lo, hi = valid_range
        bad |= (low < lo) | (high > hi)
    return no, bad


#: Bits of :func:`_scl_table`: nodata, invalid, cloud, masked.
_NODATA_BIT, _INVALID_BIT, _CLOUD_BIT, _MASKED_BIT = 1, 2, 4, 8


@functools.lru_cache(maxsize=16)
def _scl_table(classes: tuple[int, ...]) -> np.ndarray:
    """uint8 bits of every uint16 SCL value (:data:`_NODATA_BIT` ...), read-only.

    Codes outside 0..11 are invalid and masked, never nodata or cloud (the module's
    Decisions), as :func:`_scl_lookup` says for each question separately.
    """
    table = np.full(65536, _INVALID_BIT | _MASKED_BIT, np.uint8)
    table[: _SCL_MAX + 1] = 0
    for c in SCL_NODATA_CLASSES:
        table[c] |= _NODATA_BIT
    for c in SCL_INVALID_CLASSES:
        table[c] |= _INVALID_BIT
    for c in SCL_CLOUD_CLASSES:
        table[c] |= _CLOUD_BIT
    for c in check_scl_classes(classes):
        table[c] |= _MASKED_BIT
    table.setflags(write=False)
    return table


def _scl_masks(
    scl: np.ndarray, classes: Iterable[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(nodata, invalid, cloud, masked-by-class)`` of an SCL array.

    The same four masks as ``_scl_lookup`` with :data:`SCL_NODATA_CLASSES`,
    :data:`SCL_INVALID_CLASSES` and :func:`scl_cloud`, and :func:`scl_mask` with
    ``classes``; for uint8 / uint16 arrays from one table lookup instead of four.
    """
    arr = np.asarray(scl)
    if arr.dtype not in (np.uint8, np.uint16):
        return (
            _scl_lookup(arr, SCL_NODATA_CLASSES, unknown=False),
            _scl_lookup(arr, SCL_INVALID_CLASSES, unknown=True),
            scl_cloud(arr),
            scl_mask(arr, classes),
        )
    bits = _scl_table(tuple(sorted(set(check_scl_classes(classes))))).take(arr)
    return tuple(  # type: ignore[return-value]
        (bits & b).view(bool) if b == 1 else (bits & b) != 0
        for b in (_NODATA_BIT, _INVALID_BIT, _CLOUD_BIT, _MASKED_BIT)
    )


# --------------------------------------------------------------------------- dispatch


def _sensor(sensor_key: str) -> Sensor:
    try:
        return SENSORS[sensor_key]
    except KeyError:
        raise UnknownSensorError(sensor_key) from None


def quality_scheme(sensor_key: str) -> str | None:
    """Which quality band a sensor has: ``"scl"``, ``"qa_pixel"`` or ``None``.

    Read from the sensor's ``quality`` bands in :data:`udfs.sensors.SENSORS`, so a new
    sensor with an SCL or QA_PIXEL band needs no code here.

    Raises
    ------
    UnknownSensorError
        ``sensor_key`` is not a known sensor.
    """
    names = {b.name.upper() for b in _sensor(sensor_key).bands if b.role == "quality"}
    if "SCL" in names:
        return "scl"
    if "QA_PIXEL" in names:
        return "qa_pixel"
    return None


#: Keyword default of :func:`quality_mask`: take the value from the sensor's definition.
FROM_SENSOR = "sensor"


def quality_mask(
    sensor_key: str,
    qa: np.ndarray | None,
    bands: Mapping[str, np.ndarray],
    *,
    radsat: np.ndarray | None = None,
    masks: MaskSettings | None = None,
    nodata: float | None = None,
    saturated_value: float | str | None = FROM_SENSOR,
    valid_range: tuple[float, float] | str | None = FROM_SENSOR,
    scl_classes: Iterable[int] | None = None,
    qa_flags: Iterable[str] | None = None,
    min_confidence: Mapping[str, int] | None = None,
) -> QualityMask:
    """Quality of one tile: nodata, invalid, cloud and masked pixels.

    Parameters
    ----------
    sensor_key : str
        ``sentinel2-l2a`` (quality from SCL), ``landsat-c2l2`` / ``landsat-c2l2-tm``
        (quality from QA_PIXEL, saturation from QA_RADSAT) or ``sentinel2-l1c`` (no
        quality band: nodata and saturation only, cloud unknown).
    qa : ndarray, shape (rows, cols), or None
        The tile's ``qa`` column (SCL or QA_PIXEL). Must be None for a sensor without a
        quality band, and must not be None for one with a quality band.
    bands : mapping of str to ndarray, shape (rows, cols)
        Reflectance bands as **DN** (uint16), keyed by column name. Every band takes
        part: nodata, saturation or a DN outside the valid range in any of them marks the
        pixel invalid. Keys that are quality columns of the sensor (``qa``, ``radsat``)
        are ignored here (pass them as ``qa`` / ``radsat``).
    radsat : ndarray, shape (rows, cols), optional
        Landsat ``QA_RADSAT`` words (:func:`radsat_mask`). None: saturation unknown
        (the band is optional), only the valid range applies.
    masks : MaskSettings, optional
        Which quality classes and flags to mask; default :data:`DEFAULT_MASKS`.
    nodata : number, optional
        Nodata DN; default the sensor's (0).
    saturated_value : number or None
        Saturated DN; default the sensor's (:attr:`udfs.sensors.Sensor.saturated_dn`:
        65535 for Sentinel-2, none for Landsat). None disables the test.
    valid_range : (number, number) or None
        Valid DN range; default the sensor's (:attr:`udfs.sensors.Sensor.valid_range`:
        7273..43636 for Landsat C2 SR, none for Sentinel-2). None disables the test.
    scl_classes, qa_flags, min_confidence
        Override the corresponding field of ``masks`` (see :class:`MaskSettings`).

    Returns
    -------
    QualityMask
        Four bool arrays of shape (rows, cols): ``nodata`` ⊆ ``invalid`` ⊆ ``masked``;
        ``cloud`` is reported independently of what is masked (with the defaults,
        ``cloud`` ⊆ ``masked``); ``cloud_known`` is False for a sensor without a quality
        band.

    Raises
    ------
    UnknownSensorError
        Unknown ``sensor_key``.
    ValueError
        ``qa`` presence does not match the sensor, ``radsat`` is given for a sensor
        without saturation bits, arrays disagree in shape, or there is no array to take
        the shape from.
    udfs.errors.ConfigError
        A class, flag or threshold is not valid.
    """
    sensor = _sensor(sensor_key)
    scheme = quality_scheme(sensor_key)
    settings = masks if masks is not None else DEFAULT_MASKS
    scl_classes = settings.scl_classes if scl_classes is None else scl_classes
    qa_flags = settings.qa_flags if qa_flags is None else qa_flags
    min_confidence = settings.min_confidence if min_confidence is None else min_confidence
    if nodata is None:
        nodata = sensor.nodata
    if isinstance(saturated_value, str):
        saturated_value = sensor.saturated_dn
    if isinstance(valid_range, str):
        valid_range = sensor.valid_range
    if scheme is None and qa is not None:
        raise ValueError(f"{sensor_key} has no quality band, but a qa array was given")
    if scheme is not None and qa is None:
        raise ValueError(f"{sensor_key} needs its {scheme.upper()} quality band as qa")
    if radsat is not None and not sensor.saturation_bits:
        raise ValueError(f"{sensor_key} has no QA_RADSAT band, but a radsat array was given")

    quality_columns = {b.common for b in sensor.bands if b.role == "quality"} | {"qa", "radsat"}
    arrays = {k: np.asarray(v) for k, v in bands.items() if k not in quality_columns}
    shapes = {k: a.shape for k, a in arrays.items()}
    if qa is not None:
        qa = np.asarray(qa)
        shapes["qa"] = qa.shape
    if radsat is not None:
        radsat = np.asarray(radsat)
        shapes["radsat"] = radsat.shape
    if not shapes:
        raise ValueError(f"{sensor_key}: no band and no qa array, cannot build a mask")
    if len(set(shapes.values())) > 1:
        raise ValueError(f"{sensor_key}: arrays of one tile must share a shape, got {shapes}")
    shape = next(iter(shapes.values()))

    no, bad = _dn_masks(list(arrays.values()), shape, nodata, saturated_value, valid_range)
    if radsat is not None:
        bad |= radsat_mask(radsat, sensor_key)

    cloud_known = scheme is not None
    if scheme == "scl":
        assert qa is not None
        scl_no, scl_bad, cloud, flagged = _scl_masks(qa, scl_classes)
        no |= scl_no
        bad |= scl_bad
    elif scheme == "qa_pixel":
        assert qa is not None
        no |= qa_fill(qa)
        _, unknown = _codes(qa, _QA_MAX)
        bad |= unknown
        cloud = qa_cloud(qa)
        flagged = qa_pixel_mask(qa, qa_flags, min_confidence)
    else:
        cloud = np.zeros(shape, bool)
        flagged = np.zeros(shape, bool)

    invalid = no | bad
    return QualityMask(
        nodata=no, invalid=invalid, cloud=cloud, masked=invalid | flagged, cloud_known=cloud_known
    )


#: The default mask settings, as used when a job passes none.
DEFAULT_MASKS = MaskSettings()
