"""Ingest throughput: Spark ``local[2]`` against plain rasterio + pyarrow in one process.

Both sides do the same work on the same generated Sentinel-2 L2A scene: read every band
(13 reflectance bands + SCL; 20 m and 60 m bands resampled onto the 10 m grid with
nearest), cut 256 x 256 tiles, encode them as in ``tiles`` and write ZSTD Parquet at the
same codec level. Throughput is band-pixels per second of the 10 m grid. The Spark side is
timed warm (a small ingest runs first in the same session: the first Python job of a
session pays worker start-up) and writes Delta, as the job does.

The baseline that counts is :func:`baseline_threaded` on two threads: what a skilled user
writes (block-aligned 1024 px windows, coarse bands read native and repeated, one buffer
per band column, one tile per Parquet row group as ``tiles`` has, a thread pool using
both cores); it is checked to write the job's pixels. The same code on one thread and
the first, simpler single-thread baseline (:func:`baseline`) are printed beside it.

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
    """The first baseline (kept for its figure): plain rasterio + numpy + pyarrow, one
    thread, GDAL resampling coarse bands, a ``bytes`` copy per tile, one row group per
    block. Returns the number of tiles written."""
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


def _tile_column(arr: np.ndarray, cuts: list[tuple[int, int, int, int]]) -> pa.Array:
    """One binary Arrow column of the tiles of a block array, built from one buffer (the
    tiles' pixels copied once, row-major each, as little-endian uint16 like every band of
    ``tiles``: SCL too), no per-tile ``bytes`` objects."""
    sizes = np.array([h * w for _, _, h, w in cuts], dtype=np.int64) * 2
    buf = np.empty(int(sizes.sum()) // 2, dtype="<u2")
    pos = 0
    for r, c, h, w in cuts:
        buf[pos : pos + h * w].reshape(h, w)[...] = arr[r : r + h, c : c + w]
        pos += h * w
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
    return pa.Array.from_buffers(
        pa.binary(), len(cuts), [None, pa.py_buffer(offsets), pa.py_buffer(buf)]
    )


def baseline_threaded(
    safe: Path,
    out: Path,
    threads: int = 2,
    tile: int = 256,
    block: int = 1024,
    zstd_level: int = 1,
) -> int:
    """What a skilled user writes with rasterio + numpy + pyarrow on one machine.

    A pool of ``threads`` threads (GDAL decoding, numpy copies and pyarrow encoding release
    the GIL) each take 1024 px windows aligned with the files' internal blocks; each
    thread keeps its own open datasets (a rasterio dataset is not thread-safe). 20 m and
    60 m bands are read at their own resolution and repeated onto the 10 m grid (exactly
    GDAL's ``nearest`` for these aligned grids). Each band's tiles become one binary
    Arrow column from one buffer; each block is one ZSTD Parquet file holding one tile per
    row group, as the ``tiles`` table does. Returns the number of tiles written.
    """
    import threading
    from concurrent.futures import ThreadPoolExecutor

    files = band_files(safe)
    with rasterio.open(files["B02"]) as ref:
        h, w, grid = ref.height, ref.width, ref.transform
    out.mkdir(parents=True, exist_ok=True)
    local = threading.local()
    opened: list[rasterio.DatasetReader] = []

    def open_all() -> dict[str, rasterio.DatasetReader]:
        if not hasattr(local, "srcs"):
            local.srcs = {b: rasterio.open(p) for b, p in files.items()}
            opened.extend(local.srcs.values())
        return local.srcs

    def read(src: rasterio.DatasetReader, r0: int, c0: int, bh: int, bw: int) -> np.ndarray:
        k = round(src.transform.a / grid.a)
        if k == 1:
            return src.read(1, window=Window(c0, r0, bw, bh))
        rows = np.arange(r0, r0 + bh) // k
        cols = np.arange(c0, c0 + bw) // k
        win = Window(cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1)
        native = src.read(1, window=win)
        return native.repeat(np.bincount(cols - cols[0]), axis=1).take(rows - rows[0], axis=0)

    def one_block(r0: int, c0: int) -> int:
        srcs = open_all()
        bh, bw = min(block, h - r0), min(block, w - c0)
        arrays = {b: read(src, r0, c0, bh, bw) for b, src in srcs.items()}
        cuts = [
            (tr, tc, min(tile, bh - tr), min(tile, bw - tc))
            for tr in range(0, bh, tile)
            for tc in range(0, bw, tile)
        ]
        valid = np.ones((bh, bw), bool)
        for b in BANDS[:-1]:
            valid &= arrays[b] != 0
        n = len(cuts)
        cols = {
            "scene_id": pa.array([safe.name] * n),
            "tile_row": pa.array([(r0 + r) // tile for r, _, _, _ in cuts], pa.int32()),
            "tile_col": pa.array([(c0 + c) // tile for _, c, _, _ in cuts], pa.int32()),
            "width": pa.array([cw for _, _, _, cw in cuts], pa.int32()),
            "height": pa.array([ch for _, _, ch, _ in cuts], pa.int32()),
            "valid": pa.array(
                [np.packbits(valid[r : r + ch, c : c + cw]).tobytes() for r, c, ch, cw in cuts]
            ),
        }
        cols.update({b: _tile_column(arrays[b], cuts) for b in BANDS})
        pq.write_table(
            pa.table(cols),
            out / f"block-{r0}-{c0}.parquet",
            compression="zstd",
            compression_level=zstd_level,
            row_group_size=1,
        )
        return n

    starts = [(r0, c0) for r0 in range(0, h, block) for c0 in range(0, w, block)]
    with ThreadPoolExecutor(threads) as pool:
        n = sum(pool.map(lambda rc: one_block(*rc), starts))
    for src in opened:
        src.close()
    return n


def same_tiles(baseline_out: Path, job_out: Path) -> None:
    """Assert that the threaded baseline wrote the job's pixels (a 10 m, a 20 m, a 60 m
    band and SCL; outside the timing)."""
    pairs = {"B04": "red", "B05": "rededge1", "B01": "coastal", "SCL": "qa"}
    keys = ["tile_row", "tile_col"]
    a = pq.read_table(baseline_out, columns=[*keys, *pairs]).sort_by(
        [(k, "ascending") for k in keys]
    )
    b = pq.read_table(job_out, columns=[*keys, *pairs.values()]).sort_by(
        [(k, "ascending") for k in keys]
    )
    for mine, theirs in pairs.items():
        assert a.column(mine).equals(b.column(theirs)), f"baseline {mine} != job {theirs}"


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

    threaded_t: dict[int, list[float]] = {1: [], 2: []}
    for i in range(args.repeat):
        for threads in (2, 1):
            out = work / f"threaded-{threads}-{i}"
            shutil.rmtree(out, ignore_errors=True)  # left by an interrupted run
            t = time.perf_counter()
            assert baseline_threaded(safe, out, threads) == n_tiles
            threaded_t[threads].append(time.perf_counter() - t)
            if i or threads == 1:
                shutil.rmtree(out)

    kernel_t = []
    for i in range(args.repeat):
        out = work / f"kernel-{i}"
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        assert project_kernel(work / "demo" / "scenes", out) == n_tiles
        kernel_t.append(time.perf_counter() - t)
        if i == 0:
            same_tiles(work / "threaded-2-0", out)
        shutil.rmtree(out)
    shutil.rmtree(work / "threaded-2-0")

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
        "baseline_1_thread_first_s": round(b, 2),
        "baseline_1_thread_s": round(min(threaded_t[1]), 2),
        "baseline_2_threads_s": round(min(threaded_t[2]), 2),
        "project_kernel_one_process_s": round(k, 2),
        "spark_s": round(s, 2),
        "baseline_2_threads_mpx_s": round(band_px / min(threaded_t[2]) / 1e6, 1),
        "spark_mpx_s": round(band_px / s / 1e6, 1),
        "ratio_kernel_over_1_thread": round(min(threaded_t[1]) / k, 2),
        "ratio_spark_over_kernel": round(k / s, 2),
        "ratio_spark_over_first_baseline": round(b / s, 2),
        "ratio_spark_over_2_threads": round(min(threaded_t[2]) / s, 2),
    }
    print(json.dumps(result, indent=2))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
