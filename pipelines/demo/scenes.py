"""The demo acquisitions: what each scene is and what was written for it.

:class:`SceneSpec` and the five :data:`SCENES`; :func:`select_scenes` picks those a run
writes; a product writer returns a :class:`SceneRecord` for the catalogue and manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pipelines.demo.grid import Grid
from udfs.sensors import LANDSAT_C2L2, SENTINEL2_L2A, Sensor


@dataclass(frozen=True)
class SceneSpec:
    """One acquisition to synthesise.

    Attributes
    ----------
    index : int
        Stable number of the scene; seeds its clouds and noise (a subset run writes the
        same bytes for a scene as a full run).
    scene_id : str
        Product id: SAFE name without ``.SAFE``, or the Landsat product id.
    sensor : Sensor
        Entry of :data:`udfs.sensors.SENSORS`.
    platform : str
        STAC platform (``sentinel-2a``, ``landsat-9``).
    sensing : datetime
        Sensing (start) time, UTC.
    cloud, cirrus : float
        Target fraction of the scene under cloud and under thin cirrus.
    nodata : str
        ``"none"``, ``"orbit-edge"`` (a slanted swath edge) or ``"footprint"`` (the
        rotated Landsat scene footprint cuts the corners).
    baseline : str
        Sentinel-2 processing baseline (``"05.10"``); ``"L2SP"`` for Landsat.
    boa_offset : float
        Sentinel-2 ``BOA_ADD_OFFSET`` in DN (0 before baseline 04.00, -1000 after).
    orbit : int
        Sentinel-2 absolute orbit (granule name); unused for Landsat.
    processed : str
        Processing time (S2 product name, ``YYYYMMDDTHHMMSS``) or date (Landsat, ``YYYYMMDD``).
    """

    index: int
    scene_id: str
    sensor: Sensor
    platform: str
    sensing: datetime
    cloud: float
    cirrus: float
    nodata: str
    baseline: str
    boa_offset: float = 0.0
    orbit: int = 0
    processed: str = ""

    @property
    def doy(self) -> int:
        return self.sensing.timetuple().tm_yday

    @property
    def scaling(self) -> tuple[float, float]:
        """``(scale, offset)`` with reflectance = DN * scale + offset."""
        if self.sensor is SENTINEL2_L2A:
            return 1e-4, self.boa_offset * 1e-4
        return LANDSAT_C2L2.default_scale, LANDSAT_C2L2.default_offset


def _utc(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=timezone.utc)


#: The five demo acquisitions. Sentinel-2 names sort by date within a platform, and the
#: baseline-03.00 scene (no BOA offset) sorts first.
SCENES: tuple[SceneSpec, ...] = (
    SceneSpec(0, "S2A_MSIL2A_20240412T103621_N0300_R008_T31UFS_20240412T165012",
              SENTINEL2_L2A, "sentinel-2a", _utc("2024-04-12T10:36:21.024"),
              cloud=0.08, cirrus=0.06, nodata="none", baseline="03.00", boa_offset=0.0,
              orbit=45929, processed="20240412T165012"),
    SceneSpec(1, "S2B_MSIL2A_20240621T103629_N0510_R008_T31UFS_20240621T133010",
              SENTINEL2_L2A, "sentinel-2b", _utc("2024-06-21T10:36:29.024"),
              cloud=0.15, cirrus=0.0, nodata="none", baseline="05.10", boa_offset=-1000.0,
              orbit=37967, processed="20240621T133010"),
    SceneSpec(2, "S2A_MSIL2A_20240830T103631_N0510_R008_T31UFS_20240830T151502",
              SENTINEL2_L2A, "sentinel-2a", _utc("2024-08-30T10:36:31.024"),
              cloud=0.06, cirrus=0.0, nodata="orbit-edge", baseline="05.10",
              boa_offset=-1000.0, orbit=47788, processed="20240830T151502"),
    SceneSpec(3, "LC08_L2SP_198025_20240515_20240521_02_T1",
              LANDSAT_C2L2, "landsat-8", _utc("2024-05-15T10:31:12.543218"),
              cloud=0.12, cirrus=0.0, nodata="footprint", baseline="L2SP",
              processed="20240521"),
    SceneSpec(4, "LC09_L2SP_198025_20240726_20240801_02_T1",
              LANDSAT_C2L2, "landsat-9", _utc("2024-07-26T10:31:47.808399"),
              cloud=0.07, cirrus=0.0, nodata="footprint", baseline="L2SP",
              processed="20240801"),
)  # fmt: skip


def select_scenes(wanted: Sequence[str] | None) -> list[SceneSpec]:
    """Scenes whose id equals or contains one of ``wanted`` (all when None or empty).

    Raises ``ValueError`` naming a token that matches no scene.
    """
    if not wanted:
        return list(SCENES)
    chosen = []
    for token in wanted:
        hits = [s for s in SCENES if token == s.scene_id or token in s.scene_id]
        if not hits:
            known = ", ".join(s.scene_id for s in SCENES)
            raise ValueError(f"--scenes: {token!r} matches no demo scene (known: {known})")
        chosen += [s for s in hits if s not in chosen]
    return sorted(chosen, key=lambda s: s.index)


@dataclass(frozen=True)
class SceneRecord:
    """What was written for one scene (for the catalogue and the manifest)."""

    spec: SceneSpec
    folder: Path
    metadata: Path
    files: dict[str, Path]
    grids: dict[str, Grid]
    cloud_cover: float
