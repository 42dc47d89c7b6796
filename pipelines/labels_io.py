"""Label polygons from files: GeoJSON (EPSG:4326) or GeoParquet (the file's CRS), checked.

Driver side, plain file I/O (no Spark): :func:`read_labels` returns :class:`Labels`, the
polygons in their own CRS with their class codes and a lon/lat copy for tile selection.
The training job (:mod:`pipelines.train`) rasterizes them on the executors
(:mod:`udfs.labelled`). What a class code, a polygon id and a label raster are is stated
in :mod:`udfs.labels`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from rasterio.warp import transform_geom
from shapely.geometry import MultiPolygon, Polygon, shape
from shapely.geometry.base import BaseGeometry

from udfs.labels import LabelError


@dataclass(frozen=True)
class Labels:
    """Label polygons in their own CRS, with their class codes.

    Attributes
    ----------
    geoms : list of shapely Polygon / MultiPolygon
        In ``crs``.
    codes : ndarray of int32
        Class code of each polygon (1 .. 32767).
    classes : dict of int to str
        Code -> class name of every class present.
    crs : str
        CRS of the polygons as text rasterio reads (``EPSG:4326``, WKT or PROJJSON).
    path : str
        The file they came from.
    """

    geoms: list[BaseGeometry]
    codes: np.ndarray
    classes: dict[int, str]
    crs: str
    path: str = ""
    wgs84: list[BaseGeometry] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.geoms)


def _codes_for(names: list[Any], given: list[Any] | None, path: str) -> tuple[np.ndarray, dict]:
    """Class codes for each feature: ``given`` codes (checked), else 1..n by sorted name."""
    if given is not None and all(c is not None for c in given):
        classes: dict[int, str] = {}
        for name, code in zip(names, given, strict=True):
            try:
                code_int = int(code)
            except (TypeError, ValueError) as e:
                raise LabelError(f"labels {path}: class code {code!r} is not an integer") from e
            if classes.setdefault(code_int, str(name)) != str(name):
                raise LabelError(
                    f"labels {path}: class code {code_int} names both "
                    f"{classes[code_int]!r} and {name!r}"
                )
        codes = np.asarray([int(c) for c in given], dtype=np.int32)
    else:
        if all(isinstance(n, (int, np.integer)) for n in names):
            classes = {int(n): str(n) for n in names}
            codes = np.asarray(names, dtype=np.int32)
        else:
            ordered = sorted({str(n) for n in names})
            classes = {i + 1: n for i, n in enumerate(ordered)}
            lookup = {n: c for c, n in classes.items()}
            codes = np.asarray([lookup[str(n)] for n in names], dtype=np.int32)
    bad = [int(c) for c in codes if not 1 <= c <= 32767]
    if bad:
        raise LabelError(f"labels {path}: class codes must be 1..32767, got {bad[0]}")
    return codes, classes


def _check_polygon(geom: BaseGeometry, i: int, path: str) -> BaseGeometry:
    if not isinstance(geom, (Polygon, MultiPolygon)):
        raise LabelError(f"labels {path}: feature {i} is a {geom.geom_type}, expected polygons")
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    return geom


def read_labels(path: str | Path, class_column: str = "class_name") -> Labels:
    """Read label polygons from GeoJSON (EPSG:4326) or GeoParquet (the file's CRS).

    ``class_column`` names the class of each polygon. When a ``class_code`` column is
    present too (the demo labels) its codes are used and checked for consistency;
    otherwise integer classes are their own codes and names get codes 1..n in sorted
    order. Raises :class:`udfs.labels.LabelError` naming the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise LabelError(f"labels file not found: {path}")
    if path.suffix.lower() in (".parquet", ".geoparquet", ".pq"):
        geoms, names, given, crs = _read_geoparquet(path, class_column)
    else:
        geoms, names, given, crs = _read_geojson(path, class_column)
    if not geoms:
        raise LabelError(f"labels {path}: no polygons")
    codes, classes = _codes_for(names, given, str(path))
    geoms = [_check_polygon(g, i, str(path)) for i, g in enumerate(geoms)]
    wgs84 = [
        shape(transform_geom(crs, "EPSG:4326", shapely.geometry.mapping(g)))
        if crs != "EPSG:4326"
        else g
        for g in geoms
    ]
    return Labels(geoms, codes, classes, crs, str(path), wgs84)


def _read_geojson(path: Path, column: str):
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LabelError(f"labels {path}: not readable GeoJSON: {e}") from e
    feats = doc.get("features") if isinstance(doc, dict) else None
    if doc.get("type") == "Feature":
        feats = [doc]
    if not isinstance(feats, list):
        raise LabelError(f"labels {path}: expected a GeoJSON FeatureCollection")
    # RFC 7946 GeoJSON is lon/lat; a legacy "crs" member (GeoJSON 2008) may name another.
    crs = (doc.get("crs") or {}).get("properties", {}).get("name") or "EPSG:4326"
    if "CRS84" in crs:
        crs = "EPSG:4326"
    geoms, names, codes = [], [], []
    for i, feat in enumerate(feats):
        props = feat.get("properties") or {}
        if feat.get("geometry") is None:
            continue
        if column not in props:
            raise LabelError(
                f"labels {path}: feature {i} has no property {column!r} "
                f"(properties: {', '.join(sorted(props)) or 'none'})"
            )
        geoms.append(shape(feat["geometry"]))
        names.append(props[column])
        codes.append(props.get("class_code") if column != "class_code" else None)
    return geoms, names, codes if all(c is not None for c in codes) else None, crs


def _geoparquet_crs(meta: dict[str, Any], column: str) -> str | None:
    """CRS of GeoParquet geometry ``column`` as text rasterio reads; None: ``crs: null``."""
    spec = meta.get("columns", {}).get(column, {})
    if "crs" not in spec:
        return "EPSG:4326"  # GeoParquet: an absent crs means OGC:CRS84 (lon/lat)
    crs = spec["crs"]
    if crs is None:
        return None
    ident = crs.get("id", {}) if isinstance(crs, dict) else {}
    if ident.get("authority") == "EPSG":
        return f"EPSG:{ident['code']}"
    if ident.get("authority") == "OGC" and str(ident.get("code")) == "CRS84":
        return "EPSG:4326"
    return json.dumps(crs) if isinstance(crs, dict) else str(crs)


def read_geoparquet(path: Path, what: str, error: type[Exception]) -> tuple[pa.Table, str, str]:
    """A GeoParquet file's table, its primary (WKB) geometry column and its CRS.

    Shared by the labels (training) and regions (aggregate) readers. Messages start with
    ``what`` and the path (``labels x.parquet: ...``) and are raised as ``error``: the file
    is not readable Parquet, has no ``geo`` metadata, a geometry encoding other than WKB,
    or ``crs: null``.
    """
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise error(f"{what} {path}: not a readable Parquet file: {e}") from e
    raw = (table.schema.metadata or {}).get(b"geo")
    if raw is None:
        raise error(f"{what} {path}: no 'geo' metadata, not a GeoParquet file")
    meta = json.loads(raw)
    column = meta.get("primary_column", "geometry")
    encoding = meta.get("columns", {}).get(column, {}).get("encoding", "WKB")
    if str(encoding).upper() != "WKB":
        raise error(f"{what} {path}: geometry encoding {encoding!r}, only WKB is read")
    crs = _geoparquet_crs(meta, column)
    if crs is None:
        raise error(
            f"{what} {path}: the geometry column {column!r} has no CRS (crs: null, an "
            "undefined CRS): coordinates cannot be placed on the map"
        )
    return table, column, crs


def _read_geoparquet(path: Path, column: str):
    table, geom_col, crs = read_geoparquet(path, "labels", LabelError)
    if column not in table.column_names:
        raise LabelError(
            f"labels {path}: no column {column!r} (columns: {', '.join(table.column_names)})"
        )
    wkb = table.column(geom_col).to_pylist()
    keep = [i for i, g in enumerate(wkb) if g is not None]
    geoms = list(shapely.from_wkb([wkb[i] for i in keep]))
    names = [table.column(column)[i].as_py() for i in keep]
    codes = None
    if column != "class_code" and "class_code" in table.column_names:
        codes = [table.column("class_code")[i].as_py() for i in keep]
    return geoms, names, codes, crs
