"""Pixel inference throughput: the classify job on ``local[2]`` against one plain process.

One generated Sentinel-2 L2A scene is ingested, its features computed and a land-cover
model trained (scikit-learn random forest, 64 trees, written as ONNX) - none of that is
timed. Then, in the same script:

* baselines: the same model predicts the same pixels in one process, from a float32
  feature matrix already in memory (features computed beforehand, not timed): ONNX
  Runtime on every core with the bundle's ``model.onnx`` as skl2onnx wrote it, default
  options (the target), and, chosen with ``--baselines``, ONNX Runtime on one thread,
  scikit-learn ``predict_proba`` on one thread, ONNX Runtime on every core given the
  forest without its zero leaf weights (the encoding the job's workers use, in parts:
  :func:`udfs.models.forest_parts`) and the project's own ``predict_pixels``;
* job: :func:`pipelines.classify.classify` on the ingested tables (warmed up on a small
  scene first): reads tiles, masks clouds, computes reflectance and indices, predicts,
  writes ``predictions`` and ``tile_predictions``.

Throughput is classified pixels per second. The ratios are the job over the faster
one-thread baseline and over each multi-thread one. The job's class counts must equal
ONNX Runtime's (checked after the figures are printed). The format ONNX Runtime vs
scikit-learn is chosen by the same numbers. ``--family forest,boosting`` repeats all of
it for each model family (``train.family``) on the same tables and prints each one's
held-out accuracy beside its speeds.

``--profile`` also runs the job's executor code (:func:`udfs.inference_udfs.
make_tile_classifier_writer`: read tiles files, decode, mask, features, predict, encode,
write ``predictions`` files) over every tiles file in this one process under cProfile, and
prints where its time goes, for comparison with the job's time on ``local[2]``.

Usage: ``python bench/classify_bench.py --size 5490 [--profile]``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import os
import pstats
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
from pipelines.datamodel import PREDICTIONS, TILE_PREDICTIONS  # noqa: E402
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
from udfs.inference_udfs import ModelRef, make_tile_classifier_writer  # noqa: E402
from udfs.models import (  # noqa: E402
    forest_parts,
    index_names,
    load_bundle,
    model_sha256,
    predict_pixels,
)

#: Profile categories: functions whose cumulative time is the category's (they do not
#: nest in one another; "other" is the rest of the wall time).
PROFILE_PARTS = {
    "read tiles files": ("file_row_groups", "to_pylist"),
    "decode": ("decode_tile",),
    "mask + features": ("pixel_table", "feature_matrix"),
    "predict (onnxruntime)": ("predict_with_session",),
    "encode rasters": ("encode_array",),
    "write predictions files": ("write_table_file",),
}


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


def onnx_threads(model: bytes, X: np.ndarray, threads: int) -> np.ndarray:
    """Probability argmax of ONNX Runtime as a user runs it: one session, default options
    but the thread count, 65 536 rows per call."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
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


def profile_executor(lake: Lakehouse, bundle, work: Path) -> dict:
    """The job's executor code over every tiles file in this process, under cProfile:
    wall seconds and the seconds of each :data:`PROFILE_PARTS` category."""
    from pyspark.sql.pandas.types import to_arrow_schema

    scenes = scene_table(lake)
    model = ModelRef(
        bundle.model_id,
        model_sha256(bundle),
        tuple(bundle.feature_names),
        tuple(index_names(bundle)),
        tuple(int(c) for c in bundle.model_classes),
        bundle.model_path.read_bytes(),
    )
    out = work / "profile-predictions"
    shutil.rmtree(out, ignore_errors=True)
    writer = make_tile_classifier_writer(
        scenes, model, {"run_id": "profile"}, to_arrow_schema(PREDICTIONS),
        TILE_PREDICTIONS.fieldNames(), str(out), 1, lambda e: None,
    )  # fmt: skip
    paths = sorted(str(p) for p in Path(lake.local_path("tiles")).rglob("*.parquet"))
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    n = sum(1 for o in writer(paths) if "tile" in o)
    prof.disable()
    wall = time.perf_counter() - t
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    cum: dict[str, float] = {}
    for (_file, _line, func), (_cc, _nc, _tt, ct, _callers) in stats.items():
        # Python functions by name; built-in methods as "<method 'name' of ...>".
        name = func.split("'")[1] if func.startswith("<method '") else func
        cum[name] = cum.get(name, 0.0) + ct
    parts = {k: round(sum(cum.get(f, 0.0) for f in fs), 2) for k, fs in PROFILE_PARTS.items()}
    parts["other"] = round(wall - sum(parts.values()), 2)
    prof.dump_stats(str(work / "classify-executor.prof"))
    shutil.rmtree(out, ignore_errors=True)
    return {"tiles": n, "wall_s_one_process_profiled": round(wall, 2), "parts_s": parts}


def measure(
    spark, lakes, work: Path, size: int, family: str, baselines: list[str], profile: bool = False
) -> dict:
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
    cores = os.cpu_count() or 1
    codes = bundle.model_classes
    blob = bundle.model_path.read_bytes()
    # The same forest without the zero leaf weights skl2onnx writes, in one model: the
    # encoding the job's workers predict with (in parts of TREES_PER_PART trees).
    (sparse,) = forest_parts(blob, 1 << 30)
    runs = {
        "onnx_1_thread": lambda: onnx_threads(blob, X, 1),
        "sklearn_1_thread": lambda: sklearn_predict(result.model, X),
        f"onnx_{cores}_threads": lambda: onnx_threads(blob, X, cores),
        f"onnx_{cores}_threads_sparse_weights": lambda: onnx_threads(sparse, X, cores),
        "project_predict_1_thread": lambda: np.searchsorted(codes, predict_pixels(bundle, X)[0]),
    }
    base, best_idx = {}, {}
    for name in [f"onnx_{cores}_threads", *baselines]:
        if name not in runs:
            raise SystemExit(f"unknown baseline {name!r} (known: {', '.join(runs)})")
        if name not in base:
            base[name], best_idx[name] = timed(runs[name])
    target = f"onnx_{cores}_threads"
    ref = best_idx[target]
    agree = {k: float(np.mean(v == ref)) for k, v in best_idx.items() if k != target}
    per_class = np.bincount(ref, minlength=len(codes))
    ref_counts = {int(c): int(n) for c, n in zip(codes, per_class, strict=True)}

    for name in ("warm", "demo"):
        cfg, lk = lakes[name]
        job_s, run = timed(classify, spark, lk, Run(cfg, job="classify"), bundle)
    counts = lk.read("tile_predictions").filter(f"model_id = '{bundle.model_id}'")
    job_counts = dict.fromkeys(ref_counts, 0)
    for r in counts.select("class_counts").collect():
        for code, n in r.class_counts.items():  # a map column: a dict
            job_counts[int(code)] += int(n)
    classified = sum(job_counts.values())
    # The job's maps hold the baseline's classes: the same number of pixels of each class
    # (checked in main, after the figures are printed).
    one_thread = {k: v for k, v in base.items() if "1_thread" in k and "project" not in k}
    best = min(one_thread, key=one_thread.get) if one_thread else target
    out = {
        "size": size,
        "family": family,
        "held_out_accuracy": result.metadata["metrics"]["overall_accuracy"],
        "cores": cores,
        "pixels": n_px,
        "classified_by_job": classified,
        # kept for tests/test_bench.py (None when scikit-learn was not measured)
        "onnx_sklearn_class_agreement": agree.get("sklearn_1_thread"),
        f"class_agreement_with_onnx_{cores}_threads": agree,
        "job_class_counts_equal_onnx": job_counts == ref_counts,
        "job_class_counts": job_counts,
        "baseline_s": {k: round(v, 2) for k, v in base.items()},
        "baseline_mpx_s": {k: round(n_px / v / 1e6, 3) for k, v in base.items()},
        "fastest_format_one_process": best,
        "job_s": round(job_s, 2),
        "job_mpx_s": round(classified / job_s / 1e6, 3),
        "ratio_job_over_fastest_one_thread": round(base[best] / job_s, 2),
        **{f"ratio_job_over_{k}": round(v / job_s, 2) for k, v in base.items() if "threads" in k},
        "tiles": run.tiles_written,
    }
    if profile:
        out["executor_code_one_process"] = profile_executor(lk, bundle, work)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument(
        "--family",
        default="forest",
        help="model families to measure, comma-separated (train.family): forest,boosting",
    )
    p.add_argument("--profile", action="store_true", help="profile the executor code")
    p.add_argument(
        "--baselines",
        default="onnx_1_thread,sklearn_1_thread,onnx_2_threads_sparse_weights",
        help="one-process baselines besides ONNX Runtime on every core, comma-separated: "
        "onnx_1_thread, sklearn_1_thread, onnx_<cores>_threads_sparse_weights, "
        "project_predict_1_thread (udfs.models.predict_pixels)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="classify-bench-"))
    for name, size in (("demo", args.size), ("warm", 256)):
        if not (work / name / "manifest.json").exists():  # a kept --workdir keeps its scenes
            generate(work / name, size=size, seed=3, scenes=["20240621"])

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
        results[family] = measure(
            spark, lakes, work, args.size, family, args.baselines.split(","), args.profile
        )
    spark.stop()
    print(json.dumps(results, indent=2))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    for family, r in results.items():
        assert r["job_class_counts_equal_onnx"], f"{family}: the job's classes differ from ONNX's"
    return 0


if __name__ == "__main__":
    sys.exit(main())
