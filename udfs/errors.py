"""Error types: one root, leaves that also inherit the builtin they mean (as rasterio does).

A :class:`SceneError` carries what a user needs to find and fix the input: the scene, the
file (href), the pipeline stage and a reason in plain words. Ingest turns each one into a
row of the ``rejected`` table (or, with ``--strict``, stops the run with it).
"""

from __future__ import annotations


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
