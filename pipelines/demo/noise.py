"""Smooth seeded random fields (value noise).

The landscape draws its forest from one, the sky its clouds and cirrus; a field is
evaluated at any coordinates, so every grid and row block sees the same field.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Noise:
    """Smooth random field: a sum of value-noise octaves (N(0, 1) lattices, smoothstep).

    Attributes
    ----------
    lattices : tuple of ndarray
        ``(ny, nx)`` float32 node values of each octave.
    spacings : tuple of float
        Node spacing of each octave, in 10 m pixels.
    weights : tuple of float
        Weight of each octave in the sum.
    margin : float
        Node ``[0, 0]`` sits at coordinate ``(-margin, -margin)``.
    """

    lattices: tuple[NDArray[np.float32], ...]
    spacings: tuple[float, ...]
    weights: tuple[float, ...]
    margin: float


def make_noise(
    rng: np.random.Generator, extent: float, spacings: Sequence[float], weights: Sequence[float]
) -> Noise:
    """Draw a :class:`Noise` covering ``[-margin, extent + margin]`` in both directions."""
    margin = 2.0 * max(spacings) + 200.0
    lattices = []
    for s in spacings:
        n = math.ceil((extent + 2 * margin) / s) + 3
        lattices.append(rng.standard_normal((n, n), dtype=np.float32))
    return Noise(tuple(lattices), tuple(float(s) for s in spacings), tuple(weights), margin)


def _axis(coord: NDArray[np.floating], spacing: float, margin: float, n: int):
    f = (np.asarray(coord, dtype=np.float64) + margin) / spacing
    i = np.clip(np.floor(f).astype(np.intp), 0, n - 2)
    t = np.clip(f - i, 0.0, 1.0)
    t = (t * t * (3.0 - 2.0 * t)).astype(np.float32)  # smoothstep: no lattice creases
    return i, t


def sample_noise(noise: Noise, y: NDArray[np.floating], x: NDArray[np.floating]) -> NDArray:
    """Evaluate ``noise`` on the outer grid of coordinates ``y`` (rows) x ``x`` (cols).

    Parameters
    ----------
    y, x : ndarray
        1-D coordinates in 10 m pixel units from the upper-left corner.

    Returns
    -------
    ndarray
        ``(len(y), len(x))`` float32.
    """
    out = np.zeros((len(y), len(x)), dtype=np.float32)
    for lat, s, w in zip(noise.lattices, noise.spacings, noise.weights, strict=True):
        iy, ty = _axis(y, s, noise.margin, lat.shape[0])
        ix, tx = _axis(x, s, noise.margin, lat.shape[1])
        # separable: interpolate the few lattice rows first, then gather columns
        rows = lat[iy] * (1 - ty)[:, None] + lat[iy + 1] * ty[:, None]
        out += w * (rows[:, ix] * (1 - tx) + rows[:, ix + 1] * tx)
    return out


def noise_threshold(noise: Noise, size: int, fraction: float) -> tuple[float, float]:
    """Level above which ``fraction`` of the area lies, and the field's spread.

    Estimated on at most 200 x 200 evenly spaced points, so it is exact enough and cheap
    for any size. Returns ``(threshold, standard deviation)``.
    """
    pts = (np.arange(min(size, 200)) + 0.5) * (size / min(size, 200))
    values = sample_noise(noise, pts, pts)
    return float(np.quantile(values, 1.0 - fraction)), float(values.std())
