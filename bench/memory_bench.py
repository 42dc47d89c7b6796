"""Peak memory of ingest and features on one full 10980 x 10980 Sentinel-2 L2A scene.

One generated scene (:func:`pipelines.demo.generate`, the demo's Sentinel-2 writer, as
``bench/ingest_bench.py`` uses; written by a child process so its arrays do not count
here) is ingested, then its features computed, on ``local[2]`` with the ``local``
profile and nothing but ``ingest.source`` and ``storage.root`` overridden: no memory
setting of any kind, so the JVM gets Spark's default driver memory (in local mode the
driver is the executor).

While each job runs a thread reads ``/proc`` every 0.2 s for every process under this
one: the JVM (``java``), the Python workers (``pyspark.daemon`` and its forks) and this
driver process. Per job it reports

* the peak resident set of the JVM and of this driver process (``VmHWM``, reset before
  each job by writing ``5`` to ``/proc/<pid>/clear_refs``; the sampled peak where the
  kernel refuses);
* the peak of the workers' summed ``VmRSS`` over the samples, and the largest one
  worker's ``VmHWM``;
* the peak of the whole tree's summed ``VmRSS`` (JVM + workers + driver);
* the JVM heap: its limit (``Runtime.maxMemory``) and the peak used, the sum of each
  heap pool's peak (``MemoryPoolMXBean.getPeakUsage``, reset before each job; an upper
  bound of the true peak);
* whether the job failed, an ``OutOfMemoryError`` in its error, a worker that vanished
  while the job ran (killed) and the kernel's OOM-kill count (cgroup ``memory.events``
  where readable) before and after.

Sampling every 0.2 s can miss a shorter spike of the summed figures; the per-process
``VmHWM`` figures cannot. The scene, the lake and the work folder are deleted at the end
(``--keep`` keeps them).

Usage: ``python bench/memory_bench.py`` (``--size 2745`` for a quick look).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipelines.config import load_config  # noqa: E402
from pipelines.features import features  # noqa: E402
from pipelines.ingest import ingest  # noqa: E402
from pipelines.lakehouse import Lakehouse  # noqa: E402
from pipelines.runs import Run  # noqa: E402
from pipelines.session import build_session  # noqa: E402

MB = 1024 * 1024
#: Bytes per pixel of the 10 m grid the scene's files and the ``tiles`` table need at most
#: (13 uint16 bands, 20 m and 60 m ones at a quarter and a ninth of the pixels, SCL, each
#: stored before compression twice: GeoTIFFs and tiles), with a margin.
DISK_BYTES_PER_PX = 24


# ----------------------------------------------------------------------------- /proc


def _status(pid: int) -> dict[str, int]:
    """``VmRSS`` / ``VmHWM`` of a process in bytes ({} once it is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value, _unit = line.split()
                    out[key[:-1]] = int(value) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (from each ``/proc/<pid>/stat`` parent id)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        # The command name is in parentheses and may hold spaces: fields follow the last ")".
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kind(pid: int) -> str:
    """``jvm`` | ``worker`` (a pyspark daemon or its fork) | ``other``."""
    cmd = _cmdline(pid)
    if "pyspark.daemon" in cmd or "pyspark.worker" in cmd:
        return "worker"
    if cmd.split(" ", 1)[0].endswith("java"):
        return "jvm"
    return "other"


def reset_hwm(pid: int) -> bool:
    """Reset a process's ``VmHWM`` to its current RSS (Linux >= 4.0); False if refused."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def oom_kills() -> int | None:
    """The cgroup's OOM-kill count (v2, then v1), None where neither is readable."""
    for path, key in (
        ("/sys/fs/cgroup/memory.events", "oom_kill"),
        ("/sys/fs/cgroup/memory/memory.oom_control", "oom_kill"),
    ):
        try:
            with open(path) as f:
                for line in f:
                    name, _, value = line.partition(" ")
                    if name == key:
                        return int(value)
        except OSError:
            continue
    return None


@dataclass
class Peaks:
    """What the sampler saw during one job (bytes)."""

    jvm_rss: int = 0
    driver_rss: int = 0
    workers_sum: int = 0
    worker_max_hwm: int = 0
    total_sum: int = 0
    samples: int = 0
    workers_seen: set[int] = field(default_factory=set)
    workers_gone: set[int] = field(default_factory=set)


class Sampler:
    """Poll ``/proc`` for the process tree under ``root`` every ``interval`` s."""

    def __init__(self, root: int, interval: float = 0.2) -> None:
        self.root = root
        self.interval = interval
        self.peaks = Peaks()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._kinds: dict[int, str] = {}

    def sample(self) -> None:
        p = self.peaks
        driver = _status(self.root).get("VmRSS", 0)
        jvm = workers = 0
        alive = set()
        for pid in descendants(self.root):
            k = self._kinds.get(pid) or self._kinds.setdefault(pid, kind(pid))
            s = _status(pid)
            if not s:
                continue
            if k == "jvm":
                jvm += s["VmRSS"]
            elif k == "worker":
                alive.add(pid)
                workers += s["VmRSS"]
                p.worker_max_hwm = max(p.worker_max_hwm, s["VmHWM"])
        p.workers_gone |= p.workers_seen - alive
        p.workers_seen |= alive
        p.jvm_rss = max(p.jvm_rss, jvm)
        p.driver_rss = max(p.driver_rss, driver)
        p.workers_sum = max(p.workers_sum, workers)
        p.total_sum = max(p.total_sum, jvm + workers + driver)
        p.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> Sampler:
        for pid in [self.root, *descendants(self.root)]:
            reset_hwm(pid)
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


# ----------------------------------------------------------------------------- JVM heap


def heap_pools(spark: Any) -> list[Any]:
    mf = spark.sparkContext._jvm.java.lang.management.ManagementFactory
    return [p for p in mf.getMemoryPoolMXBeans() if str(p.getType().name()) == "HEAP"]


def heap_peak(spark: Any) -> int:
    """Sum of each heap pool's peak use since the last reset (bytes)."""
    return sum(int(p.getPeakUsage().getUsed()) for p in heap_pools(spark))


def reset_heap_peaks(spark: Any) -> None:
    for p in heap_pools(spark):
        p.resetPeakUsage()


def jvm_pid(root: int) -> int | None:
    return next((p for p in descendants(root) if kind(p) == "jvm"), None)


# ----------------------------------------------------------------------------- the bench


def run_job(spark: Any, name: str, fn: Any) -> dict[str, Any]:
    """Run ``fn()`` while sampling; its figures, failure included."""
    me = os.getpid()
    jvm = jvm_pid(me)
    reset_heap_peaks(spark)
    kills = oom_kills()
    error = None
    t = time.perf_counter()
    with Sampler(me) as sampler:
        try:
            fn()
        except Exception as e:  # the figure is the point: a failed job is reported, not raised
            error = f"{type(e).__name__}: {e}"
    wall = time.perf_counter() - t
    p = sampler.peaks
    jvm_hwm = _status(jvm).get("VmHWM", 0) if jvm else 0
    driver_hwm = _status(me).get("VmHWM", 0)
    after = oom_kills()
    return {
        "job": name,
        "wall_s": round(wall, 1),
        "failed": error is not None,
        "error": None if error is None else error[:2000],
        "out_of_memory_error": error is not None and "OutOfMemoryError" in error,
        "workers_seen": len(p.workers_seen),
        "workers_gone_during_job": len(p.workers_gone),
        "oom_kills": None if kills is None or after is None else after - kills,
        "samples": p.samples,
        "jvm_peak_rss_mb": round(max(jvm_hwm, p.jvm_rss) / MB),
        "jvm_heap_peak_used_mb": round(heap_peak(spark) / MB),
        "workers_peak_summed_rss_mb": round(p.workers_sum / MB),
        "one_worker_peak_rss_mb": round(p.worker_max_hwm / MB),
        "driver_python_peak_rss_mb": round(max(driver_hwm, p.driver_rss) / MB),
        "total_peak_summed_rss_mb": round(p.total_sum / MB),
    }


def table(rows: list[dict[str, Any]], heap_max_mb: int) -> str:
    head = (
        f"{'job':<9} {'wall s':>7} {'JVM RSS':>8} {'heap used':>10} {'workers':>8} "
        f"{'1 worker':>9} {'driver':>7} {'total':>7}  failed / OOM"
    )
    lines = [f"peak MB; JVM heap limit {heap_max_mb} MB", head]
    for r in rows:
        lines.append(
            f"{r['job']:<9} {r['wall_s']:>7} {r['jvm_peak_rss_mb']:>8} "
            f"{r['jvm_heap_peak_used_mb']:>10} {r['workers_peak_summed_rss_mb']:>8} "
            f"{r['one_worker_peak_rss_mb']:>9} {r['driver_python_peak_rss_mb']:>7} "
            f"{r['total_peak_summed_rss_mb']:>7}  {r['failed']} / {r['out_of_memory_error']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=10980, help="pixels per side of the 10 m grid")
    p.add_argument("--workdir", type=Path, default=None, help="default: a new folder in /tmp")
    p.add_argument("--keep", action="store_true", help="keep the scene and the lake")
    args = p.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="memory-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    need = DISK_BYTES_PER_PX * args.size * args.size
    free = shutil.disk_usage(work).free
    if free < need:
        print(f"{work}: {free / 1e9:.1f} GB free, the bench needs about {need / 1e9:.1f} GB")
        return 2
    try:
        t = time.perf_counter()
        scenes = work / "demo"
        if not (scenes / "manifest.json").exists():
            # A child process: the generator's whole-scene arrays stay out of this one's peak.
            subprocess.run(
                [sys.executable, "-m", "pipelines.demo", "--out", str(scenes),
                 "--size", str(args.size), "--seed", "3", "--scenes", "20240621"],
                check=True, cwd=ROOT,
            )  # fmt: skip
        print(f"scene generated in {time.perf_counter() - t:.0f} s", flush=True)
        # A reused work folder keeps its scene; the lake is always new (an ingested scene
        # would be skipped).
        shutil.rmtree(work / "lake", ignore_errors=True)
        config = load_config(
            "local",
            [f"ingest.source={scenes / 'scenes'}", f"storage.root={work / 'lake'}"],
        )
        spark = build_session(config)
        heap_max = int(spark.sparkContext._jvm.java.lang.Runtime.getRuntime().maxMemory())
        driver_memory = spark.sparkContext.getConf().get("spark.driver.memory", "(default 1g)")
        lake = Lakehouse(spark, config.storage)
        rows = []
        ingest_run = Run(config)
        rows.append(run_job(spark, "ingest", lambda: ingest(spark, lake, ingest_run)))
        feature_run = Run(config, job="features")
        if not rows[0]["failed"]:
            rows.append(run_job(spark, "features", lambda: features(spark, lake, feature_run)))
        spark.stop()
        result = {
            "size": args.size,
            "cores": os.cpu_count(),
            "master": config.spark.master,
            "spark.driver.memory": driver_memory,
            "jvm_heap_max_mb": round(heap_max / MB),
            "tiles_written": ingest_run.tiles_written,
            "tiles_rejected": len(ingest_run.rejected),
            "feature_tiles": feature_run.tiles_written,
            "jobs": rows,
        }
        print(json.dumps(result, indent=2))
        print(table(rows, round(heap_max / MB)))
        return 1 if any(r["failed"] for r in rows) else 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
