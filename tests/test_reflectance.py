"""DN to reflectance: Sentinel-2 (before/after baseline 04.00) and Landsat C2 L2 scaling."""

from __future__ import annotations

import numpy as np
import pytest

from udfs.reflectance import s2_scaling, to_reflectance

NAN = np.nan


def _close(actual, expected):
    assert actual.dtype == np.float32
    np.testing.assert_allclose(actual, np.array(expected), rtol=1e-6, atol=1e-7)


def test_s2_scaling_baseline_04_and_before():
    assert s2_scaling(-1000) == pytest.approx((1e-4, -0.1))
    assert s2_scaling(0) == pytest.approx((1e-4, 0.0))
    assert s2_scaling(-1000, quantification=20000) == pytest.approx((5e-5, -0.05))


@pytest.mark.parametrize("q", [0, -10000, float("nan"), float("inf")])
def test_s2_scaling_rejects_bad_quantification(q):
    with pytest.raises(ValueError, match="QUANTIFICATION_VALUE"):
        s2_scaling(-1000, q)


def test_s2_scaling_rejects_non_finite_offset():
    with pytest.raises(ValueError, match="BOA_ADD_OFFSET"):
        s2_scaling(float("nan"))


def test_sentinel2_baseline_04_uint16_by_hand():
    # (DN - 1000) / 10000
    dn = np.array([[0, 1000, 1500], [2000, 10000, 11000], [65535, 1, 500]], dtype=np.uint16)
    out = to_reflectance(dn, 1e-4, -0.1)
    _close(out, [[NAN, 0.0, 0.05], [0.1, 0.9, 1.0], [6.4535, -0.0999, -0.05]])


def test_sentinel2_before_baseline_04_uint16_by_hand():
    dn = np.array([[0, 1000, 1500], [2000, 10000, 11000], [65535, 1, 500]], dtype=np.uint16)
    out = to_reflectance(dn, 1e-4, 0.0)
    _close(out, [[NAN, 0.1, 0.15], [0.2, 1.0, 1.1], [6.5535, 0.0001, 0.05]])


def test_landsat_c2l2_uint16_by_hand():
    # DN * 2.75e-5 - 0.2
    dn = np.array([[0, 1, 7273], [10000, 20000, 30000], [43636, 65535, 8000]], dtype=np.uint16)
    out = to_reflectance(dn, 2.75e-5, -0.2)
    _close(
        out,
        [[NAN, -0.1999725, 0.0000075], [0.075, 0.35, 0.625], [0.99999, 1.6022125, 0.02]],
    )


def test_float32_input_nan_inf_and_nodata_become_nan():
    dn = np.array(
        [[0.0, NAN, np.inf], [1500.0, -np.inf, 2000.0], [1.0, 10000.0, 0.5]], dtype=np.float32
    )
    out = to_reflectance(dn, 1e-4, -0.1)
    _close(out, [[NAN, NAN, NAN], [0.05, NAN, 0.1], [-0.0999, 0.9, -0.09995]])


def test_nodata_none_keeps_zero_dn_and_other_nodata_values_work():
    dn = np.array([[0, 1000, 65535]], dtype=np.uint16)
    _close(to_reflectance(dn, 1e-4, -0.1, nodata=None), [[-0.1, 0.0, 6.4535]])
    _close(to_reflectance(dn, 1e-4, -0.1, nodata=65535), [[-0.1, 0.0, NAN]])


def test_result_that_overflows_float32_is_nan():
    out = to_reflectance(np.array([[1e300, 1.0]]), 1.0, 0.0, nodata=None)
    _close(out, [[NAN, 1.0]])


def test_all_nodata_tile_is_all_nan():
    out = to_reflectance(np.zeros((3, 3), np.uint16), 2.75e-5, -0.2)
    assert out.shape == (3, 3) and np.isnan(out).all()


def test_input_is_not_modified():
    dn = np.array([[0, 1000]], dtype=np.uint16)
    to_reflectance(dn, 1e-4, -0.1)
    np.testing.assert_array_equal(dn, [[0, 1000]])


def test_rejects_bool_input():
    with pytest.raises(TypeError, match="DN"):
        to_reflectance(np.zeros((3, 3), bool), 1e-4, 0.0)


@pytest.mark.parametrize(
    ("scale", "offset"), [(0.0, 0.0), (-1e-4, 0.0), (NAN, 0.0), (1e-4, np.inf)]
)
def test_rejects_bad_scale_or_offset(scale, offset):
    with pytest.raises(ValueError):
        to_reflectance(np.ones((3, 3), np.uint16), scale, offset)
