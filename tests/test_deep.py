"""Chip classification with an ONNX CNN: chip cutting, the graph, and the Spark path.

The Spark result is checked against ONNX Runtime called here, on chips cut here from the
source GeoTIFFs with plain rasterio and the scaling read here from the product's XML.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import rasterio
from pyspark import cloudpickle
from reference import demo_s2_scene

from pipelines.config import load_config
from pipelines.deep import chip_frame, classify_chips, main
from pipelines.ingest import Run, ingest
from pipelines.lakehouse import Lakehouse
from udfs import deep
from udfs.deep import (
    ModelSpecError,
    build_chip_cnn,
    chip_cnn_model,
    chips_from_tile,
    fit_dense_layer,
    make_predict_fn,
    providers,
    resolve_bands,
)

REPO = Path(__file__).resolve().parents[1]
BANDS = ["blue", "green", "red", "nir"]
S2_FILES = {"blue": "B02", "green": "B03", "red": "B04", "nir": "B08"}  # all 10 m
S2_BAND_IDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10"]
S2_BAND_IDS += ["B11", "B12"]  # band_id of MTD_MSIL2A.xml is the index in this list
TILE = 256  # ingest.tile_size of the local profile

# The counting factory below is defined in this (not importable) test module: ship it by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


# ----------------------------------------------------------------------------- chips


def test_full_chips_are_cut_row_major_and_partial_edge_chips_skipped():
    rng = np.random.default_rng(0)
    arrays = {b: rng.random((150, 130), dtype=np.float32) for b in ("red", "nir", "blue")}
    chips, pos = chips_from_tile(arrays, ["nir", "red"], chip=64)
    assert chips.shape == (4, 2, 64, 64) and chips.dtype == np.float32
    assert pos == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for (r, c), x in zip(pos, chips, strict=True):
        np.testing.assert_array_equal(
            x[0], arrays["nir"][r * 64 : r * 64 + 64, c * 64 : c * 64 + 64]
        )
        np.testing.assert_array_equal(
            x[1], arrays["red"][r * 64 : r * 64 + 64, c * 64 : c * 64 + 64]
        )


def test_pad_zero_fills_partial_edge_chips():
    arr = np.arange(150 * 130, dtype=np.float32).reshape(150, 130)
    chips, pos = chips_from_tile({"red": arr}, ["red"], chip=64, pad=True)
    assert chips.shape == (9, 1, 64, 64)
    assert pos[-1] == (2, 2)
    last = chips[-1, 0]  # rows 128..191, cols 128..191 of the tile: 22 x 2 real pixels
    np.testing.assert_array_equal(last[:22, :2], arr[128:150, 128:130])
    assert not last[22:].any() and not last[:, 2:].any()


def test_nan_and_inf_become_zero_and_small_tiles_give_no_chips():
    arr = np.full((64, 64), 0.25, np.float32)
    arr[0, 0], arr[1, 1], arr[2, 2] = np.nan, np.inf, -np.inf
    chips, _ = chips_from_tile({"red": arr}, ["red"])
    assert chips[0, 0, 0, 0] == 0 and chips[0, 0, 1, 1] == 0 and chips[0, 0, 2, 2] == 0
    assert chips[0, 0, 3, 3] == np.float32(0.25)
    none, pos = chips_from_tile({"red": arr[:63]}, ["red"])
    assert none.shape == (0, 1, 64, 64) and pos == []


def test_missing_or_mismatched_bands_are_named():
    with pytest.raises(KeyError, match="nir"):
        chips_from_tile({"red": np.zeros((64, 64))}, ["red", "nir"])
    with pytest.raises(ValueError, match="one shape"):
        chips_from_tile({"red": np.zeros((64, 64)), "nir": np.zeros((64, 65))}, ["red", "nir"])


def test_landsat_nir_falls_back_to_nir08():
    assert resolve_bands("landsat-c2l2", BANDS) == ["blue", "green", "red", "nir08"]
    assert resolve_bands("sentinel2-l2a", BANDS) == BANDS
    with pytest.raises(KeyError, match="rededge1"):
        resolve_bands("landsat-c2l2", ["rededge1"])


def test_chip_reader_scales_landsat_dns_with_the_scene_scaling():
    import pyarrow as pa

    from udfs.deep import make_chip_reader
    from udfs.sensors import BAND_COLUMNS

    dn = {b: np.full((70, 130), 10000 + 1000 * i, "<u2") for i, b in enumerate(BAND_COLUMNS)}
    dn["red"][0, 0] = 0  # nodata -> NaN -> 0 in the chip
    dn["qa"][:] = 21824  # QA_PIXEL clear
    dn["qa"][2, 3] = 21824 | (1 << 3)  # cloud bit: masked like nodata -> 0 in every channel
    dn["radsat"][:] = 0
    dn["radsat"][3, 4] = 1 << 4  # SR_B5 (nir08) saturated: 0 in every channel
    dn["nir08"][4, 5] = 43637  # above the Landsat SR valid range: 0 in every channel
    row = {"scene_id": "LC09_X", "tile_row": 1, "tile_col": 2, "width": 130, "height": 70}
    row |= {"dtype": "uint16", **{b: a.tobytes() for b, a in dn.items()}}
    schema = pa.schema(
        [
            ("scene_id", pa.string()),
            ("tile_row", pa.int32()),
            ("tile_col", pa.int32()),
            ("chip_row", pa.int32()),
            ("chip_col", pa.int32()),
            ("sensor", pa.string()),
            ("chip", pa.list_(pa.float32())),
        ]
    )
    scaling = {f"SR_B{i}": [2.75e-5, -0.2] for i in range(1, 8)}
    scenes = {"LC09_X": {"sensor": "landsat-c2l2", "scaling": scaling}}
    reader = make_chip_reader(scenes, ["red", "nir"], schema)
    (batch,) = list(reader([pa.RecordBatch.from_pylist([row, {**row, "scene_id": "unknown"}])]))
    assert batch.column("chip_col").to_pylist() == [0, 1]  # 70 x 130: one row of two chips
    assert set(batch.column("tile_col").to_pylist()) == {2}
    chip0 = np.asarray(batch.column("chip")[0].as_py(), np.float32).reshape(2, 64, 64)
    red, nir08 = (np.float32(float(dn[b][1, 1]) * 2.75e-5 - 0.2) for b in ("red", "nir08"))
    assert chip0[0, 0, 0] == 0 and chip0[0, 1, 1] == red and chip0[1, 5, 5] == nir08
    for r, c in ((2, 3), (3, 4), (4, 5)):
        assert (chip0[:, r, c] == 0).all(), (r, c)
    assert (chip0[:, 2, 4] == [red, nir08]).all()
    # With masks that do not mask clouds the cloudy pixel keeps its reflectance.
    from udfs.masks import MaskSettings

    loose = make_chip_reader(scenes, ["red", "nir"], schema, masks=MaskSettings(qa_flags=["fill"]))
    (batch2,) = list(loose([pa.RecordBatch.from_pylist([row])]))
    chip0b = np.asarray(batch2.column("chip")[0].as_py(), np.float32).reshape(2, 64, 64)
    assert (chip0b[:, 2, 3] == [red, nir08]).all() and (chip0b[:, 3, 4] == 0).all()


# ----------------------------------------------------------------------------- the model


def test_cnn_graph_passes_shape_inference_and_records_its_contract():
    model = chip_cnn_model(BANDS, 64, ["water", "forest", "urban"], seed=1)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(inferred, full_check=True)
    dims = {
        o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]
        for o in inferred.graph.output
    }
    assert dims == {"probabilities": ["N", 3], "features": ["N", 16]}
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["eo.bands"]) == BANDS
    assert json.loads(meta["eo.classes"]) == ["water", "forest", "urban"]
    assert meta["eo.chip_size"] == "64" and meta["eo.output"] == "probabilities"
    assert json.loads(meta["eo.normalisation"])["in_graph"] is True


def test_cnn_weights_are_deterministic_for_a_seed():
    a = chip_cnn_model(seed=5).SerializeToString()
    assert a == chip_cnn_model(seed=5).SerializeToString()
    assert a != chip_cnn_model(seed=6).SerializeToString()


def test_predict_fn_reshapes_flat_batches_and_returns_the_top_class(tmp_path):
    path = build_chip_cnn(str(tmp_path / "m.onnx"), BANDS, classes=["a", "b", "c"], seed=2)
    x = np.random.default_rng(3).uniform(0, 0.5, (5, 4, 64, 64)).astype(np.float32)
    probs = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
        ["probabilities"], {"chips": x}
    )[0]
    out = make_predict_fn(path)(x.reshape(5, -1))
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    assert list(out["chip_class"]) == [["a", "b", "c"][i] for i in probs.argmax(axis=1)]
    np.testing.assert_allclose(out["chip_confidence"], probs.max(axis=1), rtol=1e-6)


def test_model_without_metadata_needs_bands_and_classes(tmp_path):
    model = chip_cnn_model(seed=0)
    del model.metadata_props[:]
    path = str(tmp_path / "bare.onnx")
    onnx.save_model(model, path)
    with pytest.raises(ModelSpecError, match="eo.bands"):
        make_predict_fn(path)
    with pytest.raises(ModelSpecError, match="shape"):
        make_predict_fn(path, bands=["red"], classes=list("abcdef"), chip=64)
    predict = make_predict_fn(path, bands=BANDS, classes=list("abcdef"), chip=64)
    assert predict(np.zeros((2, 4 * 64 * 64), np.float32))["chip_class"].shape == (2,)


def test_cuda_provider_comes_first_when_onnxruntime_has_it():
    assert (
        providers(["CUDAExecutionProvider", "CPUExecutionProvider"])[0] == "CUDAExecutionProvider"
    )
    assert providers(["AzureExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_fitted_dense_layer_separates_dark_from_bright_chips():
    rng = np.random.default_rng(1)
    dark = rng.uniform(0.0, 0.05, (12, 4, 64, 64))
    bright = rng.uniform(0.3, 0.5, (12, 4, 64, 64))
    chips = np.concatenate([dark, bright]).astype(np.float32)
    labels = np.array([0] * 12 + [4] * 12)
    model = fit_dense_layer(chip_cnn_model(seed=0), chips, labels)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    test = np.concatenate(
        [rng.uniform(0, 0.05, (3, 4, 64, 64)), rng.uniform(0.3, 0.5, (3, 4, 64, 64))]
    )
    pred = session.run(["probabilities"], {"chips": test.astype(np.float32)})[0].argmax(axis=1)
    assert list(pred) == [0, 0, 0, 4, 4, 4]


def test_udfs_deep_does_not_import_pyspark():
    code = "import sys, udfs.deep; sys.exit(any(m.startswith('pyspark') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


# ----------------------------------------------------------------------------- Spark path


def s2_scene(demo_root: Path) -> Path:
    """The demo Sentinel-2 scene of processing baseline 05.10 (BOA_ADD_OFFSET -1000)."""
    (scene,) = sorted((demo_root / "scenes" / "sentinel2").glob("*_N0510_*20240830*.SAFE"))
    return scene


def s2_reflectance(scene: Path, band: str) -> np.ndarray:
    """(DN + BOA_ADD_OFFSET) / BOA_QUANTIFICATION_VALUE from the product itself; nodata NaN."""
    root = ET.parse(scene / "MTD_MSIL2A.xml").getroot()
    q = float(next(e.text for e in root.iter() if e.tag.endswith("BOA_QUANTIFICATION_VALUE")))
    offsets = {
        S2_BAND_IDS[int(e.get("band_id"))]: float(e.text)
        for e in root.iter()
        if e.tag.endswith("BOA_ADD_OFFSET")
    }
    (path,) = scene.glob(f"GRANULE/*/IMG_DATA/R10m/*_{band}_10m.tif")
    with rasterio.open(path) as src:
        dn = src.read(1)
    out = ((dn.astype(np.float64) + offsets[band]) / q).astype(np.float32)
    out[dn == 0] = np.nan
    return out


@pytest.fixture(scope="module")
def s2_lake(spark, demo_root, tmp_path_factory):
    scene = s2_scene(demo_root)
    root = tmp_path_factory.mktemp("deep_lake")
    config = load_config("local", [f"ingest.source={scene}", f"storage.root={root}"])
    lake = Lakehouse(spark, config.storage)
    run = ingest(spark, lake, Run(config))
    assert run.rejected == [] and len(run.ingested) == 1
    return lake, run.ingested[0], scene, root


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return build_chip_cnn(str(tmp_path_factory.mktemp("model") / "cnn.onnx"), BANDS, seed=7)


def counting_factory(model_path: str, marks: str):
    """make_predict_fn that leaves one file per call of itself and per predict call."""
    pid = os.getpid()
    Path(marks, f"factory-{pid}-{uuid.uuid4().hex}").touch()
    predict = make_predict_fn(model_path)

    def counted(x):
        Path(marks, f"predict-{pid}-{uuid.uuid4().hex}-{len(x)}").touch()
        return predict(x)

    return counted


@pytest.mark.slow
def test_spark_chips_and_classes_equal_onnxruntime_on_the_source_geotiffs(
    spark, s2_lake, model_path, tmp_path
):
    lake, sid, scene, _ = s2_lake
    marks = tmp_path / "marks"
    marks.mkdir()
    chips = chip_frame(spark, lake, [sid], bands=BANDS)
    out = classify_chips(
        chips,
        model_path,
        batch_size=3,
        predict_fn_factory=lambda: counting_factory(model_path, str(marks)),
    ).cache()
    rows = out.collect()

    refl = np.stack([s2_reflectance(scene, S2_FILES[b]) for b in BANDS])
    refl[~np.isfinite(refl)] = 0
    # Masked pixels (SCL clouds, shadows, snow; nodata in any band; saturated) are fed as
    # 0 like nodata: the mask of the independent reference (tests/reference.py).
    masked = demo_s2_scene(scene).masked
    assert 0 < masked.mean() < 0.9
    refl[:, masked] = 0
    h, w = refl.shape[1:]
    expected_chips = {}
    for r in range(h // 64):
        for c in range(w // 64):
            key = (
                sid,
                (r * 64) // TILE,
                (c * 64) // TILE,
                (r * 64 % TILE) // 64,
                (c * 64 % TILE) // 64,
            )
            expected_chips[key] = refl[:, r * 64 : r * 64 + 64, c * 64 : c * 64 + 64]
    assert len(rows) == len(expected_chips) == (h // 64) * (w // 64) > 4
    for row in rows:
        key = (row.scene_id, row.tile_row, row.tile_col, row.chip_row, row.chip_col)
        assert row.sensor == "sentinel2-l2a"
        np.testing.assert_allclose(
            np.asarray(row.chip, np.float32).reshape(4, 64, 64),
            expected_chips[key],
            rtol=1e-6,
            atol=1e-7,
        )

    keys = list(expected_chips)
    x = np.stack([expected_chips[k] for k in keys])
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    probs = session.run(["probabilities"], {"chips": x})[0]
    classes = list(deep.DEMO_CLASSES)
    # assertDataFrameEqual would be the tool, but it imports pyspark.pandas, which fails
    # with pandas 3 (DateOffset moved); compare keyed rows instead, classes exactly.
    expected = {
        k: (classes[int(p.argmax())], float(p.max())) for k, p in zip(keys, probs, strict=True)
    }
    actual = {
        (r.scene_id, r.tile_row, r.tile_col, r.chip_row, r.chip_col): (
            r.chip_class,
            r.chip_confidence,
        )
        for r in rows
    }
    assert len(actual) == len(rows)  # no duplicate chip keys
    assert {k: c for k, (c, _) in actual.items()} == {k: c for k, (c, _) in expected.items()}
    np.testing.assert_allclose(
        [actual[k][1] for k in keys], [expected[k][1] for k in keys], rtol=1e-5, atol=1e-6
    )
    assert len({c for c, _ in expected.values()}) > 1, "all chips in one class: a weak check"

    # The model is loaded once per Python worker, and batches are at most batch_size.
    factories = [p.name.split("-")[1] for p in marks.glob("factory-*")]
    calls = [p.name.split("-") for p in marks.glob("predict-*")]
    assert 1 <= len(factories) == len(set(factories)) <= 2  # local[2]: at most two workers
    assert {pid for _, pid, *_ in calls} <= set(factories)
    assert all(int(n) <= 3 for *_, n in calls) and sum(int(n) for *_, n in calls) == len(rows)
    assert len(calls) > len(factories)


@pytest.mark.slow
def test_main_builds_the_demo_cnn_and_prints_counts_per_class(spark, s2_lake, capsys):
    _, sid, _, root = s2_lake
    assert main(["--root", str(root), "--scenes", sid, "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    assert ": 36 chips of 64 px classified by" in out
    counts = [int(line.split()[1]) for line in out.splitlines() if line.startswith("  ")]
    assert sum(counts) == 36
