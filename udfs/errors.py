"""Error types: one root, leaves that also inherit the builtin they mean (as rasterio does).

A :class:`SceneError` carries what a user needs to find and fix the input: the scene, the
file (href), the pipeline stage and a reason in plain words. Ingest turns each one into a
row of the ``rejected`` table (or, with ``--strict``, stops the run with it).
"""

from __future__ import annotations

import re

#: Identifiers that end up in file names, partition folders and table predicates (scene
#: ids from STAC item ids, folder names or product metadata; model ids from a bundle's
#: metadata.json): a letter or digit, then letters, digits, ``.``, ``_``, ``-``; 200 at
#: most; never ``..``. Real product ids (``S2B_MSIL2A_..._N0510_...``,
#: ``LC09_L2SP_198025_...``) and generated model ids all fit.
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def unsafe_id(value: object) -> str | None:
    """Why ``value`` cannot be used as an id in paths (None when it can).

    Parameters
    ----------
    value : object
        A scene id or model id as read from an input (usually ``str``).

    Returns
    -------
    str or None
        A reason in words (quoting at most 80 characters of the value), or None.
    """
    if not isinstance(value, str):
        return f"expected a string, found {type(value).__name__}"
    shown = repr(value[:80]) + (" ..." if len(value) > 80 else "")
    if not SAFE_ID.fullmatch(value) or ".." in value:
        return (
            f"{shown} is not a safe id: expected 1-200 letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit, without '..' (it is used in file and "
            f"partition paths)"
        )
    return None


class PipelineError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(PipelineError, ValueError):
    """A configuration key is unknown or its value is invalid."""


class SceneError(PipelineError):
    """An input scene (or one of its files) cannot be used.

    Parameters
    ----------
    reason : str
        What was expected and what was found, in words a user understands.
    scene_id : str or None
        The scene, when known.
    href : str or None
        The file or catalogue entry at fault.
    stage : str
        ``discover`` (finding scenes), ``inspect`` (reading headers and metadata) or
        ``read`` (reading pixels).
    """

    error_class = "SceneError"

    def __init__(
        self,
        reason: str,
        *,
        scene_id: str | None = None,
        href: str | None = None,
        stage: str = "inspect",
    ) -> None:
        self.reason = reason
        self.scene_id = scene_id
        self.href = href
        self.stage = stage
        where = ", ".join(
            p
            for p in (f"scene {scene_id}" if scene_id else "", f"file {href}" if href else "")
            if p
        )
        super().__init__(f"{where}: {reason}" if where else reason)


class UnknownLayoutError(SceneError, ValueError):
    """A folder or catalogue entry matches no known product layout."""

    error_class = "UnknownLayout"


class MissingBandError(SceneError, FileNotFoundError):
    """A band the product must have is absent."""

    error_class = "MissingBand"


class GridMismatchError(SceneError, ValueError):
    """Bands of one scene disagree on CRS or extent."""

    error_class = "GridMismatch"


class MetadataError(SceneError, ValueError):
    """The product's metadata file is missing, unreadable or inconsistent."""

    error_class = "BadMetadata"


class RasterReadError(SceneError, OSError):
    """A raster file cannot be opened or its pixels cannot be decoded."""

    error_class = "RasterRead"


class ProductMismatchError(MetadataError):
    """A product's name (folder, file names, item id) disagrees with its own metadata."""

    error_class = "ProductMismatch"


class EmptyCatalogError(UnknownLayoutError):
    """A STAC Catalog, Collection or ItemCollection given as a source holds no items."""

    error_class = "EmptyCatalog"


class HrefNotAllowedError(SceneError, PermissionError):
    """An href (STAC asset or link, or a file reached through a symlink) resolves outside
    the allowed roots or uses a scheme they do not cover; nothing was read from it."""

    error_class = "NotAllowed"


class UnsafeIdError(SceneError, ValueError):
    """A scene id that cannot be used in file or partition paths (see :data:`SAFE_ID`)."""

    error_class = "UnsafeId"
