"""Training job on the demo scenes + model bundle unit tests.

The held-out accuracy is computed here, not read from the model's report: labels.geojson
is rasterized onto the scene grid with plain rasterio, pixels of held-out blocks are taken
from the pixel feature view, and the bundle's predictions are compared with the labels.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rasterio
from model_factory import tiny_metadata, tiny_model
from pyspark.sql import functions as F
from rasterio.features import rasterize
from rasterio.warp import transform_geom
from shapely.geometry import shape

from pipelines.config import load_config
from pipelines.features import features, pixel_features
from pipelines.ingest import Run, ingest
from pipelines.lakehouse import Lakehouse
from pipelines.train import (
    feature_columns,
    main,
    read_labels,
    train_model,
)
from udfs.errors import PipelineError
from udfs.labels import LabelError, held_out, rasterize_labels
from udfs.models import (
    REQUIRED_KEYS,
    ModelError,
    check_compatible,
    classification_metrics,
    load_bundle,
    predict_pixels,
    write_onnx_bundle,
)

pytestmark = pytest.mark.slow

JUNE = "S2B_MSIL2A_20240621T103629_N0510_R008_T31UFS_20240621T133010"
BLOCK_PX = 64  # the 384 px demo scene holds 6 x 6 blocks
TEST_FRACTION = 0.3
SEED = 3
CLASSES = {1: "water", 2: "forest", 3: "cropland", 4: "grassland", 5: "urban", 6: "bare_soil"}


# ----------------------------------------------------------------------------- bundles (no Spark)


@pytest.fixture
def tiny_bundle(tmp_path):
    model, X, _ = tiny_model()
    bundle = write_onnx_bundle(tmp_path / "b", model, tiny_metadata(["red", "nir", "ndvi"]))
    return bundle, model, X


def test_onnx_bundle_predicts_the_sklearn_classes_and_probabilities(tiny_bundle):
    bundle, model, X = tiny_bundle
    Xt = np.random.default_rng(5).normal(size=(5000, 3)).astype(np.float32)
    classes, conf = predict_pixels(bundle, Xt)
    assert classes.dtype == np.int32 and conf.dtype == np.float32
    np.testing.assert_array_equal(classes, model.predict(Xt))
    np.testing.assert_allclose(conf, model.predict_proba(Xt).max(axis=1), atol=1e-6)
    assert bundle.metadata["model_classes"] == [2, 5, 7]


def test_predict_pixels_marks_non_finite_rows_and_checks_shape(tiny_bundle):
    bundle, _, X = tiny_bundle
    x = X[:4].copy()
    x[1, 2] = np.nan
    x[2, 0] = np.inf
    classes, conf = predict_pixels(bundle, x)
    assert classes[1] == 0 and classes[2] == 0 and conf[1] == 0 and conf[2] == 0
    assert classes[0] != 0 and conf[0] > 0
    empty = predict_pixels(bundle, np.zeros((0, 3), np.float32))
    assert empty[0].shape == (0,) and empty[1].shape == (0,)
    with pytest.raises(ModelError, match=r"\(n, 3\) feature matrix \(red, nir, ndvi\)"):
        predict_pixels(bundle, X[:, :2])


def test_load_bundle_names_a_missing_model_file(tiny_bundle):
    bundle, _, _ = tiny_bundle
    (bundle.path / "model.onnx").unlink()
    with pytest.raises(ModelError, match="model file model.onnx is missing") as e:
        load_bundle(bundle.path)
    assert isinstance(e.value, PipelineError) and isinstance(e.value, ValueError)


def test_load_bundle_names_missing_folder_metadata_and_keys(tiny_bundle, tmp_path):
    bundle, _, _ = tiny_bundle
    with pytest.raises(ModelError, match="folder does not exist"):
        load_bundle(tmp_path / "nope")
    meta = json.loads((bundle.path / "metadata.json").read_text())
    del meta["feature_names"], meta["sensors"]
    (bundle.path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="lacks feature_names, sensors"):
        load_bundle(bundle.path)
    (bundle.path / "metadata.json").write_text("{not json")
    with pytest.raises(ModelError, match="not readable JSON"):
        load_bundle(bundle.path)
    (bundle.path / "metadata.json").unlink()
    with pytest.raises(ModelError, match="metadata.json is missing"):
        load_bundle(bundle.path)


def test_check_compatible_says_what_differs(tiny_bundle):
    bundle, _, _ = tiny_bundle
    check_compatible(bundle, ["red", "nir", "ndvi"], ["sentinel2-l2a"])  # fits
    with pytest.raises(ModelError, match="missing feature.s. ndvi; unexpected feature.s. evi"):
        check_compatible(bundle, ["red", "nir", "evi"], ["sentinel2-l2a"])
    with pytest.raises(ModelError, match="another order"):
        check_compatible(bundle, ["nir", "red", "ndvi"], ["sentinel2-l2a"])
    with pytest.raises(ModelError, match=r"sensor\(s\) landsat-c2l2 not trained on"):
        check_compatible(bundle, ["red", "nir", "ndvi"], ["landsat-c2l2", "sentinel2-l2a"])


def test_predict_pixels_refuses_a_spark_bundle(tiny_bundle):
    bundle, _, X = tiny_bundle
    meta = {**bundle.metadata, "format": "spark", "model_file": "model.onnx"}
    (bundle.path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="needs an ONNX bundle"):
        predict_pixels(load_bundle(bundle.path), X)


def test_classification_metrics_by_hand():
    m = classification_metrics([1, 1, 2, 2, 3], [1, 2, 2, 2, 1], {1: "a", 2: "b", 3: "c"})
    assert m["overall_accuracy"] == pytest.approx(3 / 5)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert m["per_class"]["a"] == {
        "code": 1,
        "precision": 0.5,
        "recall": 0.5,
        "f1": 0.5,
        "support": 2,
    }
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["b"]["recall"] == 1.0
    assert m["per_class"]["c"]["f1"] == 0.0
    # Aggregated (true, pred) counts give the same numbers.
    w = classification_metrics([1, 1, 2, 3], [1, 2, 2, 1], {1: "a", 2: "b", 3: "c"}, [1, 1, 2, 1])
    assert w["confusion_matrix"] == m["confusion_matrix"]
    assert w["overall_accuracy"] == pytest.approx(m["overall_accuracy"])


# ----------------------------------------------------------------------------- labels files


def labels_path(demo_root: Path) -> Path:
    return demo_root / "labels.geojson"


def write_geoparquet_utm(src: Path, dst: Path) -> Path:
    """The GeoJSON labels as GeoParquet in UTM 31N (CRS as PROJJSON, as GeoParquet says)."""
    from rasterio.crs import CRS

    doc = json.loads(src.read_text())
    geoms = [
        shape(transform_geom("EPSG:4326", "EPSG:32631", f["geometry"])) for f in doc["features"]
    ]
    table = pa.table(
        {
            "label": [f["properties"]["class_name"] for f in doc["features"]],
            "geometry": [g.wkb for g in geoms],
        }
    )
    geo = {
        "version": "1.1.0",
        "primary_column": "geometry",
        "columns": {
            "geometry": {
                "encoding": "WKB",
                "geometry_types": ["Polygon"],
                "crs": CRS.from_epsg(32631).to_dict(projjson=True),
            }
        },
    }
    table = table.replace_schema_metadata({b"geo": json.dumps(geo).encode()})
    pq.write_table(table, dst)
    return dst


def test_read_labels_geojson_and_geoparquet_in_another_crs(demo_root, tmp_path):
    gj = read_labels(labels_path(demo_root))
    assert gj.crs == "EPSG:4326"
    assert gj.classes == CLASSES
    gp = read_labels(write_geoparquet_utm(labels_path(demo_root), tmp_path / "l.parquet"), "label")
    assert gp.crs == "EPSG:32631"
    assert len(gp) == len(gj)
    # No class_code column: names get codes 1..n in sorted order.
    assert sorted(gp.classes.values()) == sorted(CLASSES.values())
    assert gp.classes[1] == "bare_soil"
    # Both burn the same pixels into a tile of the demo grid.
    tile = (10.0, 0.0, 600000.0, 0.0, -10.0, 5700000.0)
    a = rasterize_labels(zip(gj.geoms, gj.codes, strict=True), tile, 128, 128, 32631, gj.crs)
    b = rasterize_labels(zip(gp.geoms, gp.codes, strict=True), tile, 128, 128, 32631, gp.crs)
    assert a.any()
    names_a = np.vectorize(lambda c: gj.classes.get(int(c), ""))(a)
    names_b = np.vectorize(lambda c: gp.classes.get(int(c), ""))(b)
    np.testing.assert_array_equal(names_a, names_b)


def test_read_labels_names_the_problem(tmp_path):
    with pytest.raises(LabelError, match="not found"):
        read_labels(tmp_path / "none.geojson")
    p = tmp_path / "l.geojson"
    poly = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}
    p.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [{"type": "Feature", "properties": {"kind": 1}, "geometry": poly}],
            }
        )
    )
    with pytest.raises(LabelError, match="no property 'class_name' .properties: kind."):
        read_labels(p)
    line = {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}
    p.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [{"type": "Feature", "properties": {"c": "a"}, "geometry": line}],
            }
        )
    )
    with pytest.raises(LabelError, match="LineString, expected polygons"):
        read_labels(p, "c")
    (tmp_path / "x.parquet").write_bytes(b"nope")
    with pytest.raises(LabelError, match="not a readable Parquet"):
        read_labels(tmp_path / "x.parquet")


# ----------------------------------------------------------------------------- the job


@pytest.fixture(scope="module")
def lake(spark, demo_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("train_lake")
    source = demo_root / "scenes" / "sentinel2" / f"{JUNE}.SAFE"
    config = load_config("local", [f"ingest.source={source}", f"storage.root={root}"])
    lake = Lakehouse(spark, config.storage)
    run = ingest(spark, lake, Run(config))
    assert run.ingested == [JUNE], run.rejected
    features(spark, lake, Run(config, job="features"))
    return config, lake


@pytest.fixture(scope="module")
def sk(spark, lake, demo_root, tmp_path_factory):
    config, lk = lake
    out = tmp_path_factory.mktemp("models") / "sk"
    return train_model(
        spark,
        lk,
        config,
        labels_path(demo_root),
        trainer="sklearn",
        max_per_class=1500,
        block_px=BLOCK_PX,
        test_fraction=TEST_FRACTION,
        seed=SEED,
        model_out=out,
    )


@pytest.fixture(scope="module")
def held_out_pixels(spark, lake, demo_root):
    """Every labelled pixel of held-out blocks: features + label, computed independently."""
    config, lk = lake
    feats = feature_columns(["sentinel2-l2a"], config.features.indices)
    tiles = {
        (r.tile_row, r.tile_col): (r.row_off, r.col_off)
        for r in lk.read("tiles").filter(F.col("scene_id") == JUNE).collect()
    }
    px = (
        pixel_features(spark, lk, config, scene_ids=[JUNE])
        .select("tile_row", "tile_col", "row", "col", *feats)
        .toArrow()
    )
    offs = np.array(
        [
            tiles[(tr, tc)]
            for tr, tc in zip(
                px.column("tile_row").to_pylist(), px.column("tile_col").to_pylist(), strict=True
            )
        ]
    )
    r = px.column("row").to_numpy() + offs[:, 0]
    c = px.column("col").to_numpy() + offs[:, 1]
    # Truth: labels.geojson burnt onto the 10 m land-cover grid (= the Sentinel-2 grid).
    with rasterio.open(demo_root / "landcover_10m.tif") as lc:
        landcover = lc.read(1)
        doc = json.loads(labels_path(demo_root).read_text())
        truth = rasterize(
            (
                (transform_geom("EPSG:4326", lc.crs, f["geometry"]), f["properties"]["class_code"])
                for f in doc["features"]
            ),
            out_shape=lc.shape,
            transform=lc.transform,
            fill=0,
            dtype="uint8",
        )
    blocks = (r // BLOCK_PX) * (1 << 32) + c // BLOCK_PX
    y = truth[r, c].astype(np.int32)
    keep = (y > 0) & held_out(blocks, TEST_FRACTION, SEED)
    X = np.column_stack([px.column(f).to_numpy(zero_copy_only=False) for f in feats])
    keep &= np.isfinite(X).all(axis=1)
    return {
        "X": X[keep].astype(np.float32),
        "y": y[keep],
        "rows": r[keep],
        "cols": c[keep],
        "landcover": landcover[r[keep], c[keep]],
        "features": feats,
    }


def test_labels_used_as_truth_agree_with_the_land_cover_map(held_out_pixels):
    h = held_out_pixels
    assert len(h["y"]) > 2000
    assert set(np.unique(h["y"])) == set(CLASSES)  # every class has held-out pixels
    assert (h["y"] == h["landcover"]).mean() > 0.999


def test_sklearn_model_held_out_accuracy_is_at_least_0_9(sk, held_out_pixels):
    bundle = load_bundle(sk.bundle_path)
    check_compatible(bundle, held_out_pixels["features"], ["sentinel2-l2a"])
    classes, conf = predict_pixels(bundle, held_out_pixels["X"])
    accuracy = float((classes == held_out_pixels["y"]).mean())
    print(f"sklearn held-out overall accuracy {accuracy:.4f} on {len(classes)} pixels")
    assert accuracy >= 0.9
    assert ((conf > 0) & (conf <= 1)).all()
    # The model's own report is of the same order (it uses a class-capped test sample).
    assert sk.metadata["metrics"]["overall_accuracy"] >= 0.85


def test_onnx_classes_equal_sklearn_predict_exactly(sk, held_out_pixels):
    bundle = load_bundle(sk.bundle_path)
    X = held_out_pixels["X"]
    np.testing.assert_array_equal(predict_pixels(bundle, X)[0], sk.model.predict(X))
    assert sk.metadata["onnx_agreement"] == 1.0


def test_training_never_sees_a_held_out_block(sk, held_out_pixels):
    s = sk.sample
    assert len(s.y_train) > 0 and len(s.y_test) > 0
    # Every evaluation pixel is in a held-out block (hash of its block of the scene grid).
    r = s.test_rows["scene_row"].astype(np.int64)
    c = s.test_rows["scene_col"].astype(np.int64)
    blocks = (r // BLOCK_PX) * (1 << 32) + c // BLOCK_PX
    np.testing.assert_array_equal(blocks, s.test_rows["block"])
    assert held_out(blocks, TEST_FRACTION, SEED).all()
    # No training row equals a held-out pixel's features.
    train_rows = {row.tobytes() for row in s.X_train}
    assert not any(row.tobytes() in train_rows for row in held_out_pixels["X"])
    # The cap holds per class.
    _, n = np.unique(s.y_train, return_counts=True)
    assert n.max() <= 1500


def test_bundle_metadata_is_complete(sk, lake):
    config, _ = lake
    meta = json.loads((sk.bundle_path / "metadata.json").read_text())
    assert set(REQUIRED_KEYS) <= set(meta)
    assert meta["trainer"] == "sklearn" and meta["format"] == "onnx"
    assert meta["model_file"] == "model.onnx" and (sk.bundle_path / "model.onnx").is_file()
    assert meta["feature_names"] == [
        "coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir",
        "nir08", "nir09", "swir16", "swir22",
        *(i.lower() for i in config.features.indices),
    ]  # fmt: skip
    assert {c["code"]: c["name"] for c in meta["classes"]} == CLASSES
    assert meta["model_classes"] == sorted(CLASSES)
    assert meta["sensors"] == ["sentinel2-l2a"] and meta["scenes"] == [JUNE]
    assert len(meta["training_run_id"]) == 12
    assert datetime.fromisoformat(meta["created"]).tzinfo is not None
    assert "scenes.scaling" in meta["scaling"]["source"]
    # Baseline 05.10: reflectance = (DN - 1000) / 10000.
    assert meta["scaling"]["per_scene"][JUNE]["B04"] == pytest.approx([1e-4, -0.1])
    m = meta["metrics"]
    assert set(m["per_class"]) == set(CLASSES.values())
    assert {"precision", "recall", "f1", "support"} <= set(m["per_class"]["water"])
    assert np.asarray(m["confusion_matrix"]).shape == (6, 6)
    assert np.asarray(m["confusion_matrix"]).sum() == m["n"]
    assert meta["split"]["block_px"] == BLOCK_PX and meta["split"]["seed"] == SEED


def test_bundle_with_missing_model_or_other_sensor_fails_clearly(sk, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(sk.bundle_path, copy)
    bundle = load_bundle(copy)
    landsat = feature_columns(["landsat-c2l2"], ["NDVI"])
    with pytest.raises(ModelError) as e:
        check_compatible(bundle, landsat, ["landsat-c2l2"])
    msg = str(e.value)
    assert "missing feature(s) rededge1, rededge2, rededge3, nir, nir09" in msg
    assert "sensor(s) landsat-c2l2 not trained on (model sensors: sentinel2-l2a)" in msg
    (copy / "model.onnx").unlink()
    with pytest.raises(ModelError, match="model file model.onnx is missing"):
        load_bundle(copy)


def test_main_trains_from_the_command_line_and_records_the_run(lake, demo_root, tmp_path, capsys):
    config, lk = lake
    out = tmp_path / "cli"
    rc = main(
        [
            "--root", config.storage.root,
            "--labels", str(labels_path(demo_root)),
            "--max-per-class", "200",
            "--block-px", str(BLOCK_PX),
            "--seed", str(SEED),
            "--trees", "8",
            "--model-out", str(out),
        ]
    )  # fmt: skip
    assert rc == 0
    assert "held-out overall accuracy" in capsys.readouterr().out
    meta = load_bundle(out).metadata
    runs = lk.read("runs").filter(F.col("run_id") == meta["training_run_id"]).collect()
    assert [(r.job, r.status) for r in runs] == [("train", "succeeded")]


def test_main_reports_bad_labels(lake, tmp_path, capsys):
    config, _ = lake
    rc = main(["--root", config.storage.root, "--labels", str(tmp_path / "missing.geojson")])
    assert rc == 2
    assert "labels file not found" in capsys.readouterr().err


def test_mllib_model_reaches_0_8_on_the_same_held_out_blocks(
    spark, lake, demo_root, held_out_pixels, tmp_path
):
    from pyspark.ml.classification import RandomForestClassificationModel
    from pyspark.ml.feature import VectorAssembler

    config, lk = lake
    result = train_model(
        spark,
        lk,
        config,
        labels_path(demo_root),
        trainer="mllib",
        max_per_class=800,
        block_px=BLOCK_PX,
        test_fraction=TEST_FRACTION,
        seed=SEED,
        n_trees=12,
        model_out=tmp_path / "ml",
    )
    bundle = load_bundle(result.bundle_path)
    assert bundle.format == "spark" and bundle.metadata["trainer"] == "mllib"
    model = RandomForestClassificationModel.load(str(bundle.model_path))
    h = held_out_pixels
    feats = bundle.feature_names
    assert feats == h["features"]
    rows = np.column_stack([h["X"].astype(np.float64), h["y"]])
    df = spark.createDataFrame(rows.tolist(), [*feats, "y"])
    pred = model.transform(VectorAssembler(inputCols=feats, outputCol="features").transform(df))
    codes = np.asarray(bundle.metadata["model_classes"])
    got = pred.select("y", "prediction").toArrow()
    y = got.column("y").to_numpy().astype(int)
    p = codes[got.column("prediction").to_numpy().astype(int)]
    accuracy = float((y == p).mean())
    print(f"mllib held-out overall accuracy {accuracy:.4f} on {len(y)} pixels")
    assert accuracy >= 0.8
    assert result.metadata["metrics"]["overall_accuracy"] >= 0.75
