"""Features throughput: the Spark features job on ``local[2]`` against one plain process.

Both compute the same per-tile statistics (SCL cloud mask, surface reflectance from the
product's own offset, 8 indices, count/mean/std/min/max/p10/p50/p90 of 12 bands + 8
indices) for one generated Sentinel-2 L2A scene. The baseline reads the scene's GeoTIFFs
with rasterio, block by block, and runs the numpy kernels in one process; the Spark side
runs ``pipelines.features`` on the ingested ``tiles`` table (ingest is not timed; the
session is warmed up first). Throughput is band-pixels per second (13 bands incl. SCL).

Usage: ``python bench/features_bench.py --size 5490``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window, from_bounds

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipelines.config import load_config  # noqa: E402
from pipelines.demo import generate  # noqa: E402
from pipelines.features import features  # noqa: E402
from pipelines.ingest import ingest  # noqa: E402
from pipelines.lakehouse import Lakehouse  # noqa: E402
from pipelines.runs import Run  # noqa: E402
from pipelines.session import build_session  # noqa: E402
from udfs.features import DEFAULT_INDICES, tile_features  # noqa: E402
from udfs.sensors import SENTINEL2_L2A  # noqa: E402

S2_BAND_IDS = [
    "B01",
    "B02",
    "B03",
    "B04",
    "B05",
    "B06",
    "B07",
    "B08",
    "B8A",
    "B09",
    "B10",
    "B11",
    "B12",
]


def scaling_from_mtd(safe: Path) -> dict[str, tuple[float, float]]:
    root = ET.parse(safe / "MTD_MSIL2A.xml").getroot()
    q = 10000.0
    offsets = {}
    for el in root.iter():
        tag = el.tag.rsplit("}", 1)[-1]
        if tag == "BOA_QUANTIFICATION_VALUE":
            q = float(el.text)
        if tag == "BOA_ADD_OFFSET":
            offsets[S2_BAND_IDS[int(el.attrib["band_id"])]] = float(el.text)
    return {b: (1 / q, offsets.get(b, 0.0) / q) for b in S2_BAND_IDS}


def baseline(safe: Path, tile: int = 256, block: int = 1024) -> int:
    """rasterio + numpy in one process: statistics of every tile; returns the tile count."""
    files = {}
    for band in SENTINEL2_L2A.bands:
        (files[band.common],) = sorted(safe.glob(f"GRANULE/*/IMG_DATA/*/*_{band.name}_*m.tif"))
    srcs = {c: rasterio.open(p) for c, p in files.items()}
    ref = srcs["blue"]
    scaling = scaling_from_mtd(safe)
    n = 0
    for r0 in range(0, ref.height, block):
        for c0 in range(0, ref.width, block):
            bh, bw = min(block, ref.height - r0), min(block, ref.width - c0)
            arrays = {}
            for c, src in srcs.items():
                if src.transform == ref.transform:
                    arrays[c] = src.read(1, window=Window(c0, r0, bw, bh))
                else:
                    b = rasterio.windows.bounds(Window(c0, r0, bw, bh), ref.transform)
                    win = from_bounds(*b, transform=src.transform)
                    arrays[c] = src.read(
                        1, window=win, out_shape=(bh, bw), resampling=Resampling.nearest
                    )
            for tr in range(0, bh, tile):
                for tc in range(0, bw, tile):
                    cut = {c: a[tr : tr + tile, tc : tc + tile] for c, a in arrays.items()}
                    tile_features("sentinel2-l2a", cut, scaling, DEFAULT_INDICES)
                    n += 1
    for s in srcs.values():
        s.close()
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="features-bench-"))
    generate(work / "demo", size=args.size, seed=3, scenes=["20240621"])
    generate(work / "warm", size=256, seed=3, scenes=["20240621"])
    safe = next((work / "demo" / "scenes" / "sentinel2").glob("*.SAFE"))
    band_px = args.size * args.size * len(SENTINEL2_L2A.bands)

    t = time.perf_counter()
    n_tiles = baseline(safe)
    base_s = time.perf_counter() - t

    spark = build_session(load_config("local"))
    timings = {}
    for name, source in (("warm", work / "warm" / "scenes"), ("demo", work / "demo" / "scenes")):
        config = load_config(
            "local", [f"ingest.source={source}", f"storage.root={work / ('lake-' + name)}"]
        )
        lake = Lakehouse(spark, config.storage)
        ingest(spark, lake, Run(config))
        t = time.perf_counter()
        run = features(spark, lake, Run(config, job="features"))
        timings[name] = time.perf_counter() - t
    assert run.tiles_written == n_tiles, (run.tiles_written, n_tiles)
    spark.stop()
    spark_s = timings["demo"]
    print(
        json.dumps(
            {
                "size": args.size,
                "band_pixels": band_px,
                "tiles": n_tiles,
                "cores": os.cpu_count(),
                "baseline_s": round(base_s, 2),
                "spark_s": round(spark_s, 2),
                "baseline_mpx_s": round(band_px / base_s / 1e6, 1),
                "spark_mpx_s": round(band_px / spark_s / 1e6, 1),
                "ratio_spark_over_baseline": round(base_s / spark_s, 2),
            },
            indent=2,
        )
    )
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
