"""The benchmark scripts run end to end on a small generated scene.

Only that they run and that both sides did the same work is checked (tile and pixel
counts, class agreement); timings are printed by the scripts, never asserted.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.spark, pytest.mark.slow]


def run_bench(name: str, workdir: Path, size: int = 256) -> dict:
    """Run ``bench/<name>_bench.py`` in its own process; return the JSON it prints."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{name}_bench.py"), "--size", str(size)]
        + ["--workdir", str(workdir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    found = re.findall(r"^\{$.*?^\}$", proc.stdout, flags=re.M | re.S)
    assert found, proc.stdout[-2000:]
    return json.loads(found[-1])


def test_ingest_bench_runs_both_sides_and_the_project_kernel(tmp_path):
    out = run_bench("ingest", tmp_path, size=300)
    # 300 px: a 2 x 2 tile grid with clipped edge tiles; 13 bands (12 reflectance + SCL).
    assert out["tiles"] == 4 and out["band_pixels"] == 300 * 300 * 13
    for key in ("baseline_1_thread_s", "baseline_2_threads_s", "project_kernel_one_process_s",
                "spark_s"):  # fmt: skip
        assert out[key] > 0
    ratio = out["ratio_spark_over_2_threads"]  # the threaded script is the peer that counts
    assert ratio == pytest.approx(
        out["baseline_2_threads_s"] / out["spark_s"], abs=0.02 + 0.01 * ratio
    )


def test_features_bench_runs(tmp_path):
    out = run_bench("features", tmp_path)
    assert out["tiles"] == 1 and out["baseline_s"] > 0 and out["spark_s"] > 0


def test_classify_bench_classifies_every_valid_pixel(tmp_path):
    out = run_bench("classify", tmp_path)["forest"]  # results by model family
    assert out["pixels"] > 0 and out["classified_by_job"] == out["pixels"]
    assert out["onnx_sklearn_class_agreement"] >= 0.99
    assert out["job_s"] > 0


def test_aggregate_bench_gets_the_baselines_numbers(tmp_path):
    # The script asserts that the job's count and statistics of every region and index
    # equal the threaded rasterio + numpy baseline's; here only that it got that far.
    out = run_bench("aggregate", tmp_path, size=384)
    assert out["regions"] == 300 and out["baseline_2_threads_s"] > 0 and out["job_s"] > 0
    assert out["job_regions_area_x4_s"] > 0 and out["job_second_scene_in_table_s"] > 0


def test_ndvi_e2e_bench_gets_odc_stacs_numbers_on_four_scenes(tmp_path):
    # The script asserts that the project's per-tile NDVI count / mean / std equal
    # odc-stac + dask's for every scene; the demo has three Sentinel-2 dates, the script
    # writes a fourth.
    pytest.importorskip("odc.stac", reason="needs the bench extra: pip install -e .[bench]")
    out = run_bench("ndvi_e2e", tmp_path)
    assert [r["scenes"] for r in out["runs"]] == [1, 3, 4]
    assert [r["tiles"] for r in out["runs"]] == [1, 3, 4]  # 256 px: one tile a scene
    assert all(r["results_equal"] and r["project_ingest_features_s"] > 0 for r in out["runs"])


def test_memory_bench_reports_the_peak_of_both_jobs(tmp_path):
    # The 10980 px figure in the README comes from `bench/memory_bench.py` at its default
    # size; here a small scene checks that the sampler sees the JVM and the Python workers.
    out = run_bench("memory", tmp_path)
    assert [j["job"] for j in out["jobs"]] == ["ingest", "features"]
    assert not any(j["failed"] for j in out["jobs"])
    assert all(
        j["jvm_peak_rss_mb"] > 0 and j["workers_peak_summed_rss_mb"] > 0 for j in out["jobs"]
    )
    assert out["tiles_written"] == out["feature_tiles"] > 0
