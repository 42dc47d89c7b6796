"""The aggregate job end to end, against references computed here from the source files.

One module-scoped lake (two Sentinel-2 dates and one Landsat scene of the demo, a model
trained on both sensors, every scene classified) is aggregated once over the demo
regions and once over a GeoPackage of known areas and bad regions written here. The
expected numbers come from tests/reference.py (whole scenes read with plain rasterio +
numpy), the fitted estimator applied to those pixels, and each polygon burnt with
``rasterio.features.rasterize`` on the full scene grid.
"""

from __future__ import annotations

import json
import sqlite3
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
from model_factory import tiny_metadata
from rasterio.features import rasterize
from rasterio.warp import transform_geom
from reference import demo_landsat_scene, demo_s2_scene, one_file, textbook_indices
from shapely.geometry import Polygon, box, shape

from pipelines.aggregate import aggregate
from pipelines.classify import classify
from pipelines.config import load_config
from pipelines.ingest import Run, ingest
from pipelines.lakehouse import Lakehouse
from pipelines.runs import run_stage
from udfs.models import load_bundle, write_onnx_bundle

JUNE = "S2B_MSIL2A_20240621T103629_N0510_R008_T31UFS_20240621T133010"
AUGUST = "S2A_MSIL2A_20240830T103631_N0510_R008_T31UFS_20240830T151502"
LANDSAT = "LC08_L2SP_198025_20240515_20240521_02_T1"
X0, Y0 = 600000.0, 5700000.0
TABLES = ("class_area", "index_timeseries", "index_monthly", "change")

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def gpkg_blob(geom: Polygon | None, srs_id: int) -> bytes:
    """A GeoPackage geometry blob: ``GP``, version 0, flags (little-endian, no envelope,
    empty bit), srs_id, then standard WKB."""
    empty = geom is None or geom.is_empty
    flags = 0b1 | (0b10000 if empty else 0)
    wkb = shapely.to_wkb(geom if geom is not None else Polygon(), byte_order=1)
    return b"GP" + bytes([0, flags]) + struct.pack("<i", srs_id) + wkb


def write_gpkg(path: Path, rows: list[tuple], epsg: int | None = 32631) -> Path:
    """A minimal GeoPackage (the tables the spec requires for one feature table)."""
    srs_id = epsg if epsg is not None else -1
    con = sqlite3.connect(path)
    con.executescript(
        "CREATE TABLE gpkg_spatial_ref_sys (srs_name TEXT, srs_id INTEGER PRIMARY KEY, "
        "organization TEXT, organization_coordsys_id INTEGER, definition TEXT, description TEXT);"
        "CREATE TABLE gpkg_contents (table_name TEXT PRIMARY KEY, data_type TEXT, "
        "identifier TEXT, srs_id INTEGER);"
        "CREATE TABLE gpkg_geometry_columns (table_name TEXT, column_name TEXT, "
        "geometry_type_name TEXT, srs_id INTEGER, z INTEGER, m INTEGER);"
        "CREATE TABLE areas (fid INTEGER PRIMARY KEY, geom BLOB, id TEXT, name TEXT);"
    )
    org, definition = ("EPSG", "PROJCS[...]") if epsg else ("NONE", "undefined")
    con.execute("INSERT INTO gpkg_spatial_ref_sys VALUES ('utm', ?, ?, ?, ?, '')",
                (srs_id, org, epsg or -1, definition))  # fmt: skip
    con.execute("INSERT INTO gpkg_contents VALUES ('areas', 'features', 'areas', ?)", (srs_id,))
    con.execute("INSERT INTO gpkg_geometry_columns VALUES ('areas', 'geom', 'POLYGON', ?, 0, 0)",
                (srs_id,))  # fmt: skip
    for rid, name, geom in rows:
        con.execute("INSERT INTO areas (geom, id, name) VALUES (?, ?, ?)",
                    (gpkg_blob(geom, srs_id), rid, name))  # fmt: skip
    con.commit()
    con.close()
    return path


#: 500 m x 500 m on the 10 m grid (pixel edges): 2500 px = 25 ha exactly on Sentinel-2.
SQUARE = box(X0 + 1000, Y0 - 1500, X0 + 1500, Y0 - 1000)
BOWTIE = Polygon([(X0 + 100, Y0 - 100), (X0 + 400, Y0 - 400), (X0 + 400, Y0 - 100),
                  (X0 + 100, Y0 - 400)])  # fmt: skip
SMALL = box(X0 + 2000, Y0 - 2100, X0 + 2100, Y0 - 2000)


def tables(lake: Lakehouse) -> dict[str, pd.DataFrame]:
    return {n: lake.read(n).toPandas() for n in TABLES}


#: Features both sensors have (Landsat has no red edge; its NIR is nir08, used by NDVI).
FEATURES = ["blue", "green", "red", "swir16", "swir22", "ndvi", "ndwi", "nbr"]


@dataclass
class Trained:
    model: Any
    metadata: dict
    bundle_path: Path


def fit_model(demo_root: Path, folder: Path, out: Path) -> Trained:
    """A small forest fitted here on the June scene's reference pixels and the demo's true
    land cover (the model is an input of aggregate, not what is tested)."""
    from sklearn.ensemble import RandomForestClassifier

    scene = demo_s2_scene(folder)
    with rasterio.open(demo_root / "landcover_10m.tif") as ds:
        truth = ds.read(1)
    layers = {**scene.refl, **scene.indices()}
    X = np.stack([layers[n] for n in FEATURES], axis=-1).reshape(-1, len(FEATURES))
    ok = (~scene.masked).ravel() & np.isfinite(X).all(axis=1) & (truth.ravel() > 0)
    idx = np.random.default_rng(0).choice(np.flatnonzero(ok), 6000, replace=False)
    model = RandomForestClassifier(n_estimators=12, max_depth=10, random_state=0)
    model.fit(X[idx].astype(np.float32), truth.ravel()[idx])
    names = json.loads((demo_root / "landcover_classes.json").read_text())
    meta = tiny_metadata(FEATURES, ["sentinel2-l2a", "landsat-c2l2"], model_id="agg-model")
    meta["classes"] = [{"code": int(c), "name": names[str(int(c))]} for c in model.classes_]
    bundle = write_onnx_bundle(out, model, meta)
    return Trained(model, meta, bundle.path)


@pytest.fixture(scope="module")
def agg(spark, demo_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("aggregate_lake")
    folders = [demo_root / "scenes" / "sentinel2" / f"{JUNE}.SAFE",
               demo_root / "scenes" / "sentinel2" / f"{AUGUST}.SAFE",
               demo_root / "scenes" / "landsat" / LANDSAT]  # fmt: skip
    regions = demo_root / "regions.geojson"
    config = load_config("local", [
        f"ingest.source={','.join(map(str, folders))}", f"storage.root={root}",
        f"aggregate.regions={regions}", "aggregate.change_from=2024-06",
        "aggregate.change_to=2024-08-30",
    ])  # fmt: skip
    lake = Lakehouse(spark, config.storage)
    assert len(ingest(spark, lake, Run(config)).ingested) == 3
    trained = fit_model(demo_root, folders[0], tmp_path_factory.mktemp("m") / "both")
    bundle = load_bundle(trained.bundle_path)
    code, _ = run_stage(spark, lake, "classify", config,
                        lambda s, lk, r: classify(s, lk, r, bundle))  # fmt: skip
    assert code == 0
    code, first = run_stage(spark, lake, "aggregate", config, aggregate)
    assert code == 0
    out = tables(lake)
    code, again = run_stage(spark, lake, "aggregate", config, aggregate)
    assert code == 0
    rerun = tables(lake)
    known = write_gpkg(tmp_path_factory.mktemp("gpkg") / "known.gpkg", [
        ("square", "500 m square", SQUARE), ("bowtie", "self-crossing", BOWTIE),
        ("nothing", "no geometry", None), ("twice", "first", SMALL), ("twice", "second", SMALL),
        (None, "no id", SMALL),
    ])  # fmt: skip
    cfg2 = load_config("local", [f"storage.root={root}", f"aggregate.regions={known}"])
    code, bad = run_stage(spark, lake, "aggregate", cfg2, aggregate)
    assert code == 0
    return {
        "lake": lake, "tables": out, "rerun": rerun, "after_known": tables(lake),
        "first": first, "again": again, "bad": bad, "trained": trained,
        "regions": regions, "folders": folders,
    }  # fmt: skip


def reference_scene(folder: Path):
    return demo_landsat_scene(folder) if folder.name.startswith("LC") else demo_s2_scene(folder)


def reference_classes(scene, trained) -> np.ndarray:
    layers = {**scene.refl, **scene.indices()}
    names = trained.metadata["feature_names"]
    X = np.stack([layers[n] for n in names], axis=-1).reshape(-1, len(names)).astype(np.float32)
    ok = (~scene.masked).ravel() & np.isfinite(X).all(axis=1)
    out = np.zeros(X.shape[0], np.int64)
    out[ok] = trained.model.predict(X[ok])
    return out.reshape(scene.shape)


def burn(geom_4326: dict, ref: Path) -> tuple[np.ndarray, float, float]:
    """Pixel-centre mask of a lon/lat polygon on a file's full grid, its area there, and
    the grid's pixel area (m2)."""
    with rasterio.open(ref) as ds:
        g = transform_geom("EPSG:4326", ds.crs, geom_4326)
        mask = rasterize([(g, 1)], out_shape=ds.shape, transform=ds.transform, fill=0,
                         all_touched=False, dtype="uint8").astype(bool)  # fmt: skip
        return mask, shape(g).area, abs(ds.transform.a * ds.transform.e)


def ref_file(folder: Path) -> Path:
    if folder.name.startswith("LC"):
        return one_file(folder, "*_SR_B2.TIF")
    return one_file(folder, "GRANULE/*/IMG_DATA/R10m/*_B02_10m.tif")


@pytest.fixture(scope="module")
def refs(agg):
    out = {}
    doc = json.loads(agg["regions"].read_text())
    for folder in agg["folders"]:
        scene = reference_scene(folder)
        out[folder.name.removesuffix(".SAFE")] = {
            "scene": scene,
            "classes": reference_classes(scene, agg["trained"]),
            "masks": {
                f["properties"]["id"]: burn(f["geometry"], ref_file(folder))
                for f in doc["features"]
            },  # fmt: skip
        }
    return out


def test_class_area_equals_rasterio_numpy_on_the_source_files(agg, refs):
    ca = agg["tables"]["class_area"]
    model = agg["trained"].metadata["model_id"]
    codes = [c["code"] for c in agg["trained"].metadata["classes"]]
    assert set(ca.model_id) == {model} and set(ca.region_set) == {"regions"}
    assert len(ca) == 3 * 5 * len(codes)  # scene x region x class, zeros included
    for sid, ref in refs.items():
        for rid, (mask, area, px) in ref["masks"].items():
            rows = ca[(ca.scene_id == sid) & (ca.region_id == rid)].set_index("class_code")
            cls = ref["classes"][mask]
            for code in codes:
                assert rows.loc[code, "pixels"] == int((cls == code).sum()), (sid, rid, code)
                assert rows.loc[code, "hectares"] == pytest.approx((cls == code).sum() * px / 1e4)
            observed = int((cls > 0).sum())
            assert rows.grid_pixels.iloc[0] == int(mask.sum())
            assert rows.observed_hectares.iloc[0] == pytest.approx(observed * px / 1e4)
            assert rows.region_hectares.iloc[0] == pytest.approx(area / 1e4, rel=1e-6)
            unobserved = min(1.0, max(0.0, 1 - observed * px / area))
            assert rows.unobserved_fraction.iloc[0] == pytest.approx(unobserved, abs=1e-9)
            if observed:
                frac = rows.class_fraction.to_numpy()
                assert frac.sum() == pytest.approx(1.0)


def test_the_region_outside_every_scene_gets_explicit_zero_rows(agg):
    ca = agg["tables"]["class_area"]
    away = ca[ca.region_id == "elsewhere"]
    assert len(away) == 3 * len(agg["trained"].metadata["classes"])
    assert (away.pixels == 0).all() and (away.grid_pixels == 0).all()
    assert (away.unobserved_fraction == 1.0).all() and (away.observed_hectares == 0).all()
    assert (away.region_hectares > 30).all()  # 1000 m x 0.1 of the scene side
    ts = agg["tables"]["index_timeseries"]
    assert (ts[ts.region_id == "elsewhere"]["count"] == 0).all()


def stats(v: np.ndarray) -> dict[str, float]:
    v = v[np.isfinite(v)].astype(np.float64)
    if not len(v):
        return {"count": 0}
    return {"count": len(v), "mean": v.mean(), "std": v.std(), "p10": np.percentile(v, 10),
            "p50": np.percentile(v, 50), "p90": np.percentile(v, 90)}  # fmt: skip


def test_index_timeseries_equals_rasterio_numpy_on_the_source_files(agg, refs):
    ts = agg["tables"]["index_timeseries"]
    assert len(ts) == 3 * 5 * 8
    checked = 0
    for sid, ref in refs.items():
        scene = ref["scene"]
        idx = scene.indices()
        for rid, (mask, _, _) in ref["masks"].items():
            keep = mask & ~scene.masked
            for name, arr in idx.items():
                (row,) = ts[(ts.scene_id == sid) & (ts.region_id == rid) & (ts["index"] == name)]\
                    .itertuples()  # fmt: skip
                assert row.valid_pixels == int(keep.sum()) and row.grid_pixels == int(mask.sum())
                want = stats(arr[keep])
                assert row.count == want["count"], (sid, rid, name)
                for k in ("mean", "std", "p10", "p50", "p90"):
                    if want["count"]:
                        assert getattr(row, k) == pytest.approx(want[k], rel=1e-5, abs=1e-6)
                    else:
                        assert np.isnan(getattr(row, k))
                checked += want["count"] > 0
    assert checked > 40


def test_index_monthly_pools_the_scenes_of_a_month(agg, refs):
    mo = agg["tables"]["index_monthly"]
    assert set(zip(mo.sensor, mo.month, strict=True)) == {
        ("sentinel2-l2a", "2024-06"), ("sentinel2-l2a", "2024-08"), ("landsat-c2l2", "2024-05")}  # fmt: skip
    ref = refs[JUNE]
    mask = ref["masks"]["park"][0] & ~ref["scene"].masked
    want = stats(ref["scene"].indices()["ndvi"][mask])
    (row,) = mo[(mo.region_id == "park") & (mo.month == "2024-06") & (mo["index"] == "ndvi")]\
        .itertuples()  # fmt: skip
    assert row.scenes == 1 and row.count == want["count"]
    assert row.p50 == pytest.approx(want["p50"], rel=1e-5)


def test_change_equals_a_numpy_crosstab_on_one_grid(agg, refs):
    ch = agg["tables"]["change"]
    codes = [c["code"] for c in agg["trained"].metadata["classes"]]
    assert set(ch.from_scenes.map(tuple)) == {(JUNE,)} and set(ch.to_scenes.map(tuple)) == {
        (AUGUST,)
    }
    assert ch.grid.nunique() == 1 and "EPSG:32631" in ch.grid.iloc[0]  # Landsat never mixed in
    a, b = refs[JUNE]["classes"], refs[AUGUST]["classes"]
    for rid, (mask, _, px) in refs[JUNE]["masks"].items():
        both = mask & (a > 0) & (b > 0)
        want = pd.crosstab(a[both], b[both]).reindex(index=codes, columns=codes, fill_value=0)
        got = ch[ch.region_id == rid].pivot(index="from_class", columns="to_class", values="pixels")
        np.testing.assert_array_equal(got.loc[codes, codes].to_numpy(), want.to_numpy(), rid)
        assert ch[ch.region_id == rid].hectares.sum() == pytest.approx(both.sum() * px / 1e4)


def test_rerun_adds_nothing(agg):
    for name in TABLES:
        a = (
            agg["tables"][name]
            .sort_values(list(agg["tables"][name].columns[:6]))
            .reset_index(drop=True)
        )
        b = (
            agg["rerun"][name]
            .sort_values(list(agg["rerun"][name].columns[:6]))
            .reset_index(drop=True)
        )
        assert len(a) == len(b), name
        assert set(a.run_id) == set(b.run_id) == {agg["first"].run_id}, name
    assert agg["again"].ingested == [] and len(agg["again"].skipped) == 3


def test_known_areas_in_hectares_and_sensors_agree(agg, refs):
    ca = agg["after_known"]["class_area"]
    sq = ca[(ca.region_set == "known") & (ca.region_id == "square")].groupby("scene_id").first()
    assert sq.loc[JUNE, "grid_pixels"] == 2500 and sq.loc[JUNE, "region_hectares"] == 25.0
    assert sq.loc[JUNE, "grid_pixels"] * sq.loc[JUNE, "pixel_m2"] / 1e4 == 25.0
    assert sq.loc[AUGUST, "grid_pixels"] == 2500
    border_30 = 4 * 500 * 30 / 1e4  # one 30 m pixel row along the perimeter, ha
    landsat_ha = sq.loc[LANDSAT, "grid_pixels"] * sq.loc[LANDSAT, "pixel_m2"] / 1e4
    assert sq.loc[LANDSAT, "pixel_m2"] == 900.0
    assert abs(landsat_ha - 25.0) <= border_30
    # A lon/lat polygon (the demo park): total area from pixels within a border row.
    ours = agg["tables"]["class_area"]
    park = ours[ours.region_id == "park"].groupby("scene_id").first()
    poly = shape(transform_geom("EPSG:4326", "EPSG:32631",
                                next(f["geometry"] for f in json.loads(agg["regions"].read_text())["features"]
                                     if f["properties"]["id"] == "park")))  # fmt: skip
    ha = {s: park.loc[s, "grid_pixels"] * park.loc[s, "pixel_m2"] / 1e4 for s in park.index}
    for sid, res in ((JUNE, 10), (LANDSAT, 30)):
        assert abs(ha[sid] - poly.area / 1e4) <= poly.length * res / 1e4, sid
    assert abs(ha[JUNE] - ha[LANDSAT]) <= poly.length * 30 / 1e4


def test_bad_regions_are_rejected_by_name_and_reason_and_the_others_go_on(agg):
    reasons = sorted(r["reason"] for r in agg["bad"].rejected)
    assert len(reasons) == 5, reasons
    text = "\n".join(reasons)
    assert "region 'bowtie' (self-crossing): invalid geometry: Self-intersection" in text
    assert "region 'nothing' (no geometry): empty geometry" in text
    assert "region 'twice' (first): id used by 2 regions" in text
    assert "region 'twice' (second): id used by 2 regions" in text
    assert "feature 5 (no id) (no id): no value in the id column 'id'" in text
    assert all(r["stage"] == "aggregate" and r["error_class"] == "BadRegion"
               for r in agg["bad"].rejected)  # fmt: skip
    rej = agg["lake"].read("rejected").filter("job = 'aggregate'").toPandas()
    assert len(rej) == 5
    ca = agg["after_known"]["class_area"]
    assert set(ca[ca.region_set == "known"].region_id) == {"square"}
    # The demo regions' rows are untouched by another region set.
    before = agg["tables"]["class_area"]
    assert len(ca[ca.region_set == "regions"]) == len(before)


def test_without_a_regions_file_each_scene_footprint_is_the_region(spark, agg):
    lake = agg["lake"]
    cfg = load_config("local", [f"storage.root={lake.root}", "aggregate.monthly=false"])
    code, run = run_stage(spark, lake, "aggregate", cfg, aggregate)
    assert code == 0 and len(run.ingested) == 3
    ca = lake.read("class_area").filter("region_set = 'scene'").toPandas()
    scenes = {r.scene_id: r for r in lake.read("scenes").collect()}
    per_scene = ca.groupby("scene_id").agg(grid=("grid_pixels", "first"), px=("pixels", "sum"))
    tp = lake.read("tile_predictions").toPandas()
    for sid, r in scenes.items():
        assert per_scene.loc[sid, "grid"] == r.width * r.height
        assert per_scene.loc[sid, "px"] == tp[tp.scene_id == sid].classified_count.sum()
    assert set(ca.region_id) == {"scene"}
    ts = lake.read("index_timeseries").filter("region_set = 'scene'").toPandas()
    assert len(ts) == 3 * 8 and (ts.valid_pixels > 0).all()


@pytest.fixture(scope="module")
def comp(spark, agg):
    """Yearly composites of the lake, then the analysis tables on them (twice)."""
    from pipelines.composites import composites

    lake = agg["lake"]
    cfg = load_config("local", [f"storage.root={lake.root}", f"aggregate.regions={agg['regions']}",
                                "aggregate.composite_period=year"])  # fmt: skip
    assert run_stage(spark, lake, "composites", cfg, composites)[0] == 0
    assert run_stage(spark, lake, "aggregate", cfg, aggregate)[0] == 0
    first = lake.read("composite_index").toPandas()
    assert run_stage(spark, lake, "aggregate", cfg, aggregate)[0] == 0
    return first, lake.read("composite_index").toPandas()


def test_index_statistics_on_composites_equal_a_numpy_nanmedian_reference(comp, refs):
    ci, again = comp
    # One Sentinel-2 grid (June + August: one 2024 composite) and one Landsat grid.
    assert set(zip(ci.sensor, ci.period, ci.n_scenes, strict=True)) == {
        ("sentinel2-l2a", "2024", 2), ("landsat-c2l2", "2024", 1)}  # fmt: skip
    assert len(ci) == 2 * 5 * 8 and set(ci.period_kind) == {"year"}
    assert len(again) == len(ci) and set(again.run_id) == set(ci.run_id)  # re-run: nothing new
    june, august = refs[JUNE]["scene"], refs[AUGUST]["scene"]
    median = {}
    for band in june.refl:
        stack = np.stack([np.where(s.masked, np.nan, s.refl[band]) for s in (june, august)])
        with warnings.catch_warnings():  # all-NaN pixels: NaN, as wanted
            warnings.simplefilter("ignore", RuntimeWarning)
            median[band] = np.nanmedian(stack, axis=0).astype(np.float32)
    seen = ~(june.masked & august.masked)
    indices = textbook_indices(median, june.nir)
    s2 = ci[ci.sensor == "sentinel2-l2a"]
    checked = 0
    for rid, (mask, _, _) in refs[JUNE]["masks"].items():
        for name, arr in indices.items():
            (row,) = s2[(s2.region_id == rid) & (s2["index"] == name)].itertuples()
            assert row.grid_pixels == int(mask.sum()), (rid, name)
            assert row.valid_pixels == int((mask & seen).sum()), (rid, name)
            want = stats(arr[mask & seen])
            assert row.count == want["count"], (rid, name)
            for k in ("mean", "std", "p10", "p50", "p90"):
                if want["count"]:
                    assert getattr(row, k) == pytest.approx(want[k], rel=1e-5, abs=1e-6)
            checked += want["count"] > 0
    assert checked >= 8 * 3
    outside = s2[s2.region_id == "elsewhere"]
    assert len(outside) == 8 and (outside.grid_pixels == 0).all()
    assert (outside.unobserved_fraction == 1).all() and (outside["count"] == 0).all()
