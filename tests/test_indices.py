"""Spectral indices: hand-worked values, nodata rules, band maps, safety, spyndex cross-check."""

from __future__ import annotations

from types import MappingProxyType

import numpy as np
import pytest

from udfs import indices
from udfs.indices import (
    INDICES,
    SENSOR_BAND_MAP,
    FormulaError,
    MissingIndexBandError,
    UnknownIndexError,
    compute_indices,
    index_columns,
    parse_formula,
)
from udfs.masks import UnknownSensorError
from udfs.sensors import SENSORS

NAN, INF = np.nan, np.inf
ALL_SENSORS = ("sentinel2-l2a", "sentinel2-l1c", "landsat-c2l2", "landsat-c2l2-tm")


def f32(rows):
    return np.array(rows, dtype=np.float32)


def _close(actual, expected):
    assert actual.dtype == np.float32
    assert actual.shape == (3, 3)
    np.testing.assert_allclose(actual, np.array(expected), rtol=1e-6, atol=1e-7)


# (a - b) / (a + b) worked by hand, cell by cell:
#  0.2/0.4  -0.2/0.4  0/0 ; 0/0.4  1.0/0  NaN in ; inf/inf  0.3/0.5  -0.2/0.2
ND_A = [[0.3, 0.1, 0.0], [0.2, 0.5, NAN], [INF, 0.4, 0.0]]
ND_B = [[0.1, 0.3, 0.0], [0.2, -0.5, 0.1], [0.1, 0.1, 0.2]]
ND_EXPECTED = [[0.5, -0.5, NAN], [0.0, NAN, NAN], [NAN, 0.6, -1.0]]


@pytest.mark.parametrize(
    ("name", "a", "b"),
    [
        ("NDVI", "nir", "red"),
        ("NDWI", "green", "nir"),  # McFeeters
        ("MNDWI", "green", "swir16"),
        ("NDBI", "swir16", "nir"),
        ("NBR", "nir", "swir22"),
        ("NDMI", "nir", "swir16"),
    ],
)
@pytest.mark.parametrize("sensor", ["sentinel2-l2a", "landsat-c2l2"])
def test_normalized_differences_by_hand(name, a, b, sensor):
    # Landsat stores its NIR band under the common name nir08
    column = {"nir": "nir08"} if sensor == "landsat-c2l2" else {}
    bands = {column.get(a, a): f32(ND_A), column.get(b, b): f32(ND_B)}
    out = compute_indices(bands, [name], sensor)
    assert list(out) == [name]
    _close(out[name], ND_EXPECTED)


def test_evi_by_hand():
    # 2.5 (N - R) / (N + 6 R - 7.5 B + 1)
    nir = f32([[0.5, 0.3, 0.875], [0.0, 0.4, NAN], [0.6, 0.2, 0.1]])
    red = f32([[0.1, 0.2, 0.0], [0.0, 0.4, 0.1], [0.1, 0.1, 0.3]])
    blue = f32([[0.05, 0.1, 0.25], [0.0, 0.2, 0.1], [0.1, INF, 0.0]])
    out = compute_indices({"nir": nir, "red": red, "blue": blue}, ["EVI"], "sentinel2-l2a")
    # 1/1.725, 0.25/1.75, 2.1875/0 ; 0/1, 0/2.3, NaN ; 1.25/1.45, inf input, -0.5/2.9
    _close(
        out["EVI"],
        [[0.5797101, 0.1428571, NAN], [0.0, 0.0, NAN], [0.8620690, NAN, -0.1724138]],
    )


def test_savi_by_hand():
    # 1.5 (N - R) / (N + R + 0.5)
    nir = f32([[0.5, 0.0, -0.25], [-0.5, 0.3, 0.4], [NAN, INF, 0.2]])
    red = f32([[0.1, 0.0, -0.25], [0.0, 0.3, 0.2], [0.1, 0.1, 0.4]])
    out = compute_indices({"nir": nir, "red": red}, ["SAVI"], "sentinel2-l2a")
    # 0.6/1.1, 0/0.5, 0/0 ; -0.75/0, 0/1.1, 0.3/1.1 ; NaN, inf, -0.3/1.1
    _close(
        out["SAVI"],
        [[0.5454545, 0.0, NAN], [NAN, 0.0, 0.2727273], [NAN, NAN, -0.2727273]],
    )


def test_inf_input_is_nodata_even_where_the_formula_is_finite():
    # EVI = 0.25 / -inf = -0.0 mathematically; an infinite reflectance is no measurement
    one = np.ones((1, 1), np.float32)
    bands = {"nir": one * 0.2, "red": one * 0.1, "blue": one * INF}
    assert np.isnan(compute_indices(bands, ["EVI"], "sentinel2-l2a")["EVI"]).all()


def test_all_masked_input_gives_all_nan():
    nan = np.full((3, 3), NAN, np.float32)
    out = compute_indices({"nir": nan, "red": nan}, ["NDVI", "SAVI"], "sentinel2-l1c")
    assert all(np.isnan(a).all() and a.dtype == np.float32 for a in out.values())


def test_float64_input_gives_float32_output_and_input_untouched():
    nir = np.array([[0.5, 0.0]])
    red = np.array([[0.1, 0.0]])
    out = compute_indices({"nir": nir, "red": red}, ["NDVI"], "sentinel2-l2a")["NDVI"]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6666667, NAN]], rtol=1e-6)
    np.testing.assert_array_equal(nir, [[0.5, 0.0]])


def test_several_indices_keep_the_requested_order():
    b = {c: np.full((3, 3), 0.2, np.float32) for c in ("nir08", "red", "swir22", "blue")}
    out = compute_indices(b, ["NBR", "NDVI", "EVI"], "landsat-c2l2-tm")
    assert list(out) == ["NBR", "NDVI", "EVI"]


# --------------------------------------------------------------------------- band maps


def test_nir_is_b08_for_sentinel2_and_nir08_for_landsat():
    assert SENSOR_BAND_MAP["sentinel2-l2a"]["nir"] == "nir"
    assert SENSOR_BAND_MAP["sentinel2-l1c"]["nir"] == "nir"
    assert SENSOR_BAND_MAP["landsat-c2l2"]["nir"] == "nir08"
    assert SENSOR_BAND_MAP["landsat-c2l2-tm"]["nir"] == "nir08"
    assert SENSORS["sentinel2-l2a"].band("nir").name == "B08"
    assert SENSORS["landsat-c2l2"].band("nir08").name == "SR_B5"
    assert SENSORS["landsat-c2l2-tm"].band("nir08").name == "SR_B4"


@pytest.mark.parametrize("sensor", ALL_SENSORS)
def test_every_index_resolves_to_real_columns_of_every_sensor(sensor):
    commons = {b.common for b in SENSORS[sensor].reflectance_bands}
    cols = index_columns(list(INDICES), sensor)
    assert set(cols) == set(INDICES)
    assert {c for m in cols.values() for c in m.values()} <= commons


def test_index_columns_for_landsat_ndvi():
    assert index_columns(["NDVI"], "landsat-c2l2") == {"NDVI": {"nir": "nir08", "red": "red"}}


def test_landsat_nir_column_missing_names_index_band_and_column():
    bands = {"nir": np.ones((3, 3), np.float32), "red": np.ones((3, 3), np.float32)}
    with pytest.raises(MissingIndexBandError) as info:
        compute_indices(bands, ["NDVI"], "landsat-c2l2")
    err = info.value
    assert isinstance(err, KeyError)
    assert (err.index, err.band, err.column) == ("NDVI", "nir", "nir08")
    assert "NDVI" in str(err) and "'nir'" in str(err) and "'nir08'" in str(err)


def test_missing_band_is_reported_before_any_index_is_computed():
    bands = {"nir": np.ones((3, 3), np.float32), "red": np.ones((3, 3), np.float32)}
    with pytest.raises(MissingIndexBandError, match="NBR.*swir22"):
        compute_indices(bands, ["NDVI", "NBR"], "sentinel2-l2a")


def test_band_the_sensor_lacks_is_reported(monkeypatch):
    ndre = parse_formula("NDRE", "(nir - rededge1) / (nir + rededge1)")
    monkeypatch.setattr(indices, "INDICES", MappingProxyType({**INDICES, "NDRE": ndre}))
    with pytest.raises(MissingIndexBandError, match="NDRE.*rededge1.*landsat-c2l2") as info:
        compute_indices({}, ["NDRE"], "landsat-c2l2")
    assert info.value.column is None


def test_unknown_index_and_sensor_are_key_errors():
    with pytest.raises(UnknownIndexError, match="NDVX") as info:
        compute_indices({}, ["NDVX"], "sentinel2-l2a")
    assert isinstance(info.value, KeyError)
    with pytest.raises(UnknownSensorError, match="modis") as info2:
        compute_indices({}, ["NDVI"], "modis")
    assert isinstance(info2.value, KeyError)


def test_dn_input_is_rejected():
    bands = {"nir": np.ones((3, 3), np.uint16), "red": np.ones((3, 3), np.uint16)}
    with pytest.raises(TypeError, match="to_reflectance"):
        compute_indices(bands, ["NDVI"], "sentinel2-l2a")


def test_bands_of_different_shape_are_rejected():
    bands = {"nir": np.ones((3, 3), np.float32), "red": np.ones((2, 3), np.float32)}
    with pytest.raises(ValueError, match="shape"):
        compute_indices(bands, ["NDVI"], "sentinel2-l2a")


# --------------------------------------------------------------------------- formulas


def test_index_bands_are_read_from_the_formula():
    assert INDICES["NDVI"].bands == ("nir", "red")
    assert INDICES["EVI"].bands == ("nir", "red", "blue")
    assert INDICES["NDWI"].bands == ("green", "nir")
    assert INDICES["NDBI"].bands == ("swir16", "nir")


def test_a_new_index_is_one_formula():
    gndvi = parse_formula("GNDVI", "(nir - green) / (nir + green)")
    assert gndvi.bands == ("nir", "green")
    got = gndvi.fn({"nir": np.array([0.5]), "green": np.array([0.1])})
    np.testing.assert_allclose(got, [0.4 / 0.6])
    msavi = parse_formula("MSAVI", "(2 * nir + 1 - sqrt((2 * nir + 1) ** 2 - 8 * (nir - red))) / 2")
    # nir 0.5, red 0.1: (2 - sqrt(4 - 3.2)) / 2
    got = msavi.fn({"nir": np.array([0.5]), "red": np.array([0.1])})
    np.testing.assert_allclose(got, [0.5527864])


@pytest.mark.parametrize(
    "formula",
    [
        "__import__('os').system('true')",
        "nir.real",
        "nir[0]",
        "lambda: nir",
        "nir if red else blue",
        "open(nir)",
        "sqrt(nir, red)",
        "sqrt(x=nir)",
        "nir > red",
        "'nir' * 2",
        "True + nir",
        "nri + red",
        "(nir",
        "1 + 2",
    ],
)
def test_formulas_other_than_band_arithmetic_are_rejected(formula):
    with pytest.raises(FormulaError, match="index X"):
        parse_formula("X", formula)


# --------------------------------------------------------------------------- spyndex


def _spyndex():
    try:
        import spyndex
    except (ImportError, OSError, ValueError) as e:  # package or its bundled catalogue
        pytest.skip(f"spyndex cannot be loaded ({type(e).__name__}: {e})")
    return spyndex


# spyndex band symbols -> our index band names; constants as the catalogue defines them
SPYNDEX_BANDS = {"N": "nir", "R": "red", "G": "green", "B": "blue", "S1": "swir16", "S2": "swir22"}
SPYNDEX_CONSTANTS = {"EVI": {"g": 2.5, "C1": 6.0, "C2": 7.5, "L": 1.0}, "SAVI": {"L": 0.5}}


@pytest.mark.parametrize("name", sorted(INDICES))
def test_matches_spyndex_catalogue(name):
    spyndex = _spyndex()
    entry = spyndex.indices[name]
    constants = SPYNDEX_CONSTANTS.get(name, {})
    symbols = [s for s in entry.bands if s not in constants]
    assert {SPYNDEX_BANDS[s] for s in symbols} == set(INDICES[name].bands), entry.formula

    rng = np.random.default_rng(20240229)
    ours = {b: rng.uniform(0.01, 0.6, (64, 64)).astype(np.float32) for b in SPYNDEX_BANDS.values()}
    params = {s: ours[SPYNDEX_BANDS[s]].astype(np.float64) for s in symbols} | constants
    expected = np.asarray(spyndex.computeIndex(index=name, params=params), dtype=np.float64)
    got = compute_indices(ours, [name], "sentinel2-l2a")[name]
    # Where the catalogue's value leaves the index's physical range ours is NaN (EVI's
    # denominator crosses 0 for blue > (nir + 6 red + 1) / 7.5); elsewhere they agree.
    lo, hi = PHYSICAL_RANGES[name]
    inside = (expected >= lo) & (expected <= hi)
    np.testing.assert_array_equal(np.isnan(got), ~inside)
    np.testing.assert_allclose(got[inside], expected[inside], rtol=1e-5, atol=1e-7)
    if name == "EVI":
        assert 0 < (~inside).sum() < inside.sum()  # the comparison covers both cases


# --------------------------------------------------------------------------- physical ranges

#: Written out here from the publications, not read from udfs.indices: normalized
#: differences of non-negative numbers lie in [-1, 1]; SAVI = (1 + L) x a ratio within
#: [-1, 1], L = 0.5; EVI's documented range (Huete 2002, MODIS EVI products) is [-1, 1].
PHYSICAL_RANGES = {
    "NDVI": (-1.0, 1.0),
    "NDWI": (-1.0, 1.0),
    "MNDWI": (-1.0, 1.0),
    "NDBI": (-1.0, 1.0),
    "NBR": (-1.0, 1.0),
    "NDMI": (-1.0, 1.0),
    "SAVI": (-1.5, 1.5),
    "EVI": (-1.0, 1.0),
}


def test_every_index_has_its_documented_physical_range():
    assert set(INDICES) == set(PHYSICAL_RANGES)
    for name, index in INDICES.items():
        assert index.valid_range == PHYSICAL_RANGES[name], name


def test_negative_reflectance_gives_nan_index_not_a_wild_value():
    # Baseline 04.00: DN 900 -> (900 - 1000) / 10000 = -0.01, DN 1100 -> +0.01.
    # Textbook NDVI of red -0.01, nir 0.01: 0.02 / 0 -> inf; red -0.01, nir 0.03:
    # 0.04 / 0.02 = 2 (outside [-1, 1]). Both are NaN here; red 0.01, nir 0.03 is 0.5.
    red = f32([[-0.01, -0.01, 0.01]])
    nir = f32([[0.01, 0.03, 0.03]])
    out = compute_indices({"nir": nir, "red": red}, ["NDVI", "SAVI"], "sentinel2-l2a")
    np.testing.assert_array_equal(np.isnan(out["NDVI"]), [[True, True, False]])
    np.testing.assert_allclose(out["NDVI"][0, 2], 0.5, rtol=1e-6)
    # SAVI: 1.5 * 0.02 / (0.04 + 0.5) = 0.0555..., the negative red ones NaN as well
    np.testing.assert_array_equal(np.isnan(out["SAVI"]), [[True, True, False]])
    np.testing.assert_allclose(out["SAVI"][0, 2], 0.03 / 0.54, rtol=1e-6)


def test_a_negative_input_makes_the_index_nan_even_when_the_result_is_in_range():
    # red -0.01, nir 0.3: SAVI = 1.5 * 0.31 / 0.79 = 0.5886, inside [-1.5, 1.5]; still NaN:
    # the formula is defined on reflectance >= 0 only.
    out = compute_indices({"nir": f32([[0.3]]), "red": f32([[-0.01]])}, ["SAVI"], "sentinel2-l2a")
    assert np.isnan(out["SAVI"]).all()


def test_zero_reflectance_is_a_valid_input():
    # nir 0.2, red 0: NDVI 1 exactly (the range is inclusive)
    out = compute_indices({"nir": f32([[0.2]]), "red": f32([[0.0]])}, ["NDVI"], "sentinel2-l2a")
    assert out["NDVI"][0, 0] == 1.0


@pytest.mark.parametrize(
    ("nir", "red", "blue", "expected"),
    [
        # denominator 0.5 + 0.6 - 1.5 + 1 = 0.6: 2.5 * 0.4 / 0.6 = 1.667 -> out of range
        (0.5, 0.1, 0.2, NAN),
        # denominator 0.3 + 0.6 - 1.8975 + 1 = 0.0025 (tiny): 2.5 * 0.2 / 0.0025 = 200
        (0.3, 0.1, 0.253, NAN),
        # denominator 0.3 + 0.6 - 1.9125 + 1 = -0.0125: 0.5 / -0.0125 = -40
        (0.3, 0.1, 0.255, NAN),
        # denominator exactly 0 is x/0
        (0.4, 0.1, 0.28, NAN),
        # 2.5 * 0.3 / (0.4 + 0.6 - 0.375 + 1) = 0.75 / 1.625 = 0.4615
        (0.4, 0.1, 0.05, 0.75 / 1.625),
        # bright snow: 2.5 * (-0.05) / (0.8 + 5.1 - 6.75 + 1) = -0.125 / 0.15 = -0.833: kept
        (0.8, 0.85, 0.9, -0.125 / 0.15),
        # brighter blue: 2.5 * (-0.05) / (0.8 + 5.1 - 7.125 + 1) = -0.125 / -0.225 = 0.556,
        # in range but with a negative denominator... the formula's own value: kept
        (0.8, 0.85, 0.95, -0.125 / -0.225),
    ],
)
def test_evi_tiny_or_negative_denominators_are_nan_never_clipped(nir, red, blue, expected):
    b = {"nir": f32([[nir]]), "red": f32([[red]]), "blue": f32([[blue]])}
    got = compute_indices(b, ["EVI"], "sentinel2-l2a")["EVI"][0, 0]
    if np.isnan(expected):
        assert np.isnan(got)
    else:  # inputs are float32: 0.85 and 0.9 are not exact, the denominator amplifies it
        np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_every_index_is_inside_its_range_or_nan_on_adversarial_inputs():
    # Reflectance grid with negatives, zeros, tiny and large values and their neighbours:
    # every combination of every band, for every index.
    values = np.array([-0.5, -1e-4, 0.0, 1e-7, 1e-4, 0.01, 0.2, 0.5, 1.0, 1.6], np.float32)
    grids = np.meshgrid(*([values] * 3), indexing="ij")
    bands = ("nir", "red", "blue")
    for name in INDICES:
        used = INDICES[name].bands
        arrays = {}
        for i, b in enumerate(used):
            arrays[b] = grids[i % 3].reshape(-1, 10)
        got = compute_indices(arrays, [name], "sentinel2-l2a")[name]
        lo, hi = PHYSICAL_RANGES[name]
        finite = got[np.isfinite(got)]
        assert ((finite >= lo) & (finite <= hi)).all(), name
        # a negative input is NaN whatever the formula gives
        neg = np.zeros(got.shape, bool)
        for b in used:
            neg |= arrays[b] < 0
        assert np.isnan(got[neg]).all(), name
        assert np.isfinite(got).any(), name
    assert set(bands) >= set(INDICES["EVI"].bands)


def test_a_result_just_outside_the_range_in_float64_is_nan():
    # nir 0.5, red -0.0 -> NDVI exactly 1.0 (inside); a value 1 + 2e-9 would round to
    # 1.0 in float32 but is outside the range before rounding.
    ndvi = parse_formula("X", "(nir - red) / (nir + red) + 2e-9", (-1.0, 1.0))
    monkey = {**INDICES, "X": ndvi}
    from udfs import indices as mod

    saved = mod.INDICES
    mod.INDICES = MappingProxyType(monkey)
    try:
        got = compute_indices({"nir": f32([[0.5]]), "red": f32([[0.0]])}, ["X"], "sentinel2-l2a")
    finally:
        mod.INDICES = saved
    assert np.isnan(got["X"]).all()


def test_empty_range_is_rejected():
    with pytest.raises(FormulaError, match="empty"):
        parse_formula("X", "nir - red", (1.0, -1.0))


def test_index_values_are_the_defined_values_by_hand():
    """1-D defined values only: negative input, 0/0, NaN and inf inputs, and EVI out of
    its range are left out; the rest is the textbook float64 formula rounded once."""
    from udfs.indices import index_values

    red = np.array([0.1, -0.01, 0.0, NAN, 0.2, 0.05, INF], np.float32)
    nir = np.array([0.5, 0.30, 0.0, 0.4, 0.1, 0.06, 0.3], np.float32)
    blue = np.array([0.05, 0.1, 0.1, 0.1, 0.1, 0.18, 0.1], np.float32)
    out = index_values({"red": red, "nir": nir, "blue": blue}, ["NDVI", "EVI"], "sentinel2-l2a")
    assert list(out) == ["NDVI", "EVI"]
    r, n, b = (a.astype(np.float64) for a in (red, nir, blue))
    ndvi = [(n[i] - r[i]) / (n[i] + r[i]) for i in (0, 4, 5)]  # 1: red < 0, 2: 0/0, 3, 6
    np.testing.assert_array_equal(out["NDVI"], np.array(ndvi).astype(np.float32))
    # pixel 2: EVI = 0 / 0.25 = 0, defined (NDVI is 0/0 there);
    # pixel 5: 0.06 + 6 * 0.05 - 7.5 * 0.18 + 1 = 0.01, EVI = 2.5 * 0.01 / 0.01 = 2.5 > 1
    evi = [2.5 * (n[i] - r[i]) / (n[i] + 6 * r[i] - 7.5 * b[i] + 1) for i in (0, 2, 4, 5)]
    assert evi[1] == 0 and evi[3] == pytest.approx(2.5, rel=1e-5)
    np.testing.assert_array_equal(out["EVI"], np.array(evi[:3]).astype(np.float32))
    assert out["NDVI"].dtype == np.float32 and out["NDVI"].ndim == 1
