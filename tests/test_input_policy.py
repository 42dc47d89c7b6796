"""Input policy (issue 14): hrefs resolve only under allowed roots; ids are safe in paths.

A malicious catalogue points items at files outside its folder (``../``, an absolute
path, a symlink), at a ``/vsicurl/`` and an ``http://`` URL of a real HTTP server on
127.0.0.1, and links items from outside. Every such href is rejected with a reason naming
the item, the asset and the href; the server receives no request at all; the good items
of the same catalogue are ingested. The malicious files outside are real, readable
rasters: a refusal is the policy's doing, not a missing file.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipelines.config import load_config
from pipelines.discover import InputPolicy, discover
from udfs.errors import ConfigError, HrefNotAllowedError, UnsafeIdError
from udfs.reader import SceneSource

LC08 = "LC08_L2SP_198025_20240515_20240521_02_T1"
LC09 = "LC09_L2SP_198025_20240726_20240801_02_T1"
EVIL = ("evil-dotdot", "evil-absolute", "evil-symlink", "evil-vsicurl", "evil-http")


class Recorder:
    """A real HTTP server on 127.0.0.1 that serves one GeoTIFF and one STAC item at any
    path and records every request it receives."""

    def __init__(self, body: bytes, item: bytes) -> None:
        self.requests: list[str] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, send_body: bool) -> None:
                recorder.requests.append(f"{self.command} {self.path}")
                data = item if self.path.endswith(".json") else body
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if send_body:
                    self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                self._answer(True)

            def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
                self._answer(False)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def demo_item(demo_root: Path, scene_id: str) -> dict:
    (path,) = (demo_root / "stac").rglob(f"{scene_id}.json")
    doc = json.loads(path.read_text())
    doc["links"] = []
    return doc


def with_hrefs(doc: dict, folder: Path, item_id: str | None = None) -> dict:
    """The item with every asset href absolute into ``folder`` (same file names)."""
    assets = {
        k: dict(a, href=str(folder / a["href"].rsplit("/", 1)[-1]))
        for k, a in doc["assets"].items()
    }
    return dict(doc, id=item_id or doc["id"], assets=assets)


@pytest.fixture
def recorder(demo_root) -> Iterator[Recorder]:
    band = demo_root / "scenes" / "landsat" / LC09 / f"{LC09}_SR_B4.TIF"
    item = json.dumps(with_hrefs(demo_item(demo_root, LC09), band.parent, "served-item"))
    rec = Recorder(band.read_bytes(), item.encode())
    yield rec
    rec.close()


@pytest.fixture
def malicious(demo_root, tmp_path, recorder) -> dict:
    """``tmp/cat/catalog.json``: two good items (files under ``cat/``), five items with
    one asset each leading out, an item with an unsafe id, two item links from outside."""
    cat, outside = tmp_path / "cat", tmp_path / "outside"
    for scene in (LC08, LC09):
        shutil.copytree(demo_root / "scenes" / "landsat" / scene, cat / "scenes" / scene)
    shutil.copytree(demo_root / "scenes" / "landsat" / LC09, outside / LC09)
    items = cat / "items"
    items.mkdir()
    secret = outside / LC09 / f"{LC09}_SR_B4.TIF"  # a real, readable raster
    (items / "link_SR_B4.TIF").symlink_to(secret)
    red = {
        "evil-dotdot": f"../../outside/{LC09}/{LC09}_SR_B4.TIF",
        "evil-absolute": str(secret),
        "evil-symlink": "./link_SR_B4.TIF",
        "evil-vsicurl": f"/vsicurl/{recorder.base}/{LC09}_SR_B4.TIF",
        "evil-http": f"{recorder.base}/{LC09}_SR_B4.TIF",
    }
    links = []
    for scene in (LC08, LC09):
        doc = with_hrefs(demo_item(demo_root, scene), cat / "scenes" / scene)
        (items / f"{scene}.json").write_text(json.dumps(doc))
        links.append(f"./items/{scene}.json")
    good = with_hrefs(demo_item(demo_root, LC09), cat / "scenes" / LC09)
    for item_id, href in red.items():
        doc = json.loads(json.dumps(good))
        doc["id"] = item_id
        doc["assets"]["red"]["href"] = href
        (items / f"{item_id}.json").write_text(json.dumps(doc))
        links.append(f"./items/{item_id}.json")
    unsafe = dict(good, id="../../escaped")
    (items / "unsafe.json").write_text(json.dumps(unsafe))
    links.append("./items/unsafe.json")
    (outside / "item.json").write_text(json.dumps(dict(good, id="outside-item")))
    links += ["../outside/item.json", f"{recorder.base}/served-item.json"]
    catalog = {
        "type": "Catalog",
        "stac_version": "1.1.0",
        "id": "malicious",
        "description": "hrefs that lead out of the catalogue's folder",
        "links": [{"rel": "item", "href": h, "type": "application/json"} for h in links],
    }
    (cat / "catalog.json").write_text(json.dumps(catalog))
    return {"catalog": cat / "catalog.json", "outside": outside, "red": red, "recorder": recorder}


def split(found: list) -> tuple[dict[str, SceneSource], list]:
    scenes = {c.scene_id: c for c in found if isinstance(c, SceneSource)}
    return scenes, [c for c in found if not isinstance(c, SceneSource)]


# ----------------------------------------------------------------------------- discovery


def test_each_href_leading_out_is_rejected_naming_item_asset_and_href(malicious):
    scenes, errors = split(discover(str(malicious["catalog"])))
    assert sorted(scenes) == [LC08, LC09]
    refused = {e.scene_id: e for e in errors if isinstance(e, HrefNotAllowedError)}
    assert sorted(k for k in refused if k) == sorted(EVIL)
    for item_id, href in malicious["red"].items():
        e = refused[item_id]
        assert e.error_class == "NotAllowed" and e.stage == "discover"
        assert f"STAC item {item_id!r}" in e.reason and "asset 'red' (band SR_B4)" in e.reason
        assert repr(href) in e.reason and e.href == href
    outside = str(malicious["outside"].resolve() / LC09 / f"{LC09}_SR_B4.TIF")
    for item_id in ("evil-dotdot", "evil-absolute", "evil-symlink"):
        assert f"resolves to {outside}, outside the allowed roots" in refused[item_id].reason
    assert "/vsi*" in refused["evil-vsicurl"].reason
    assert "http:// URLs are not read" in refused["evil-http"].reason
    # The links from outside are refused without reading them.
    links = [e for e in errors if isinstance(e, HrefNotAllowedError) and e.scene_id is None]
    assert sorted(e.href for e in links) == sorted(
        [str(malicious["outside"] / "item.json"), f"{malicious['recorder'].base}/served-item.json"]
    )
    assert all("STAC Catalog 'malicious' item link" in e.reason for e in links)
    (unsafe,) = [e for e in errors if isinstance(e, UnsafeIdError)]
    assert "'../../escaped' is not a safe id" in unsafe.reason and unsafe.scene_id is None
    assert len(errors) == len(EVIL) + 3
    assert malicious["recorder"].requests == []


def test_allowed_roots_admit_a_folder_but_never_an_uncovered_url(malicious):
    found = discover(str(malicious["catalog"]), [str(malicious["outside"])])
    scenes, errors = split(found)
    assert sorted(scenes) == sorted(
        [LC08, LC09, "evil-dotdot", "evil-absolute", "evil-symlink", "outside-item"]
    )
    refused = sorted(e.scene_id or e.href for e in errors if isinstance(e, HrefNotAllowedError))
    served = f"{malicious['recorder'].base}/served-item.json"
    assert refused == sorted(["evil-http", "evil-vsicurl", served])
    assert malicious["recorder"].requests == []


def test_a_symlink_out_of_a_scene_folder_is_refused_before_anything_is_read(demo_root, tmp_path):
    src, outside = tmp_path / "src", tmp_path / "outside"
    scene = shutil.copytree(demo_root / "scenes" / "landsat" / LC08, src / LC08)
    shutil.copytree(scene, outside / LC08)
    band = scene / f"{LC08}_SR_B4.TIF"
    band.unlink()
    band.symlink_to(outside / LC08 / band.name)
    (err,) = discover(str(src))
    assert isinstance(err, HrefNotAllowedError) and err.scene_id == LC08
    assert f"band SR_B4 file {band}" in err.reason and err.href == str(band)
    assert f"resolves to {(outside / LC08 / band.name).resolve()}" in err.reason
    (ok,) = discover(str(src), [str(outside)])
    assert isinstance(ok, SceneSource) and ok.bands["SR_B4"] == str(band)
    # A metadata file leading out is not even parsed: garbage there gives no BadMetadata.
    mtl = scene / f"{LC08}_MTL.txt"
    mtl.unlink()
    (outside / "garbage.txt").write_text("what is this\n")
    mtl.symlink_to(outside / "garbage.txt")
    (err,) = discover(str(src))
    assert isinstance(err, HrefNotAllowedError) and f"metadata file {mtl}" in err.reason


def test_a_scene_id_unsafe_in_paths_is_rejected(demo_root, tmp_path):
    (safe,) = (demo_root / "scenes" / "sentinel2").glob("S2B_*.SAFE")
    shutil.copytree(safe, tmp_path / "src" / "S2B_MSIL2A it's me.SAFE")
    (err,) = discover(str(tmp_path / "src"))
    assert isinstance(err, UnsafeIdError) and err.error_class == "UnsafeId"
    assert '"S2B_MSIL2A it\'s me" is not a safe id' in err.reason
    assert err.href == str(tmp_path / "src" / "S2B_MSIL2A it's me.SAFE")


@pytest.mark.parametrize(
    "root, href, allowed",
    [
        ("s3://bucket/pre/", "s3://bucket/pre/a/B04.tif", True),
        ("s3://bucket/pre", "s3://bucket/prefix2/B04.tif", False),  # a folder boundary
        ("s3://bucket/pre/", "s3://bucket/pre/../secret/B04.tif", False),
        ("s3://bucket/pre/", "s3://bucket/pre/%2e%2e/secret/B04.tif", False),
        ("s3://bucket/pre/", "S3://BUCKET/pre/B04.tif", True),  # scheme and bucket: no case
        ("s3://bucket/pre/", "s3://other/pre/B04.tif", False),
        ("https://host/data/", "https://host@evil.example/data/B04.tif", False),
        ("https://host/data/", "http://host/data/B04.tif", False),
        ("https://host/data/", "https://host/data/x/B04.tif?sig=1", True),
        ("/vsis3/bucket/pre/", "/vsis3/bucket/pre/B04.tif", True),
        ("/vsis3/bucket/pre/", "/vsis3/bucket/pre/../x/B04.tif", False),
        ("/data/scenes", "/data/scenes_old/B04.tif", False),
        ("/data/scenes", "/data/scenes/../scenes/a/B04.tif", True),
        ("/data/scenes", "file:///data/scenes/a/B04.tif", True),
    ],
)
def test_policy_compares_resolved_hrefs_at_folder_boundaries(root, href, allowed):
    policy = InputPolicy.for_source("/nowhere/catalog.json", [root])
    assert (policy.refusal(href) is None) == allowed, policy.refusal(href)


def test_the_source_folder_is_allowed_by_default_and_nothing_else(tmp_path):
    policy = InputPolicy.for_source(str(tmp_path / "cat" / "catalog.json"))
    assert policy.refusal(str(tmp_path / "cat" / "items" / "a.tif")) is None
    assert policy.refusal(str(tmp_path / "cat" / ".." / "a.tif")) is not None
    assert policy.refusal("s3://bucket/a.tif") is not None
    prefix = InputPolicy.for_source("s3://bucket/scenes")
    assert prefix.refusal("s3://bucket/scenes/x/B04.tif") is None
    assert prefix.refusal("s3://bucket/other/B04.tif") is not None


def test_allowed_roots_are_validated_and_read_from_the_command_line():
    config = load_config("local", ["ingest.allowed_roots=/data/a,s3://bucket/pre/"])
    assert config.ingest.allowed_roots == ("/data/a", "s3://bucket/pre/")
    assert load_config("local").ingest.allowed_roots == ("data/demo",)  # make demo's catalogue
    with pytest.raises(ConfigError, match="ingest.allowed_roots: 's3://' names no host"):
        load_config("local", ["ingest.allowed_roots=s3://"])


def test_a_model_id_unsafe_in_paths_is_refused_on_load(tmp_path):
    from model_factory import tiny_bundle

    from udfs.models import METADATA, ModelError, load_bundle

    bundle = tiny_bundle(tmp_path / "b", ["red", "nir", "ndvi"])
    meta = json.loads((bundle.path / METADATA).read_text())
    meta["model_id"] = "../../predictions/x"
    (bundle.path / METADATA).write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"model_id '\.\./\.\./predictions/x' is not a safe id"):
        load_bundle(bundle.path)


# ----------------------------------------------------------------------------- the job


@pytest.mark.slow
def test_ingest_of_a_malicious_catalogue_reads_nothing_outside_and_keeps_the_good_items(
    spark, malicious, tmp_path
):
    import deltalake

    from pipelines.ingest import ingest
    from pipelines.lakehouse import Lakehouse
    from pipelines.runs import Run

    root = tmp_path / "lake"
    config = load_config("local", [f"ingest.source={malicious['catalog']}", f"storage.root={root}"])
    run = ingest(spark, Lakehouse(spark, config.storage), Run(config))
    assert sorted(run.ingested) == [LC08, LC09]
    by_scene = {r["scene_id"]: r for r in run.rejected}
    for item_id, href in malicious["red"].items():
        r = by_scene[item_id]
        assert r["error_class"] == "NotAllowed" and r["href"] == href, r
        assert f"STAC item {item_id!r}" in r["reason"] and "asset 'red'" in r["reason"], r
    assert sorted(r["error_class"] for r in run.rejected) == ["NotAllowed"] * 7 + ["UnsafeId"]
    assert malicious["recorder"].requests == []  # no request, not even a HEAD
    tiles = deltalake.DeltaTable(str(root / "tiles")).to_pyarrow_table(columns=["scene_id"])
    assert set(tiles.column("scene_id").to_pylist()) == {LC08, LC09}
