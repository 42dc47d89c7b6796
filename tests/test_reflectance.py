"""DN to reflectance: Sentinel-2 (before/after baseline 04.00) and Landsat C2 L2 scaling."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from udfs.features import tile_features
from udfs.indices import compute_indices
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


# --------------------------------------------------------------------------- negative reflectance
# A real processing-baseline 04.00 L2A metadata file, read here with plain xml.etree.

MTD_0400 = (
    Path(__file__).resolve().parents[2]
    / "shared/data/s2-metadata/S2B_MSIL2A_20220413T150759_N0400_R025_T33XWJ_20220414T082126.SAFE"
    / "MTD_MSIL2A.xml"
)
ESA_BAND_IDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10",
                "B11", "B12")  # fmt: skip
S2_COLUMNS = {"B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1",
              "B06": "rededge2", "B07": "rededge3", "B08": "nir", "B8A": "nir08", "B09": "nir09",
              "B11": "swir16", "B12": "swir22"}  # fmt: skip


@pytest.fixture(scope="module")
def mtd_0400() -> tuple[str, float, dict[str, float]]:
    if not MTD_0400.is_file():
        pytest.skip(f"real baseline 04.00 metadata absent ({MTD_0400})")
    root = ET.parse(MTD_0400).getroot()
    tags = {el.tag.rsplit("}", 1)[-1]: el for el in root.iter()}
    baseline = tags["PROCESSING_BASELINE"].text.strip()
    q = float(tags["BOA_QUANTIFICATION_VALUE"].text)
    offsets = {
        ESA_BAND_IDS[int(el.get("band_id"))]: float(el.text)
        for el in root.iter()
        if el.tag.rsplit("}", 1)[-1] == "BOA_ADD_OFFSET"
    }
    return baseline, q, offsets


def test_real_baseline_0400_metadata_gives_negative_reflectance_below_dn_1000(mtd_0400):
    baseline, q, offsets = mtd_0400
    assert baseline == "04.00" and q == 10000.0 and offsets["B04"] == offsets["B08"] == -1000.0
    scale, offset = s2_scaling(offsets["B04"], q)
    # (900 - 1000) / 10000 = -0.01 ; (1100 - 1000) / 10000 = 0.01 ; DN 1000 -> 0 ; DN 0 nodata
    dn = np.array([[900, 1100, 1000, 0]], np.uint16)
    _close(to_reflectance(dn, scale, offset), [[-0.01, 0.01, 0.0, NAN]])


def test_ndvi_is_nan_where_red_or_nir_is_negative_on_real_0400_scaling(mtd_0400):
    _, q, offsets = mtd_0400
    red_s = s2_scaling(offsets["B04"], q)
    nir_s = s2_scaling(offsets["B08"], q)
    red_dn = np.array([[900, 1100, 900, 1100]], np.uint16)  # -0.01, 0.01, -0.01, 0.01
    nir_dn = np.array([[1100, 900, 900, 1300]], np.uint16)  # 0.01, -0.01, -0.01, 0.03
    red = to_reflectance(red_dn, *red_s)
    nir = to_reflectance(nir_dn, *nir_s)
    ndvi = compute_indices({"red": red, "nir": nir}, ["NDVI"], "sentinel2-l2a")["NDVI"]
    # textbook: 0.02/0 (inf), -0.02/0, -0.02/-0.02 = 1 (!), 0.02/0.04 = 0.5
    np.testing.assert_array_equal(np.isnan(ndvi), [[True, True, True, False]])
    np.testing.assert_allclose(ndvi[0, 3], 0.5, rtol=1e-5)


def test_band_statistics_keep_the_negative_mean_of_a_dark_target(mtd_0400):
    _, q, offsets = mtd_0400
    scaling = {band: s2_scaling(offsets[band], q) for band in S2_COLUMNS}
    # A 2 x 2 dark water tile: red DN 900, 950, 1000, 1050 -> -0.01, -0.005, 0, 0.005;
    # every other band 1500 (0.05); SCL 6 (water).
    dn = {col: np.full((2, 2), 1500, np.uint16) for col in S2_COLUMNS.values()}
    dn["red"] = np.array([[900, 950], [1000, 1050]], np.uint16)
    dn["qa"] = np.full((2, 2), 6, np.uint8)
    f = tile_features("sentinel2-l2a", dn, scaling, ["NDVI", "NDWI"])
    red = f["stats"]["red"]
    assert red["count"] == 4
    # mean (-0.01 - 0.005 + 0 + 0.005) / 4 = -0.0025: not clipped to a positive value
    assert red["mean"] == pytest.approx(-0.0025, abs=1e-7)
    assert red["min"] == pytest.approx(-0.01, abs=1e-7)
    # NDVI only where red >= 0: red 0 -> (0.05 - 0) / 0.05 = 1; red 0.005 -> 0.045 / 0.055
    ndvi = f["stats"]["ndvi"]
    assert ndvi["count"] == 2
    assert ndvi["max"] == pytest.approx(1.0) and ndvi["min"] == pytest.approx(0.045 / 0.055)
    # NDWI (green, nir) does not use red: all four pixels, (0.05 - 0.05) / 0.1 = 0
    assert f["stats"]["ndwi"]["count"] == 4 and f["stats"]["ndwi"]["mean"] == 0.0
    assert f["valid_count"] == 4
