"""The landscape: land-cover classes, the seeded layout and the pixels it gives.

:func:`make_layout` draws parcels (cropland, grassland, bare soil), towns with a street
grid, a noise-shaped forest, lakes and a river; :func:`landcover_at` turns that layout into
class codes and unit ids for any set of 10 m pixels, and :func:`write_landcover` writes
``landcover_10m.tif``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from rasterio.windows import Window

from pipelines.demo.grid import BLOCK_ROWS, PIXEL, create_rasters, geotiff_profile, grid_for
from pipelines.demo.noise import Noise, make_noise, noise_threshold, sample_noise

# Land-cover classes (uint8 codes of landcover_10m.tif; 0 = nodata).
WATER, FOREST, CROPLAND, GRASSLAND, URBAN, BARE = 1, 2, 3, 4, 5, 6
CLASSES: dict[int, str] = {
    WATER: "water",
    FOREST: "forest",
    CROPLAND: "cropland",
    GRASSLAND: "grassland",
    URBAN: "urban",
    BARE: "bare_soil",
}
N_CLASSES = 7  # including 0
ROOF_SHARE = 0.12  # share of built-up blocks with a roof bright enough to saturate


@dataclass(frozen=True)
class Town:
    """A built-up rectangle with a street grid; blocks are numbered units.

    All lengths in 10 m pixels; block ``(bi, bj)`` is unit ``first_unit + bi * n_cols + bj``.
    """

    row: int
    col: int
    height: int
    width: int
    spacing: int
    street: int
    first_unit: int

    @property
    def n_cols(self) -> int:
        return math.ceil(self.width / self.spacing)

    @property
    def n_blocks(self) -> int:
        return math.ceil(self.height / self.spacing) * self.n_cols


@dataclass(frozen=True)
class Lake:
    """A lobed lake: radius ``radius * (1 + 0.18 sin(2t + p0) + 0.08 sin(5t + p1))``."""

    row: float
    col: float
    radius: float
    phases: tuple[float, float]


@dataclass(frozen=True)
class River:
    """A meandering band: centre column = ``col + sum(a * sin(2 pi row / l + p))``."""

    col: float
    width: float
    amplitudes: tuple[float, ...]
    wavelengths: tuple[float, ...]
    phases: tuple[float, ...]


@dataclass(frozen=True)
class Layout:
    """Seeded parameters of the landscape; :func:`landcover_at` turns them into pixels.

    Parcels are rectangles in row bands: band ``b`` spans rows ``row_edges[b] ..
    row_edges[b + 1]`` and its own column edges; parcel ``(b, c)`` is unit
    ``b * parcels_per_band + c``. Town blocks and the street surface follow as further
    units. Every unit has a class (parcels and town blocks), a brightness factor, a
    phenology shift in days and a vegetated fraction (town blocks). ``roof_units`` are the
    built-up blocks whose bright roofs saturate the visible bands (sorted unit ids).
    """

    size: int
    row_edges: NDArray[np.int64]
    col_lut: NDArray[np.int32]
    parcels_per_band: int
    unit_class: NDArray[np.uint8]
    unit_bright: NDArray[np.float32]
    unit_shift: NDArray[np.float32]
    unit_green: NDArray[np.float32]
    street_unit: int
    forest: Noise
    forest_threshold: float
    towns: tuple[Town, ...]
    lakes: tuple[Lake, ...]
    river: River
    roof_units: NDArray[np.int32]

    @property
    def n_units(self) -> int:
        return len(self.unit_class)


def _parcels(rng: np.random.Generator, canvas: int):
    """Row-band edges and, per band, a column -> parcel index lookup table."""
    heights = rng.integers(18, 50, canvas // 18 + 2)
    row_edges = np.concatenate([[0], np.cumsum(heights)]) - int(rng.integers(0, 18))
    n_bands = int(np.searchsorted(row_edges, canvas, side="right"))
    row_edges = row_edges[: n_bands + 1]
    per_band = canvas // 20 + 2
    widths = rng.integers(20, 70, (n_bands, per_band))
    offsets = rng.integers(0, 20, n_bands)
    col_edges = np.cumsum(widths, axis=1) - offsets[:, None]
    cols = np.arange(canvas)
    # one vectorised searchsorted per parcel row band (a few hundred at most)
    lut = np.stack([np.searchsorted(e, cols, side="right") for e in col_edges])
    return row_edges.astype(np.int64), lut.astype(np.int32), per_band + 1


def _phases(rng: np.random.Generator) -> tuple[float, float]:
    a, b = rng.uniform(0, 2 * np.pi, 2)
    return float(a), float(b)


def make_layout(size: int, seed: int) -> Layout:
    """Draw the landscape of a ``size`` x ``size`` 10 m area from ``seed``.

    Sizes of fields, blocks and the river are in metres (pixels), so a larger area holds
    more of them (and more towns and lakes) rather than bigger ones.
    """
    rng = np.random.default_rng([seed, 0])
    canvas = math.ceil(size / 6) * 6 + 6
    row_edges, col_lut, per_band = _parcels(rng, canvas)
    n_parcels = (len(row_edges) - 1) * per_band
    parcel_class = rng.choice(
        np.array([CROPLAND, GRASSLAND, BARE], dtype=np.uint8), n_parcels, p=[0.58, 0.30, 0.12]
    )
    # winter crops green up ~5 weeks earlier than summer crops
    shift = np.where(rng.random(n_parcels) < 0.4, -35.0, 0.0) + rng.normal(0, 8, n_parcels)

    towns: list[Town] = []
    first = n_parcels
    n_towns = 1 + int(size * size / 2500**2)
    for t in range(n_towns):
        if t == 0:
            row, col = int(0.58 * size), int(0.10 * size)
            h, w = int(np.clip(0.22 * size, 24, 260)), int(np.clip(0.26 * size, 24, 300))
        else:
            h, w = (int(v) for v in rng.integers(60, 250, 2))
            row, col = (int(v) for v in rng.integers(0, max(1, size - 60), 2))
        town = Town(row, col, h, w, spacing=int(rng.integers(11, 15)), street=2, first_unit=first)
        towns.append(town)
        first += town.n_blocks
    n_blocks = first - n_parcels
    block_class = np.where(rng.random(n_blocks) < 0.15, GRASSLAND, URBAN).astype(np.uint8)

    n_units = first + 1  # + the street surface
    unit_class = np.concatenate([parcel_class, block_class, [URBAN]]).astype(np.uint8)
    bright = rng.uniform(0.9, 1.1, n_units)
    bright[unit_class == BARE] = rng.uniform(0.75, 1.2, int((unit_class == BARE).sum()))
    bright[n_parcels:first] = rng.uniform(0.85, 1.15, n_blocks)
    bright[-1] = 0.55  # asphalt
    green = np.zeros(n_units)
    green[n_parcels:first] = rng.uniform(0.0, 0.3, n_blocks)  # gardens, street trees
    unit_shift = np.concatenate([shift, rng.normal(0, 8, n_blocks), [0.0]])

    forest = make_noise(rng, canvas, (160, 48, 16), (1.0, 0.6, 0.3))
    forest_threshold, _ = noise_threshold(forest, size, 0.24)

    lakes = [
        Lake(
            0.22 * size,
            0.22 * size,
            float(np.clip(0.09 * size, 8, 90)),
            _phases(rng),
        )
    ]
    for _ in range(int(size * size / 3000**2)):
        r, c = (float(v) for v in rng.uniform(0, size, 2))
        lakes.append(Lake(r, c, float(rng.uniform(12, 60)), _phases(rng)))
    river = River(
        col=0.64 * size,
        width=float(np.clip(0.022 * size, 4, 14)),
        amplitudes=(
            0.07 * size,
            float(np.clip(0.04 * size, 4, 40)),
            float(np.clip(0.012 * size, 1, 10)),
        ),
        wavelengths=(
            1.6 * size,
            float(np.clip(0.45 * size, 60, 600)),
            float(np.clip(0.13 * size, 20, 150)),
        ),
        phases=tuple(float(p) for p in rng.uniform(0, 2 * np.pi, 3)),
    )
    # a stream of its own, so the landscape drawn above does not depend on it
    urban_blocks = np.flatnonzero(unit_class[n_parcels:first] == URBAN) + n_parcels
    n_roofs = min(len(urban_blocks), max(1, round(ROOF_SHARE * len(urban_blocks))))
    roofs = np.random.default_rng([seed, 4]).choice(urban_blocks, n_roofs, replace=False)
    return Layout(
        size=size,
        row_edges=row_edges,
        col_lut=col_lut,
        parcels_per_band=per_band,
        unit_class=unit_class,
        unit_bright=bright.astype(np.float32),
        unit_shift=unit_shift.astype(np.float32),
        unit_green=green.astype(np.float32),
        street_unit=n_units - 1,
        forest=forest,
        forest_threshold=forest_threshold,
        towns=tuple(towns),
        lakes=tuple(lakes),
        river=river,
        roof_units=np.sort(roofs).astype(np.int32),
    )


def _span(idx: NDArray[np.integer], lo: float, hi: float) -> slice:
    """Positions of the sorted indices ``idx`` that fall in ``[lo, hi)``."""
    return slice(int(np.searchsorted(idx, lo)), int(np.searchsorted(idx, hi)))


def landcover_at(
    layout: Layout, rows: NDArray[np.integer], cols: NDArray[np.integer]
) -> tuple[NDArray[np.uint8], NDArray[np.int32]]:
    """Land-cover class and unit of the 10 m pixels ``rows`` x ``cols``.

    Parameters
    ----------
    rows, cols : ndarray
        Sorted 1-D 10 m pixel indices (row 0 / col 0 at the upper-left corner); they may
        run past ``layout.size`` (coarser grids cover a little more ground).

    Returns
    -------
    classes : ndarray
        ``(len(rows), len(cols))`` uint8 codes of :data:`CLASSES`.
    units : ndarray
        ``(len(rows), len(cols))`` int32 unit (parcel, town block, street) ids.
    """
    band = np.searchsorted(layout.row_edges, rows, side="right") - 1
    units = (band * layout.parcels_per_band)[:, None] + layout.col_lut[band[:, None], cols]
    units = units.astype(np.int32)
    classes = layout.unit_class[units]
    forest = sample_noise(layout.forest, rows + 0.5, cols + 0.5) > layout.forest_threshold
    classes[forest] = FOREST
    for town in layout.towns:
        rs, cs = (
            _span(rows, town.row, town.row + town.height),
            _span(cols, town.col, town.col + town.width),
        )
        if rs.start == rs.stop or cs.start == cs.stop:
            continue
        di = (rows[rs] - town.row)[:, None]
        dj = (cols[cs] - town.col)[None, :]
        block = town.first_unit + (di // town.spacing) * town.n_cols + dj // town.spacing
        street = (di % town.spacing < town.street) | (dj % town.spacing < town.street)
        block = np.where(street, layout.street_unit, block).astype(np.int32)
        units[rs, cs] = block
        classes[rs, cs] = layout.unit_class[block]
    for lake in layout.lakes:
        reach = lake.radius * 1.3
        rs, cs = (
            _span(rows, lake.row - reach, lake.row + reach),
            _span(cols, lake.col - reach, lake.col + reach),
        )
        if rs.start == rs.stop or cs.start == cs.stop:
            continue
        dy = (rows[rs] + 0.5 - lake.row)[:, None]
        dx = (cols[cs] + 0.5 - lake.col)[None, :]
        theta = np.arctan2(dy, dx)
        radius = lake.radius * (
            1
            + 0.18 * np.sin(2 * theta + lake.phases[0])
            + 0.08 * np.sin(5 * theta + lake.phases[1])
        )
        sub = classes[rs, cs]
        sub[np.hypot(dy, dx) < radius] = WATER
    river = layout.river
    centre = np.full(len(rows), river.col)
    for a, wl, p in zip(river.amplitudes, river.wavelengths, river.phases, strict=True):
        centre = centre + a * np.sin(2 * np.pi * (rows + 0.5) / wl + p)
    classes[np.abs((cols + 0.5)[None, :] - centre[:, None]) < river.width / 2] = WATER
    return classes, units


def write_landcover(layout: Layout, path: Path) -> Path:
    """Write ``landcover_10m.tif`` (uint8 class codes, nodata 0) in row blocks."""
    grid = grid_for(layout.size, PIXEL)
    cols = np.arange(grid.width)
    with create_rasters({"lc": (path, geotiff_profile(grid, "uint8", 0))}) as dst:
        for r0 in range(0, grid.height, BLOCK_ROWS):
            r1 = min(grid.height, r0 + BLOCK_ROWS)
            classes, _ = landcover_at(layout, np.arange(r0, r1), cols)
            dst["lc"].write(classes, 1, window=Window(0, r0, grid.width, r1 - r0))
    return path
