"""Region statistics: the aggregate job on ``local[2]`` against plain rasterio + numpy on
both cores, in the same run.

A generated Sentinel-2 L2A scene and a few hundred polygons (random squares, EPSG:32631,
GeoParquet). Both sides compute, per region, count / mean / std / p10 / p50 / p90 of the 8
indices over valid pixels (SCL mask, the product's own reflectance offset, pixel-centre
rule). The baseline is what a skilled user writes without Spark: a ThreadPoolExecutor
with two workers over the regions, each reading the region's window of every band with
rasterio (GDAL releases the GIL while decoding), burning the polygon with
``rasterio.features.rasterize`` and reducing with numpy. The job side times
``pipelines.aggregate`` on the ingested ``tiles`` (ingest not timed, session warmed up).
Outputs are checked equal. Two more points show what the cost follows: the regions' area
(each square's side x2, area x4) and the scenes in the table (a second scene added: only
it is aggregated).

Usage: ``python bench/aggregate_bench.py --size 5490 --regions 300``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import rasterio
import shapely
from rasterio.enums import Resampling
from rasterio.features import rasterize
from rasterio.windows import Window, from_bounds
from shapely.geometry import box, mapping

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from features_bench import scaling_from_mtd  # noqa: E402

from pipelines.aggregate import aggregate  # noqa: E402
from pipelines.config import load_config  # noqa: E402
from pipelines.demo import generate  # noqa: E402
from pipelines.ingest import ingest  # noqa: E402
from pipelines.lakehouse import Lakehouse  # noqa: E402
from pipelines.runs import Run  # noqa: E402
from pipelines.session import build_session  # noqa: E402
from udfs.features import DEFAULT_INDICES, reflectance_dn, reflectance_layers, tile_quality  # noqa: E402
from udfs.indices import compute_indices  # noqa: E402
from udfs.regions import value_statistics  # noqa: E402
from udfs.sensors import SENTINEL2_L2A  # noqa: E402

X0, Y0 = 600000.0, 5700000.0


def write_regions(path: Path, size: int, n: int, side_px: float, seed: int = 0) -> Path:
    """``n`` squares of ``side_px`` 10 m pixels at random places inside the scene."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, size - side_px - 1, n) + 0.37
    y = rng.uniform(0, size - side_px - 1, n) + 0.41
    geoms = [box(X0 + 10 * a, Y0 - 10 * (b + side_px), X0 + 10 * (a + side_px), Y0 - 10 * b)
             for a, b in zip(x, y, strict=True)]  # fmt: skip
    crs = {"id": {"authority": "EPSG", "code": 32631}}
    meta = {"version": "1.0.0", "primary_column": "geometry",
            "columns": {"geometry": {"encoding": "WKB", "crs": crs}}}  # fmt: skip
    ids = [f"r{i:04d}" for i in range(n)]
    t = pa.table({"id": ids, "name": ids, "geometry": shapely.to_wkb(geoms).tolist()})
    pq.write_table(t.replace_schema_metadata({b"geo": json.dumps(meta).encode()}), path)
    return path


def baseline(safe: Path, regions: Path, threads: int = 2) -> dict[tuple[str, str], dict]:
    """rasterio + numpy over regions with a thread pool: {(region, index): stats}."""
    files = {}
    for band in SENTINEL2_L2A.bands:
        (files[band.common],) = sorted(safe.glob(f"GRANULE/*/IMG_DATA/*/*_{band.name}_*m.tif"))
    by_column = scaling_from_mtd(safe)  # tiles column -> (scale, offset)
    scaling = {b.name: by_column[b.common] for b in SENTINEL2_L2A.reflectance_bands}
    t = pq.read_table(regions)
    items = list(zip(t.column("id").to_pylist(), shapely.from_wkb(t.column("geometry")),
                     strict=True))  # fmt: skip

    def one(chunk):
        out = {}
        srcs = {c: rasterio.open(p) for c, p in files.items()}  # handles per thread
        ref = srcs["blue"]
        for rid, g in chunk:
            f = from_bounds(*g.bounds, transform=ref.transform)
            c0, r0 = max(0, math.floor(f.col_off)), max(0, math.floor(f.row_off))
            c1 = min(ref.width, math.ceil(f.col_off + f.width))
            r1 = min(ref.height, math.ceil(f.row_off + f.height))
            win = Window(c0, r0, c1 - c0, r1 - r0)
            wt = ref.window_transform(win)
            h, w = int(win.height), int(win.width)
            mask = rasterize([(mapping(g), 1)], out_shape=(h, w), transform=wt, fill=0,
                             all_touched=False, dtype="uint8").astype(bool)  # fmt: skip
            dn = {}
            for c, src in srcs.items():
                if src.transform == ref.transform:
                    dn[c] = src.read(1, window=win)
                else:
                    b = rasterio.windows.bounds(win, ref.transform)
                    dn[c] = src.read(1, window=from_bounds(*b, transform=src.transform),
                                     out_shape=(h, w), resampling=Resampling.nearest)  # fmt: skip
            keep = mask & ~tile_quality("sentinel2-l2a", dn).masked
            flat = {k: v[keep] for k, v in reflectance_dn("sentinel2-l2a", dn).items()}
            refl = reflectance_layers("sentinel2-l2a", flat, scaling)
            for name, v in compute_indices(refl, DEFAULT_INDICES, "sentinel2-l2a").items():
                out[(rid, name.lower())] = value_statistics(v)
        for s in srcs.values():
            s.close()
        return out

    chunks = [items[i::threads] for i in range(threads)]
    result: dict = {}
    with ThreadPoolExecutor(threads) as pool:
        for part in pool.map(one, chunks):
            result.update(part)
    return result


def timed_aggregate(spark, root: Path, regions: Path) -> tuple[float, Lakehouse]:
    config = load_config("local", [f"storage.root={root}", f"aggregate.regions={regions}",
                                   "aggregate.monthly=false"])  # fmt: skip
    lake = Lakehouse(spark, config.storage)
    t = time.perf_counter()
    aggregate(spark, lake, Run(config, job="aggregate"))
    return time.perf_counter() - t, lake


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--regions", type=int, default=300)
    p.add_argument("--side", type=float, default=40.0, help="square side in 10 m pixels")
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="aggregate-bench-"))
    generate(work / "demo", size=args.size, seed=3, scenes=["20240621", "20240830"])
    generate(work / "warm", size=256, seed=3, scenes=["20240621"])
    s2 = work / "demo" / "scenes" / "sentinel2"
    june, august = sorted(s2.glob("*20240621*.SAFE"))[0], sorted(s2.glob("*20240830*.SAFE"))[0]
    small = write_regions(work / "regions.parquet", args.size, args.regions, args.side)
    large = write_regions(work / "regions_x4.parquet", args.size, args.regions, 2 * args.side)
    warm_regions = write_regions(work / "warm.parquet", 256, 10, 20)

    t = time.perf_counter()
    base = baseline(june, small)
    base_s = time.perf_counter() - t

    spark = build_session(load_config("local"))
    cfg = load_config("local", [f"ingest.source={work / 'warm' / 'scenes'}",
                                f"storage.root={work / 'lake-warm'}"])  # fmt: skip
    ingest(spark, Lakehouse(spark, cfg.storage), Run(cfg))
    timed_aggregate(spark, work / "lake-warm", warm_regions)
    cfg = load_config("local", [f"ingest.source={june}", f"storage.root={work / 'lake'}"])
    ingest(spark, Lakehouse(spark, cfg.storage), Run(cfg))
    job_s, lake = timed_aggregate(spark, work / "lake", small)

    got = {(r.region_id, r["index"]): r for r in lake.read("index_timeseries").collect()}
    assert set(got) == set(base), (len(got), len(base))
    for k, want in base.items():
        row = got[k]
        assert row["count"] == want["count"], k
        for s in ("mean", "p10", "p50", "p90"):
            assert np.isclose(row[s], want[s], rtol=1e-6, equal_nan=True), (k, s)

    big_s, _ = timed_aggregate(spark, work / "lake", large)  # a new region set: x4 area
    cfg = load_config("local", [f"ingest.source={august}", f"storage.root={work / 'lake'}"])
    ingest(spark, Lakehouse(spark, cfg.storage), Run(cfg))
    two_s, _ = timed_aggregate(spark, work / "lake", small)  # only the new scene is done
    spark.stop()
    print(json.dumps({
        "size": args.size, "regions": args.regions, "side_px": args.side, "cores": os.cpu_count(),
        "baseline_2_threads_s": round(base_s, 2), "job_s": round(job_s, 2),
        "ratio_job_over_baseline": round(base_s / job_s, 2),
        "job_regions_area_x4_s": round(big_s, 2),
        "job_second_scene_in_table_s": round(two_s, 2),
    }, indent=2))  # fmt: skip
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
