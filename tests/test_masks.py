"""Quality masks: SCL classes, QA_PIXEL bits and confidences, nodata, saturation, dispatch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from udfs.errors import ConfigError
from udfs.masks import (
    DEFAULT_MASKS,
    MaskSettings,
    QualityMask,
    UnknownSensorError,
    nodata_mask,
    out_of_range_mask,
    qa_cloud,
    qa_fill,
    qa_pixel_mask,
    quality_mask,
    radsat_mask,
    saturated_mask,
    scl_cloud,
    scl_mask,
)
from udfs.stats import fractions

T, F = True, False
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LC08 = DATA / "LC08_L2SP_001062_20201031_20201106_02_T2"
S2_L2A = DATA / "S2A_29RKH_20200219_0_L2A"


# --------------------------------------------------------------------------- purity


@pytest.mark.parametrize("module", ["udfs.masks", "udfs.reflectance", "udfs.indices", "udfs.stats"])
def test_kernel_module_imports_without_pyspark(module):
    code = (
        "import importlib, sys\n"
        f"importlib.import_module({module!r})\n"
        "loaded = sorted(m for m in sys.modules if m == 'pyspark' or m.startswith('pyspark.'))\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# --------------------------------------------------------------------------- SCL

# ESA SCL classes, masked by default or not (written out, not read from the code).
SCL_DEFAULT_MASKED = {0: T, 1: T, 2: F, 3: T, 4: F, 5: F, 6: F, 7: F, 8: T, 9: T, 10: T, 11: T}
SCL_IS_CLOUD = {0: F, 1: F, 2: F, 3: T, 4: F, 5: F, 6: F, 7: F, 8: T, 9: T, 10: T, 11: F}


@pytest.mark.parametrize("cls", range(12))
def test_scl_each_class_default_mask(cls):
    scl = np.full((3, 3), cls, dtype=np.uint8)
    assert (scl_mask(scl) == SCL_DEFAULT_MASKED[cls]).all()


@pytest.mark.parametrize("cls", range(12))
def test_scl_each_class_cloud(cls):
    scl = np.full((3, 3), cls, dtype=np.uint8)
    assert (scl_cloud(scl) == SCL_IS_CLOUD[cls]).all()


def test_scl_mask_3x3_by_hand():
    scl = np.array([[0, 4, 8], [3, 5, 9], [10, 11, 12]], dtype=np.uint8)
    expected = np.array([[T, F, T], [T, F, T], [T, T, T]])
    np.testing.assert_array_equal(scl_mask(scl), expected)
    np.testing.assert_array_equal(scl_cloud(scl), np.array([[F, F, T], [T, F, T], [T, F, F]]))


def test_scl_unknown_codes_are_masked_but_not_cloud():
    scl = np.array([[12, 255, 4]], dtype=np.uint8)
    np.testing.assert_array_equal(scl_mask(scl), [[T, T, F]])
    np.testing.assert_array_equal(scl_mask(scl, masked_classes=()), [[T, T, F]])
    np.testing.assert_array_equal(scl_cloud(scl), [[F, F, F]])
    signed = np.array([[-1, 4, 300]], dtype=np.int16)
    np.testing.assert_array_equal(scl_mask(signed), [[T, F, T]])


def test_scl_float_input_nan_and_fractional_codes_are_masked():
    scl = np.array([[np.nan, 3.5, 4.0], [np.inf, 5.0, 8.0]], dtype=np.float32)
    np.testing.assert_array_equal(scl_mask(scl), [[T, T, F], [T, F, T]])
    np.testing.assert_array_equal(scl_cloud(scl), [[F, F, F], [F, F, T]])


def test_scl_masked_classes_are_configurable():
    scl = np.array([[0, 4, 8], [3, 5, 9], [10, 11, 6]], dtype=np.uint8)
    np.testing.assert_array_equal(
        scl_mask(scl, masked_classes={4, 6}), [[F, T, F], [F, F, F], [F, F, T]]
    )
    np.testing.assert_array_equal(scl_mask(scl, masked_classes=[]), np.zeros((3, 3), bool))


@pytest.mark.parametrize("classes", [{12}, {-1}, {3.0}, {"3"}, {True}])
def test_scl_masked_classes_outside_0_11_are_rejected(classes):
    with pytest.raises(ConfigError, match="SCL classes"):
        scl_mask(np.zeros((3, 3), np.uint8), masked_classes=classes)


def test_scl_rejects_non_numeric_arrays():
    with pytest.raises(TypeError):
        scl_mask(np.zeros((3, 3), dtype=bool))


# --------------------------------------------------------------------------- QA_PIXEL

# Landsat C2 QA_PIXEL bit -> masked by default (fill, dilated cloud, cirrus, cloud,
# cloud shadow, snow); bits 6 clear, 7 water and the confidence bits 8-15 are not.
QA_BIT_DEFAULT_MASKED = {b: b <= 5 for b in range(16)}
QA_BIT_IS_CLOUD = {b: b in (1, 2, 3, 4) for b in range(16)}


@pytest.mark.parametrize("bit", range(16))
def test_qa_each_bit_default_mask(bit):
    qa = np.full((3, 3), 1 << bit, dtype=np.uint16)
    assert (qa_pixel_mask(qa) == QA_BIT_DEFAULT_MASKED[bit]).all()


@pytest.mark.parametrize("bit", range(16))
def test_qa_each_bit_cloud_and_fill(bit):
    qa = np.full((3, 3), 1 << bit, dtype=np.uint16)
    assert (qa_cloud(qa) == QA_BIT_IS_CLOUD[bit]).all()
    assert (qa_fill(qa) == (bit == 0)).all()


@pytest.mark.parametrize(
    ("flag", "bit"),
    [
        ("fill", 0),
        ("dilated_cloud", 1),
        ("cirrus", 2),
        ("cloud", 3),
        ("cloud_shadow", 4),
        ("snow", 5),
        ("clear", 6),
        ("water", 7),
    ],
)
def test_qa_single_flag_selects_only_its_bit(flag, bit):
    qa = (1 << np.arange(16, dtype=np.uint16)).astype(np.uint16).reshape(4, 4)
    expected = np.zeros(16, bool)
    expected[bit] = True
    np.testing.assert_array_equal(qa_pixel_mask(qa, flags=(flag,)), expected.reshape(4, 4))


@pytest.mark.parametrize(
    ("field", "low_bit"),
    [
        ("cloud_confidence", 8),
        ("cloud_shadow_confidence", 10),
        ("snow_ice_confidence", 12),
        ("cirrus_confidence", 14),
    ],
)
@pytest.mark.parametrize(
    ("threshold", "expected"),
    [(1, [F, T, T, T]), (2, [F, F, T, T]), (3, [F, F, F, T])],
)
def test_qa_confidence_field_thresholds(field, low_bit, threshold, expected):
    qa = np.array([0, 1, 2, 3], dtype=np.uint16) << low_bit
    out = qa_pixel_mask(qa, flags=(), min_confidence={field: threshold})
    np.testing.assert_array_equal(out, expected)


def test_qa_confidence_fields_do_not_leak_into_each_other():
    # every other 2-bit field at 3 (high), the cloud confidence field at 0
    qa = np.array([(3 << 10) | (3 << 12) | (3 << 14)], dtype=np.uint16)
    assert not qa_pixel_mask(qa, flags=(), min_confidence={"cloud_confidence": 1}).any()


def test_qa_pixel_3x3_real_codes_by_hand():
    # 1 fill; 21824 clear land, all confidences low; 22280 cloud, high confidence;
    # 21952 clear water; 55052 cloud + cirrus, high cloud and cirrus confidence;
    # 16 cloud shadow bit; 32 snow bit; 2 dilated cloud bit; 0 nothing set.
    qa = np.array([[1, 21824, 22280], [21952, 55052, 16], [32, 2, 0]], dtype=np.uint16)
    np.testing.assert_array_equal(qa_pixel_mask(qa), [[T, F, T], [F, T, T], [T, T, F]])
    np.testing.assert_array_equal(qa_cloud(qa), [[F, F, T], [F, T, T], [F, T, F]])
    np.testing.assert_array_equal(qa_fill(qa), [[T, F, F], [F, F, F], [F, F, F]])
    np.testing.assert_array_equal(
        qa_pixel_mask(qa, flags=("fill",), min_confidence={"cloud_confidence": 3}),
        [[T, F, T], [F, T, F], [F, F, F]],
    )
    np.testing.assert_array_equal(
        qa_pixel_mask(qa, flags=(), min_confidence={"cirrus_confidence": 3}),
        [[F, F, F], [F, T, F], [F, F, F]],
    )


def test_qa_values_outside_uint16_or_nan_are_masked_not_cloud():
    qa = np.array([[-1, 70000, 21824]], dtype=np.int32)
    np.testing.assert_array_equal(qa_pixel_mask(qa), [[T, T, F]])
    np.testing.assert_array_equal(qa_cloud(qa), [[F, F, F]])
    qf = np.array([[np.nan, 8.0, 21824.0]])
    np.testing.assert_array_equal(qa_pixel_mask(qf), [[T, T, F]])
    np.testing.assert_array_equal(qa_cloud(qf), [[F, T, F]])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"flags": ("clouds",)},
        {"min_confidence": {"cloud_conf": 2}},
        {"min_confidence": {"cloud_confidence": 0}},
        {"min_confidence": {"cloud_confidence": 4}},
    ],
)
def test_qa_bad_configuration_is_rejected(kwargs):
    with pytest.raises(ConfigError):
        qa_pixel_mask(np.zeros((3, 3), np.uint16), **kwargs)


# --------------------------------------------------------------------------- DN masks


def test_nodata_and_saturated_masks_uint16_by_hand():
    dn = np.array([[0, 1, 2], [0, 65535, 7], [3, 0, 9]], dtype=np.uint16)
    np.testing.assert_array_equal(nodata_mask(dn, 0), [[T, F, F], [T, F, F], [F, T, F]])
    np.testing.assert_array_equal(saturated_mask(dn, 65535), [[F, F, F], [F, T, F], [F, F, F]])
    np.testing.assert_array_equal(saturated_mask(dn, 7), [[F, F, F], [F, T, T], [F, F, T]])
    assert not nodata_mask(dn, None).any()
    assert not saturated_mask(dn, None).any()


def test_nodata_mask_float_nan_is_always_nodata():
    x = np.array([[0.0, np.nan, 0.5], [np.inf, -0.1, 0.0]], dtype=np.float32)
    np.testing.assert_array_equal(nodata_mask(x, 0), [[T, T, F], [F, F, T]])
    np.testing.assert_array_equal(nodata_mask(x, None), [[F, T, F], [F, F, F]])
    np.testing.assert_array_equal(nodata_mask(x, np.nan), [[F, T, F], [F, F, F]])
    np.testing.assert_array_equal(saturated_mask(x, 0.5), [[F, F, T], [T, F, F]])


# --------------------------------------------------------------------------- quality_mask


def test_quality_mask_sentinel2_l2a_by_hand():
    scl = np.array([[0, 4, 8], [1, 5, 11], [3, 12, 4]], dtype=np.uint8)
    red = np.array([[0, 500, 600], [700, 65535, 800], [900, 1000, 0]], dtype=np.uint16)
    nir = np.array([[0, 3000, 3100], [3200, 3300, 3400], [3500, 3600, 3700]], dtype=np.uint16)
    q = quality_mask("sentinel2-l2a", scl, {"red": red, "nir": nir})
    assert isinstance(q, QualityMask)
    np.testing.assert_array_equal(q.nodata, [[T, F, F], [F, F, F], [F, F, T]])
    np.testing.assert_array_equal(q.invalid, [[T, F, F], [T, T, F], [F, T, T]])
    np.testing.assert_array_equal(q.cloud, [[F, F, T], [F, F, F], [T, F, F]])
    np.testing.assert_array_equal(q.masked, [[T, F, T], [T, T, T], [T, T, T]])
    assert fractions(q.nodata, q.cloud, q.masked) == pytest.approx((1 / 9, 2 / 7))

    # masking only no-data and defective classes still reports the clouds
    q2 = quality_mask("sentinel2-l2a", scl, {"red": red, "nir": nir}, scl_classes={0, 1})
    np.testing.assert_array_equal(q2.masked, [[T, F, F], [T, T, F], [F, T, T]])
    np.testing.assert_array_equal(q2.cloud, q.cloud)


def test_quality_mask_landsat_by_hand():
    qa = np.array([[1, 21824, 22280], [21824, 21824, 16], [32, 21952, 21824]], dtype=np.uint16)
    red = np.array([[0, 8000, 30000], [65535, 8100, 7000], [40000, 7500, 7600]], np.uint16)
    nir = np.array([[0, 20000, 31000], [20000, 0, 15000], [40000, 6000, 21000]], np.uint16)
    q = quality_mask("landsat-c2l2", qa, {"red": red, "nir08": nir, "qa": qa})
    np.testing.assert_array_equal(q.nodata, [[T, F, F], [F, T, F], [F, F, F]])
    # Invalid beyond nodata: outside the C2 SR valid range 7273..43636, i.e. red 65535
    # (1, 0), red 7000 (1, 2) and nir 6000 (2, 1). Landsat has no saturated DN of its own.
    np.testing.assert_array_equal(q.invalid, [[T, F, F], [T, T, T], [F, T, F]])
    np.testing.assert_array_equal(q.cloud, [[F, F, T], [F, F, T], [F, F, F]])
    np.testing.assert_array_equal(q.masked, [[T, F, T], [T, T, T], [T, T, F]])
    assert q.cloud_known
    # valid: (0, 1) and (2, 2); cloud with data: (0, 2) and (1, 2) of 7 pixels with data
    assert fractions(q.nodata, q.cloud, q.masked) == pytest.approx((2 / 9, 2 / 7))

    q2 = quality_mask(
        "landsat-c2l2-tm",
        qa,
        {"red": red, "nir08": nir},
        qa_flags=("fill",),
        min_confidence={"cloud_confidence": 3},
    )
    np.testing.assert_array_equal(q2.masked, [[T, F, T], [T, T, T], [F, T, F]])
    np.testing.assert_array_equal(q2.cloud, q.cloud)


def test_quality_mask_sentinel2_l1c_has_only_nodata_and_saturation():
    b02 = np.array([[0, 1200, 65535], [1300, 1400, 1500], [1600, 1700, 1800]], np.uint16)
    b04 = np.array([[900, 0, 1000], [1100, 1200, 1300], [1400, 1500, 65535]], np.uint16)
    q = quality_mask("sentinel2-l1c", None, {"blue": b02, "red": b04})
    np.testing.assert_array_equal(q.nodata, [[T, T, F], [F, F, F], [F, F, F]])
    np.testing.assert_array_equal(q.invalid, [[T, T, T], [F, F, F], [F, F, T]])
    assert not q.cloud.any() and q.cloud_known is False
    np.testing.assert_array_equal(q.masked, q.invalid)
    # Unknown is not zero: no quality band, no cloud fraction (7 pixels have data).
    valid_fraction, cloud_fraction = fractions(q.nodata, q.cloud, q.masked, q.cloud_known)
    assert valid_fraction == pytest.approx(5 / 9)  # 4 invalid pixels
    assert np.isnan(cloud_fraction)


def test_quality_mask_all_nodata_tile():
    zeros = np.zeros((3, 3), np.uint16)
    q = quality_mask("landsat-c2l2", np.ones((3, 3), np.uint16), {"red": zeros})
    assert q.nodata.all() and q.masked.all() and not q.cloud.any()
    valid_fraction, cloud_fraction = fractions(q.nodata, q.cloud, q.masked)
    assert valid_fraction == 0.0
    assert np.isnan(cloud_fraction)


def test_quality_mask_unknown_sensor_is_a_key_error():
    with pytest.raises(UnknownSensorError, match="modis") as info:
        quality_mask("modis", None, {"red": np.zeros((3, 3), np.uint16)})
    assert isinstance(info.value, KeyError)


@pytest.mark.parametrize(
    ("sensor", "qa", "bands", "match"),
    [
        ("sentinel2-l1c", np.zeros((3, 3), np.uint8), {}, "no quality band"),
        ("sentinel2-l2a", None, {"red": np.ones((3, 3), np.uint16)}, "SCL"),
        ("landsat-c2l2", None, {"red": np.ones((3, 3), np.uint16)}, "QA_PIXEL"),
        ("sentinel2-l2a", np.zeros((3, 3), np.uint8), {"red": np.ones((2, 3))}, "shape"),
        ("sentinel2-l1c", None, {}, "no band"),
    ],
)
def test_quality_mask_rejects_inconsistent_input(sensor, qa, bands, match):
    with pytest.raises(ValueError, match=match):
        quality_mask(sensor, qa, bands)


# --------------------------------------------------------------------------- saturation, ranges


def test_valid_range_edges_7272_7273_43636_43637():
    dn = np.array([[0, 7272, 7273], [43636, 43637, 65535]], np.uint16)
    np.testing.assert_array_equal(out_of_range_mask(dn, (7273, 43636)), [[T, T, F], [F, T, T]])
    assert not out_of_range_mask(dn, None).any()
    # Through quality_mask, from the sensor's own definition (qa 21824: clear, no flag).
    qa = np.full((2, 3), 21824, np.uint16)
    q = quality_mask("landsat-c2l2", qa, {"red": dn})
    np.testing.assert_array_equal(q.invalid, [[T, T, F], [F, T, T]])
    np.testing.assert_array_equal(q.nodata, [[T, F, F], [F, F, F]])
    # Sentinel-2 documents no valid range: only DN 0 (nodata) and 65535 (saturated).
    scl = np.full((2, 3), 4, np.uint8)
    q2 = quality_mask("sentinel2-l2a", scl, {"red": dn})
    np.testing.assert_array_equal(q2.invalid, [[T, F, F], [F, F, T]])


# (word, masked on OLI, masked on TM/ETM+). Collection 2 QA_RADSAT (LSDS-1619 for OLI,
# LSDS-1618 for TM/ETM+): bit n-1 = band n. OLI: bits 0-6 bands 1-7 (all read as SR),
# bit 8 band 9 (cirrus, not SR), bit 11 terrain occlusion. TM/ETM+: bits 0-4 bands 1-5,
# bit 5 band 6 (thermal, not SR), bit 6 band 7, bit 8 band 6H, bit 9 dropped pixel.
RADSAT_WORDS = [
    (0, F, F),
    (1 << 3, T, T),  # OLI SR_B4 (red); TM SR_B4 (nir)
    (1 << 5, T, F),  # OLI SR_B6 (swir16); TM thermal band 6
    (1 << 6, T, T),  # SR_B7 on both
    (1 << 7, F, F),  # unused
    (1 << 8, F, F),  # OLI band 9; TM band 6H
    (1 << 11, F, F),  # OLI terrain occlusion
    ((1 << 11) | 1, T, T),  # band 1 as well
]


@pytest.mark.parametrize(("word", "oli", "tm"), RADSAT_WORDS)
def test_qa_radsat_bits_mask_only_through_reflectance_bands(word, oli, tm):
    radsat = np.array([[word]], np.uint16)
    assert radsat_mask(radsat, "landsat-c2l2")[0, 0] == oli
    assert radsat_mask(radsat, "landsat-c2l2-tm")[0, 0] == tm


def test_qa_radsat_bit_3_is_sr_b4_the_red_band_of_oli():
    # Bit 3 is band 4 (Collection 2 numbering from bit 0), not band 3 as in Collection 1's
    # radsat_qa (bit 0 = fill there). On OLI band 4 is SR_B4, the tiles' red column.
    from udfs.sensors import SENSORS

    oli = SENSORS["landsat-c2l2"]
    assert oli.saturation_bits["SR_B4"] == 3 and oli.band("SR_B4").common == "red"
    assert oli.saturation_bits["SR_B3"] == 2
    qa = np.full((1, 3), 21824, np.uint16)
    red = np.full((1, 3), 10000, np.uint16)
    radsat = np.array([[0, 1 << 3, 1 << 2]], np.uint16)
    q = quality_mask("landsat-c2l2", qa, {"red": red}, radsat=radsat)
    np.testing.assert_array_equal(q.invalid, [[F, T, T]])  # band 3 saturated masks too
    assert not q.nodata.any() and not q.cloud.any()


def test_qa_radsat_absent_means_only_the_valid_range_applies():
    qa = np.full((1, 2), 21824, np.uint16)
    red = np.array([[10000, 50000]], np.uint16)
    q = quality_mask("landsat-c2l2", qa, {"red": red})  # no radsat: unknown, not clear
    np.testing.assert_array_equal(q.invalid, [[F, T]])
    q2 = quality_mask("landsat-c2l2", qa, {"red": red}, radsat=np.array([[1, 0]], np.uint16))
    np.testing.assert_array_equal(q2.invalid, [[T, T]])


def test_qa_radsat_bad_words_are_masked_and_s2_has_none():
    assert radsat_mask(np.array([[np.nan, -1.0, 0.0]]), "landsat-c2l2").tolist() == [[T, T, F]]
    with pytest.raises(ValueError, match="QA_RADSAT"):
        radsat_mask(np.zeros((1, 1), np.uint16), "sentinel2-l2a")
    with pytest.raises(ValueError, match="radsat"):
        quality_mask(
            "sentinel2-l2a",
            np.zeros((1, 1), np.uint8),
            {"red": np.ones((1, 1), np.uint16)},
            radsat=np.zeros((1, 1), np.uint16),
        )


def test_sentinel2_saturated_dn_comes_from_the_sensor():
    scl = np.full((1, 3), 4, np.uint8)
    red = np.array([[65534, 65535, 1000]], np.uint16)
    for sensor, qa in (("sentinel2-l2a", scl), ("sentinel2-l1c", None)):
        q = quality_mask(sensor, qa, {"red": red})
        np.testing.assert_array_equal(q.invalid, [[F, T, F]], err_msg=sensor)
    # SCL class 1 (saturated or defective) is invalid whatever the DN
    q = quality_mask("sentinel2-l2a", np.array([[1, 4, 4]], np.uint8), {"red": red})
    np.testing.assert_array_equal(q.invalid, [[T, T, F]])


def test_quality_columns_in_bands_are_not_treated_as_reflectance():
    # A radsat word of 0 or a qa word passed among the bands must not count as DN 0.
    qa = np.full((1, 2), 21824, np.uint16)
    red = np.full((1, 2), 10000, np.uint16)
    bands = {"red": red, "qa": qa, "radsat": np.zeros((1, 2), np.uint16)}
    q = quality_mask("landsat-c2l2", qa, bands)
    assert not q.invalid.any()


# --------------------------------------------------------------------------- mask settings


def test_mask_settings_defaults_and_normalisation():
    assert DEFAULT_MASKS.scl_classes == (0, 1, 3, 8, 9, 10, 11)
    assert DEFAULT_MASKS.qa_flags == ("fill", "dilated_cloud", "cirrus", "cloud",
                                      "cloud_shadow", "snow")  # fmt: skip
    assert DEFAULT_MASKS.min_confidence == {}
    m = MaskSettings([9, 3, 3], ["cloud"], {"cirrus_confidence": 2, "cloud_confidence": 3})
    assert m.scl_classes == (3, 9)
    assert m.qa_min_confidence == (("cirrus_confidence", 2), ("cloud_confidence", 3))
    assert m == MaskSettings(
        (3, 9), ("cloud",), (("cloud_confidence", 3), ("cirrus_confidence", 2))
    )
    hash(m)  # frozen and hashable: safe to ship to executors


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scl_classes": [12]},
        {"scl_classes": [True]},
        {"scl_classes": "3,8"},
        {"qa_flags": ["clouds"]},
        {"qa_min_confidence": {"cloud_confidence": 0}},
        {"qa_min_confidence": {"cloud": 2}},
    ],
)
def test_mask_settings_are_validated(kwargs):
    with pytest.raises(ConfigError):
        MaskSettings(**kwargs)


def test_mask_settings_change_the_mask():
    scl = np.array([[3, 8, 11, 4]], np.uint8)
    red = np.full((1, 4), 1500, np.uint16)
    default = quality_mask("sentinel2-l2a", scl, {"red": red})
    np.testing.assert_array_equal(default.masked, [[T, T, T, F]])
    only_clouds = quality_mask("sentinel2-l2a", scl, {"red": red}, masks=MaskSettings([8, 9]))
    np.testing.assert_array_equal(only_clouds.masked, [[F, T, F, F]])
    # cloud is reported whatever is masked
    np.testing.assert_array_equal(only_clouds.cloud, default.cloud)
    # QA_PIXEL 21824: clear, every confidence field low (01). 22080 = 21824 - 256 + 512:
    # cloud confidence (bits 8-9) medium (10). Masked only with a threshold of 2.
    qa = np.array([[21824, 22080]], np.uint16)
    lred = np.full((1, 2), 10000, np.uint16)
    plain = quality_mask("landsat-c2l2", qa, {"red": lred}, masks=MaskSettings(qa_flags=["fill"]))
    strict = quality_mask(
        "landsat-c2l2",
        qa,
        {"red": lred},
        masks=MaskSettings(qa_flags=["fill"], qa_min_confidence={"cloud_confidence": 2}),
    )
    np.testing.assert_array_equal(plain.masked, [[F, F]])
    np.testing.assert_array_equal(strict.masked, [[F, T]])


# --------------------------------------------------------------------------- real samples


def _read(path: Path) -> np.ndarray:
    rasterio = pytest.importorskip("rasterio")
    with rasterio.open(path) as ds:
        return ds.read(1)


@pytest.mark.skipif(not LC08.is_dir(), reason=f"real Landsat 8 sample absent ({LC08})")
def test_real_landsat8_fill_mask_and_cloud_fraction():
    qa = _read(LC08 / f"{LC08.name}_QA_PIXEL.TIF")
    b4 = _read(LC08 / f"{LC08.name}_SR_B4.TIF")
    assert qa.dtype == np.uint16 and qa.shape == b4.shape

    fill_expected = (qa & 1) == 1
    assert fill_expected.any() and (~fill_expected).any()  # the scene has both
    np.testing.assert_array_equal(qa_pixel_mask(qa, flags=("fill",)), fill_expected)
    # SR nodata is always fill ...
    assert not ((b4 == 0) & ~fill_expected).any()
    # ... and SR_B4 is 0 wherever fill, except on a one-pixel rim where the fill region
    # meets data (284 pixels here): QA_PIXEL fill is the union over all bands, whose
    # edges are staggered, so SR_B4 still has a value there. quality_mask's nodata takes
    # both (fill | DN 0), so neither source alone has to be right.
    padded = np.pad(~fill_expected, 1)
    next_to_data = padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    assert (b4[fill_expected & ~next_to_data] == 0).all()
    assert (fill_expected & (b4 != 0)).sum() < 0.01 * fill_expected.sum()

    q = quality_mask("landsat-c2l2", qa, {"red": b4})
    no = fill_expected | (b4 == 0)
    np.testing.assert_array_equal(q.nodata, no)
    cloud = (qa & 0b11110) != 0  # bits 1-4, computed here without the code under test
    expected_cloud_fraction = (cloud & ~no).sum() / (~no).sum()
    _, cloud_fraction = fractions(q.nodata, q.cloud, q.masked)
    assert cloud_fraction == pytest.approx(expected_cloud_fraction)
    assert cloud_fraction > 0.99  # PROVENANCE.md: ~99.9 % of valid pixels are cloud


@pytest.mark.skipif(not S2_L2A.is_dir(), reason=f"real Sentinel-2 L2A sample absent ({S2_L2A})")
def test_real_sentinel2_scl_mask_matches_class_lookup():
    scl = _read(S2_L2A / "SCL.tif")
    expected = np.isin(scl, [0, 1, 3, 8, 9, 10, 11]) | (scl > 11)
    assert expected.any() and (~expected).any()
    np.testing.assert_array_equal(scl_mask(scl), expected)
    np.testing.assert_array_equal(scl_cloud(scl), np.isin(scl, [3, 8, 9, 10]))
