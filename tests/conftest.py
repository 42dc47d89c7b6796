"""Shared fixtures: one local[2] SparkSession, a raster factory, the demo scenes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_collection_modifyitems(items):
    # Tests that use the spark fixture are marked `spark` so `-m "not spark"` is the fast loop.
    for item in items:
        if "spark" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.spark)


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from pipelines.config import load_config
    from pipelines.session import build_session

    warehouse = tmp_path_factory.mktemp("warehouse")
    config = load_config(
        "local",
        [
            "spark.shuffle_partitions=2",
            # Small batches so UDFs really see several Arrow batches per task.
            "spark.arrow_max_records_per_batch=4",
            f"spark.conf.spark.sql.warehouse.dir={warehouse}",
        ],
    )
    session = build_session(config)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """The demo scenes at a small size, generated once per test session."""
    from pipelines.demo import generate

    out = tmp_path_factory.mktemp("demo")
    generate(out, size=384, seed=11)
    return out


@pytest.fixture
def demo_copy(demo_root, tmp_path) -> Path:
    """A private copy of the demo scenes a test may change."""
    dst = tmp_path / "demo"
    shutil.copytree(demo_root, dst)
    return dst


def write_raster(
    path: Path,
    data: np.ndarray,
    *,
    crs: str = "EPSG:32631",
    origin: tuple[float, float] = (600000.0, 5700000.0),
    res: float = 10.0,
    nodata: float | None = 0,
    block: int = 256,
) -> Path:
    """Write a tiled, DEFLATE-compressed GeoTIFF (a COG-like test raster) from a 2-D array."""
    h, w = data.shape
    profile = {
        "driver": "GTiff",
        "height": h,
        "width": w,
        "count": 1,
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": from_origin(origin[0], origin[1], res, res),
        "nodata": nodata,
        "compress": "deflate",
    }
    if h >= block and w >= block:
        profile.update(tiled=True, blockxsize=block, blockysize=block)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return path


@pytest.fixture
def raster_factory():
    return write_raster
