"""Rendering and writing every band of one scene, shared by both product writers.

:func:`write_bands` also returns the quality-band histogram the products' cloud cover and
metadata are computed from (:func:`percent`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from rasterio.windows import Window

from pipelines.demo.grid import Grid, create_rasters, geotiff_profile, grid_for
from pipelines.demo.landscape import Layout
from pipelines.demo.radiometry import reflectance_table, render_grid
from pipelines.demo.scenes import SceneSpec
from pipelines.demo.sky import make_sky
from udfs.sensors import Sensor


def _band_names(sensor: Sensor) -> list[str]:
    return [b.common for b in sensor.reflectance_bands]


def write_bands(
    layout: Layout, spec: SceneSpec, files: dict[str, Path], seed: int
) -> tuple[dict[str, Grid], NDArray[np.int64], int]:
    """Render and write every band of ``spec``, grid by grid.

    Returns the grid of each band, the histogram of the quality band's values (SCL
    codes, QA_PIXEL words; 0..65535) and the bitwise OR of all QA_RADSAT words (0 for a
    product without that band): bit n - 1 set = band n saturated somewhere.
    """
    sky = make_sky(spec, layout.size, seed)
    names = _band_names(spec.sensor)
    table = reflectance_table(layout, spec.doy, names)
    grids: dict[str, Grid] = {}
    counts = np.zeros(1 << 16, dtype=np.int64)
    radsat = 0
    for res in sorted({b.resolution for b in spec.sensor.bands}):
        grid = grid_for(layout.size, res)
        bands = [b for b in spec.sensor.bands if b.resolution == res]
        specs = {}
        for b in bands:
            grids[b.name] = grid
            dtype = "uint8" if b.name == "SCL" else "uint16"
            # QA_PIXEL fill is 1, as USGS writes it; QA_RADSAT has no nodata (0 = fine)
            nodata = {"QA_PIXEL": 1, "QA_RADSAT": None}.get(b.name, 0)
            specs[b.name] = (files[b.name], geotiff_profile(grid, dtype, nodata))
        with create_rasters(specs) as dst:
            for r0, arrays in render_grid(layout, spec, sky, table, names, grid, bands, seed):
                for name, arr in arrays.items():
                    dst[name].write(arr, 1, window=Window(0, r0, grid.width, arr.shape[0]))
                    if name == "QA_RADSAT":
                        radsat |= int(np.bitwise_or.reduce(arr, axis=None))
                    elif spec.sensor.band(name).role == "quality":
                        counts += np.bincount(arr.ravel(), minlength=1 << 16)
    return grids, counts, radsat


def percent(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole else 0.0
