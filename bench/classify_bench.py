"""Pixel inference throughput: the classify job on ``local[2]`` against one plain process.

One generated Sentinel-2 L2A scene is ingested, its features computed and a land-cover
model trained (scikit-learn random forest, 64 trees, written as ONNX) - none of that is
timed. Then, in the same script:

* baseline: the same model predicts the same pixels in one process, from a float32
  feature matrix already in memory (features computed beforehand, not timed), once with
  scikit-learn ``predict_proba`` and once with ONNX Runtime (one thread, as each executor
  worker uses; and with as many threads as cores, for reference);
* job: :func:`pipelines.classify.classify` on the ingested tables (warmed up on a small
  scene first): reads tiles, masks clouds, computes reflectance and indices, predicts,
  writes ``predictions`` and ``tile_predictions``.

Throughput is classified pixels per second. The ratios are the job over the faster
one-thread baseline and over ONNX Runtime on every core; the format ONNX Runtime vs
scikit-learn is chosen by the same numbers. ``--family forest,boosting`` repeats all of
it for each model family (``train.family``) on the same tables and prints each one's
held-out accuracy beside its speeds.

Usage: ``python bench/classify_bench.py --size 5490``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipelines.classify import classify  # noqa: E402
from pipelines.config import load_config  # noqa: E402
from pipelines.demo import generate  # noqa: E402
from pipelines.features import features, scene_table  # noqa: E402
from pipelines.ingest import ingest  # noqa: E402
from pipelines.lakehouse import Lakehouse  # noqa: E402
from pipelines.runs import Run  # noqa: E402
from pipelines.session import build_session  # noqa: E402
from pipelines.train import train_model  # noqa: E402
from udfs.feature_udfs import TILE_COLUMNS  # noqa: E402
from udfs.features import decode_tile, pixel_table  # noqa: E402
from udfs.inference import feature_matrix  # noqa: E402
from udfs.models import index_names, load_bundle, predict_pixels  # noqa: E402


def pixel_matrix(lake: Lakehouse, names: list[str], indices: list[str]) -> np.ndarray:
    """Every valid pixel's features, in model order, computed in this process."""
    scenes = scene_table(lake)
    parts = []
    for path in sorted(Path(lake.local_path("tiles")).rglob("*.parquet")):
        for row in pq.read_table(path, columns=list(TILE_COLUMNS)).to_pylist():
            scene = scenes[row["scene_id"]]
            dn = decode_tile(row, scene["sensor"])
            scaling = {k: (v[0], v[1]) for k, v in scene["scaling"].items()}
            parts.append(feature_matrix(pixel_table(scene["sensor"], dn, scaling, indices), names))
    return np.concatenate(parts)


def timed(fn, *args) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def onnx_threads(bundle, X: np.ndarray, threads: int) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(bundle.model_path), opts, providers=["CPUExecutionProvider"])
    out = []
    for i in range(0, len(X), 65536):
        (p,) = sess.run(["probabilities"], {"X": X[i : i + 65536]})
        out.append(p.argmax(axis=1))
    return np.concatenate(out)


def sklearn_predict(model, X: np.ndarray) -> np.ndarray:
    model.n_jobs = 1
    return np.concatenate(
        [model.predict_proba(X[i : i + 65536]).argmax(axis=1) for i in range(0, len(X), 65536)]
    )


def measure(spark, lakes, work: Path, size: int, family: str) -> dict:
    """Train a ``family`` model on the demo lake, time the baselines and the job."""
    config, lake = lakes["demo"]
    # 512 px blocks (5 km) for full-size scenes; smaller scenes need smaller blocks to
    # leave pixels on both sides of the spatial split.
    block_px = max(32, min(512, size // 8))
    result = train_model(
        spark,
        lake,
        config,
        work / "demo" / "labels.geojson",
        block_px=block_px,
        family=family,
        model_out=work / f"model-{family}",
    )
    bundle = load_bundle(result.bundle_path)

    X = pixel_matrix(lake, bundle.feature_names, index_names(bundle))
    X = X[np.isfinite(X).all(axis=1)]
    n_px = len(X)
    base = {}
    base["onnx_1_thread"], onnx_classes = timed(predict_pixels, bundle, X)
    base["sklearn_1_thread"], sk_best = timed(sklearn_predict, result.model, X)
    cores = os.cpu_count() or 1
    base[f"onnx_{cores}_threads"], _ = timed(onnx_threads, bundle, X, cores)
    agree = float(np.mean(bundle.model_classes[sk_best] == onnx_classes[0]))

    for name in ("warm", "demo"):
        cfg, lk = lakes[name]
        job_s, run = timed(classify, spark, lk, Run(cfg, job="classify"), bundle)
    classified = sum(
        r.n
        for r in lk.read("tile_predictions")
        .filter(f"model_id = '{bundle.model_id}'")
        .selectExpr("classified_count AS n")
        .collect()
    )
    one_thread = {k: v for k, v in base.items() if "1_thread" in k}
    best = min(one_thread, key=one_thread.get)
    return {
        "size": size,
        "family": family,
        "held_out_accuracy": result.metadata["metrics"]["overall_accuracy"],
        "cores": cores,
        "pixels": n_px,
        "classified_by_job": classified,
        "onnx_sklearn_class_agreement": agree,
        "baseline_s": {k: round(v, 2) for k, v in base.items()},
        "baseline_mpx_s": {k: round(n_px / v / 1e6, 3) for k, v in base.items()},
        "fastest_format_one_process": best,
        "job_s": round(job_s, 2),
        "job_mpx_s": round(classified / job_s / 1e6, 3),
        "ratio_job_over_fastest_one_thread": round(one_thread[best] / job_s, 2),
        f"ratio_job_over_onnx_{cores}_threads": round(base[f"onnx_{cores}_threads"] / job_s, 2),
        "tiles": run.tiles_written,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument(
        "--family",
        default="forest",
        help="model families to measure, comma-separated (train.family): forest,boosting",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="classify-bench-"))
    generate(work / "demo", size=args.size, seed=3, scenes=["20240621"])
    generate(work / "warm", size=256, seed=3, scenes=["20240621"])

    spark = build_session(load_config("local"))
    lakes = {}
    for name in ("warm", "demo"):
        config = load_config(
            "local",
            [f"ingest.source={work / name / 'scenes'}", f"storage.root={work / ('lake-' + name)}"],
        )
        lake = Lakehouse(spark, config.storage)
        ingest(spark, lake, Run(config))
        features(spark, lake, Run(config, job="features"))
        lakes[name] = (config, lake)
    results = {}
    for family in args.family.split(","):
        results[family] = measure(spark, lakes, work, args.size, family)
    spark.stop()
    print(json.dumps(results, indent=2))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
