"""End to end: Sentinel-2 L2A scenes -> per-tile NDVI count / mean / std, the project against
odc-stac + dask, in one script on the same cores.

The project is configured for the question: ``ingest.bands=red,nir`` (the SCL quality band
is always tiled), ``features.indices=NDVI``, ``features.bands=`` (no band statistics) and
``features.statistics=count,mean,std``; the ingest and features jobs are timed together on
a warm ``local[2]`` session, from the scene folders to the ``tile_features`` table (the
report gives both jobs' seconds too). Both sides are warmed first on the four scenes of a
256 px catalogue: the project's warm-up run then starts both Python workers and takes
the paths the timed runs take.

The peer is the short script a user writes with odc-stac: load red, nir and SCL of each
scene from the generated STAC catalogue onto the 10 m grid (nearest, 2048 px dask chunks),
mask nodata / saturated DN and the SCL classes the project masks by default, scale DN to
reflectance with each item's ``raster:bands`` scale and offset, NDVI in float64 (NaN where
an input reflectance is negative or NDVI leaves [-1, 1]), and reduce 256 px blocks with
xarray's ``coarsen``; ``dask.compute`` on the threaded scheduler with two workers.

Both give the same count for every tile and scene and the same mean and std (float64
summation order aside); the script asserts it.

The demo generator has three Sentinel-2 acquisitions; the script adds a fourth date
(:data:`EXTRA_SCENE`, written with the demo's own Sentinel-2 writer on the same layout
and seed), so the runs use 1, 3 and 4 scenes.

Usage: ``python bench/ndvi_e2e_bench.py --size 5490``. Needs the ``bench`` extra
(``pip install -e .[bench]``).
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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import dask
import numpy as np
import odc.stac
import pystac
import rasterio
import xarray as xr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipelines.config import load_config  # noqa: E402
from pipelines.demo.landscape import make_layout  # noqa: E402
from pipelines.demo.scenes import SceneSpec, select_scenes  # noqa: E402
from pipelines.demo.sentinel2 import write_sentinel2  # noqa: E402
from pipelines.demo.stac import write_catalog  # noqa: E402
from pipelines.features import features  # noqa: E402
from pipelines.ingest import ingest  # noqa: E402
from pipelines.lakehouse import Lakehouse  # noqa: E402
from pipelines.runs import Run  # noqa: E402
from pipelines.session import build_session  # noqa: E402
from udfs.sensors import SENTINEL2_L2A  # noqa: E402

TILE = 256
SCL_MASKED = (0, 1, 3, 8, 9, 10, 11)  # the project's defaults; codes above 11 are invalid
SATURATED = 65535
PROJECT = [
    "ingest.bands=red,nir",
    "features.indices=NDVI",
    "features.bands=",
    "features.statistics=count,mean,std",
]

#: A fourth Sentinel-2 date for the bench (the demo has three): same tile and baseline
#: as the demo's 2024-08-30 scene, a month later, its own clouds (``index`` seeds them).
EXTRA_SCENE = SceneSpec(
    5, "S2B_MSIL2A_20240929T103629_N0511_R008_T31UFS_20240929T140112",
    SENTINEL2_L2A, "sentinel-2b", datetime(2024, 9, 29, 10, 36, 29, 24000, timezone.utc),
    cloud=0.10, cirrus=0.02, nodata="none", baseline="05.11", boa_offset=-1000.0,
    orbit=39397, processed="20240929T140112",
)  # fmt: skip


def generate_s2(folder: Path, size: int, seed: int = 3) -> None:
    """The demo's Sentinel-2 scenes plus :data:`EXTRA_SCENE` and their STAC catalogue
    under ``folder`` (the demo's writers; no land cover, labels or Landsat)."""
    layout = make_layout(size, seed)
    specs = [*select_scenes(["MSIL2A"]), EXTRA_SCENE]
    with rasterio.Env(GDAL_CACHEMAX=512):
        records = [write_sentinel2(folder / "scenes" / "sentinel2", layout, s, seed) for s in specs]
    write_catalog(folder / "stac", records)


# ----------------------------------------------------------------------------- odc-stac


def s2_items(data: Path) -> list[pystac.Item]:
    """The generated catalogue's Sentinel-2 L2A items, asset hrefs made absolute."""
    items = []
    for path in sorted((data / "stac" / "sentinel-2-l2a").glob("*/*.json")):
        item = pystac.Item.from_file(str(path))
        item.make_asset_hrefs_absolute()
        items.append(item)
    return items


def odc_scene(item: pystac.Item) -> xr.Dataset:
    """Lazy per-tile NDVI count / mean / std of one item (dask arrays)."""
    ds = odc.stac.load(
        [item],
        bands=["red", "nir", "scl"],
        chunks={"x": 2048, "y": 2048},
        resolution=10,
        resampling="nearest",
        groupby="id",
    ).isel(time=0)
    red, nir, scl = ds.red, ds.nir, ds.scl
    ok = (red != 0) & (nir != 0) & (red != SATURATED) & (nir != SATURATED)
    ok &= ~scl.isin(SCL_MASKED) & (scl <= 11)

    def refl(band: xr.DataArray, name: str) -> xr.DataArray:
        rb = item.assets[name].extra_fields["raster:bands"][0]
        return (band.astype(np.float64) * rb["scale"] + rb["offset"]).astype(np.float32)

    r = refl(red, "red").astype(np.float64)
    n = refl(nir, "nir").astype(np.float64)
    v = (n - r) / (n + r)
    good = ok & (r >= 0) & (n >= 0) & (v >= -1) & (v <= 1)
    v = v.astype(np.float32).astype(np.float64).where(good)
    blocks = {"y": TILE, "x": TILE, "boundary": "pad"}
    return xr.Dataset(
        {
            "count": good.astype(np.float64).coarsen(**blocks).sum(),
            "mean": v.coarsen(**blocks).mean(),
            "std": v.coarsen(**blocks).std(),
        }
    )


def odc_run(items: list[pystac.Item]) -> dict[tuple[str, int, int], tuple[int, float, float]]:
    """(item id, tile_row, tile_col) -> (count, mean, std) of every tile of ``items``."""
    with dask.config.set(scheduler="threads", num_workers=2):
        (results,) = dask.compute([odc_scene(it) for it in items])
    out = {}
    for item, ds in zip(items, results, strict=True):
        c, m, s = (ds[k].values for k in ("count", "mean", "std"))
        for tr in range(c.shape[0]):
            for tc in range(c.shape[1]):
                out[(item.id, tr, tc)] = (int(c[tr, tc]), float(m[tr, tc]), float(s[tr, tc]))
    return out


# ----------------------------------------------------------------------------- project


def project_run(spark: Any, sources: list[Path], root: Path) -> tuple[float, float, dict]:
    """Ingest + features over a fresh lake; seconds of ingest and of features, and
    (scene, row, col) -> stats."""
    if root.exists():
        shutil.rmtree(root)
    source = ",".join(str(s) for s in sources)
    config = load_config("local", [f"ingest.source={source}", f"storage.root={root}", *PROJECT])
    lake = Lakehouse(spark, config.storage)
    t = time.perf_counter()
    ing = ingest(spark, lake, Run(config))
    t_ingest = time.perf_counter()
    feat = features(spark, lake, Run(config, job="features"))
    t_features = time.perf_counter()
    assert not ing.rejected and not feat.rejected, (ing.rejected, feat.rejected)
    out = {}
    for r in lake.read("tile_features").collect():
        s = r.stats["ndvi"]
        out[(r.scene_id, r.tile_row, r.tile_col)] = (s["count"], s["mean"], s["std"])
    return t_ingest - t, t_features - t_ingest, out


def check_equal(project: dict, odc: dict) -> None:
    """Same tiles, same counts, same mean and std (NaN where no pixel) for every scene."""
    ids = {k[0] for k in odc}
    # Scene ids: the project's are product names, the items' the same names.
    assert {k[0] for k in project} == ids, ({k[0] for k in project}, ids)
    assert set(project) == set(odc), (len(project), len(odc))
    for key, (c, m, s) in odc.items():
        pc, pm, ps = project[key]
        assert pc == c, (key, pc, c)
        if c == 0:
            assert math.isnan(pm) and math.isnan(ps), key
            continue
        np.testing.assert_allclose([pm, ps], [m, s], rtol=1e-7, atol=1e-12, err_msg=str(key))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--workdir", type=Path, default=None, help="kept; scenes reused")
    p.add_argument("--scenes", default="1,3,4", help="scene counts to run (at most 4)")
    args = p.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ndvi-e2e-bench-"))
    data, warm = work / f"data-{args.size}", work / "warm-256"
    for folder, size in ((data, args.size), (warm, 256)):
        if not (folder / "stac").exists():
            generate_s2(folder, size)
    items = s2_items(data)
    safes = {it.id: next((data / "scenes" / "sentinel2").glob(f"{it.id}.SAFE")) for it in items}

    spark = build_session(load_config("local"))
    # Warm-up on the four small scenes: more scenes than cores, so the project's run
    # takes every path the timed runs take (scenes inspected by executors, two tasks per
    # job, so both Python workers are started), and odc-stac loads four items.
    warm_safes = sorted((warm / "scenes" / "sentinel2").glob("*.SAFE"))
    project_run(spark, warm_safes, work / "lake-warm")
    odc_run(s2_items(warm))

    report: dict[str, Any] = {"size": args.size, "cores": os.cpu_count(), "runs": []}
    for n in (int(x) for x in args.scenes.split(",")):
        chosen = items[:n]
        t = time.perf_counter()
        odc = odc_run(chosen)
        odc_s = time.perf_counter() - t
        ingest_s, features_s, proj = project_run(
            spark, [safes[it.id] for it in chosen], work / f"lake-{n}"
        )
        proj_s = ingest_s + features_s
        check_equal(proj, odc)
        report["runs"].append(
            {
                "scenes": n,
                "tiles": len(odc),
                "odc_stac_dask_s": round(odc_s, 2),
                "project_ingest_features_s": round(proj_s, 2),
                "project_ingest_s": round(ingest_s, 2),
                "project_features_s": round(features_s, 2),
                "ratio_project_over_odc": round(odc_s / proj_s, 2),
                "results_equal": True,
            }
        )
    spark.stop()
    print(json.dumps(report, indent=2))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
