"""Composites: per grid, period and tile, the per-pixel median of masked reflectance.

Expected values are computed here: whole demo scenes read with plain rasterio + numpy
(:mod:`reference`: the products' own masks and scaling), stacked and reduced with
``np.nanmedian``; the kernel tests use arrays whose medians are worked out by hand.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from reference import Scene, demo_landsat_scene, demo_s2_scene

from pipelines.composites import (
    build_composites,
    composite_digest,
    main,
    period_of,
    plan_groups,
)
from pipelines.config import load_config
from pipelines.ingest import Run, ingest
from pipelines.lakehouse import Lakehouse
from udfs.composites import Observation, decode_composite, median_composite, nanmedian_time
from udfs.errors import ConfigError
from udfs.masks import MaskSettings
from udfs.sensors import SENSORS

S2 = "sentinel2-l2a"
DAYS = ("0412", "0621", "0830")  # the demo's Sentinel-2 acquisitions: April, June, August
NAN = np.nan


# ----------------------------------------------------------------------------- kernel


def s2_obs(dn: list, scl: list, offset: float = 0.0) -> Observation:
    """A 1 x n Sentinel-2 L2A tile: every reflectance band holds ``dn``; scale 1e-4."""
    row = np.array([dn], np.uint16)
    bands = {b.common: row.copy() for b in SENSORS[S2].reflectance_bands}
    scaling = {b.name: (1e-4, offset) for b in SENSORS[S2].reflectance_bands}
    return Observation(S2, {**bands, "qa": np.array([scl], np.uint16)}, scaling)


def f32(values: list) -> np.ndarray:
    return np.array([values], np.float32)


def test_kernel_module_imports_without_pyspark():
    code = (
        "import sys, udfs.composites\n"
        "sys.exit(any(m == 'pyspark' or m.startswith('pyspark.') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_pixel_never_observed_clear_is_nan_with_count_zero():
    # SCL 4 vegetation (clear), 9 cloud high probability, 0 no data, 11 snow
    obs = [s2_obs([1000, 1000, 1000], [4, 9, 0]), s2_obs([3000, 2000, 1000], [4, 11, 9])]
    comp = median_composite(obs)
    np.testing.assert_array_equal(comp.count, np.array([[2, 0, 0]], np.uint16))
    assert comp.count.dtype == np.uint16
    for arr in comp.bands.values():
        assert arr.dtype == np.float32
        np.testing.assert_array_equal(arr, f32([0.2, NAN, NAN]))


def test_even_count_gives_the_mean_of_the_two_middle_values():
    obs = [
        s2_obs([1000, 1000], [4, 4]),
        s2_obs([2000, 9000], [4, 9]),  # second pixel is cloud: left out
        s2_obs([4000, 3000], [4, 4]),
        s2_obs([1500, 2000], [4, 4]),
    ]
    comp = median_composite(obs)
    # pixel 1: 0.10 0.15 0.20 0.40 -> (0.15 + 0.20) / 2; pixel 2: 0.10 0.20 0.30 -> 0.20
    np.testing.assert_array_equal(comp.count, np.array([[4, 3]], np.uint16))
    np.testing.assert_allclose(comp.bands["red"], f32([0.175, 0.2]), rtol=1e-6)


def test_each_observation_is_scaled_with_its_own_scaling_before_the_median():
    # Baseline 03.00 (no offset) and 05.10 (-1000 DN): DN 1500 is 0.15 and 0.05.
    obs = [
        s2_obs([1500], [4]),
        s2_obs([1500], [4], offset=-0.1),
        s2_obs([2000], [4], offset=-0.1),
    ]
    comp = median_composite(obs)
    # reflectance 0.15, 0.05, 0.10 -> 0.10 (a median of DN would give 1500: 0.15 or 0.05)
    np.testing.assert_allclose(comp.bands["nir"], f32([0.1]), rtol=1e-6)


def test_saturated_and_defective_pixels_do_not_enter_the_median():
    obs = [s2_obs([65535, 1000], [4, 1]), s2_obs([2000, 3000], [4, 4])]
    comp = median_composite(obs)
    np.testing.assert_array_equal(comp.count, np.array([[1, 1]], np.uint16))
    np.testing.assert_allclose(comp.bands["blue"], f32([0.2, 0.3]), rtol=1e-6)


def test_mask_settings_decide_what_is_masked():
    obs = [s2_obs([1000], [11]), s2_obs([3000], [4])]  # snow, then clear
    assert median_composite(obs).count[0, 0] == 1
    keep_snow = MaskSettings(scl_classes=(0, 1, 3, 8, 9, 10))
    comp = median_composite(obs, keep_snow)
    assert comp.count[0, 0] == 2
    np.testing.assert_allclose(comp.bands["green"], f32([0.2]), rtol=1e-6)


def test_one_observation_is_its_masked_reflectance():
    comp = median_composite([s2_obs([1234, 0, 5000], [5, 5, 8])])
    np.testing.assert_array_equal(comp.count, np.array([[1, 0, 0]], np.uint16))
    np.testing.assert_array_equal(comp.bands["swir16"], f32([np.float32(0.1234), NAN, NAN]))


def test_nanmedian_time_of_nothing_is_nan():
    out = nanmedian_time(np.full((3, 2, 2), np.nan, np.float32))
    assert out.dtype == np.float32 and np.isnan(out).all()
    assert np.isnan(nanmedian_time(np.empty((0, 2, 2)))).all()


def test_observations_of_two_sensors_or_shapes_or_none_are_refused():
    landsat = Observation("landsat-c2l2", {}, {})
    with pytest.raises(ValueError, match="share a sensor"):
        median_composite([s2_obs([1], [4]), landsat])
    with pytest.raises(ValueError, match="share a shape"):
        median_composite([s2_obs([1000], [4]), s2_obs([1000, 1000], [4, 4])])
    with pytest.raises(ValueError, match="at least one"):
        median_composite([])


# ----------------------------------------------------------------------------- planning


@pytest.mark.parametrize(
    "day, kind, expected",
    [
        (date(2024, 6, 21), "month", ("2024-06", date(2024, 6, 1), date(2024, 6, 30))),
        (date(2024, 2, 29), "month", ("2024-02", date(2024, 2, 1), date(2024, 2, 29))),
        (date(2024, 4, 1), "quarter", ("2024-Q2", date(2024, 4, 1), date(2024, 6, 30))),
        (date(2023, 12, 31), "quarter", ("2023-Q4", date(2023, 10, 1), date(2023, 12, 31))),
        (date(2024, 1, 1), "year", ("2024", date(2024, 1, 1), date(2024, 12, 31))),
    ],
)
def test_period_of_a_date(day, kind, expected):
    assert period_of(day, kind) == expected


def test_unknown_period_is_a_config_error():
    with pytest.raises(ConfigError, match="month, quarter, year"):
        period_of(date(2024, 1, 1), "week")


def scene_row(sid: str, day: date, run_id: str = "r1", **grid: Any) -> dict[str, Any]:
    row = {"scene_id": sid, "sensor": S2, "scaling": {"B02": (1e-4, 0.0)}, "acquired_date": day,
           "crs_epsg": 32631, "crs_wkt": None, "transform": [10.0, 0.0, 6e5, 0.0, -10.0, 5.7e6],
           "width": 384, "height": 384, "tile_size": 256, "overlap": 0, "run_id": run_id}  # fmt: skip
    return {**row, **grid}


def test_plan_groups_by_grid_and_period_and_skips_what_is_stored():
    masks = MaskSettings()
    scenes = [
        scene_row("a", date(2024, 6, 1)),
        scene_row("b", date(2024, 6, 20)),
        scene_row("c", date(2024, 7, 2)),
        scene_row("d", date(2024, 6, 5), sensor="landsat-c2l2"),
        scene_row("e", date(2024, 6, 9), transform=[10.0, 0.0, 7e5, 0.0, -10.0, 5.7e6]),
    ]
    plan = plan_groups(scenes, {}, "month", masks)
    assert len(plan.todo) == 4 and plan.skipped == [] and plan.dropped == []
    june = {k: v for k, v in plan.groups.items() if k[1] == "2024-06"}
    assert len(june) == 3  # a+b on one grid, the Landsat scene and the moved scene apart
    (ab,) = [k for k in june if plan.scenes["a"]["grid_id"] == k[0]]
    assert plan.scenes["b"]["grid_id"] == ab[0]
    assert plan.groups[ab]["composite_digest"] == composite_digest(
        [("a", "r1"), ("b", "r1")], masks, "month"
    )
    stored = {k: {v["composite_digest"]} for k, v in plan.groups.items()}
    again = plan_groups(scenes, stored, "month", masks)
    assert again.todo == [] and sorted(again.skipped) == sorted(plan.groups)
    # a new scene in June on a+b's grid rebuilds that group only
    added = plan_groups([*scenes, scene_row("f", date(2024, 6, 30))], stored, "month", masks)
    assert added.todo == [ab] and sorted(added.scenes) == ["a", "b", "f"]
    # a rebuilt scene (new ingest run) likewise; a group without scenes is dropped
    rebuilt = [scene_row("a", date(2024, 6, 1), run_id="r2"), *scenes[1:3]]
    changed = plan_groups(rebuilt, stored, "month", masks)
    assert changed.todo == [ab]
    assert sorted(changed.dropped) == sorted(k for k in june if k != ab)
    # other masks change every digest
    other = plan_groups(scenes, stored, "month", MaskSettings(scl_classes=(0, 1, 9)))
    assert sorted(other.todo) == sorted(plan.groups)


# ----------------------------------------------------------------------------- the job


def demo_folders(demo_root: Path) -> dict[str, list[Path]]:
    scenes = demo_root / "scenes"
    return {
        "sentinel2": sorted(scenes.glob("sentinel2/*.SAFE")),
        "landsat": sorted(p for p in scenes.glob("landsat/*") if p.is_dir()),
    }


def sid(folder: Path) -> str:
    return folder.name.removesuffix(".SAFE")


def run_ingest(spark, source: str, root: Path, *extra: str) -> Lakehouse:
    config = load_config("local", [f"ingest.source={source}", f"storage.root={root}", *extra])
    lake = Lakehouse(spark, config.storage)
    run = ingest(spark, lake, Run(config))
    assert run.rejected == [], run.rejected
    return lake


def run_composites(spark, root: Path, period: str):
    config = load_config("local", [f"storage.root={root}"])
    lake = Lakehouse(spark, config.storage)
    run = Run(config, job="composites")
    return build_composites(spark, lake, config, run, period), run


def table_version(lake: Lakehouse) -> int:
    import deltalake

    return deltalake.DeltaTable(lake.local_path("composites")).version()


def rows_by_key(lake: Lakehouse, kind: str) -> dict[tuple, Any]:
    rows = lake.read("composites").filter(f"period_kind = '{kind}'").collect()
    out = {(r.grid_id, r.period, r.tile_row, r.tile_col): r for r in rows}
    assert len(out) == len(rows), "duplicate composite keys"
    return out


@dataclass
class Stages:
    lake: Lakehouse
    root: Path
    ids: dict[str, str]  # s2_apr, s2_jun, s2_aug, l_may, l_jul -> scene id
    first: Any
    again: Any
    version_first: int
    version_again: int
    before_add: dict[tuple, Any]  # quarter rows before the June scene came
    added: Any
    after_add: dict[tuple, Any]
    year: Any
    after_year: dict[tuple, Any]  # quarter rows after the yearly build
    rebuilt: Any  # quarter build after the July Landsat scene was re-ingested
    after_rebuild: dict[tuple, Any]


@pytest.fixture(scope="module")
def stages(spark, demo_root, tmp_path_factory) -> Stages:
    """Four demo scenes -> quarterly composites twice -> the June S2 scene -> again ->
    yearly composites -> the July Landsat scene re-ingested (rebuild) -> quarterly again."""
    root = tmp_path_factory.mktemp("composites")
    f = demo_folders(demo_root)
    apr, jun, aug = (next(p for p in f["sentinel2"] if f"_2024{d}T" in p.name) for d in DAYS)
    may, jul = f["landsat"]
    ids = {"s2_apr": sid(apr), "s2_jun": sid(jun), "s2_aug": sid(aug)}
    ids.update(l_may=sid(may), l_jul=sid(jul))
    lake = run_ingest(spark, ",".join(str(p) for p in (apr, aug, may, jul)), root)
    first, _ = run_composites(spark, root, "quarter")
    v1 = table_version(lake)
    again, _ = run_composites(spark, root, "quarter")
    v2 = table_version(lake)
    before = rows_by_key(lake, "quarter")
    run_ingest(spark, str(jun), root)
    added, _ = run_composites(spark, root, "quarter")
    after = rows_by_key(lake, "quarter")
    year, _ = run_composites(spark, root, "year")
    after_year = rows_by_key(lake, "quarter")
    run_ingest(spark, str(jul), root, "ingest.resampling=bilinear", "ingest.rebuild=true")
    rebuilt, _ = run_composites(spark, root, "quarter")
    after_rebuild = rows_by_key(lake, "quarter")
    return Stages(lake, root, ids, first, again, v1, v2, before, added, after, year, after_year,
                  rebuilt, after_rebuild)  # fmt: skip


@pytest.fixture(scope="module")
def reference_scenes(demo_root) -> dict[str, Scene]:
    f = demo_folders(demo_root)
    out = {sid(p): demo_s2_scene(p) for p in f["sentinel2"]}
    out.update({sid(p): demo_landsat_scene(p) for p in f["landsat"]})
    return out


def masked_stack(scenes: list[Scene], band: str) -> np.ndarray:
    """(time, rows, cols) float32 reflectance of ``band``, NaN where a scene masks it."""
    return np.stack([np.where(s.masked, np.float32(np.nan), s.refl[band]) for s in scenes])


def assert_composite_equals_reference(row, scenes: list[Scene], what: str) -> None:
    win = np.s_[row.row_off : row.row_off + row.height, row.col_off : row.col_off + row.width]
    comp = decode_composite(row.asDict())
    count = sum((~s.masked).astype(np.int64) for s in scenes)[win]
    np.testing.assert_array_equal(comp.count, count, err_msg=f"{what}: count")
    assert set(comp.bands) == set(scenes[0].refl), what
    for band in scenes[0].refl:
        if len(scenes) == 1:  # a period of one scene: that scene's masked reflectance
            expected = masked_stack(scenes, band)[0][win]
        else:
            with warnings.catch_warnings():  # "All-NaN slice": pixels never clear
                warnings.simplefilter("ignore", RuntimeWarning)
                expected = np.nanmedian(masked_stack(scenes, band), axis=0)[win]
        np.testing.assert_array_equal(comp.bands[band], expected, err_msg=f"{what}: {band}")


def groups_of(rows: dict[tuple, Any]) -> dict[tuple[str, ...], list[Any]]:
    """Rows by their sorted scene ids."""
    out: dict[tuple[str, ...], list[Any]] = {}
    for r in rows.values():
        out.setdefault(tuple(r.scene_ids), []).append(r)
    return out


@pytest.mark.slow
def test_quarterly_composites_equal_nanmedian_of_the_masked_scenes_computed_here(
    stages, reference_scenes
):
    ids = stages.ids
    by_scenes = groups_of(stages.after_add)
    # Q2: S2 April + June (two baselines, even count); Q3: S2 August; Landsat May and July
    expected = {
        tuple(sorted([ids["s2_apr"], ids["s2_jun"]])): 4,
        (ids["s2_aug"],): 4,
        (ids["l_may"],): 1,
        (ids["l_jul"],): 1,
    }
    assert {k: len(v) for k, v in by_scenes.items()} == expected
    for scene_ids, rows in by_scenes.items():
        scenes = [reference_scenes[s] for s in scene_ids]
        shape = scenes[0].shape
        covered = np.zeros(shape, int)
        for row in rows:
            assert_composite_equals_reference(row, scenes, f"{scene_ids} tile {row.tile_row}")
            covered[
                row.row_off : row.row_off + row.height, row.col_off : row.col_off + row.width
            ] += 1
            assert row.n_scenes == len(scene_ids) and row.dtype == "float32"
        assert (covered == 1).all(), "the tiles of a composite cover the grid once"


@pytest.mark.slow
def test_yearly_composite_of_three_sentinel2_scenes_equals_nanmedian(stages, reference_scenes):
    ids = stages.ids
    assert len(stages.year.built) == 2  # Sentinel-2 2024 and Landsat 2024 (one grid each)
    rows = rows_by_key(stages.lake, "year")
    s2 = tuple(sorted([ids["s2_apr"], ids["s2_jun"], ids["s2_aug"]]))
    landsat = tuple(sorted([ids["l_may"], ids["l_jul"]]))
    by_scenes = groups_of(rows)
    assert sorted(by_scenes) == sorted([s2, landsat])
    for scene_ids, group in by_scenes.items():
        for row in group:
            assert row.period == "2024" and row.period_start == date(2024, 1, 1)
            assert_composite_equals_reference(
                row, [reference_scenes[s] for s in scene_ids], f"2024 {scene_ids}"
            )
    # Building another period kind leaves the quarterly rows alone.
    assert {k: r.run_id for k, r in stages.after_year.items()} == {
        k: r.run_id for k, r in stages.after_add.items()
    }


@pytest.mark.slow
def test_rerun_adds_nothing(stages):
    assert len(stages.first.built) == 4 and stages.first.rows_written == 10
    assert stages.again.built == [] and len(stages.again.skipped) == 4
    assert stages.again.rows_written == 0 and stages.version_again == stages.version_first
    assert len(stages.before_add) == 10


@pytest.mark.slow
def test_a_new_scene_replaces_only_the_rows_of_its_period(stages):
    before, after = stages.before_add, stages.after_add
    assert len(stages.added.built) == 1 and len(stages.added.skipped) == 3
    assert set(after) == set(before)  # replaced, not added beside
    changed = {k for k in after if after[k].run_id != before[k].run_id}
    assert {k[1] for k in changed} == {"2024-Q2"} and len(changed) == 4
    for k in changed:
        assert after[k].n_scenes == 2 and after[k].composite_digest != before[k].composite_digest
    for k in set(after) - changed:
        assert after[k].composite_digest == before[k].composite_digest


@pytest.mark.slow
def test_a_rebuilt_upstream_scene_replaces_its_rows(stages, reference_scenes):
    before, after = stages.after_year, stages.after_rebuild
    assert len(stages.rebuilt.built) == 1 and stages.rebuilt.rows_written == 1
    changed = [k for k in after if after[k].run_id != before[k].run_id]
    assert [tuple(after[k].scene_ids) for k in changed] == [(stages.ids["l_jul"],)]
    (key,) = changed
    assert after[key].composite_digest != before[key].composite_digest
    assert set(after) == set(before)
    assert_composite_equals_reference(after[key], [reference_scenes[stages.ids["l_jul"]]], "jul")


@pytest.mark.slow
def test_main_builds_monthly_composites_by_default(spark, stages, reference_scenes):
    assert main(["--root", str(stages.root)]) == 0
    rows = rows_by_key(stages.lake, "month")
    by_scenes = groups_of(rows)
    assert sorted(s for (s,) in by_scenes) == sorted(stages.ids.values())
    for (scene,), group in by_scenes.items():
        for row in group:
            assert row.period == period_of(row.period_start, "month")[0]
            assert_composite_equals_reference(row, [reference_scenes[scene]], scene)
    runs = stages.lake.read("runs").filter("job = 'composites'").collect()
    assert [(r.status, r.ingested, r.tiles_written) for r in runs] == [("succeeded", 5, 14)]
    assert main(["--root", str(stages.root), "--period", "month"]) == 0  # again: nothing
    assert rows_by_key(stages.lake, "month").keys() == rows.keys()
