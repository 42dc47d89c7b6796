"""Scaling on a Spark standalone cluster started on this machine.

A master and one or two workers of one core each are started on 127.0.0.1 with the
installed pyspark's ``spark-class`` (``tests/standalone.py``, as ``tests/test_cluster.py``
does); the jobs go through ``spark-submit`` in client mode with ``pipelines/`` and ``udfs/``
shipped as a zip (``--py-files``), so executors import the project from the zip, as on a
cluster that has none of this repository. Each measured run is ``spark-submit
pipelines/ingest.py`` into a new table root, then ``spark-submit pipelines/features.py``
on it, each timed from the command's start to its end (JVM start, Spark session, the work,
the Delta commits, the summary): what a scheduler sees.

Two questions:

* the same scenes on one worker and on two (``--one-worker``, default: the largest count);
* 1, 2 and 4 scenes on two workers (``--scenes``): how the cost grows with the work. A
  least-squares line ``seconds = fixed + per_scene * n`` over those runs separates the
  per-run cost (JVM, session, planning, commits) from the cost of a scene.

The scenes are Sentinel-2 L2A scenes of the demo generator, all of one size (``--size``):
its three Sentinel-2 acquisitions plus, for a fourth, one more written by the same writer
with another date. Every run checks in the jobs' own summaries that each scene was ingested
and processed. The driver runs on this machine too: with two one-core workers, the two
cores are the executors', and the driver's planning and commits take turns with them.
Each run also prints how many of the machine's cores were busy on average while it ran
(``/proc/stat``, every process counted): a worker's "one core" is one task at a time, and
a task's native threads (GDAL decoding, Parquet encoding) and the driver use more.

Usage: ``python bench/cluster_bench.py --size 5490`` (``--jobs ingest`` for ingest alone).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from standalone import ClusterError, missing, ship_code, standalone_cluster  # noqa: E402

from pipelines.demo import generate  # noqa: E402
from pipelines.demo.landscape import make_layout  # noqa: E402
from pipelines.demo.scenes import SCENES  # noqa: E402
from pipelines.demo.sentinel2 import write_sentinel2  # noqa: E402
from pipelines.session import write_spark_defaults  # noqa: E402
from udfs.sensors import SENTINEL2_L2A  # noqa: E402

SEED = 3
JOBS = ("ingest", "features")
#: What each job's summary says when it did the work: job -> pattern of the count of scenes.
DONE = {
    "ingest": re.compile(r"ingest run \w+: \d+ input\(s\) seen, (\d+) ingested"),
    "features": re.compile(r"features run \w+: (\d+) scene\(s\) processed"),
}


def fourth_scene_spec():
    """A Sentinel-2 acquisition the demo does not have: its 21 June scene ten days later."""
    june = next(s for s in SCENES if "20240621" in s.scene_id)
    return dataclasses.replace(
        june,
        index=len(SCENES),  # seeds its own clouds
        scene_id=june.scene_id.replace("20240621", "20240701"),
        sensing=june.sensing + timedelta(days=10),
        orbit=june.orbit + 143,
        processed=june.processed.replace("20240621", "20240701"),
    )


def make_scenes(folder: Path, size: int, count: int) -> list[Path]:
    """``count`` (at most 4) Sentinel-2 SAFE folders of ``size`` px under ``folder``,
    written once: a folder holding them already is reused."""
    done = folder / f"scenes-{size}.json"
    if done.is_file():
        safes = [Path(p) for p in json.loads(done.read_text())]
        if len(safes) >= count and all(p.is_dir() for p in safes):
            return safes[:count]
    shutil.rmtree(folder, ignore_errors=True)
    generate(folder / "demo", size=size, seed=SEED, scenes=["MSIL2A"])
    root = folder / "demo" / "scenes" / "sentinel2"
    write_sentinel2(root, make_layout(size, SEED), fourth_scene_spec(), SEED)
    safes = sorted(root.glob("*.SAFE"))
    assert len(safes) == 4, safes
    done.write_text(json.dumps([str(p) for p in safes]))
    return safes[:count]


def source_of(safes: list[Path], folder: Path) -> Path:
    """A source folder holding exactly ``safes`` (hard links: no copy of the pixels)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for safe in safes:
        shutil.copytree(safe, folder / safe.name, copy_function=os.link)
    return folder


def band_pixels(safes: list[Path]) -> int:
    """Band-pixels of the scenes on the 10 m grid (13 bands + SCL, as ingest tiles them)."""
    import rasterio

    total = 0
    for safe in safes:
        (b02,) = safe.glob("GRANULE/*/IMG_DATA/R10m/*_B02_10m.*")
        with rasterio.open(b02) as ds:
            total += ds.width * ds.height * len(SENTINEL2_L2A.bands)
    return total


def cpu_ticks() -> tuple[int, int] | None:
    """(busy, all) CPU ticks of the machine since boot, from /proc/stat (None elsewhere)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def cores_busy(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Average number of busy cores between two :func:`cpu_ticks` (every process counts)."""
    if before is None or after is None or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1]) * (os.cpu_count() or 1)


def run_config(work: Path, safes: list[Path], workers: int, jobs: list[str], tag: str):
    """Start ``workers`` one-core workers, run ``jobs`` on ``safes`` into a new root, stop
    the cluster; return ``{job: seconds, job_cores_busy: average busy cores}``."""
    base = work / f"cluster-{tag}"
    shutil.rmtree(base, ignore_errors=True)
    source = source_of(safes, base / "source")
    code = ship_code(base / "code.zip")
    lake = base / "lakehouse"
    times = {}
    with standalone_cluster(base, workers=workers, cores=1, memory="3g") as cluster:
        for job in jobs:
            args = [f"pipelines/{job}.py", "--profile", "local", "--root", str(lake)]
            if job == "ingest":
                args += ["--source", str(source)]
            ticks, started = cpu_ticks(), time.perf_counter()
            out = cluster.submit(code, args, f"{job}-{tag}",
                                 conf={"spark.executor.memory": "2g"}, timeout_s=900)  # fmt: skip
            times[job] = time.perf_counter() - started
            times[f"{job}_cores_busy"] = cores_busy(ticks, cpu_ticks())
            found = DONE[job].search(out)
            if found is None or int(found.group(1)) != len(safes):
                raise ClusterError(f"{job} on {len(safes)} scene(s): unexpected summary\n{out}")
    shutil.rmtree(base / "source")
    shutil.rmtree(lake)
    return times


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``y = a + b x``: (a, b)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return my - b * mx, b


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=5490, help="10 m pixels per side of each scene")
    p.add_argument("--scenes", default="1,2,4", help="scene counts run on two workers")
    p.add_argument("--one-worker", type=int, default=None,
                   help="scene count also run on one worker (default: the largest)")  # fmt: skip
    p.add_argument("--jobs", default="ingest,features", help="ingest and/or features")
    p.add_argument("--workdir", type=Path, default=None,
                   help="keeps the generated scenes (default: a temporary folder)")  # fmt: skip
    p.add_argument("--json", type=Path, help="write the figures here too")
    p.add_argument("--generate-only", action="store_true",
                   help="write the scenes into --workdir and stop")  # fmt: skip
    args = p.parse_args(argv)
    why = missing()
    if why:
        print(f"cluster_bench: cannot start a cluster: {why}", file=sys.stderr)
        return 2
    counts = sorted({int(c) for c in args.scenes.split(",")})
    one = args.one_worker or counts[-1]
    jobs = [j for j in JOBS if j in args.jobs.split(",")]
    if not counts or max(counts + [one]) > 4 or min(counts + [one]) < 1 or not jobs:
        p.error("--scenes and --one-worker take 1..4 scenes; --jobs ingest and/or features")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    write_spark_defaults()  # spark-submit's Delta settings, as `make setup` writes them

    t = time.perf_counter()
    safes = make_scenes(work / "scenes", args.size, 4)
    print(f"scenes: 4 x {args.size} px Sentinel-2 L2A ready in {time.perf_counter() - t:.1f} s")
    if args.generate_only:
        return 0

    runs = []
    plan = [(2, n) for n in counts] + [(1, one)]
    try:
        for workers, n in plan:
            times = run_config(work, safes[:n], workers, jobs, f"w{workers}-s{n}")
            mpx = band_pixels(safes[:n]) / 1e6
            runs.append({"workers": workers, "scenes": n, "band_mpx": mpx, **times})
            shown = ", ".join(
                f"{j} {times[j]:.1f} s" + (f" ({busy:.2f} cores busy)" if busy else "")
                for j in jobs
                for busy in [times[f"{j}_cores_busy"]]
            )
            print(f"{workers} worker(s) x 1 core, {n} scene(s) ({mpx:.0f} M band-px): {shown}",
                  flush=True)  # fmt: skip
    except ClusterError as e:
        print(f"cluster_bench: {e}", file=sys.stderr)
        return 1

    two = {r["scenes"]: r for r in runs if r["workers"] == 2}
    single = next(r for r in runs if r["workers"] == 1)
    summary = {"size": args.size, "runs": runs, "jobs": {}}
    print(f"\n{'job':<9} {'1 -> 2 workers':>16} " + " ".join(f"{n} scene(s)".rjust(11)
          for n in counts) + "   fixed + per scene (two workers)")  # fmt: skip
    for job in jobs:
        speedup = single[job] / two[one][job] if one in two else None
        growth = {n: two[n][job] / two[counts[0]][job] for n in counts}
        line = {"speedup_two_workers": speedup, "growth": growth}
        text = f"{job:<9} {speedup:>15.2f}x " if speedup else f"{job:<9} {'-':>16} "
        text += " ".join(f"{growth[n]:>10.2f}x" for n in counts)
        if len(counts) > 1:
            fixed, per_scene = fit_line([float(n) for n in counts], [two[n][job] for n in counts])
            line |= {"fixed_s": fixed, "per_scene_s": per_scene}
            text += f"   {fixed:.1f} s + {per_scene:.1f} s/scene"
        summary["jobs"][job] = line
        print(text)
    print(f"(1 -> 2 workers: time on one worker / time on two, {one} scene(s); n scene(s): "
          f"time / time of {counts[0]} scene(s), two workers)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
