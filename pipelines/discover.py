"""Find scenes in a source: a folder of products or a STAC catalog / ItemCollection / Item.

Discovery lists files, parses catalogue JSON and reads the products' small metadata files
(MTD, MTL, tileInfo.json, a STAC item beside a COG folder); it opens no raster. The sensor,
and so the band mapping, comes from that metadata (:mod:`udfs.metadata`); a product name
that disagrees is rejected. Each candidate becomes a :class:`~udfs.reader.SceneSource` or a
:class:`~udfs.errors.SceneError` (unknown layout, missing band, empty catalogue, metadata
that disagrees with the name, an href the input policy refuses), so every input is
accounted for.

A source is a local path or an ``s3://`` URI (a prefix holding product folders, or a STAC
file): listing and small reads go through :func:`udfs.reader.list_files` and
:func:`udfs.reader.read_text`, which read ``s3://`` with the AWS environment's settings.

Optional bands (Landsat ``QA_RADSAT``) are picked up when present; only the sensor's
``required_bands`` must be there.

Incremental runs
----------------
:func:`discover_window` takes a :class:`pipelines.incremental.Window`: a listed product
that it passes (older than the watermark, or already ingested) is not read at all, its
metadata included, and is returned as a :class:`~pipelines.incremental.Passed`. A product
folder is recognised and dated from its listing alone (:func:`listed_product`, names and
change times); a STAC item once its document is read (its ``datetime``).

Input policy
------------
A catalogue is data from elsewhere; its hrefs decide which files the job reads and copies
into tables. So every href is checked *before* anything is read from it
(:class:`InputPolicy`):

- **Allowed roots.** An href must resolve under an allowed root: the folder of the source
  itself (a scene folder, or the folder holding the STAC file named as a source) or an
  entry of ``ingest.allowed_roots`` (local folders, relative ones from the current folder,
  or URL prefixes such as ``s3://bucket/prefix/``).
- **Resolve, then check.** Local hrefs are made absolute (relative ones against their
  catalogue), ``..`` removed and symlinks followed (``os.path.realpath``) before the
  check, so a symlink inside a scene folder that leads elsewhere is refused too. URLs are
  compared by scheme, host or bucket, and normalised path, at folder boundaries
  (``s3://b/pre/`` does not cover ``s3://b/prefix2/``).
- **Refused by default.** Absolute paths outside the roots, GDAL's ``/vsi*`` paths
  (``/vsicurl/http://...``) and every URL (``http``, ``https``, ``s3``, ``gs``, ...) unless
  an allowed root covers it.
- **Per input.** A refused asset rejects its item (``NotAllowed``, naming the item, the
  asset and the href); a refused catalogue link rejects that link. The other items go on.
- **Safe ids.** Scene ids go into file names and table predicates: an id outside
  :data:`udfs.errors.SAFE_ID` is rejected (``UnsafeId``).
"""

from __future__ import annotations

import bisect
import json
import os
import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote, urlsplit

import pystac

from pipelines.incremental import Passed, Window, acquired_by
from udfs import metadata
from udfs.errors import (
    EmptyCatalogError,
    HrefNotAllowedError,
    MetadataError,
    MissingBandError,
    SceneError,
    UnknownLayoutError,
    UnsafeIdError,
    unsafe_id,
)
from udfs.reader import SceneSource, is_url, list_files, object_store_env, read_text
from udfs.sensors import SENSORS, Sensor

RASTER_EXT = (".tif", ".tiff", ".jp2")
# SAFE granule files: T31UFU_20240621T103629_B02_10m.jp2 (L2A) or ..._B02.jp2 (L1C)
_SAFE_BAND = re.compile(r"_(B\d\d|B8A|SCL)(?:_(\d+)m)?\.(?:jp2|tif|tiff)$", re.IGNORECASE)
_SAFE_IMG = re.compile(r"^GRANULE/[^/]+/IMG_DATA(?:/|$)")
# USGS Collection 2: LC09_L2SP_198025_20240726_20240801_02_T1_SR_B4.TIF
_USGS_BAND = re.compile(r"_(SR_B\d|QA_PIXEL|QA_RADSAT)\.(?:tif|tiff)$", re.IGNORECASE)
_USGS_ID = re.compile(r"^(L[CTEO]0\d)_(L2SP|L2SR)_\d{6}_\d{8}_\d{8}_02_(T1|T2|RT)")
_NO_METADATA = "product metadata (<folder>.json STAC item, tileInfo.json or MTD_MSIL*.xml)"
#: Errors of reading or parsing a JSON document.
_DOC_ERRORS = (OSError, UnicodeDecodeError, ValueError, pystac.STACError, KeyError, TypeError)

Candidate = SceneSource | SceneError


# ----------------------------------------------------------------------------- input policy


def _url_key(href: str) -> str:
    """``scheme://host/normalised/path`` of a URL (scheme and host lower case, ``%``
    escapes decoded, ``.`` and ``..`` segments removed)."""
    url = urlsplit(href)
    path = posixpath.normpath("/" + unquote(url.path).lstrip("/"))
    return f"{url.scheme.lower()}://{url.netloc.lower()}{path.removeprefix('//')}"


def resolve_href(href: str) -> str:
    """Where an href leads, in the form :class:`InputPolicy` compares.

    Local paths (``file://`` too): absolute, ``..`` removed, symlinks followed. URLs:
    :func:`_url_key`. GDAL ``/vsi*`` paths are left as they are.
    """
    if href.startswith("/vsi"):
        return href
    if is_url(href):
        return _url_key(href)
    return os.path.realpath(os.path.abspath(href.removeprefix("file://")))


def _root_key(root: str) -> str:
    """An allowed root in the form hrefs are compared with (ending in ``/``)."""
    key = resolve_href(root)
    return key if key.endswith("/") else key + "/"


def source_folder(part: str) -> str:
    """The folder a source entry stands for: the entry itself, or the folder of a .json."""
    if part.lower().endswith(".json"):
        return posixpath.dirname(part) if is_url(part) else os.path.dirname(part) or "."
    return part


@dataclass(frozen=True)
class InputPolicy:
    """Where hrefs may lead (module docstring, "Input policy").

    Attributes
    ----------
    roots : tuple of str
        Allowed roots, resolved (:func:`resolve_href`) and ending in ``/``.
    """

    roots: tuple[str, ...]

    @classmethod
    def for_source(cls, part: str, allowed_roots: Sequence[str] = ()) -> InputPolicy:
        """The policy for one source entry: its own folder plus ``allowed_roots``."""
        roots = [source_folder(part), *allowed_roots]
        return cls(tuple(dict.fromkeys(_root_key(r) for r in roots)))

    def refusal(self, href: str) -> str | None:
        """Why ``href`` may not be read (None when it may), in words naming where it leads."""
        where = resolve_href(href)
        if href.startswith("/vsi") or where.startswith("/vsi"):
            if ".." in where.split("/") or not any(where.startswith(r) for r in self.roots):
                return (
                    f"GDAL virtual file system paths (/vsi*) are not read unless "
                    f"ingest.allowed_roots names their prefix (allowed: {self.describe()})"
                )
            return None
        if any(where.startswith(r) or where + "/" == r for r in self.roots):
            return None
        if is_url(href):
            scheme = urlsplit(href).scheme.lower()
            if not any(r.startswith(f"{scheme}://") for r in self.roots):
                return (
                    f"{scheme}:// URLs are not read unless ingest.allowed_roots covers them "
                    f"(allowed: {self.describe()})"
                )
        return (
            f"resolves to {where}, outside the allowed roots ({self.describe()}); add its "
            f"folder to ingest.allowed_roots to read it"
        )

    def describe(self) -> str:
        return ", ".join(self.roots)


@dataclass(frozen=True)
class Reading:
    """What discovery of one source entry may read, and how: its policy and the
    object-store settings (:func:`udfs.reader.object_store_env`) captured once."""

    policy: InputPolicy
    store: Mapping[str, str]

    def check(self, href: str, what: str, scene_id: str | None = None) -> None:
        """Raise :class:`HrefNotAllowedError` when the policy refuses ``href``.

        ``what`` names the href for the reason (``STAC item 'x' asset 'red'``).
        """
        reason = self.policy.refusal(href)
        if reason is not None:
            raise HrefNotAllowedError(
                f"{what}: href {href!r} {reason}",
                scene_id=scene_id,
                href=href,
                stage="discover",
            )

    def text(self, href: str, what: str, scene_id: str | None = None) -> str:
        """The text of a small file, after the policy allowed it."""
        self.check(href, what, scene_id)
        return read_text(href, self.store)


def _vetted(src: SceneSource, reading: Reading) -> SceneSource:
    """``src`` once its id is safe and every file it names is allowed; with the
    object-store settings when a file is on ``s3://``.

    Raises :class:`UnsafeIdError` or :class:`HrefNotAllowedError`.
    """
    why = unsafe_id(src.scene_id)
    if why is not None:
        raise UnsafeIdError(f"scene id {why}", href=src.origin, stage="discover")
    files = dict(src.bands)
    if src.metadata_href:
        files["metadata"] = src.metadata_href
    for band, href in files.items():
        what = "metadata file" if band == "metadata" else f"band {band} file"
        reading.check(href, f"{what} {href}", src.scene_id)
    if any(urlsplit(h).scheme == "s3" for h in files.values()):
        return replace(src, gdal_env=dict(reading.store))
    return src


# ----------------------------------------------------------------------------- products


def _require_bands(
    sensor: Sensor, found: dict[str, str], scene_id: str, origin: str
) -> dict[str, str]:
    """The sensor's bands that were found (optional ones only where present), in band order.

    Raises :class:`MissingBandError` when a required band is absent.
    """
    missing = [b.name for b in sensor.required_bands if b.name not in found]
    if missing:
        raise MissingBandError(
            f"{sensor.key} scene lacks band(s) {', '.join(missing)} "
            f"(found: {', '.join(sorted(found)) or 'none'})",
            scene_id=scene_id,
            href=origin,
            stage="discover",
        )
    return {b.name: found[b.name] for b in sensor.bands if b.name in found}


def _identify(
    parse: Callable[[], metadata.ProductInfo],
    scene_id: str,
    href: str,
    names: list[tuple[str, str, metadata.NameInfo | None]],
) -> metadata.ProductInfo:
    """Parse the product's metadata and cross-check it with the names it goes by.

    ``names``: ``(name, what, said)`` as :func:`udfs.metadata.check_name` takes them.
    Re-raises metadata errors with the scene, the file and stage ``discover``.
    """
    try:
        info = parse()
        for name, what, said in names:
            metadata.check_name(info, name, what, said)
    except HrefNotAllowedError:
        raise
    except MetadataError as e:
        raise type(e)(e.reason, scene_id=scene_id, href=href, stage="discover") from e
    except (KeyError, ValueError, TypeError, OSError) as e:
        raise MetadataError(
            f"metadata not readable or not understood: {e!r}",
            scene_id=scene_id,
            href=href,
            stage="discover",
        ) from e
    return info


@dataclass(frozen=True)
class Folder:
    """One folder of a listed source: its href, its file names, and the whole listing."""

    href: str
    files: list[str]
    listing: Sequence[str]  # every file href of the source, sorted

    @property
    def name(self) -> str:
        return posixpath.basename(self.href)

    def join(self, name: str) -> str:
        return f"{self.href}/{name}"

    def below(self) -> list[str]:
        """Paths, relative to this folder, of the files in its subfolders."""
        # Sorted hrefs that start with "<href>/" are one run, ending before "<href>0".
        lo = bisect.bisect_left(self.listing, self.href + "/")
        hi = bisect.bisect_left(self.listing, self.href + "0")
        n = len(self.href) + 1
        return [h[n:] for h in self.listing[lo:hi] if "/" in h[n:]]


def _safe_scene(folder: Folder, reading: Reading) -> SceneSource:
    mtd_name = next(
        (f for f in folder.files if f.startswith("MTD_MSIL") and f.endswith(".xml")), None
    )
    scene_id = folder.name.removesuffix(".SAFE")
    if mtd_name is None:
        raise UnknownLayoutError(
            "SAFE folder without MTD_MSIL2A.xml / MTD_MSIL1C.xml",
            scene_id=scene_id,
            href=folder.href,
            stage="discover",
        )
    mtd = folder.join(mtd_name)
    file_level = metadata.NameInfo(processing_level=metadata.s2_level(mtd_name[:-4]))
    info = _identify(
        lambda: metadata.parse_s2_mtd(reading.text(mtd, f"metadata file {mtd}", scene_id)),
        scene_id,
        mtd,
        [(folder.name, "SAFE folder name", None), (mtd_name, "metadata file name", file_level)],
    )
    sensor = SENSORS[str(info.sensor)]
    found: dict[str, tuple[int, str]] = {}
    for rel in folder.below():
        m = _SAFE_BAND.search(posixpath.basename(rel))
        if not m or not _SAFE_IMG.match(rel):
            continue
        band = m.group(1).upper()
        res = int(m.group(2) or 0)
        # A band may be present at several resolutions (R10m/R20m/R60m): keep the finest.
        if band not in found or res < found[band][0]:
            found[band] = (res, folder.join(rel))
    bands = _require_bands(sensor, {k: v[1] for k, v in found.items()}, scene_id, folder.href)
    return SceneSource(scene_id, sensor.key, "safe", folder.href, bands, "s2-mtd", mtd)


def _usgs_scene(folder: Folder, reading: Reading) -> SceneSource:
    files = folder.files
    mtl = next((f for f in files if f.upper().endswith("_MTL.TXT")), None) or next(
        (f for f in files if f.upper().endswith("_MTL.JSON")), None
    )
    ids = [m.group(0) for f in files if (m := _USGS_ID.match(f))]
    scene_id = ids[0] if ids else folder.name
    if mtl is None:
        raise UnknownLayoutError(
            "Landsat band files without an *_MTL.txt / *_MTL.json metadata file",
            scene_id=scene_id,
            href=folder.href,
            stage="discover",
        )
    mtl_href = folder.join(mtl)
    info = _identify(
        lambda: metadata.parse_landsat_mtl(
            reading.text(mtl_href, f"metadata file {mtl_href}", scene_id)
        ),
        scene_id,
        mtl_href,
        [(scene_id, "product id in the file names", None)],
    )
    sensor = SENSORS[str(info.sensor)]
    found = {}
    for f in files:
        m = _USGS_BAND.search(f)
        if m:
            found[m.group(1).upper()] = folder.join(f)
    bands = _require_bands(sensor, found, scene_id, folder.href)
    return SceneSource(scene_id, sensor.key, "usgs-c2", folder.href, bands, "mtl", mtl_href)


def _no_metadata(folder: Folder, stems: set[str]) -> SceneError:
    """The error for Sentinel-2 band files without any product metadata: what they look
    like (L2A- or L1C-like, and why) and everything that is missing."""
    said = metadata.name_info(folder.name)
    if said.processing_level:
        level, why = said.processing_level, f"the folder name says {said.processing_level}"
    elif "B10" in stems:
        level, why = "L1C", "B10 is present"
    else:
        level, why = "L2A", "B10 is absent" + (" and SCL present" if "SCL" in stems else "")
    sensor = SENSORS[metadata.sensor_key_for(said.platform or "sentinel-2a", level)]
    missing = [b.name for b in sensor.required_bands if b.name not in stems]
    lacking = ", ".join([*missing, _NO_METADATA])
    reason = (
        f"Sentinel-2 band files ({level}-like: {why}) lacking {lacking}; "
        f"found {', '.join(sorted(stems))}"
    )
    cls = MissingBandError if missing else UnknownLayoutError
    return cls(reason, scene_id=folder.name, href=folder.href, stage="discover")


def _cog_folder_scene(folder: Folder, reading: Reading) -> SceneSource:
    """Earth Search / AWS COG folder: ``B02.tif`` ... beside a STAC item or tileInfo.json."""
    files = folder.files
    stem = {os.path.splitext(f)[0].upper(): f for f in files if f.lower().endswith(RASTER_EXT)}
    scene_id = folder.name
    item_json = folder.join(f"{scene_id}.json")
    tileinfo = folder.join("tileInfo.json")
    names: list[tuple[str, str, metadata.NameInfo | None]] = [(scene_id, "folder name", None)]
    if f"{scene_id}.json" in files:
        item = _read_item(item_json, scene_id, reading)
        names.append((item.id, "STAC item id", None))
        info = _identify(lambda: _stac_info(item), scene_id, item_json, names)
        sensor = SENSORS[str(info.sensor)]
        _, scaling = _stac_assets(item, sensor)
        meta: dict[str, Any] = {
            "metadata_kind": "stac",
            "metadata_href": item_json,
            "properties": dict(item.properties),
            "asset_scaling": scaling,
            "item_id": item.id,
            "collection": item.collection_id,
        }
    elif "tileInfo.json" in files:
        info = _identify(
            lambda: metadata.parse_s2_tileinfo(
                reading.text(tileinfo, f"metadata file {tileinfo}", scene_id)
            ),
            scene_id,
            tileinfo,
            names,
        )
        sensor = SENSORS[str(info.sensor)]
        meta = {"metadata_kind": "tileinfo", "metadata_href": tileinfo}
    else:
        raise _no_metadata(folder, set(stem))
    found = {b.name: folder.join(stem[b.name]) for b in sensor.bands if b.name in stem}
    bands = _require_bands(sensor, found, scene_id, folder.href)
    return SceneSource(scene_id, sensor.key, "cog-folder", folder.href, bands, **meta)


def classify_folder(folder: Folder, reading: Reading) -> SceneSource | None:
    """Recognise the product layout of one folder; None when it holds no raster at all.

    Raises :class:`SceneError` for a folder that holds rasters but is no usable product.
    """
    files = folder.files
    if folder.name.upper().endswith(".SAFE") or any(f.startswith("MTD_MSIL") for f in files):
        return _safe_scene(folder, reading)
    if any(_USGS_BAND.search(f) for f in files):
        return _usgs_scene(folder, reading)
    rasters = [f for f in files if f.lower().endswith(RASTER_EXT)]
    if not rasters:
        return None
    stems = {os.path.splitext(f)[0].upper() for f in rasters}
    if {"B02", "B04"} <= stems:
        return _cog_folder_scene(folder, reading)
    raise UnknownLayoutError(
        f"no known product layout (Sentinel-2 SAFE or COG folder, Landsat Collection 2): "
        f"found {', '.join(sorted(rasters)[:5])}{' ...' if len(rasters) > 5 else ''}",
        scene_id=None,
        href=folder.href,
        stage="discover",
    )


def folder_tree(root: str, listing: Sequence[str]) -> list[Folder]:
    """Every folder from ``root`` down that holds files (and the folders between), in
    the order of a sorted top-down walk, from a sorted recursive listing of file hrefs."""
    root = root.rstrip("/") or "/"
    names: dict[str, list[str]] = {root: []}
    for href in listing:
        folder, name = posixpath.split(href)
        names.setdefault(folder, []).append(name)
        while folder != root and folder.startswith(root + "/"):
            folder = posixpath.dirname(folder)
            names.setdefault(folder, [])
    order = sorted(names, key=lambda f: f.split("/"))
    return [Folder(f, sorted(names[f]), listing) for f in order]


def listed_product(folder: Folder) -> str | None:
    """The scene id of a product folder as its listing shows it (the layouts of
    :func:`classify_folder`, by file names only); None when it is no recognisable product.
    """
    files = folder.files
    if folder.name.upper().endswith(".SAFE") or any(f.startswith("MTD_MSIL") for f in files):
        return folder.name.removesuffix(".SAFE")
    if any(_USGS_BAND.search(f) for f in files):
        ids = [m.group(0) for f in files if (m := _USGS_ID.match(f))]
        return ids[0] if ids else folder.name
    stems = {os.path.splitext(f)[0].upper() for f in files if f.lower().endswith(RASTER_EXT)}
    return folder.name if {"B02", "B04"} <= stems else None


def change_times(
    root: str, listing: Sequence[str], store: Mapping[str, str]
) -> dict[str, datetime]:
    """href -> latest change time (UTC) of every listed file and of every local folder
    from ``root`` down: ``st_ctime`` locally (set by writing, copying in and moving in;
    ``cp -p`` and ``rsync -a`` cannot set it back), LastModified on S3."""
    if urlsplit(root).scheme == "s3":
        from pyarrow import fs as pafs

        from udfs.reader import _s3, _s3_parts  # the listing's own S3 file system

        bucket, key = _s3_parts(root)
        fs = _s3(tuple(sorted(store.items())))
        base = f"{bucket}/{key.rstrip('/')}".rstrip("/")
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        return {f"s3://{i.path}": _utc(i.mtime) for i in infos if i.mtime is not None}
    out = {}
    folders = {posixpath.dirname(h) for h in listing} | {root.rstrip("/") or "/"}
    for href in [*listing, *folders]:
        try:
            out[href] = datetime.fromtimestamp(os.lstat(href).st_ctime, timezone.utc)
        except OSError:
            continue  # gone since the listing: its product is examined (and fails there)
    return out


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def _arrived(folder: Folder, times: Mapping[str, datetime]) -> datetime | None:
    """Latest change time of a product folder: its files, its subfolders' files and (local)
    the folders holding them; None when one of them has none (never passed as old then)."""
    files = [folder.join(f) for f in folder.files] + [folder.join(r) for r in folder.below()]
    hrefs = files
    if not folder.href.startswith("s3://"):  # S3 has no folders
        hrefs = [*files, folder.href, *{posixpath.dirname(h) for h in files}]
    if not hrefs or any(h not in times for h in hrefs):
        return None
    return max(times[h] for h in hrefs)


def discover_folder(
    root: str, reading: Reading, window: Window | None = None, passed: list[Passed] | None = None
) -> list[Candidate]:
    """Every product folder under ``root`` and every folder of unrecognised rasters.

    A product folder's subfolders belong to it; so do a failed SAFE's. With a
    ``window``, product folders it passes are appended to ``passed``, unread.
    """
    out: list[Candidate] = []
    claimed = None  # "<folder>/" of the last product folder: its subfolders follow it
    listing = list_files(root, reading.store)
    times = {}
    if window is not None and window.by == "arrival" and window.cutoff is not None:
        times = change_times(root, listing, reading.store)
    for folder in folder_tree(root, listing):
        if claimed is not None and folder.href.startswith(claimed):
            continue
        scene_id = listed_product(folder) if window is not None else None
        if window is not None and scene_id is not None and unsafe_id(scene_id) is None:
            arrived = _arrived(folder, times) if times else None
            why = window.why_not_read(scene_id, acquired_by(scene_id), arrived)
            if why is not None:
                if passed is not None:
                    passed.append(Passed(scene_id, folder.href, why))
                claimed = folder.href + "/"
                continue
        try:
            found = classify_folder(folder, reading)
            if found is not None:
                found = _vetted(found, reading)
        except SceneError as e:
            out.append(e)
            if folder.name.upper().endswith(".SAFE"):
                claimed = folder.href + "/"
            continue
        if found is not None:
            out.append(found)
            claimed = folder.href + "/"
    return out


# ----------------------------------------------------------------------------- STAC


def _read_item(href: str, scene_id: str, reading: Reading) -> pystac.Item:
    try:
        doc = json.loads(reading.text(href, f"STAC item {href}", scene_id))
        return pystac.Item.from_dict(doc)
    except HrefNotAllowedError:
        raise
    except _DOC_ERRORS as e:
        raise MetadataError(
            f"STAC item beside the band files is not readable: {e}",
            scene_id=scene_id,
            href=href,
            stage="discover",
        ) from e


def _stac_info(item: pystac.Item) -> metadata.ProductInfo:
    """Identity and scaling of a STAC item (raster:bands of its mapped assets included)."""
    key = metadata.sensor_key_for(
        metadata.stac_platform(item.properties, item.id) or "unknown",
        metadata.stac_level(item.properties, item.id, item.collection_id),
    )
    _, scaling = _stac_assets(item, SENSORS[key])
    return metadata.parse_stac_properties(
        item.properties,
        {k: (v[0], v[1]) for k, v in scaling.items()},
        item.id,
        item.collection_id,
    )


def _asset_band(key: str, asset: pystac.Asset, sensor: Sensor) -> str | None:
    eo = asset.extra_fields.get("eo:bands") or []
    names = [key]
    for b in eo:
        if isinstance(b, dict):  # STAC 1.0.0-beta items list band indices here instead
            names += [b.get("name", ""), b.get("common_name", "")]
    for name in names:
        n = str(name).lower().removesuffix(".tif")
        for band in sensor.bands:
            if n in band.keys or n == band.name.lower().replace("sr_", ""):
                # Landsat eo:bands name "B4" must not match Sentinel-2-style names.
                return band.name
    return None


def _band_assets(item: pystac.Item, sensor: Sensor) -> dict[str, tuple[str, pystac.Asset]]:
    """Band -> (asset key, asset) of the item's assets that map to the sensor's bands."""
    found: dict[str, tuple[str, pystac.Asset]] = {}
    for akey, asset in item.assets.items():
        if akey.endswith("-jp2"):
            continue  # Earth Search duplicates every COG as JPEG2000
        band = _asset_band(akey, asset, sensor)
        if band is not None and band not in found:
            found[band] = (akey, asset)
    return found


def _stac_assets(
    item: pystac.Item, sensor: Sensor
) -> tuple[dict[str, str], dict[str, list[float]]]:
    """Band -> href and band -> [scale, offset] (``raster:bands``) of the item's assets."""
    found: dict[str, str] = {}
    scaling: dict[str, list[float]] = {}
    for band, (_, asset) in _band_assets(item, sensor).items():
        found[band] = asset.get_absolute_href() or asset.href
        rb = (asset.extra_fields.get("raster:bands") or [{}])[0]
        if "scale" in rb or "offset" in rb:
            scaling[band] = [float(rb.get("scale", 1.0)), float(rb.get("offset", 0.0))]
    return found, scaling


def _check_assets(item: pystac.Item, sensor: Sensor, reading: Reading) -> None:
    """Raise :class:`HrefNotAllowedError` naming the item and every refused band asset."""
    refused = []
    for band, (akey, asset) in _band_assets(item, sensor).items():
        href = asset.get_absolute_href() or asset.href
        reason = reading.policy.refusal(href)
        if reason is not None:
            refused.append((akey, band, asset.href, reason))
    if refused:
        first = refused[0]
        more = f"; and {len(refused) - 3} more asset(s)" if len(refused) > 3 else ""
        raise HrefNotAllowedError(
            f"STAC item {item.id!r}: "
            + "; ".join(f"asset {k!r} (band {b}): href {h!r} {r}" for k, b, h, r in refused[:3])
            + more,
            scene_id=item.id if unsafe_id(item.id) is None else None,
            href=first[2],
            stage="discover",
        )


def stac_item_scene(item: pystac.Item, origin: str, reading: Reading) -> SceneSource:
    """Map a STAC Item's assets to the sensor's bands (by key, eo:bands name or common name).

    The sensor comes from the item's properties (``platform``, ``s2:product_type``,
    ``landsat:correction``), cross-checked with the item id. Every band asset must pass
    the input policy.
    """
    why = unsafe_id(item.id)
    if why is not None:
        raise UnsafeIdError(f"STAC item id {why}", href=origin, stage="discover")
    platform = metadata.stac_platform(item.properties, item.id)
    level = metadata.stac_level(item.properties, item.id, item.collection_id)
    try:
        key = metadata.sensor_key_for(platform or "unknown", level)
    except MetadataError as e:
        raise UnknownLayoutError(
            f"STAC item of platform {platform!r}, level {level!r}, collection "
            f"{item.collection_id!r} is not a supported product (Sentinel-2 L2A/L1C, Landsat "
            f"Collection 2 Level-2)",
            scene_id=item.id,
            href=origin,
            stage="discover",
        ) from e
    _check_assets(item, SENSORS[key], reading)
    info = _identify(lambda: _stac_info(item), item.id, origin, [(item.id, "STAC item id", None)])
    sensor = SENSORS[str(info.sensor)]
    found, scaling = _stac_assets(item, sensor)
    bands = _require_bands(sensor, found, item.id, origin)
    src = SceneSource(
        item.id,
        sensor.key,
        "stac",
        origin,
        bands,
        "stac",
        None,
        dict(item.properties),
        scaling,
        item.id,
        item.collection_id,
    )
    return _vetted(src, reading)


def _stac_object(href: str, reading: Reading, what: str) -> pystac.STACObject:
    """Read a STAC document the policy allows, with its self href set (links resolve)."""
    doc = json.loads(reading.text(href, what))
    obj = pystac.read_dict(doc, href=href)
    obj.set_self_href(href)
    return obj


def _catalog_items(
    cat: pystac.Catalog, reading: Reading, seen: set[str]
) -> tuple[list[tuple[pystac.Item, str]], list[SceneError]]:
    """Items of a catalogue and its child catalogues, following links the policy allows.

    A refused or unreadable link is one error; the other links go on.
    """
    items: list[tuple[pystac.Item, str]] = []
    errors: list[SceneError] = []
    for link in cat.links:
        if link.rel not in ("item", "child"):
            continue
        href = link.get_absolute_href() or link.href
        if href in seen:
            continue  # a catalogue that links back: each document once
        seen.add(href)
        what = f"STAC {type(cat).__name__} {cat.id!r} {link.rel} link"
        try:
            obj = _stac_object(href, reading, what)
        except SceneError as e:
            errors.append(e)
            continue
        except _DOC_ERRORS as e:
            errors.append(
                UnknownLayoutError(f"{what}: not a readable STAC document: {e}", href=href,
                                   stage="discover")
            )  # fmt: skip
            continue
        if isinstance(obj, pystac.Item):
            items.append((obj, href))
        elif isinstance(obj, pystac.Catalog):
            more, errs = _catalog_items(obj, reading, seen)
            items += more
            errors += errs
    return items, errors


def _items_of(
    doc: dict[str, Any], path: str, reading: Reading
) -> tuple[list[tuple[pystac.Item, str]], list[SceneError]]:
    kind = doc.get("type")
    if kind == "Feature":
        item = pystac.Item.from_dict(doc, href=path)
        item.set_self_href(path)
        return [(item, path)], []
    if kind == "FeatureCollection":
        ic = pystac.ItemCollection.from_dict(doc)
        out = []
        for i, item in enumerate(ic.items):
            for asset in item.assets.values():
                asset.href = pystac.utils.make_absolute_href(asset.href, path)
            out.append((item, f"{path}#{i}"))
        if not out:
            raise EmptyCatalogError(
                f"STAC ItemCollection at {path} holds no items", href=path, stage="discover"
            )
        return out, []
    cat = pystac.read_dict(doc, href=path)
    if not isinstance(cat, pystac.Catalog):
        raise UnknownLayoutError(
            f"STAC {kind} is neither Catalog, Collection nor Item", href=path, stage="discover"
        )
    cat.set_self_href(path)
    items, errors = _catalog_items(cat, reading, {path})
    if not items and not errors:
        what = "Collection" if isinstance(cat, pystac.Collection) else "Catalog"
        raise EmptyCatalogError(
            f"STAC {what} {cat.id!r} at {path} holds no items (no item links, also not in "
            f"its child catalogues)",
            href=path,
            stage="discover",
        )
    return items, errors


def _item_acquired(item: pystac.Item) -> datetime | None:
    """Latest acquisition time of a STAC item (``datetime``, else ``end_datetime``)."""
    when = item.datetime
    if when is None and item.properties.get("end_datetime"):
        when = pystac.utils.str_to_datetime(str(item.properties["end_datetime"]))
    return _utc(when) if when is not None else None


def _document_time(origin: str, reading: Reading) -> datetime | None:
    """Latest change time of the JSON document holding an item (``path#i``: the file);
    None when it cannot be told."""
    href = origin.split("#", 1)[0]
    try:
        if urlsplit(href).scheme == "s3":
            from udfs.reader import _s3, _s3_parts  # the listing's own S3 file system

            info = _s3(tuple(sorted(reading.store.items()))).get_file_info(
                "/".join(_s3_parts(href))
            )
            return _utc(info.mtime) if info.mtime is not None else None
        return datetime.fromtimestamp(os.lstat(href).st_ctime, timezone.utc)
    except OSError:
        return None


def discover_stac(
    path: str, reading: Reading, window: Window | None = None, passed: list[Passed] | None = None
) -> list[Candidate]:
    """Scenes of a STAC Catalog/Collection, ItemCollection or Item JSON file (local or
    ``s3://``). With a ``window``, items it passes are appended to ``passed``."""
    try:
        doc = json.loads(read_text(path, reading.store))
        items, errors = _items_of(doc, path, reading)
    except SceneError as e:
        return [e]
    except _DOC_ERRORS as e:
        return [
            UnknownLayoutError(f"not a readable STAC document: {e}", href=path, stage="discover")
        ]
    out: list[Candidate] = [*errors]
    for item, origin in items:
        if window is not None and unsafe_id(item.id) is None:
            arrived = _document_time(origin, reading) if window.by == "arrival" else None
            why = window.why_not_read(item.id, _item_acquired(item), arrived)
            if why is not None:
                if passed is not None:
                    passed.append(Passed(item.id, origin, why))
                continue
        try:
            out.append(stac_item_scene(item, origin, reading))
        except SceneError as e:
            out.append(e)
    return out


def _not_a_source(part: str) -> SceneError:
    """The error for a ``--source`` entry that is neither a folder nor a STAC .json."""
    if os.path.isfile(part) and part.lower().endswith(RASTER_EXT):
        reason = (
            "source is a single raster file, not a product: give the folder that holds the "
            "product's band files and metadata (Sentinel-2 SAFE or COG folder, Landsat "
            "Collection 2 folder), or a STAC Item / Catalog .json"
        )
    elif os.path.exists(part):
        reason = "source is neither a folder nor a STAC .json file"
    else:
        reason = "source does not exist"
    return UnknownLayoutError(reason, href=part, stage="discover")


def _discover_prefix(
    part: str, reading: Reading, window: Window | None = None, passed: list[Passed] | None = None
) -> list[Candidate]:
    """Scenes under an ``s3://`` prefix; one error when it holds nothing or cannot be listed."""
    try:
        return discover_folder(part, reading, window, passed)
    except OSError as e:
        return [UnknownLayoutError(f"source cannot be listed: {e}", href=part, stage="discover")]


def discover(source: str, allowed_roots: Sequence[str] = ()) -> list[Candidate]:
    """All scene candidates of ``source`` (folders, ``s3://`` prefixes, STAC ``.json``).

    Parameters
    ----------
    source : str
        One entry or several separated by commas.
    allowed_roots : sequence of str
        ``ingest.allowed_roots``: where hrefs may lead besides each entry's own folder
        (module docstring, "Input policy").
    """
    return discover_window(source, allowed_roots)[0]


def discover_window(
    source: str, allowed_roots: Sequence[str] = (), window: Window | None = None
) -> tuple[list[Candidate], list[Passed]]:
    """:func:`discover` under an incremental ``window`` (None: every product is read).

    Returns the candidates and the products the window passed, unread (module docstring,
    "Incremental runs").
    """
    out: list[Candidate] = []
    passed: list[Passed] = []
    store = object_store_env()
    for part in (s.strip() for s in source.split(",") if s.strip()):
        reading = Reading(InputPolicy.for_source(part, allowed_roots), store)
        if part.lower().endswith(".json"):
            out += discover_stac(part, reading, window, passed)
        elif urlsplit(part).scheme == "s3":
            out += _discover_prefix(part, reading, window, passed)
        elif os.path.isdir(part):
            out += discover_folder(part, reading, window, passed)
        else:
            out.append(_not_a_source(part))
    return out, passed
