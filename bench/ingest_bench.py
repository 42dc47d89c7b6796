"""Ingest throughput: Spark ``local[2]`` against plain rasterio + pyarrow in one process.

Both sides do the same work on the same generated Sentinel-2 L2A scene: read every band
(13 reflectance bands + SCL; 20 m and 60 m bands resampled onto the 10 m grid with
nearest), cut 256 x 256 tiles, encode them as in ``tiles`` and write ZSTD Parquet at the
same codec level. Throughput is band-pixels per second of the 10 m grid. The Spark side is
timed warm (a small ingest runs first in the same session: the first Python job of a
session pays worker start-up) and writes Delta, as the job does.

A third figure separates what Spark adds from what the project's executor code does
better: the job's own tile writer (``udfs.ingest_udfs``) run over every block in this one
process, without Spark.

Usage: ``python bench/ingest_bench.py --size 5490`` (prints the figures and the ratios).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window, from_bounds

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipelines.config import load_config  # noqa: E402
from pipelines.demo import generate  # noqa: E402
from pipelines.discover import discover  # noqa: E402
from pipelines.ingest import block_records, ingest, tile_file_writer  # noqa: E402
from pipelines.lakehouse import Lakehouse  # noqa: E402
from pipelines.runs import Run  # noqa: E402
from pipelines.session import build_session  # noqa: E402
from udfs.ingest_udfs import inspect_records  # noqa: E402

BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12", "SCL"]


def band_files(safe: Path) -> dict[str, Path]:
    out = {}
    for b in BANDS:
        (path,) = sorted(safe.glob(f"GRANULE/*/IMG_DATA/*/*_{b}_*m.tif"))
        out[b] = path
    return out


def baseline(safe: Path, out: Path, tile: int = 256, block: int = 1024, zstd_level: int = 1) -> int:
    """Plain rasterio + numpy + pyarrow, one process: returns the number of tiles written."""
    files = band_files(safe)
    srcs = {b: rasterio.open(p) for b, p in files.items()}
    ref = srcs["B02"]
    h, w = ref.height, ref.width
    schema = pa.schema(
        [
            ("scene_id", pa.string()),
            ("tile_row", pa.int32()),
            ("tile_col", pa.int32()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("valid", pa.binary()),
        ]
        + [(b, pa.binary()) for b in BANDS]
    )
    writer = pq.ParquetWriter(out, schema, compression="zstd", compression_level=zstd_level)
    n = 0
    for r0 in range(0, h, block):
        for c0 in range(0, w, block):
            bh, bw = min(block, h - r0), min(block, w - c0)
            arrays = {}
            for b, src in srcs.items():
                if src.transform == ref.transform:
                    arrays[b] = src.read(1, window=Window(c0, r0, bw, bh))
                else:
                    bounds = rasterio.windows.bounds(Window(c0, r0, bw, bh), ref.transform)
                    win = from_bounds(*bounds, transform=src.transform)
                    arrays[b] = src.read(
                        1, window=win, out_shape=(bh, bw), resampling=Resampling.nearest
                    )
            rows = []
            for tr in range(0, bh, tile):
                for tc in range(0, bw, tile):
                    th, tw = min(tile, bh - tr), min(tile, bw - tc)
                    cut = {b: a[tr : tr + th, tc : tc + tw] for b, a in arrays.items()}
                    valid = np.ones((th, tw), bool)
                    for b in BANDS[:-1]:
                        valid &= cut[b] != 0
                    row = {
                        "scene_id": safe.name,
                        "tile_row": (r0 + tr) // tile,
                        "tile_col": (c0 + tc) // tile,
                        "width": tw,
                        "height": th,
                        "valid": np.packbits(valid).tobytes(),
                    }
                    row.update({b: cut[b].astype("<u2").tobytes() for b in BANDS})
                    rows.append(row)
            writer.write_batch(pa.RecordBatch.from_pylist(rows, schema=schema))
            n += len(rows)
    writer.close()
    for s in srcs.values():
        s.close()
    return n


def project_kernel(source: Path, out: Path) -> int:
    """The job's executor code (inspect, read blocks, write tile files) in this process."""
    config = load_config("local", [f"ingest.source={source}"])
    texts = [s.to_json() for s in discover(str(source))]
    infos = [json.loads(info) for _, info, _ in inspect_records(texts)]
    writer = tile_file_writer(config, str(out), report_error=print)
    return sum(f["n_tiles"] for f in writer(block_records(infos, config)))


def spark_ingest(spark, source: Path, root: Path) -> Run:
    config = load_config("local", [f"ingest.source={source}", f"storage.root={root}"])
    lake = Lakehouse(spark, config.storage)
    return ingest(spark, lake, Run(config))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=1024, help="10 m pixels per side of the scene")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--repeat", type=int, default=1, help="timed runs of each side (best is kept)")
    args = p.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    generate(work / "demo", size=args.size, seed=3, scenes=["20240621"])
    generate(work / "warm", size=256, seed=3, scenes=["20240621"])
    print(f"generated {args.size}x{args.size} scene in {time.perf_counter() - t:.1f} s")
    safe = next((work / "demo" / "scenes" / "sentinel2").glob("*.SAFE"))
    band_px = args.size * args.size * len(BANDS)

    base_t = []
    for i in range(args.repeat):
        out = work / f"baseline-{i}.parquet"
        t = time.perf_counter()
        n_tiles = baseline(safe, out)
        base_t.append(time.perf_counter() - t)
        out.unlink()

    kernel_t = []
    for i in range(args.repeat):
        out = work / f"kernel-{i}"
        t = time.perf_counter()
        assert project_kernel(work / "demo" / "scenes", out) == n_tiles
        kernel_t.append(time.perf_counter() - t)
        shutil.rmtree(out)

    spark = build_session(load_config("local"))
    spark_ingest(spark, work / "warm" / "scenes", work / "lake-warm")  # warm-up
    spark_t = []
    for i in range(args.repeat):
        root = work / f"lake-{i}"
        t = time.perf_counter()
        run = spark_ingest(spark, work / "demo" / "scenes", root)
        spark_t.append(time.perf_counter() - t)
        assert run.tiles_written == n_tiles, (run.tiles_written, n_tiles)
        shutil.rmtree(root)
    spark.stop()

    b, k, s = min(base_t), min(kernel_t), min(spark_t)
    result = {
        "size": args.size,
        "band_pixels": band_px,
        "tiles": n_tiles,
        "cores": os.cpu_count(),
        "baseline_s": round(b, 2),
        "project_kernel_one_process_s": round(k, 2),
        "spark_s": round(s, 2),
        "baseline_mpx_s": round(band_px / b / 1e6, 1),
        "spark_mpx_s": round(band_px / s / 1e6, 1),
        "ratio_kernel_over_baseline": round(b / k, 2),
        "ratio_spark_over_kernel": round(k / s, 2),
        "ratio_spark_over_baseline": round(b / s, 2),
    }
    print(json.dumps(result, indent=2))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
