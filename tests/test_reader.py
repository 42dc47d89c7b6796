"""Window reads onto the scene grid (udfs.reader.read_band_window) against rasterio.

The reference is rasterio's own resampled read of the whole scene extent onto the 10 m
grid, cut to the window: the fast path for coarser bands (native read + repeat) must pick
exactly the pixels GDAL's nearest resampling picks, at any window offset and at the edges.
"""

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from rasterio.windows import from_bounds

from udfs.reader import read_band_window

# A 10 m grid of 97 x 103 pixels; coarser bands cover the same ground (edge pixels of a
# coarser band stick out, as in real products whose sizes are not multiples).
X0, Y0, H, W = 300000.0, 5000040.0, 97, 103


def write_band(path: Path, res: float, x0: float, y0: float, seed: int) -> Path:
    h, w = -(-H * 10 // int(res)), -(-W * 10 // int(res))
    data = np.random.default_rng(seed).integers(1, 10000, (h, w), dtype=np.uint16)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=h,
        width=w,
        count=1,
        dtype="uint16",
        crs="EPSG:32633",
        transform=from_origin(x0, y0, res, res),
        tiled=True,
        blockxsize=16,
        blockysize=16,
    ) as dst:
        dst.write(data, 1)
    return path


def gdal_on_grid(ds, grid) -> np.ndarray:
    """rasterio's resampled read of the band onto the whole grid (nearest)."""
    bounds = (X0, Y0 - 10 * H, X0 + 10 * W, Y0)
    win = from_bounds(*bounds, transform=ds.transform)
    return ds.read(1, window=win, out_shape=(H, W), resampling=Resampling.nearest)


@pytest.mark.parametrize(
    "res, shift",
    [(10.0, 0.0), (20.0, 0.0), (60.0, 0.0), (20.0, 10.0), (60.0, 30.0)],
    ids=["10m", "20m", "60m", "20m-shifted-1px", "60m-shifted-3px"],
)
def test_window_reads_equal_gdal_nearest_onto_the_grid(tmp_path, res, shift):
    grid = tuple(from_origin(X0, Y0, 10.0, 10.0))[:6]
    # ``shift``: the band starts that many metres up-left of the grid (grid origin is
    # shift/10 grid pixels into the band), as when a product's bands are not co-origin.
    path = write_band(tmp_path / "b.tif", res, X0 - shift, Y0 + shift, seed=int(res + shift))
    with rasterio.open(path) as ds:
        whole = gdal_on_grid(ds, grid)
        windows = [(0, 0, H, W), (0, 0, 32, 32), (5, 7, 31, 29), (64, 96, 33, 7), (96, 102, 1, 1)]
        windows += [(r, c, 13, 11) for r in range(0, H - 13, 17) for c in range(0, W - 11, 19)]
        for r0, c0, h, w in windows:
            got = read_band_window(ds, grid, r0, c0, h, w, Resampling.nearest)
            assert got.shape == (h, w) and got.dtype == np.uint16
            np.testing.assert_array_equal(got, whole[r0 : r0 + h, c0 : c0 + w], f"{r0},{c0}")


LANDSAT = "LC08_L2SP_001062_20201031_20201106_02_T2"


def landsat_tiles(shared_data: Path, folder: Path, with_radsat: bool):
    """Tiles rows of the real Landsat sample (symlinked into ``folder``), built by the
    executor code path (:func:`udfs.ingest_udfs.block_table`) without Spark."""
    from pyspark.sql.pandas.types import to_arrow_schema

    from pipelines.datamodel import TILES
    from pipelines.discover import discover
    from udfs.ingest_udfs import block_table
    from udfs.reader import inspect_scene
    from udfs.tiling import plan_read_blocks

    folder.mkdir(parents=True)
    for f in (shared_data / LANDSAT).iterdir():
        if with_radsat or not f.name.endswith("_QA_RADSAT.TIF"):
            (folder / f.name).symlink_to(f)
    (src,) = discover(str(folder), [str(shared_data)])  # symlinks into shared data
    info = inspect_scene(src)
    scene = dict(info, acquired_date=info["acquired"].date().isoformat(), acq_month="2020-10")
    schema = to_arrow_schema(TILES)
    rows = []
    for block in plan_read_blocks(info["height"], info["width"], 128, 0, 2):
        rows += block_table(scene, block, 128, 0, "nearest", schema).to_pylist()
    return info, rows


def unpack(rows, column, h, w, dtype="<u2"):
    out = np.zeros((h, w), dtype=np.int64)
    for r in rows:
        if column == "valid":
            bits = np.unpackbits(np.frombuffer(r[column], np.uint8), count=r["height"] * r["width"])
            a = bits.reshape(r["height"], r["width"])
        else:
            a = np.frombuffer(r[column], dtype).reshape(r["height"], r["width"])
        out[r["row_off"] : r["row_off"] + r["height"], r["col_off"] : r["col_off"] + r["width"]] = a
    return out


def test_absent_qa_radsat_is_a_null_column_and_valid_counts_reflectance_bands_only(
    shared_data, tmp_path
):
    info, rows = landsat_tiles(shared_data, tmp_path / "no_radsat" / LANDSAT, with_radsat=False)
    assert "QA_RADSAT" not in [b["name"] for b in info["bands"]]
    assert rows and all(r["radsat"] is None for r in rows)
    assert all(r["qa"] is not None and r["red"] is not None for r in rows)
    np.testing.assert_array_equal(
        unpack(rows, "valid", info["height"], info["width"]).astype(bool), sr_valid(shared_data)
    )


def sr_valid(shared_data: Path) -> np.ndarray:
    """Pixels with data (not 0) in all seven SR bands, read with plain rasterio."""
    sr = []
    for n in range(1, 8):
        with rasterio.open(shared_data / LANDSAT / f"{LANDSAT}_SR_B{n}.TIF") as ds:
            sr.append(ds.read(1))
    return np.all(np.stack(sr) != 0, axis=0)


def test_present_qa_radsat_is_stored_pixel_for_pixel(shared_data, tmp_path):
    info, rows = landsat_tiles(shared_data, tmp_path / "radsat" / LANDSAT, with_radsat=True)
    assert [b["name"] for b in info["bands"]][-1] == "QA_RADSAT"
    with rasterio.open(shared_data / LANDSAT / f"{LANDSAT}_QA_RADSAT.TIF") as ds:
        expected = ds.read(1)
    np.testing.assert_array_equal(unpack(rows, "radsat", info["height"], info["width"]), expected)
    # QA_RADSAT is 0 (nothing saturated) everywhere in this sample: were quality bands
    # counted like reflectance bands (0 = nodata), no pixel would be valid.
    valid = sr_valid(shared_data)
    assert (expected == 0).all() and valid.mean() > 0.5
    np.testing.assert_array_equal(
        unpack(rows, "valid", info["height"], info["width"]).astype(bool), valid
    )
    for r in rows:
        bits = np.unpackbits(np.frombuffer(r["valid"], np.uint8), count=r["height"] * r["width"])
        assert r["valid_fraction"] == pytest.approx(bits.mean())
