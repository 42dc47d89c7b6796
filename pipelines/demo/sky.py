"""The sky of one acquisition: clouds, their shadows, cirrus and the data footprint.

:func:`pixels_at` puts the sky together with the land cover of one row block of a grid
(:class:`Pixels`), which the radiometry turns into DNs and quality codes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from pipelines.demo.grid import Grid
from pipelines.demo.landscape import URBAN, Layout, landcover_at
from pipelines.demo.noise import Noise, make_noise, noise_threshold, sample_noise
from pipelines.demo.scenes import SceneSpec

CIRRUS_MAX = 0.15  # opacity of the densest cirrus


@dataclass(frozen=True)
class Sky:
    """Clouds, their shadows, cirrus and the data footprint of one acquisition.

    Opacity of cloud = ``clip((n - threshold) / soft, 0, 1)`` of a noise field ``n``;
    a pixel is shadowed by the cloud ``shadow_shift`` (rows, cols; 10 m pixels) away
    towards the sun.
    """

    cloud: Noise
    cloud_threshold: float
    cloud_soft: float
    cirrus: Noise | None
    cirrus_threshold: float
    cirrus_soft: float
    shadow_shift: tuple[float, float]
    nodata: str
    size: int
    index: int


def make_sky(spec: SceneSpec, size: int, seed: int) -> Sky:
    """Draw the clouds of ``spec`` (about ``spec.cloud`` of the area under cloud)."""
    rng = np.random.default_rng([seed, 1, spec.index])
    canvas = math.ceil(size / 6) * 6 + 6
    cloud = make_noise(rng, canvas + 100, (110, 36, 12), (1.0, 0.5, 0.25))
    thr, sd = noise_threshold(cloud, size, spec.cloud)
    cirrus, c_thr, c_sd = None, 0.0, 1.0
    if spec.cirrus > 0:
        cirrus = make_noise(rng, canvas, (200, 60), (1.0, 0.4))
        c_thr, c_sd = noise_threshold(cirrus, size, spec.cirrus)
    # sun in the south-south-east at ~10:30 local time: shadows fall north-north-west
    d = float(np.clip(0.08 * size, 6, 80))
    azimuth = np.deg2rad(rng.uniform(20, 35))
    return Sky(
        cloud=cloud,
        cloud_threshold=thr,
        cloud_soft=0.1 * sd,
        cirrus=cirrus,
        cirrus_threshold=c_thr,
        cirrus_soft=0.5 * c_sd,
        shadow_shift=(d * float(np.cos(azimuth)), d * float(np.sin(azimuth))),
        nodata=spec.nodata,
        size=size,
        index=spec.index,
    )


def valid_at(sky: Sky, y: NDArray[np.floating], x: NDArray[np.floating]) -> NDArray[np.bool_]:
    """True where the acquisition has data, at pixel centres ``y`` x ``x`` (10 m units)."""
    size = sky.size
    if sky.nodata == "orbit-edge":
        # the swath's eastern edge, slanted like a descending orbit track
        return x[None, :] < 0.80 * size + 0.12 * y[:, None]
    if sky.nodata == "footprint":
        # the rotated WRS-2 scene footprint clips the corners of the map grid
        angle = np.deg2rad(12.0)
        shift = 0.02 * size * (sky.index - 3)
        dy = (y - size / 2 + shift)[:, None]
        dx = (x - size / 2 - shift)[None, :]
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        half = 0.53 * size
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    return np.ones((len(y), len(x)), dtype=bool)


@dataclass
class Pixels:
    """What one block of a grid sees; all arrays ``(rows, cols)``.

    Attributes
    ----------
    classes : uint8 land-cover codes.  index : intp ``class * n_units + unit`` into the
    flattened ``(class, unit)`` planes of
    :func:`~pipelines.demo.radiometry.reflectance_table`.  valid : bool data footprint.
    cloud, cirrus, shadow : float32 opacities / shadow strength 0..1.
    saturated : bool, a saturating roof seen clear (the visible bands saturate).
    """

    classes: NDArray[np.uint8]
    index: NDArray[np.intp]
    valid: NDArray[np.bool_]
    cloud: NDArray[np.float32]
    cirrus: NDArray[np.float32]
    shadow: NDArray[np.float32]
    saturated: NDArray[np.bool_]


def pixels_at(layout: Layout, sky: Sky, grid: Grid, r0: int, r1: int) -> Pixels:
    """Land cover and sky of rows ``r0 .. r1`` of ``grid``.

    A coarse pixel takes the land cover of the 10 m pixel at its centre; clouds and the
    footprint are evaluated at its centre, so 10, 20, 30 and 60 m grids agree.
    """
    k = grid.factor
    r = np.arange(r0, r1)
    c = np.arange(grid.width)
    classes, units = landcover_at(layout, r * k + k // 2, c * k + k // 2)
    y, x = (r + 0.5) * k, (c + 0.5) * k
    cloud = np.clip((sample_noise(sky.cloud, y, x) - sky.cloud_threshold) / sky.cloud_soft, 0, 1)
    dy, dx = sky.shadow_shift
    shadow = np.clip(
        (sample_noise(sky.cloud, y + dy, x + dx) - sky.cloud_threshold) / sky.cloud_soft, 0, 1
    )
    if sky.cirrus is not None:
        cirrus = CIRRUS_MAX * np.clip(
            (sample_noise(sky.cirrus, y, x) - sky.cirrus_threshold) / sky.cirrus_soft, 0, 1
        )
    else:
        cirrus = np.zeros_like(cloud)
    index = classes.astype(np.intp) * layout.n_units + units
    valid = valid_at(sky, y, x)
    roof = np.isin(units, layout.roof_units) & (classes == URBAN)
    saturated = roof & valid & (cloud < 0.1) & (shadow < 0.4)
    return Pixels(
        classes,
        index,
        valid,
        cloud.astype(np.float32, copy=False),
        cirrus.astype(np.float32, copy=False),
        shadow.astype(np.float32, copy=False),
        saturated,
    )
