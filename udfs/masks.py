"""Pixel quality masks: Sentinel-2 SCL, Landsat Collection 2 QA_PIXEL, nodata and saturation.

Pure numpy kernels (no pyspark, no I/O). Every mask is a boolean array of the input's
shape, ``(rows, cols)`` for one tile, and **True means "mask this pixel"** (exclude it).

Three questions are kept apart so that statistics can report them separately
(:class:`QualityMask`):

``nodata``
    The pixel has no measurement: DN equal to the band's nodata value (0) in any
    reflectance band, SCL class 0, or the QA_PIXEL fill bit.
``invalid``
    ``nodata``, or a measurement that cannot be trusted whatever the weather: DN at or
    above the saturation value (65535) in any reflectance band, SCL class 1
    (saturated or defective), or a quality code outside the product's range.
``cloud``
    Cloud or cloud shadow, for the *cloud fraction*: SCL 3, 8, 9, 10, or QA_PIXEL bits
    dilated cloud, cirrus, cloud, cloud shadow. Reported whatever the masking choice.
``masked``
    What the features stage drops: ``invalid`` plus the configured quality classes or
    flags (by default clouds, cloud shadows, cirrus and snow).

Decisions
---------
* SCL values outside the defined classes 0..11 (including NaN or non-integral values of a
  float array) are **masked** and counted as ``invalid``: an unknown code cannot be
  trusted, and treating it as clear would let garbage into the statistics. They are never
  counted as cloud.
* QA_PIXEL values outside 0..65535 (or NaN in a float array) are masked likewise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

import numpy as np

from udfs.errors import ConfigError, PipelineError
from udfs.sensors import QA_PIXEL_BITS, QA_PIXEL_CONFIDENCE, SCL_CLASSES, SENSORS

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

#: DN that Sentinel-2 and Landsat Collection 2 use for saturated pixels (uint16 maximum).
DEFAULT_SATURATED_VALUE = 65535

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
    """

    nodata: np.ndarray
    invalid: np.ndarray
    cloud: np.ndarray
    masked: np.ndarray


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


def _check_scl_classes(classes: Iterable[int]) -> tuple[int, ...]:
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
    return out


def _scl_lookup(scl: np.ndarray, classes: Iterable[int], *, unknown: bool) -> np.ndarray:
    lut = np.zeros(_SCL_MAX + 1, dtype=bool)
    lut[list(_check_scl_classes(classes))] = True
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
    flags = tuple(flags)
    unknown = [f for f in flags if f not in QA_PIXEL_BITS]
    if unknown:
        raise ConfigError(
            f"unknown QA_PIXEL flag(s) {unknown}; expected some of {list(QA_PIXEL_BITS)}"
        )
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
    thresholds = dict(min_confidence or {})
    unknown_fields = [k for k in thresholds if k not in QA_PIXEL_CONFIDENCE]
    if unknown_fields:
        raise ConfigError(
            f"unknown QA_PIXEL confidence field(s) {unknown_fields}; "
            f"expected some of {list(QA_PIXEL_CONFIDENCE)}"
        )
    bad = {k: v for k, v in thresholds.items() if isinstance(v, bool) or v not in (1, 2, 3)}
    if bad:
        raise ConfigError(f"QA_PIXEL confidence thresholds must be 1, 2 or 3, got {bad}")

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


def saturated_mask(
    arr: np.ndarray, saturated_value: float | None = DEFAULT_SATURATED_VALUE
) -> np.ndarray:
    """Pixels at or above the saturation DN.

    Parameters
    ----------
    arr : ndarray, shape (rows, cols)
        DN of one band (uint16 in the products).
    saturated_value : number or None
        Saturation DN, 65535 for Sentinel-2 and Landsat C2. ``None`` disables the test.

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


# --------------------------------------------------------------------------- dispatch


def quality_scheme(sensor_key: str) -> str | None:
    """Which quality band a sensor has: ``"scl"``, ``"qa_pixel"`` or ``None``.

    Read from the sensor's ``quality`` band in :data:`udfs.sensors.SENSORS`, so a new
    sensor with an SCL or QA_PIXEL band needs no code here.

    Raises
    ------
    UnknownSensorError
        ``sensor_key`` is not a known sensor.
    """
    try:
        sensor = SENSORS[sensor_key]
    except KeyError:
        raise UnknownSensorError(sensor_key) from None
    names = {b.name.upper() for b in sensor.bands if b.role == "quality"}
    if "SCL" in names:
        return "scl"
    if "QA_PIXEL" in names:
        return "qa_pixel"
    return None


def quality_mask(
    sensor_key: str,
    qa: np.ndarray | None,
    bands: Mapping[str, np.ndarray],
    *,
    nodata: float | None = None,
    saturated_value: float | None = DEFAULT_SATURATED_VALUE,
    scl_classes: Iterable[int] = DEFAULT_SCL_MASKED,
    qa_flags: Iterable[str] = DEFAULT_QA_FLAGS,
    min_confidence: Mapping[str, int] | None = None,
) -> QualityMask:
    """Quality of one tile: nodata, invalid, cloud and masked pixels.

    Parameters
    ----------
    sensor_key : str
        ``sentinel2-l2a`` (quality from SCL), ``landsat-c2l2`` / ``landsat-c2l2-tm``
        (quality from QA_PIXEL) or ``sentinel2-l1c`` (no quality band: nodata and
        saturation only, ``cloud`` is all False).
    qa : ndarray, shape (rows, cols), or None
        The tile's ``qa`` column (SCL or QA_PIXEL). Must be None for a sensor without a
        quality band, and must not be None for one with a quality band.
    bands : mapping of str to ndarray, shape (rows, cols)
        Reflectance bands as **DN** (uint16), keyed by column name. Every band takes
        part: nodata (DN == ``nodata``) or saturation in any of them masks the pixel. A
        ``"qa"`` key, if present, is ignored here (pass it as ``qa``).
    nodata : number, optional
        Nodata DN; default the sensor's (0).
    saturated_value : number or None
        Saturation DN (default 65535); None disables the test.
    scl_classes : iterable of int
        SCL classes to mask (Sentinel-2 L2A), default :data:`DEFAULT_SCL_MASKED`.
    qa_flags, min_confidence
        QA_PIXEL flags and confidence thresholds to mask (Landsat), see
        :func:`qa_pixel_mask`.

    Returns
    -------
    QualityMask
        Four bool arrays of shape (rows, cols): ``nodata`` ⊆ ``invalid`` ⊆ ``masked``;
        ``cloud`` is reported independently of what is masked (with the defaults,
        ``cloud`` ⊆ ``masked``).

    Raises
    ------
    UnknownSensorError
        Unknown ``sensor_key``.
    ValueError
        ``qa`` presence does not match the sensor, arrays disagree in shape, or there is
        no array to take the shape from.
    """
    scheme = quality_scheme(sensor_key)
    if nodata is None:
        nodata = SENSORS[sensor_key].nodata
    if scheme is None and qa is not None:
        raise ValueError(f"{sensor_key} has no quality band, but a qa array was given")
    if scheme is not None and qa is None:
        raise ValueError(f"{sensor_key} needs its {scheme.upper()} quality band as qa")

    arrays = {k: np.asarray(v) for k, v in bands.items() if k != "qa"}
    if qa is not None:
        qa = np.asarray(qa)
    shapes = {k: a.shape for k, a in arrays.items()}
    if qa is not None:
        shapes["qa"] = qa.shape
    if not shapes:
        raise ValueError(f"{sensor_key}: no band and no qa array, cannot build a mask")
    if len(set(shapes.values())) > 1:
        raise ValueError(f"{sensor_key}: arrays of one tile must share a shape, got {shapes}")
    shape = next(iter(shapes.values()))

    no = np.zeros(shape, bool)
    sat = np.zeros(shape, bool)
    for a in arrays.values():
        no |= nodata_mask(a, nodata)
        sat |= saturated_mask(a, saturated_value)

    if scheme == "scl":
        assert qa is not None
        no |= _scl_lookup(qa, SCL_NODATA_CLASSES, unknown=False)
        # unknown SCL codes are invalid (but not nodata, not cloud)
        sat |= _scl_lookup(qa, SCL_INVALID_CLASSES, unknown=True)
        cloud = scl_cloud(qa)
        flagged = scl_mask(qa, scl_classes)
    elif scheme == "qa_pixel":
        assert qa is not None
        no |= qa_fill(qa)
        _, unknown = _codes(qa, _QA_MAX)
        sat |= unknown
        cloud = qa_cloud(qa)
        flagged = qa_pixel_mask(qa, qa_flags, min_confidence)
    else:
        cloud = np.zeros(shape, bool)
        flagged = np.zeros(shape, bool)

    invalid = no | sat
    return QualityMask(nodata=no, invalid=invalid, cloud=cloud, masked=invalid | flagged)
