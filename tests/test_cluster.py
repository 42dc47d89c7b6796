"""A real standalone Spark cluster: the ingest job through ``spark-submit``, code shipped as a zip.

A master and one worker are started on 127.0.0.1 with the installed pyspark's own
``spark-class`` (``tests/standalone.py``, shared with ``bench/cluster_bench.py``); the
project's ``pipelines/`` and ``udfs/`` packages travel to the executors with ``--py-files``
as they would to a cluster that has none of this repository. Delta's jar
comes from ``$SPARK_HOME/conf/spark-defaults.conf`` (``write_spark_defaults``), as it does for
a plain ``spark-submit`` after ``make setup``.

Expected values are computed here: tile counts from the reference band's shape (plain
rasterio), pixels from windows read with plain rasterio.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window
from standalone import REPO, Cluster, ClusterError, missing, ship_code, standalone_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

TILE = 256


def spark_submit(cluster: Cluster, code_zip: Path, args: list[str], name: str) -> str:
    """Run ``spark-submit`` against ``cluster`` from the repository root; return its stdout."""
    try:
        return cluster.submit(code_zip, args, name)
    except ClusterError as e:
        pytest.fail(str(e))


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def spark_defaults() -> Path:
    """Delta for plain spark-submit, without relying on ``make setup`` having run."""
    from pipelines.session import write_spark_defaults

    return write_spark_defaults()


@pytest.fixture(scope="module")
def cluster(spark_defaults, tmp_path_factory) -> Iterator[Cluster]:
    """A master and one two-core worker on 127.0.0.1 (``tests/standalone.py``)."""
    why = missing()
    if why:
        pytest.skip(why)
    try:
        with standalone_cluster(tmp_path_factory.mktemp("cluster"), workers=1, cores=2) as c:
            yield c
    except ClusterError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def code_zip(tmp_path_factory) -> tuple[Path, str]:
    """``pipelines/`` and ``udfs/`` as a zip, plus a marker module only the zip has."""
    token = uuid.uuid4().hex
    path = tmp_path_factory.mktemp("ship") / "code.zip"
    return ship_code(path, {"udfs/_shipped.py": f'TOKEN = "{token}"\n'}), token


@dataclass
class Scene:
    scene_id: str
    folder: Path
    reference: Path  # the band that defines the scene grid (B02 / SR_B2)


def pick_scenes(root: Path) -> list[Scene]:
    """One Sentinel-2 and one Landsat scene of ``root`` (demo layout or a COG folder)."""
    safe = sorted(p for p in root.rglob("*.SAFE") if p.is_dir())
    if safe:
        b02 = next(safe[0].rglob("*_B02_10m.*"))
        s2 = Scene(safe[0].name.removesuffix(".SAFE"), safe[0], b02)
    else:
        b02 = sorted(root.rglob("B02.tif"))[0]
        s2 = Scene(b02.parent.name, b02.parent, b02)
    sr_b2 = sorted(root.rglob("*_SR_B2.TIF"))[0]
    return [s2, Scene(sr_b2.parent.name, sr_b2.parent, sr_b2)]


@pytest.fixture(scope="module")
def source(demo_root, tmp_path_factory) -> tuple[Path, list[Scene]]:
    """A private source folder with one Sentinel-2 and one Landsat demo scene."""
    scenes_root = demo_root / "scenes" if (demo_root / "scenes").is_dir() else demo_root
    src = tmp_path_factory.mktemp("cluster-source")
    scenes = []
    for scene in pick_scenes(scenes_root):
        dst = src / scene.folder.name
        shutil.copytree(scene.folder, dst)
        scenes.append(Scene(scene.scene_id, dst, dst / scene.reference.relative_to(scene.folder)))
    return src, scenes


@pytest.fixture(scope="module")
def cluster_ingest(cluster, code_zip, source, tmp_path_factory):
    """``spark-submit pipelines/ingest.py`` on the cluster; the table root and its stdout."""
    src, scenes = source
    root = tmp_path_factory.mktemp("cluster-lake") / "tables"
    started = time.monotonic()
    out = spark_submit(
        cluster,
        code_zip[0],
        [
            "pipelines/ingest.py",
            "--profile",
            "local",  # found in ./conf: the zip has no conf/ folder
            "--source",
            str(src),
            "--root",
            str(root),
            "--tile-size",
            str(TILE),
        ],
        "ingest",
    )
    print(f"cluster ingest took {time.monotonic() - started:.0f} s\n{out}")
    return root, scenes, out


def expected_tiles(reference: Path) -> int:
    with rasterio.open(reference) as ds:
        return math.ceil(ds.height / TILE) * math.ceil(ds.width / TILE)


# ----------------------------------------------------------------------------- tests


def test_cluster_ingest_records_every_scene(spark, cluster_ingest):
    root, scenes, _ = cluster_ingest
    ids = [r.scene_id for r in spark.read.format("delta").load(f"{root}/scenes").collect()]
    assert sorted(ids) == sorted(s.scene_id for s in scenes)


def test_cluster_ingest_writes_each_tile_exactly_once(spark, cluster_ingest):
    root, scenes, _ = cluster_ingest
    keys = [
        (r.scene_id, r.tile_row, r.tile_col)
        for r in spark.read.format("delta")
        .load(f"{root}/tiles")
        .select("scene_id", "tile_row", "tile_col")
        .collect()
    ]
    duplicates = [k for k, n in Counter(keys).items() if n > 1]
    assert duplicates == []
    per_scene = Counter(k[0] for k in keys)
    assert per_scene == {s.scene_id: expected_tiles(s.reference) for s in scenes}


def test_cluster_ingest_records_one_succeeded_run(spark, cluster_ingest):
    root, scenes, _ = cluster_ingest
    runs = spark.read.format("delta").load(f"{root}/runs").collect()
    assert len(runs) == 1
    run = runs[0]
    assert (run.status, run.ingested, run.rejected) == ("succeeded", len(scenes), 0)
    assert run.tiles_written == sum(expected_tiles(s.reference) for s in scenes)


def test_cluster_tiles_hold_the_source_pixels(spark, cluster_ingest):
    """Every ``blue`` tile equals its window of the reference band read with plain rasterio."""
    root, scenes, _ = cluster_ingest
    tiles = spark.read.format("delta").load(f"{root}/tiles")
    for scene in scenes:
        rows = (
            tiles.filter(tiles.scene_id == scene.scene_id)
            .select(
                "tile_row", "tile_col", "row_off", "col_off", "height", "width", "dtype", "blue"
            )
            .collect()
        )
        assert rows, scene.scene_id
        with rasterio.open(scene.reference) as ds:
            for r in rows:
                r0, c0 = r.tile_row * TILE, r.tile_col * TILE
                h, w = min(TILE, ds.height - r0), min(TILE, ds.width - c0)
                where = f"{scene.scene_id} tile ({r.tile_row}, {r.tile_col})"
                assert (r.row_off, r.col_off, r.height, r.width) == (r0, c0, h, w), where
                assert r.dtype == "uint16", where
                got = np.frombuffer(r.blue, dtype="<u2").reshape(r.height, r.width)
                expected = ds.read(1, window=Window(c0, r0, w, h))
                np.testing.assert_array_equal(got, expected, err_msg=where)


@pytest.fixture(scope="module")
def cluster_classify(spark, cluster, code_zip, cluster_ingest, demo_root, tmp_path_factory):
    """A model trained here on the cluster's tables, then ``spark-submit
    pipelines/classify.py`` on the cluster (it computes features itself)."""
    from pipelines.config import load_config
    from pipelines.features import features
    from pipelines.lakehouse import Lakehouse
    from pipelines.runs import Run
    from pipelines.train import train_model

    root, scenes, _ = cluster_ingest
    config = load_config("local", [f"storage.root={root}"])
    lake = Lakehouse(spark, config.storage)
    features(spark, lake, Run(config, job="features"))
    model = tmp_path_factory.mktemp("cluster-model") / "both"
    result = train_model(spark, lake, config, demo_root / "labels.geojson", max_per_class=600,
                         block_px=64, model_out=model)  # fmt: skip
    out = spark_submit(
        cluster,
        code_zip[0],
        ["pipelines/classify.py", "--root", str(root), "--model", str(model), "--ingest", "never"],
        "classify",
    )
    return root, scenes, result, out


def test_cluster_classify_maps_every_tile_like_the_model_in_one_process(spark, cluster_classify):
    from pipelines.config import load_config
    from pipelines.features import pixel_features
    from pipelines.lakehouse import Lakehouse
    from udfs.models import load_bundle, predict_pixels

    root, scenes, result, out = cluster_classify
    assert "2 scene(s) classified" in out, out
    lake = Lakehouse(spark, load_config("local", [f"storage.root={root}"]).storage)
    preds = lake.read("predictions").collect()
    assert Counter(r.scene_id for r in preds) == {
        s.scene_id: expected_tiles(s.reference) for s in scenes
    }
    jobs = sorted(r.job for r in lake.read("runs").collect())
    # The features run of the training set-up is not recorded here; classify runs the
    # analysis stages (composites, aggregate) after its maps, each its own run.
    assert jobs == ["aggregate", "classify", "composites", "features", "ingest"]
    assert "aggregate run" in out, out
    bundle = load_bundle(result.bundle_path)
    names = bundle.feature_names
    for p in preds:
        px = (
            pixel_features(spark, lake, load_config("local", [f"storage.root={root}"]),
                           scene_ids=[p.scene_id], usable_only=False)
            .filter(f"tile_row = {p.tile_row} AND tile_col = {p.tile_col}")
            .select("row", "col", *names)
            .toArrow()
        )  # fmt: skip
        X = np.column_stack([px.column(n).to_numpy(zero_copy_only=False) for n in names])
        expected = np.zeros((p.height, p.width), dtype=np.int64)
        expected[px.column("row").to_numpy(), px.column("col").to_numpy()] = predict_pixels(
            bundle, X
        )[0]
        got = np.frombuffer(p.classes, np.uint8).reshape(p.height, p.width)
        np.testing.assert_array_equal(got, expected, err_msg=f"{p.scene_id} {p.tile_row}")


WHERE_SCRIPT = """
import json

from pyspark.sql import SparkSession


def where(_):
    import pipelines.datamodel
    import udfs._shipped  # only the shipped zip has this module
    import udfs.tiling

    return {
        "udfs": udfs.tiling.__file__,
        "pipelines": pipelines.datamodel.__file__,
        "token": udfs._shipped.TOKEN,
    }


spark = SparkSession.builder.appName("where-is-the-code").getOrCreate()
found = spark.sparkContext.parallelize(range(2), 2).map(where).collect()
print("EXECUTORS " + json.dumps(found))
spark.stop()
"""


def test_executors_import_the_project_from_the_shipped_zip(cluster, code_zip, tmp_path):
    """The venv has the project installed (editable), so prove the zip is what ran."""
    path, token = code_zip
    script = tmp_path / "where.py"
    script.write_text(WHERE_SCRIPT)
    out = spark_submit(cluster, path, [str(script)], "where")
    line = next(x for x in out.splitlines() if x.startswith("EXECUTORS "))
    found = json.loads(line.removeprefix("EXECUTORS "))
    assert len(found) == 2
    for f in found:
        assert f["token"] == token
        assert "code.zip" in f["udfs"] and "code.zip" in f["pipelines"], f
        assert not f["udfs"].startswith(str(REPO)), f


CONF_SCRIPT = """
import pipelines.config

assert "code.zip" in pipelines.config.__file__, pipelines.config.__file__
print(pipelines.config.profile_path("local"))
pipelines.config.load_config("local")
"""


def test_spark_submit_defaults_bring_delta_and_quiet_logging(spark_defaults):
    text = spark_defaults.read_text()
    assert "io.delta:delta-spark_4.1_2.13:4.4.0" in text
    assert "io.delta.sql.DeltaSparkSessionExtension" in text
    log4j = spark_defaults.parent / "eo-driver-log4j2.properties"
    assert f"spark.driver.extraJavaOptions -Dlog4j2.configurationFile={log4j}" in text
    assert "rootLogger.level = warn" in log4j.read_text()
    assert not (spark_defaults.parent / "log4j2.properties").exists()  # daemons keep INFO


def test_profile_names_resolve_when_code_is_imported_from_a_zip(code_zip, tmp_path):
    """What the spark-submit driver does: package from the zip, run from the repository root.

    The zip has no ``conf/`` beside the packages, so ``--profile local`` must come from
    ``./conf``.
    """
    script = tmp_path / "conf_check.py"
    script.write_text(CONF_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "EO_CONF_DIR"}
    env["PYTHONPATH"] = str(code_zip[0])
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert Path(proc.stdout.strip()) == REPO / "conf" / "local.yaml"
