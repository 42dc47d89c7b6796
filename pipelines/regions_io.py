"""Regions for the aggregate job: read and check a regions file on the driver (no Spark).

:func:`read_regions` returns a :class:`RegionSet`: the usable polygons in the file's CRS,
the file's digest (part of every analysis row's ``inputs_digest``) and one ``rejected``
record per region refused; :func:`load_regions` reads the configured file, or gives each
scene's footprint as the one region. The aggregate job (:mod:`pipelines.aggregate`)
reprojects the regions into each scene's CRS and burns them on the executors
(:mod:`udfs.regions`).

Decisions
---------
* **Formats.** GeoJSON (RFC 7946: lon/lat unless a legacy ``crs`` member names another
  CRS; coordinates outside lon/lat refuse the file), GeoParquet (WKB; the ``geo``
  metadata's CRS, absent = lon/lat, ``null`` refused; read by
  :func:`pipelines.labels_io.read_geoparquet`) or GeoPackage (read with ``sqlite3``: no
  vector library is installed, and the format is SQLite + a small header before standard
  WKB).
* **Refusals.** A file without a CRS or without the id column is refused whole
  (:class:`RegionsFileError`); a region with an empty, invalid or non-polygon geometry,
  or an id used twice, is skipped and recorded in ``rejected`` (stage ``aggregate``) with
  its id, name and the reason.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from rasterio.crs import CRS
from shapely.geometry import MultiPolygon, Polygon, shape
from shapely.geometry.base import BaseGeometry

from pipelines.config import Config
from pipelines.labels_io import read_geoparquet
from udfs.regions import RegionError

#: ``region_set`` of the footprint regions (no regions file).
FOOTPRINT_SET = "scene"


class RegionsFileError(RegionError):
    """The regions file as a whole cannot be used (unreadable, no CRS, no id column)."""


@dataclass(frozen=True)
class Region:
    """One area of interest: id, name and polygon in the file's CRS (None: a footprint)."""

    id: str
    name: str | None
    geom: BaseGeometry | None


@dataclass(frozen=True)
class RegionSet:
    """The usable regions of one file, its CRS, digest and the regions refused."""

    name: str
    crs: str
    regions: list[Region]
    digest: str
    path: str = ""
    rejected: list[dict[str, Any]] = field(default_factory=list)


def footprint_regions() -> RegionSet:
    """Without a regions file: one region, each scene's whole footprint."""
    return RegionSet(FOOTPRINT_SET, "", [Region("scene", "scene footprint", None)], "footprint")


def _lonlat_ok(geoms: list[BaseGeometry | None]) -> bool:
    b = [g.bounds for g in geoms if g is not None and not g.is_empty]
    if not b:
        return True
    arr = np.asarray(b)
    return bool((arr[:, [0, 2]] >= -180).all() and (arr[:, [0, 2]] <= 360).all()) and bool(
        (np.abs(arr[:, [1, 3]]) <= 90).all()
    )


def _read_geojson(path: Path) -> tuple[list[dict[str, Any]], list[Any], str]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RegionsFileError(f"regions {path}: not readable GeoJSON: {e}") from e
    feats = [doc] if isinstance(doc, dict) and doc.get("type") == "Feature" else None
    if feats is None:
        feats = doc.get("features") if isinstance(doc, dict) else None
    if not isinstance(feats, list):
        raise RegionsFileError(f"regions {path}: expected a GeoJSON FeatureCollection")
    named = (doc.get("crs") or {}).get("properties", {}).get("name")
    crs = "EPSG:4326" if not named or "CRS84" in named else str(named)
    props, geoms = [], []
    for feat in feats:
        props.append(dict(feat.get("properties") or {}))
        g = feat.get("geometry")
        try:
            geoms.append(shape(g) if g else None)
        except (ValueError, TypeError, AttributeError, shapely.errors.ShapelyError) as e:
            geoms.append(e)
    if not named and not _lonlat_ok([g for g in geoms if isinstance(g, BaseGeometry)]):
        raise RegionsFileError(
            f"regions {path}: coordinates are not longitude/latitude, and the file names no "
            "CRS (GeoJSON without a 'crs' member is EPSG:4326 by RFC 7946): reproject it to "
            "lon/lat, or use GeoParquet or GeoPackage, which record their CRS"
        )
    return props, geoms, crs


def _read_geoparquet(path: Path) -> tuple[list[dict[str, Any]], list[Any], str]:
    table, col, crs = read_geoparquet(path, "regions", RegionsFileError)
    rows = table.drop_columns([col]).to_pylist()
    return rows, [_from_wkb(b) for b in table.column(col).to_pylist()], crs


def _from_wkb(blob: bytes | None) -> Any:
    if blob is None:
        return None
    try:
        return shapely.from_wkb(bytes(blob))
    except shapely.errors.ShapelyError as e:
        return e


def _gpkg_wkb(blob: bytes | None) -> Any:
    """Standard WKB of a GeoPackage geometry blob (``GP`` header + envelope + WKB)."""
    if blob is None:
        return None
    blob = bytes(blob)
    if blob[:2] != b"GP" or len(blob) < 8:
        return ValueError("not a GeoPackage geometry blob")
    flags = blob[3]
    if flags & 0b10000:
        return Polygon()  # the empty flag
    envelope = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}.get((flags >> 1) & 0b111)
    if envelope is None:
        return ValueError(f"bad GeoPackage envelope code {(flags >> 1) & 0b111}")
    return _from_wkb(blob[8 + envelope :])


def _read_geopackage(path: Path) -> tuple[list[dict[str, Any]], list[Any], str]:
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise RegionsFileError(f"regions {path}: not a readable GeoPackage: {e}") from e
    try:
        found = con.execute(
            "SELECT g.table_name, g.column_name, g.srs_id FROM gpkg_geometry_columns g "
            "JOIN gpkg_contents c ON c.table_name = g.table_name WHERE c.data_type = 'features'"
        ).fetchall()
        if len(found) != 1:
            raise RegionsFileError(
                f"regions {path}: expected one feature table, found {len(found)}"
                + (f" ({', '.join(t for t, _, _ in found)})" if found else "")
            )
        table, column, srs_id = found[0]
        srs = con.execute(
            "SELECT organization, organization_coordsys_id, definition FROM gpkg_spatial_ref_sys "
            "WHERE srs_id = ?",
            (srs_id,),
        ).fetchone()
        cur = con.execute(f'SELECT * FROM "{table}"')
        names = [d[0] for d in cur.description]
        rows = cur.fetchall()
    except sqlite3.Error as e:
        raise RegionsFileError(f"regions {path}: not a readable GeoPackage: {e}") from e
    finally:
        con.close()
    if srs is None or srs_id in (0, -1) or (srs[2] or "").strip() in ("", "undefined"):
        raise RegionsFileError(
            f"regions {path}: table {table!r} has an undefined CRS (srs_id {srs_id}): "
            "coordinates cannot be placed on the scenes"
        )
    org, code, wkt = srs
    crs = f"EPSG:{code}" if str(org).upper() == "EPSG" else wkt
    g = names.index(column)
    props = [{n: v for i, (n, v) in enumerate(zip(names, r, strict=True)) if i != g} for r in rows]
    return props, [_gpkg_wkb(r[g]) for r in rows], crs


def _file_digest(path: Path, *extra: str) -> str:
    h = hashlib.sha256(path.read_bytes())
    for e in extra:
        h.update(b"\0" + e.encode())
    return h.hexdigest()[:16]


def read_regions(path: str | Path, id_column: str = "id", name_column: str = "name") -> RegionSet:
    """Read and check a regions file (GeoJSON, GeoParquet or GeoPackage, any CRS).

    Returns the usable regions (polygons in the file's CRS) and, in ``rejected``, one
    ``rejected`` record per region refused: no id, an id used twice (every region with
    it), an empty, invalid or non-polygon geometry; the reason names the region's id and
    name. Raises :class:`RegionsFileError` when the file cannot be used at all: missing,
    unreadable, no CRS, or no ``id_column``.
    """
    p = Path(path)
    if not p.is_file():
        raise RegionsFileError(f"regions file not found: {p}")
    suffix = p.suffix.lower()
    if suffix in (".parquet", ".geoparquet", ".pq"):
        props, geoms, crs = _read_geoparquet(p)
    elif suffix == ".gpkg":
        props, geoms, crs = _read_geopackage(p)
    else:
        props, geoms, crs = _read_geojson(p)
    if props and not any(id_column in pr for pr in props):
        known = sorted({k for pr in props for k in pr})
        raise RegionsFileError(
            f"regions {p}: no id column {id_column!r} (columns: {', '.join(known) or 'none'}); "
            "set aggregate.region_id_column"
        )
    try:
        CRS.from_user_input(crs)
    except Exception as e:  # rasterio's CRSError has several bases
        raise RegionsFileError(f"regions {p}: unknown CRS {crs!r}: {e}") from e
    rejected: list[dict[str, Any]] = []
    ids: dict[str, list[int]] = {}
    candidates: list[Region] = []

    def refuse(i: int, rid: Any, name: Any, reason: str) -> None:
        label = f"region {rid!r}" if rid is not None else f"feature {i} (no id)"
        label += f" ({name})" if name else ""
        rejected.append(
            {
                "href": f"{p}#{rid if rid is not None else f'feature-{i}'}",
                "scene_id": None,
                "stage": "aggregate",
                "error_class": "BadRegion",
                "reason": f"{label}: {reason}; skipped",
            }
        )

    for i, (pr, g) in enumerate(zip(props, geoms, strict=True)):
        rid, name = pr.get(id_column), pr.get(name_column)
        name = None if name is None else str(name)
        if rid is None or str(rid).strip() == "":
            refuse(i, None, name, f"no value in the id column {id_column!r}")
            continue
        rid = str(rid)
        if isinstance(g, Exception):
            refuse(i, rid, name, f"unreadable geometry: {g}")
        elif g is None or g.is_empty:
            refuse(i, rid, name, "empty geometry")
        elif not isinstance(g, (Polygon, MultiPolygon)):
            refuse(i, rid, name, f"geometry is a {g.geom_type}, expected a polygon")
        elif not g.is_valid:
            refuse(i, rid, name, f"invalid geometry: {shapely.is_valid_reason(g)}")
        else:
            ids.setdefault(rid, []).append(len(candidates))
            candidates.append(Region(rid, name, g))
    regions = []
    for rid, where in ids.items():
        if len(where) > 1:
            for k in where:
                refuse(-1, rid, candidates[k].name, f"id used by {len(where)} regions")
        else:
            regions.append(candidates[where[0]])
    digest = _file_digest(p, id_column, name_column)
    return RegionSet(p.stem, crs, regions, digest, str(p), rejected)


def load_regions(cfg: Config) -> RegionSet:
    """The configured regions file, or each scene's footprint."""
    agg = cfg.aggregate
    if agg.regions is None:
        return footprint_regions()
    return read_regions(agg.regions, agg.region_id_column, agg.region_name_column)
