"""Region kernels by hand (no Spark) and the regions file reader's checks."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely
from shapely.geometry import box, mapping

from pipelines.regions_io import RegionsFileError, read_regions
from udfs.regions import (
    RegionError,
    class_counts,
    period_classes,
    pixel_area_m2,
    region_pixels,
    region_window,
    transition_counts,
    value_statistics,
)

# A 6 x 6 tile of 10 m pixels with its upper-left corner at (1000, 2000).
T = (10.0, 0.0, 1000.0, 0.0, -10.0, 2000.0)


def test_pixel_area_and_geographic_grids_are_refused():
    assert pixel_area_m2(T) == 100.0
    assert pixel_area_m2((30.0, 0, 0, 0, -30.0, 0)) == 900.0
    with pytest.raises(RegionError, match="geographic CRS"):
        pixel_area_m2((0.0001, 0, 0, 0, -0.0001, 0), crs_is_geographic=True)


def test_region_pixels_follow_the_pixel_centre_rule():
    # x 1012..1031 covers centres 1015 and 1025 (cols 1, 2); y 1968..1989 covers centres
    # 1985, 1975 (rows 1, 2) but not 1965 (row 3).
    g = box(1012, 1968, 1031, 1989)
    idx = region_pixels(mapping(g), g.bounds, T, 6, 6)
    assert sorted(idx.tolist()) == [1 * 6 + 1, 1 * 6 + 2, 2 * 6 + 1, 2 * 6 + 2]
    # The core limits it: only column 2 and up belong to this tile.
    core = (slice(0, 6), slice(2, 6))
    assert sorted(region_pixels(mapping(g), g.bounds, T, 6, 6, core).tolist()) == [8, 14]
    # None: the whole core (a scene footprint).
    assert len(region_pixels(None, None, T, 6, 6, core)) == 24


def test_a_hole_is_out_and_a_far_region_has_no_window():
    outer = box(1000, 1940, 1060, 2000)
    hole = box(1020, 1960, 1040, 1980)
    g = shapely.Polygon(outer.exterior.coords, [hole.exterior.coords])
    idx = region_pixels(mapping(g), g.bounds, T, 6, 6)
    assert len(idx) == 36 - 4
    assert not set(idx.tolist()) & {14, 15, 20, 21}
    assert region_window((5000, 5000, 6000, 6000), T, slice(0, 6), slice(0, 6)) is None
    assert len(region_pixels(mapping(box(5000, 5000, 6000, 6000)), (5000, 5000, 6000, 6000),
                             T, 6, 6)) == 0  # fmt: skip


def test_class_counts_and_value_statistics_by_hand():
    cls = np.array([[0, 1, 1], [2, 2, 2], [0, 0, 3]], np.uint8)
    np.testing.assert_array_equal(class_counts(cls, np.arange(9), 4), [3, 2, 3, 1])
    np.testing.assert_array_equal(class_counts(cls, np.array([0, 4, 8]), 4), [1, 0, 1, 1])
    s = value_statistics(np.array([1.0, 2.0, 3.0, 4.0, np.nan, np.inf], np.float32))
    assert s["count"] == 4 and s["mean"] == 2.5 and s["std"] == pytest.approx(np.std([1, 2, 3, 4]))
    assert s["p10"] == pytest.approx(1.3) and s["p50"] == 2.5 and s["p90"] == pytest.approx(3.7)
    empty = value_statistics(np.array([np.nan]))
    assert empty["count"] == 0 and np.isnan(empty["p50"]) and np.isnan(empty["mean"])


def test_period_classes_take_the_latest_observation_and_change_needs_both():
    old = np.array([[1, 0], [2, 0]])
    new = np.array([[3, 0], [0, 0]])
    np.testing.assert_array_equal(period_classes([old, new]), [[3, 0], [2, 0]])
    after = np.array([[3, 2], [1, 0]])
    m = transition_counts(period_classes([old, new]), after, np.arange(4), 4)
    assert m[3, 3] == 1 and m[2, 1] == 1 and m.sum() == 2  # (0,1) and (1,1) not seen twice


def test_kernels_do_not_import_pyspark():
    for module in ("udfs/regions.py",):
        tree = ast.parse(Path(module).read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not any(n.startswith("pyspark") for n in names), module


# ----------------------------------------------------------------------------- the file


def geojson(path: Path, feats: list[tuple], crs: str | None = None) -> Path:
    doc: dict = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": props, "geometry": geom} for props, geom in feats]}  # fmt: skip
    if crs:
        doc["crs"] = {"type": "name", "properties": {"name": crs}}
    path.write_text(json.dumps(doc))
    return path


SQ = mapping(box(5.0, 50.0, 5.01, 50.01))


def test_bad_regions_are_skipped_with_their_id_name_and_reason(tmp_path):
    bowtie = {"type": "Polygon", "coordinates": [[[5, 50], [5.01, 50.01], [5.01, 50], [5, 50.01],
                                                  [5, 50]]]}  # fmt: skip
    line = {"type": "LineString", "coordinates": [[5, 50], [5.01, 50.01]]}
    rs = read_regions(geojson(tmp_path / "r.geojson", [
        ({"id": "a", "name": "good"}, SQ), ({"id": "b", "name": "cross"}, bowtie),
        ({"id": "c"}, None), ({"id": "d", "name": "a line"}, line), ({"name": "anon"}, SQ),
        ({"id": 7, "name": "x"}, SQ), ({"id": 7, "name": "y"}, SQ),
    ]))  # fmt: skip
    assert [r.id for r in rs.regions] == ["a"] and rs.crs == "EPSG:4326"
    reasons = [r["reason"] for r in rs.rejected]
    assert "region 'b' (cross): invalid geometry: Self-intersection" in reasons[0]
    assert "region 'c': empty geometry" in reasons[1]
    assert "region 'd' (a line): geometry is a LineString, expected a polygon" in reasons[2]
    assert "feature 4 (no id) (anon): no value in the id column 'id'" in reasons[3]
    assert "region '7' (x): id used by 2 regions" in reasons[4]
    assert all(r["stage"] == "aggregate" for r in rs.rejected)


def test_whole_file_refusals_name_the_file_and_the_reason(tmp_path):
    with pytest.raises(RegionsFileError, match="no id column 'code' .*region_id_column"):
        read_regions(geojson(tmp_path / "a.geojson", [({"id": "a"}, SQ)]), id_column="code")
    utm = mapping(box(600000, 5690000, 601000, 5691000))
    with pytest.raises(RegionsFileError, match="not longitude/latitude.*names no CRS"):
        read_regions(geojson(tmp_path / "b.geojson", [({"id": "a"}, utm)]))
    ok = read_regions(geojson(tmp_path / "c.geojson", [({"id": "a"}, utm)], crs="EPSG:32631"))
    assert ok.crs == "EPSG:32631" and ok.regions[0].geom.area == 1e6
    # GeoParquet with crs: null has no CRS.
    meta = {"primary_column": "geometry", "columns": {"geometry": {"encoding": "WKB", "crs": None}}}
    t = pa.table({"id": ["a"], "geometry": [shapely.to_wkb(box(0, 0, 1, 1))]})
    t = t.replace_schema_metadata({b"geo": json.dumps(meta).encode()})
    pq.write_table(t, tmp_path / "d.parquet")
    with pytest.raises(RegionsFileError, match="has no CRS"):
        read_regions(tmp_path / "d.parquet")
    with pytest.raises(RegionsFileError, match="not found"):
        read_regions(tmp_path / "none.geojson")


def test_geoparquet_and_geopackage_are_read_in_their_crs(tmp_path):
    from test_aggregate import write_gpkg

    meta = {"primary_column": "geometry", "version": "1.0.0",
            "columns": {"geometry": {"encoding": "WKB", "crs": {"id": {"authority": "EPSG",
                                                                     "code": 32631}}}}}  # fmt: skip
    t = pa.table({"id": ["a"], "name": ["n"], "geometry": [shapely.to_wkb(box(0, 0, 10, 10))]})
    pq.write_table(t.replace_schema_metadata({b"geo": json.dumps(meta).encode()}),
                   tmp_path / "r.parquet")  # fmt: skip
    rs = read_regions(tmp_path / "r.parquet")
    assert rs.crs == "EPSG:32631" and rs.regions[0].geom.area == 100 and rs.name == "r"
    g = write_gpkg(tmp_path / "g.gpkg", [("a", "one", box(0, 0, 20, 10)), ("b", "none", None)])
    rs = read_regions(g)
    assert rs.crs == "EPSG:32631" and [r.id for r in rs.regions] == ["a"]
    assert rs.regions[0].geom.area == 200 and "empty geometry" in rs.rejected[0]["reason"]
    nocrs = write_gpkg(tmp_path / "n.gpkg", [("a", "one", box(0, 0, 20, 10))], epsg=None)
    with pytest.raises(RegionsFileError, match="undefined CRS"):
        read_regions(nocrs)
    # The digest follows the file's content and the id / name columns.
    assert read_regions(g).digest == rs.digest != read_regions(g, name_column="id").digest


def test_aggregate_config_names_the_bad_key():
    from pipelines.config import ConfigError, load_config

    cfg = load_config("local", ["aggregate.change_from=2024-06", "aggregate.change_to=2024-08-30"])
    assert (cfg.aggregate.change_from, cfg.aggregate.regions) == ("2024-06", None)
    with pytest.raises(ConfigError, match="aggregate.change_from and aggregate.change_to go"):
        load_config("local", ["aggregate.change_to=2024-08"])
    with pytest.raises(ConfigError, match="aggregate.change_from must be a date YYYY-MM-DD"):
        load_config("local", ["aggregate.change_from=June", "aggregate.change_to=2024-08"])
    with pytest.raises(ConfigError, match="must end before"):
        load_config("local", ["aggregate.change_from=2024-08", "aggregate.change_to=2024-08-02"])
    with pytest.raises(ConfigError, match="unknown key aggregate.region"):
        load_config("local", ["aggregate.region=x.geojson"])
