"""Pixel classification: the kernel by hand, model checks, and the classify job end to end.

The job's maps are compared with references computed here: the demo scene read whole with
plain rasterio + numpy (tests/reference.py), the model's features stacked by hand and the
fitted scikit-learn estimator's own ``predict`` / ``predict_proba``; accuracy is measured
against labels.geojson burnt onto the scene grid with rasterio.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from model_factory import tiny_bundle, tiny_model, tiny_onnx
from pyspark.sql import functions as F
from rasterio.features import rasterize
from rasterio.warp import transform_geom
from reference import demo_landsat_scene, demo_s2_scene

from pipelines.classify import classify, load_model, main, resolve_model, upstream
from pipelines.config import load_config
from pipelines.features import features
from pipelines.ingest import Run, ingest
from pipelines.lakehouse import Lakehouse
from pipelines.runs import run_stage
from pipelines.train import train_model
from udfs.errors import ConfigError
from udfs.inference import NODATA_CLASS, NODATA_CONFIDENCE, class_dtype, classify_tile
from udfs.models import (
    ModelError,
    SummedSessions,
    check_data,
    forest_parts,
    load_bundle,
    model_bands,
    session_from_bytes,
    sklearn_to_onnx,
    write_metadata,
)

JUNE = "S2B_MSIL2A_20240621T103629_N0510_R008_T31UFS_20240621T133010"
BLOCK_PX, TEST_FRACTION, SEED = 64, 0.3, 3


# ----------------------------------------------------------------------------- kernel (no Spark)


def s2_tile() -> dict[str, np.ndarray]:
    """A 3 x 3 Sentinel-2 L2A tile: DN 1000 + 10000 * reflectance (baseline 04.00+)."""
    dn = {
        c: np.full((3, 3), 2000, np.uint16)
        for c in ("coastal", "blue", "green", "rededge1", "rededge2", "rededge3", "nir08",
                  "nir09", "swir16", "swir22")
    }  # fmt: skip
    dn["red"] = np.array([[1500, 1500, 1500], [4000, 4000, 4000], [1500, 1500, 1500]], np.uint16)
    dn["nir"] = np.full((3, 3), 5000, np.uint16)
    dn["qa"] = np.full((3, 3), 4, np.uint16)  # SCL 4: vegetation
    dn["qa"][0, 0] = 9  # cloud, high probability
    dn["red"][2, 2] = 0  # nodata
    return dn


def ndvi_rule(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A hand-made classifier on (red, nir, ndvi): class 7 where NDVI > 0.5, else 300."""
    ndvi = X[:, 2]
    return np.where(ndvi > 0.5, 7, 300).astype(np.int32), np.where(ndvi > 0.5, 0.8, 0.6).astype(
        np.float32
    )


def test_classify_tile_by_hand():
    scaling = {b: (1e-4, -0.1) for b in ("B04", "B08")}  # other bands: the sensor default
    r = classify_tile("sentinel2-l2a", s2_tile(), scaling, ["red", "nir", "ndvi"], ["NDVI"],
                      ndvi_rule, [7, 300])  # fmt: skip
    # red 0.05 / nir 0.4 -> NDVI 0.78 (class 7); red 0.3 -> NDVI 0.14 (class 300)
    expected = np.array([[0, 7, 7], [300, 300, 300], [7, 7, 0]])
    assert r["classes"].dtype == np.uint16  # a code above 254
    np.testing.assert_array_equal(r["classes"], expected)
    np.testing.assert_array_equal(r["confidence"], [[255, 80, 80], [60, 60, 60], [80, 80, 255]])
    assert r["pixel_count"] == 9 and r["classified_count"] == 7
    assert r["class_counts"] == {7: 4, 300: 3}
    assert r["mean_confidence"] == pytest.approx((4 * 0.8 + 3 * 0.6) / 7)


def test_classify_tile_all_masked_and_non_finite_features():
    dn = s2_tile()
    dn["qa"][:] = 8  # all cloud
    r = classify_tile("sentinel2-l2a", dn, {}, ["red", "nir", "ndvi"], ["NDVI"], ndvi_rule, [7])
    assert (r["classes"] == NODATA_CLASS).all() and (r["confidence"] == NODATA_CONFIDENCE).all()
    assert r["classified_count"] == 0 and r["class_counts"] == {7: 0}
    assert np.isnan(r["mean_confidence"])
    # A row the model cannot take (non-finite feature) gets class 0 from predict: no class.
    dn = s2_tile()
    dn["red"][:] = 1000  # reflectance 0 (DN 1000, offset -0.1)
    dn["nir"][:] = 1000  # nir 0 too -> NDVI 0/0 -> NaN
    scaling = {b: (1e-4, -0.1) for b in ("B04", "B08")}
    r = classify_tile("sentinel2-l2a", dn, scaling, ["red", "nir", "ndvi"], ["NDVI"],
                      lambda X: (np.where(np.isfinite(X).all(1), 7, 0).astype(np.int32),
                                 np.where(np.isfinite(X).all(1), 1.0, 0).astype(np.float32)),
                      [7])  # fmt: skip
    assert r["classified_count"] == 0 and (r["classes"] == 0).all()


def test_classify_tile_counts_the_core_only_and_maps_the_whole_tile():
    # Stored tile of 3 x 3 whose core is its first two columns (overlap into a neighbour):
    # the rasters cover all 9 pixels, the counts the 6 core pixels.
    scaling = {b: (1e-4, -0.1) for b in ("B04", "B08")}
    core = (slice(0, 3), slice(0, 2))
    r = classify_tile("sentinel2-l2a", s2_tile(), scaling, ["red", "nir", "ndvi"], ["NDVI"],
                      ndvi_rule, [7, 300], core=core)  # fmt: skip
    expected = np.array([[0, 7, 7], [300, 300, 300], [7, 7, 0]])
    np.testing.assert_array_equal(r["classes"], expected)  # the whole tile
    # core columns 0-1: (0,0) cloud, (0,1) 7, (1,0) 300, (1,1) 300, (2,0) 7, (2,1) 7
    assert r["pixel_count"] == 6 and r["classified_count"] == 5
    assert r["class_counts"] == {7: 3, 300: 2}
    assert r["mean_confidence"] == pytest.approx((3 * 0.8 + 2 * 0.6) / 5)


def test_classify_tile_masks_follow_the_mask_settings():
    from udfs.masks import MaskSettings

    scaling = {b: (1e-4, -0.1) for b in ("B04", "B08")}
    # SCL 9 at (0, 0) is no longer masked: NDVI of red 0.05 / nir 0.4 -> class 7
    r = classify_tile("sentinel2-l2a", s2_tile(), scaling, ["red", "nir", "ndvi"], ["NDVI"],
                      ndvi_rule, [7, 300], masks=MaskSettings([0, 1]))  # fmt: skip
    assert r["classes"][0, 0] == 7 and r["classified_count"] == 8


def test_class_dtype_widens_for_large_codes():
    assert class_dtype([1, 2, 254]) == np.uint8
    assert class_dtype([1, 255]) == np.uint16
    with pytest.raises(ValueError, match="65535"):
        class_dtype([65535])


def test_session_from_bytes_loads_a_model_once_per_process(tmp_path):
    blob = tiny_onnx()
    calls = []

    def get() -> bytes:
        calls.append(1)
        return blob

    a = session_from_bytes("digest-a", get)
    b = session_from_bytes("digest-a", get)
    assert a is b and len(calls) == 1


def _ort(blob: bytes):
    import onnxruntime as ort

    return ort.InferenceSession(blob, providers=["CPUExecutionProvider"])


def test_forest_parts_hold_every_tree_once_and_sum_to_the_forest():
    model, _, _ = tiny_model()  # 16 trees, fully grown: one class per leaf
    blob = sklearn_to_onnx(model, 3)
    X = np.random.default_rng(9).normal(size=(4000, 3)).astype(np.float32)
    whole = _ort(blob).run(["probabilities"], {"X": X})[0]
    # Computed independently: the mean of the trees' own class fractions (float64).
    by_hand = np.mean([t.predict_proba(X.astype(np.float64)) for t in model.estimators_], axis=0)
    np.testing.assert_allclose(whole, by_hand, atol=1e-6)
    for per_part, n_parts in ((3, 6), (8, 2), (16, 1), (100, 1)):
        parts = forest_parts(blob, per_part)
        assert len(parts) == n_parts
        summed = SummedSessions([_ort(p) for p in parts]).run(["probabilities"], {"X": X})[0]
        # Multiples of 1/16 are exact in float32: the sum equals the whole forest's.
        np.testing.assert_array_equal(summed, whole)
        np.testing.assert_array_equal(model.classes_[summed.argmax(axis=1)], model.predict(X))


def test_forest_parts_drop_zero_leaf_weights_only():
    import onnx
    from onnx import helper

    model, _, _ = tiny_model()
    leaves = sum(int((t.tree_.children_left == -1).sum()) for t in model.estimators_)

    def weights(blob: bytes) -> list[float]:
        (node,) = onnx.load_from_string(blob).graph.node
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        return list(attrs["class_weights"])

    full = weights(sklearn_to_onnx(model, 3))
    assert len(full) == 3 * leaves  # skl2onnx: one weight per class per leaf
    kept = [w for p in forest_parts(sklearn_to_onnx(model, 3), 4) for w in weights(p)]
    assert len(kept) == leaves and all(w == 1 / 16 for w in kept)


def test_forest_parts_leave_other_models_whole():
    from sklearn.linear_model import LogisticRegression

    _, X, y = tiny_model()
    blob = sklearn_to_onnx(LogisticRegression().fit(X, y), 3)
    assert forest_parts(blob, 4) == [blob]


def test_summed_sessions_give_probabilities_only():
    parts = forest_parts(tiny_onnx(), 8)
    with pytest.raises(ModelError, match="probabilities"):
        SummedSessions([_ort(p) for p in parts]).run(["label"], {"X": np.zeros((1, 3), np.float32)})


# ----------------------------------------------------------------------------- model checks


def test_check_data_names_sensor_and_missing_features(tmp_path):
    bundle = tiny_bundle(tmp_path, ["red", "rededge1", "nir", "ndvi"], ["sentinel2-l2a"])
    check_data(bundle, ["sentinel2-l2a"])
    with pytest.raises(ModelError) as e:
        check_data(bundle, ["sentinel2-l2a", "landsat-c2l2"])
    assert "landsat-c2l2 not trained on" in str(e.value)
    assert "landsat-c2l2 has no feature rededge1, nir" in str(e.value)  # Landsat NIR is nir08
    assert bundle.model_id in str(e.value)


def test_resolve_model_latest_and_missing(tmp_path):
    models = tmp_path / "models"
    cfg = load_config("local", [f"train.models_dir={models}"])
    with pytest.raises(ModelError, match="no model bundle under .*pipelines.train"):
        resolve_model(cfg)
    old = tiny_bundle(
        models / "a", ["red", "nir"], ["sentinel2-l2a"], created="2026-01-01T00:00:00"
    )
    new = tiny_bundle(
        models / "b", ["red", "nir"], ["sentinel2-l2a"], created="2026-02-01T00:00:00"
    )
    (models / "junk").mkdir()  # not a bundle: ignored
    assert resolve_model(cfg) == new.path != old.path
    named = load_config("local", [f"classify.model={old.path}"])
    assert load_model(named).model_id == old.model_id
    with pytest.raises(ModelError, match="folder does not exist"):
        load_model(load_config("local", [f"classify.model={tmp_path / 'none'}"]))


def test_mllib_bundles_are_refused_by_classify(tmp_path):
    b = tiny_bundle(tmp_path / "m", ["red", "nir"], ["sentinel2-l2a"])
    (b.path / "spark_model").mkdir()
    write_metadata(b.path, {**b.metadata, "format": "spark", "model_file": "spark_model"})
    with pytest.raises(ModelError, match="'spark' bundle .* train with --trainer sklearn"):
        load_model(load_config("local", [f"classify.model={b.path}"]))


# ----------------------------------------------------------------------------- the job


@pytest.fixture(scope="module")
def trained(spark, demo_root, tmp_path_factory):
    """A scikit-learn model trained on the June Sentinel-2 scene (lake A)."""
    root = tmp_path_factory.mktemp("classify_train")
    source = demo_root / "scenes" / "sentinel2" / f"{JUNE}.SAFE"
    config = load_config("local", [f"ingest.source={source}", f"storage.root={root}"])
    lake = Lakehouse(spark, config.storage)
    assert ingest(spark, lake, Run(config)).ingested == [JUNE]
    features(spark, lake, Run(config, job="features"))
    out = tmp_path_factory.mktemp("classify_models") / "sk"
    return train_model(
        spark, lake, config, demo_root / "labels.geojson", max_per_class=1500,
        block_px=BLOCK_PX, test_fraction=TEST_FRACTION, seed=SEED, model_out=out,
    )  # fmt: skip


@pytest.fixture(scope="module")
def classified(spark, demo_root, trained, tmp_path_factory):
    """classify.main on a fresh root: no tables yet, so it ingests, computes features and
    classifies in one call (lake B)."""
    root = tmp_path_factory.mktemp("classify_lake")
    source = demo_root / "scenes" / "sentinel2" / f"{JUNE}.SAFE"
    code = main(["--root", str(root), "--source", str(source), "--model", str(trained.bundle_path)])
    assert code == 0
    return Lakehouse(spark, load_config("local", [f"storage.root={root}"]).storage), root


def mosaic(rows, shape, column: str, fill: int) -> np.ndarray:
    """Prediction tiles put back on the scene grid."""
    out = np.full(shape, fill, dtype=np.int64)
    for r in rows:
        dtype = r.dtype if column == "classes" else "uint8"
        a = np.frombuffer(getattr(r, column), dtype=np.dtype(dtype).newbyteorder("<"))
        out[r.row_off : r.row_off + r.height, r.col_off : r.col_off + r.width] = a.reshape(
            r.height, r.width
        )
    return out


@pytest.fixture(scope="module")
def reference(demo_root, trained):
    """The fitted estimator applied to the scene's pixels, features computed here."""
    scene = demo_s2_scene(demo_root / "scenes" / "sentinel2" / f"{JUNE}.SAFE")
    layers = {**scene.refl, **scene.indices()}
    names = trained.metadata["feature_names"]
    X = np.stack([layers[n][~scene.masked] for n in names], axis=1).astype(np.float32)
    ok = np.isfinite(X).all(axis=1)
    classes = np.zeros(scene.shape, dtype=np.int64)
    conf = np.full(scene.shape, 255, dtype=np.int64)
    est = trained.model
    cls_px = np.zeros(len(X), dtype=np.int64)
    conf_px = np.full(len(X), 255, dtype=np.int64)
    cls_px[ok] = est.predict(X[ok])
    conf_px[ok] = np.rint(est.predict_proba(X[ok]).max(axis=1) * 100)
    classes[~scene.masked] = cls_px
    conf[~scene.masked] = conf_px
    return {"classes": classes, "confidence": conf, "shape": scene.shape}


@pytest.mark.spark
@pytest.mark.slow
def test_predictions_equal_the_estimator_on_independently_computed_pixels(
    classified, trained, reference
):
    lake, _ = classified
    model_id = trained.metadata["model_id"]
    rows = lake.read("predictions").filter(F.col("model_id") == model_id).collect()
    assert {(r.scene_id, r.tile_row, r.tile_col) for r in rows} == {
        (JUNE, r, c) for r in (0, 1) for c in (0, 1)
    }
    assert {r.dtype for r in rows} == {"uint8"}
    got = mosaic(rows, reference["shape"], "classes", -1)
    np.testing.assert_array_equal(got, reference["classes"])
    conf = mosaic(rows, reference["shape"], "confidence", -1)
    np.testing.assert_array_equal(conf, reference["confidence"])
    assert (got > 0).mean() > 0.5  # most of the scene is clear and classified


@pytest.mark.spark
@pytest.mark.slow
def test_tile_predictions_count_the_rasters(classified, trained, reference):
    lake, _ = classified
    model_id = trained.metadata["model_id"]
    preds = {
        (r.tile_row, r.tile_col): r
        for r in lake.read("predictions").filter(F.col("model_id") == model_id).collect()
    }
    for t in lake.read("tile_predictions").collect():
        p = preds[(t.tile_row, t.tile_col)]
        cls = np.frombuffer(p.classes, np.uint8)
        assert t.pixel_count == cls.size == p.width * p.height
        assert t.classified_count == int((cls > 0).sum())
        assert t.class_counts == {c: int((cls == c).sum()) for c in range(1, 7)}
        conf = np.frombuffer(p.confidence, np.uint8)[cls > 0]
        assert t.mean_confidence == pytest.approx(conf.mean() / 100, abs=0.005)
        assert (t.sensor, t.model_id) == ("sentinel2-l2a", model_id)


@pytest.mark.spark
@pytest.mark.slow
def test_held_out_accuracy_from_the_maps_is_at_least_0_9(classified, trained, demo_root, reference):
    # Held-out pixels: those of the polygons the training job held out (the bundle lists
    # them by their position in the labels file), rasterized here independently; the
    # lowest id wins where polygons overlap, as in training.
    test_ids = set(trained.metadata["split"]["test_polygons"])
    with rasterio.open(demo_root / "landcover_10m.tif") as lc:
        doc = json.loads((demo_root / "labels.geojson").read_text())
        shapes = [
            (transform_geom("EPSG:4326", lc.crs, f["geometry"]), i + 1)
            for i, f in enumerate(doc["features"])
        ]
        polygon = rasterize(shapes[::-1], out_shape=lc.shape, transform=lc.transform, fill=0,
                            dtype="int32")  # fmt: skip
        codes = np.array([0] + [f["properties"]["class_code"] for f in doc["features"]])
    truth = codes[polygon]
    lake, _ = classified
    pred = mosaic(lake.read("predictions").collect(), reference["shape"], "classes", -1)
    test = np.isin(polygon - 1, sorted(test_ids)) & (polygon > 0)
    keep = test & (truth > 0) & (pred > 0)
    assert keep.sum() > 2000
    accuracy = float((pred[keep] == truth[keep]).mean())
    assert accuracy >= 0.9, accuracy


@pytest.mark.spark
@pytest.mark.slow
def test_models_table_and_runs_record_the_whole_pipeline(classified, trained):
    lake, _ = classified
    (m,) = lake.read("models").collect()
    meta = trained.metadata
    assert m.model_id == meta["model_id"] and m.feature_names == meta["feature_names"]
    assert [(c.code, c.name) for c in m.classes] == [
        (c["code"], c["name"]) for c in meta["classes"]
    ]
    assert m.overall_accuracy == pytest.approx(meta["metrics"]["overall_accuracy"])
    jobs = {r.job: r for r in lake.read("runs").collect()}
    # classify runs the analysis tables of its maps after them (composites, aggregate).
    assert set(jobs) == {"ingest", "features", "classify", "composites", "aggregate"}
    assert all(r.status == "succeeded" for r in jobs.values())
    assert (jobs["classify"].ingested, jobs["classify"].tiles_written) == (1, 4)


@pytest.mark.spark
@pytest.mark.slow
def test_classify_writes_class_area_equal_to_its_tile_counts(classified, trained):
    # No regions file: the scene footprint is the region, so its class areas are the sums
    # of the tiles' class counts (cores only), and hectares are 10 m x 10 m pixels.
    lake, _ = classified
    model_id = trained.metadata["model_id"]
    counts: dict[int, int] = {}
    for t in lake.read("tile_predictions").collect():
        for code, n in t.class_counts.items():
            counts[code] = counts.get(code, 0) + n
    rows = [r for r in lake.read("class_area").collect() if r.model_id == model_id]
    assert {r.class_code: r.pixels for r in rows} == counts
    for r in rows:
        assert r.hectares == pytest.approx(r.pixels * 100 / 10_000)


@pytest.mark.spark
@pytest.mark.slow
def test_rerun_adds_nothing_and_a_second_model_is_kept_apart(classified, trained, tmp_path, capsys):
    lake, root = classified
    before = {n: lake.read(n).count() for n in ("predictions", "tile_predictions", "models")}
    assert main(["--root", str(root), "--model", str(trained.bundle_path)]) == 0
    assert "0 scene(s) classified, 1 already done" in capsys.readouterr().out
    assert {n: lake.read(n).count() for n in before} == before

    other = tmp_path / "other"
    shutil.copytree(trained.bundle_path, other)
    write_metadata(other, {**trained.metadata, "model_id": "other-model"})
    assert main(["--root", str(root), "--model", str(other)]) == 0
    preds = lake.read("predictions")
    assert preds.filter("model_id = 'other-model'").count() == before["predictions"]
    a = {
        (r.tile_row, r.tile_col): r.classes
        for r in preds.filter("model_id = 'other-model'").collect()
    }
    b = {
        (r.tile_row, r.tile_col): r.classes
        for r in preds.filter(F.col("model_id") == trained.metadata["model_id"]).collect()
    }
    assert a == b  # the same weights under another id: the same maps, side by side
    ids = {r.model_id for r in lake.read("models").collect()}
    assert {"other-model", trained.metadata["model_id"]} <= ids

    def run_ids() -> set[str]:
        rows = lake.read("tile_predictions").filter("model_id = 'other-model'").collect()
        return {r.run_id for r in rows}

    first = run_ids()
    assert main(["--root", str(root), "--model", str(other), "--rebuild"]) == 0
    n = lake.read("predictions").filter("model_id = 'other-model'").count()
    assert n == before["predictions"]
    assert len(run_ids()) == 1 and run_ids() != first  # every row rewritten by the rebuild


@pytest.mark.spark
@pytest.mark.slow
def test_tiles_read_through_spark_give_the_same_maps(classified, trained, tmp_path):
    """``classify.reader=spark`` (the path for object-store tables) equals the file reader."""
    lake, root = classified
    other = tmp_path / "via-spark"
    shutil.copytree(trained.bundle_path, other)
    write_metadata(other, {**trained.metadata, "model_id": "via-spark"})
    args = ["--root", str(root), "--model", str(other), "--set", "classify.reader=spark"]
    assert main(args) == 0
    preds = lake.read("predictions")
    maps = {}
    for mid in ("via-spark", trained.metadata["model_id"]):
        rows = preds.filter(F.col("model_id") == mid).collect()
        maps[mid] = {(r.tile_row, r.tile_col): (r.classes, r.confidence) for r in rows}
    assert len(maps["via-spark"]) == 4
    assert maps["via-spark"] == maps[trained.metadata["model_id"]]


def delta_versions(root: Path) -> dict[str, int]:
    return {p.parent.name: len(list(p.glob("*.json"))) for p in root.glob("*/_delta_log")}


@pytest.mark.spark
@pytest.mark.slow
def test_mismatched_or_missing_model_fails_clearly_and_writes_nothing(
    classified, trained, demo_root, tmp_path, capsys
):
    lake, root = classified
    before = delta_versions(root)
    landsat = sorted(p for p in (demo_root / "scenes" / "landsat").iterdir() if p.is_dir())[0]
    # The S2 model on Landsat scenes that would be ingested first.
    code = main(["--root", str(root), "--source", str(landsat), "--ingest", "always",
                 "--model", str(trained.bundle_path)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "landsat-c2l2 not trained on" in err and "landsat-c2l2 has no feature" in err
    assert "rededge1" in err and trained.metadata["model_id"] in err
    # A model whose features the data lacks.
    odd = tmp_path / "odd"
    shutil.copytree(trained.bundle_path, odd)
    write_metadata(odd, {**trained.metadata, "model_id": "odd",
                         "feature_names": [*trained.metadata["feature_names"], "bsi"]})  # fmt: skip
    assert main(["--root", str(root), "--model", str(odd)]) == 2
    assert "sentinel2-l2a has no feature bsi" in capsys.readouterr().err
    # A missing model file, and a missing bundle.
    broken = tmp_path / "broken"
    shutil.copytree(trained.bundle_path, broken)
    (broken / "model.onnx").unlink()
    assert main(["--root", str(root), "--model", str(broken)]) == 2
    assert "model file model.onnx is missing" in capsys.readouterr().err
    fresh = tmp_path / "fresh"
    assert main(["--root", str(fresh), "--model", str(tmp_path / "nothing")]) == 2
    assert "folder does not exist" in capsys.readouterr().err
    assert delta_versions(root) == before
    assert not fresh.exists()


@pytest.mark.spark
@pytest.mark.slow
def test_bad_tiles_are_rejected_and_the_rest_classified(spark, demo_root, trained, tmp_path):
    source = demo_root / "scenes" / "sentinel2" / f"{JUNE}.SAFE"
    config = load_config("local", [f"ingest.source={source}", f"storage.root={tmp_path}",
                                   f"classify.model={trained.bundle_path}"])  # fmt: skip
    lake = Lakehouse(spark, config.storage)
    ingest(spark, lake, Run(config))
    tiles = lake.read("tiles")
    at = (F.col("tile_row") == 0) & (F.col("tile_col") == 1)
    (
        tiles.withColumn("red", F.when(at, F.lit(None).cast("binary")).otherwise(F.col("red")))
        .write.format("delta").mode("overwrite").partitionBy("sensor", "acq_month")
        .save(lake.path("tiles"))
    )  # fmt: skip
    bundle = load_model(config)
    code, run = run_stage(spark, lake, "classify", config,
                          lambda s, lk, r: classify(s, lk, r, bundle))  # fmt: skip
    assert code == 0
    assert [(r["href"], r["stage"]) for r in run.rejected] == [(f"tiles/{JUNE}/0/1", "classify")]
    assert "B04" in run.rejected[0]["reason"] and "missing" in run.rejected[0]["reason"]
    keys = {(r.tile_row, r.tile_col) for r in lake.read("predictions").collect()}
    assert keys == {(0, 0), (1, 0), (1, 1)}
    rej = lake.read("rejected").filter(F.col("run_id") == run.run_id).collect()
    assert [(r.job, r.error_class) for r in rej] == [("classify", "BadTile")]


@pytest.mark.spark
@pytest.mark.slow
def test_landsat_scene_classified_by_a_model_trained_on_both_sensors(spark, demo_root, tmp_path):
    """Landsat has no red edge: a two-sensor model uses the bands both share."""
    folders = [demo_root / "scenes" / "sentinel2" / f"{JUNE}.SAFE",
               sorted(p for p in (demo_root / "scenes" / "landsat").iterdir() if p.is_dir())[0]]  # fmt: skip
    config = load_config("local", [f"ingest.source={','.join(map(str, folders))}",
                                   f"storage.root={tmp_path / 'lake'}"])  # fmt: skip
    lake = Lakehouse(spark, config.storage)
    assert len(ingest(spark, lake, Run(config)).ingested) == 2
    features(spark, lake, Run(config, job="features"))
    result = train_model(spark, lake, config, demo_root / "labels.geojson", max_per_class=800,
                         block_px=BLOCK_PX, seed=SEED, model_out=tmp_path / "both")  # fmt: skip
    assert "rededge1" not in result.metadata["feature_names"]
    bundle = load_bundle(result.bundle_path)
    code, run = run_stage(spark, lake, "classify", config,
                          lambda s, lk, r: classify(s, lk, r, bundle))  # fmt: skip
    assert code == 0 and len(run.ingested) == 2
    sid = folders[1].name
    (p,) = lake.read("predictions").filter(F.col("scene_id") == sid).collect()
    scene = demo_landsat_scene(folders[1])
    layers = {**scene.refl, **scene.indices()}
    names = result.metadata["feature_names"]
    X = np.stack([layers[n] for n in names], axis=-1).reshape(-1, len(names)).astype(np.float32)
    ok = (~scene.masked).ravel() & np.isfinite(X).all(axis=1)
    expected = np.zeros(X.shape[0], dtype=np.int64)
    expected[ok] = result.model.predict(X[ok])
    got = np.frombuffer(p.classes, np.uint8).reshape(p.height, p.width)
    np.testing.assert_array_equal(got, expected.reshape(scene.shape)[: p.height, : p.width])


def test_balanced_groups_split_files_by_size():
    from pipelines.scheduling import balanced_groups

    sizes = {"a": 10, "b": 9, "c": 5, "d": 4, "e": 1, "f": 1}
    groups = balanced_groups(sizes, 2)
    assert sorted(x for g in groups for x in g) == sorted(sizes)  # each file exactly once
    totals = sorted(sum(sizes[x] for x in g) for g in groups)
    assert totals == [15, 15]
    assert all(g == sorted(g) for g in groups)
    assert balanced_groups({"a": 1}, 4) == [["a"]]  # no empty groups
    assert balanced_groups({}, 2) == []


# ----------------------------------------------------------------------------- ingest.bands


def test_model_bands_are_its_band_features_and_the_bands_of_its_indices(tmp_path):
    bundle = tiny_bundle(tmp_path / "m", ["red", "rededge1", "ndvi", "mndwi"], ["sentinel2-l2a"])
    # NDVI: nir, red; MNDWI: green, swir16 (Sentinel-2 columns).
    assert model_bands(bundle, "sentinel2-l2a") == {"red", "rededge1", "nir", "green", "swir16"}


def test_classify_refuses_scenes_tiled_without_a_band_the_model_needs(spark, demo_root, tmp_path):
    source = demo_root / "scenes" / "sentinel2" / f"{JUNE}.SAFE"
    config = load_config(
        "local",
        [f"ingest.source={source}", f"storage.root={tmp_path / 'lake'}", "ingest.bands=red,nir"],
    )
    lake = Lakehouse(spark, config.storage)
    bundle = tiny_bundle(tmp_path / "m", ["red", "rededge1", "ndvi"], ["sentinel2-l2a"])
    # Before ingest: ingest.bands leaves out what the model reads.
    with pytest.raises(ConfigError, match="needs band\\(s\\) rededge1 of sentinel2-l2a"):
        upstream(config, bundle, lake)
    assert not lake.exists("tiles")
    assert ingest(spark, lake, Run(config)).ingested == [JUNE]
    # After ingest: the scene's tiles lack rededge1; nothing is classified.
    with pytest.raises(ConfigError, match=f"rededge1 but scene {JUNE} was ingested without"):
        classify(spark, lake, Run(config, job="classify"), bundle)
    assert not lake.exists("predictions") or lake.read("predictions").count() == 0
    ok = tiny_bundle(tmp_path / "ok", ["red", "nir", "ndvi"], ["sentinel2-l2a"])
    upstream(config, ok, lake)  # red + nir suffice
