"""Scenes on object storage (issue 15, sources): the demo scenes on a real S3-compatible
server (moto's server on 127.0.0.1, :mod:`s3server`) are found, inspected and ingested
exactly as from the local folder they were uploaded from.

The client side knows the server only through the AWS environment variables; boto3 fills
the bucket and is not the code under test. Tables stay local (tables on S3 are another
issue).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window
from s3server import (  # noqa: F401 (s3_server: the `s3` fixture, used by name)
    ACCESS_KEY,
    SECRET_KEY,
    S3Server,
    s3_server,
    upload_tree,
)

from pipelines.discover import discover
from udfs.errors import HrefNotAllowedError
from udfs.reader import SceneSource, inspect_scene

pytestmark = pytest.mark.slow

BUCKET = "eo-scenes"
PREFIX = f"s3://{BUCKET}/demo"


def s3_item(item: dict, path: Path, demo_root: Path) -> dict:
    """The demo STAC item at ``path`` with every asset href an absolute ``s3://`` URL of
    the uploaded file (links stay relative: they resolve inside the bucket)."""
    assets = {}
    for key, asset in item["assets"].items():
        local = (path.parent / asset["href"]).resolve()
        assets[key] = dict(asset, href=f"{PREFIX}/{local.relative_to(demo_root.resolve())}")
    return dict(item, assets=assets)


@pytest.fixture(scope="module")
def bucket(s3: S3Server, demo_root: Path) -> str:
    """The demo scenes under ``s3://eo-scenes/demo/scenes/`` and the demo STAC catalogue,
    its items' hrefs made ``s3://``, under ``s3://eo-scenes/demo/stac/``."""
    client = s3.client()
    client.create_bucket(Bucket=BUCKET)
    upload_tree(client, demo_root / "scenes", BUCKET, "demo/scenes")
    for path in sorted((demo_root / "stac").rglob("*.json")):
        doc = json.loads(path.read_text())
        if doc.get("type") == "Feature":
            doc = s3_item(doc, path, demo_root)
        key = f"demo/{path.relative_to(demo_root).as_posix()}"
        client.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(doc).encode())
    return BUCKET


@pytest.fixture
def s3_spark(s3: S3Server, spark) -> Iterator[object]:
    """The session with the server's variables given to its Python workers.

    Executors find credentials themselves (here: their environment, as
    ``spark.executorEnv.*`` would set it on a cluster); the session may have started
    before the server, so the variables are added to the context's worker environment.
    """
    env = spark.sparkContext.environment
    saved = {k: env.get(k) for k in s3.env}
    env.update(s3.env)
    yield spark
    for k, v in saved.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v


def local_href(href: str, demo_root: Path) -> str:
    """The local file an uploaded ``s3://`` href came from."""
    assert href.startswith(PREFIX + "/"), href
    return str(demo_root / href.removeprefix(PREFIX + "/"))


def scenes_of(found: list) -> dict[str, SceneSource]:
    assert all(isinstance(c, SceneSource) for c in found), found
    return {c.scene_id: c for c in found}


# ----------------------------------------------------------------------------- discovery


def test_discovery_on_s3_finds_the_same_scenes_as_locally(s3, bucket, demo_root):
    local = scenes_of(discover(str(demo_root / "scenes")))
    remote = scenes_of(discover(f"{PREFIX}/scenes"))
    assert sorted(remote) == sorted(local) and len(local) == 5
    for sid, r in remote.items():
        l_ = local[sid]
        assert (r.sensor, r.layout, r.metadata_kind) == (l_.sensor, l_.layout, l_.metadata_kind)
        assert {b: local_href(h, demo_root) for b, h in r.bands.items()} == l_.bands
        assert local_href(r.metadata_href, demo_root) == l_.metadata_href
        # The endpoint settings travel with the recipe; the credentials do not.
        host = s3.endpoint.removeprefix("http://")
        assert r.gdal_env == {
            "AWS_S3_ENDPOINT": host,
            "AWS_HTTPS": "NO",
            "AWS_VIRTUAL_HOSTING": "FALSE",
            "AWS_REGION": "us-east-1",
        }
        assert SECRET_KEY not in r.to_json() and ACCESS_KEY not in r.to_json()
        assert l_.gdal_env == {}


def test_an_s3_stac_catalogue_maps_the_same_bands_as_the_local_one(s3, bucket, demo_root):
    catalog = f"{PREFIX}/stac/catalog.json"
    local = scenes_of(discover(str(demo_root / "stac" / "catalog.json"), [str(demo_root)]))
    remote = scenes_of(discover(catalog, [f"{PREFIX}/"]))
    assert sorted(remote) == sorted(local)
    for sid, r in remote.items():
        assert r.layout == "stac" and r.origin.startswith(f"{PREFIX}/stac/")
        expected = {b: str(Path(h).resolve()) for b, h in local[sid].bands.items()}
        got = {b: str(Path(local_href(h, demo_root)).resolve()) for b, h in r.bands.items()}
        assert got == expected
    # The items' hrefs lead out of the catalogue's own folder: refused unless allowed.
    refused = discover(catalog)
    assert len(refused) == 5 and all(isinstance(e, HrefNotAllowedError) for e in refused)


def test_a_missing_s3_prefix_is_one_rejected_input(s3, bucket):
    (err,) = discover(f"s3://{BUCKET}/no-such-prefix")
    assert err.error_class == "UnknownLayout" and "no object under" in err.reason


def test_inspecting_s3_scenes_reads_metadata_and_headers_like_local_ones(s3, bucket, demo_root):
    local = scenes_of(discover(str(demo_root / "scenes")))
    remote = scenes_of(discover(f"{PREFIX}/scenes"))
    for sid, r in remote.items():
        got, want = inspect_scene(r), inspect_scene(local[sid])
        assert [local_href(b["href"], demo_root) for b in got["bands"]] == [
            b["href"] for b in want["bands"]
        ]
        differ = {"bands", "source", "gdal_env"}
        assert {k: v for k, v in got.items() if k not in differ} == {
            k: v for k, v in want.items() if k not in differ
        }
        strip = [{k: v for k, v in b.items() if k != "href"} for b in got["bands"]]
        assert strip == [{k: v for k, v in b.items() if k != "href"} for b in want["bands"]]


# ----------------------------------------------------------------------------- the job


def rows_of(path: Path, columns: list[str] | None = None) -> list[dict]:
    import deltalake

    return deltalake.DeltaTable(str(path)).to_pyarrow_table(columns=columns).to_pylist()


def table(path: Path, columns: list[str] | None = None) -> list[dict]:
    """A table's rows sorted by scene and tile."""
    rows = rows_of(path, columns)
    return sorted(rows, key=lambda r: (r["scene_id"], r.get("tile_row", 0), r.get("tile_col", 0)))


def test_ingest_from_s3_gives_the_tiles_and_scenes_of_a_local_ingest(
    s3, bucket, s3_spark, demo_root, tmp_path
):
    from pipelines import ingest

    assert ingest.main(["--source", f"{PREFIX}/scenes", "--root", str(tmp_path / "s3")]) == 0
    assert ingest.main(["--source", str(demo_root / "scenes"), "--root", str(tmp_path / "l")]) == 0
    remote, local = table(tmp_path / "s3" / "tiles"), table(tmp_path / "l" / "tiles")
    assert len(remote) == len(local) > 0
    assert remote == local  # same keys, equal pixel bytes, masks and geometry
    same = ["scene_id", "sensor", "platform", "acquired", "processing_baseline", "scaling",
            "scaling_source", "width", "height", "transform", "crs_epsg", "n_tiles"]  # fmt: skip
    assert table(tmp_path / "s3" / "scenes", same) == table(tmp_path / "l" / "scenes", same)
    for row in table(tmp_path / "s3" / "scenes", ["scene_id", "source", "bands"]):
        assert row["source"].startswith(f"{PREFIX}/scenes/")
        assert all(b["href"].startswith(f"{PREFIX}/scenes/") for b in row["bands"])
    # Independently of the job: one tile's red band against a plain rasterio read.
    s2 = next(r for r in local if r["sensor"] == "sentinel2-l2a")
    (b04,) = (demo_root / "scenes").rglob(f"{s2['scene_id']}.SAFE/**/*_B04_10m.*")
    with rasterio.open(b04) as ds:
        window = Window(s2["col_off"], s2["row_off"], s2["width"], s2["height"])
        expected = ds.read(1, window=window)
    got = next(r for r in remote if (r["scene_id"], r["tile_row"], r["tile_col"]) ==
               (s2["scene_id"], s2["tile_row"], s2["tile_col"]))  # fmt: skip
    pixels = np.frombuffer(got["red"], dtype=expected.dtype).reshape(expected.shape)
    np.testing.assert_array_equal(pixels, expected)
    # No secret reaches a table.
    for name in ("scenes", "rejected", "runs"):
        if (tmp_path / "s3" / name).exists():
            text = json.dumps(rows_of(tmp_path / "s3" / name), default=str)
            assert SECRET_KEY not in text and ACCESS_KEY not in text, name


def test_gdal_settings_come_from_the_aws_variables_without_secrets():
    from udfs.reader import object_store_env

    env = {
        "AWS_ENDPOINT_URL": "https://minio.example.org:9000",
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI",
        "AWS_SESSION_TOKEN": "token",
        "AWS_DEFAULT_REGION": "eu-central-1",
    }
    assert object_store_env(env) == {
        "AWS_S3_ENDPOINT": "minio.example.org:9000",
        "AWS_HTTPS": "YES",
        "AWS_VIRTUAL_HOSTING": "FALSE",
        "AWS_REGION": "eu-central-1",
    }
    # A service-specific endpoint wins; GDAL's own variables are taken as they are.
    both = {"AWS_ENDPOINT_URL": "http://a:1", "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9"}
    assert object_store_env(both)["AWS_S3_ENDPOINT"] == "127.0.0.1:9"
    gdal = {"AWS_S3_ENDPOINT": "s3.local:80", "AWS_HTTPS": "NO"}
    assert object_store_env(gdal) == gdal
    assert object_store_env({}) == {}
