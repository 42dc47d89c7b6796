"""Executor-side access to table files by href: local paths and ``s3://`` / ``s3a://`` objects.

The aggregate job's workers read row groups of the ``tiles``, ``predictions`` and
``composites`` Parquet files named in their work units (:mod:`udfs.aggregate_udfs`). On a
local or mounted file system a unit names a path; on an object store, an ``s3://`` (or
``s3a://``, Spark's name for the same objects) href.

Decisions
---------
* **Recipe, not handle**: the object-store settings travel to the executors as a plain
  ``dict`` of GDAL-style settings captured on the driver (:func:`store_options`, the same
  :func:`udfs.reader.object_store_env` the scene reader uses): endpoint, TLS, region. Each
  process builds its own ``pyarrow.fs.S3FileSystem`` from it (cached per process and
  settings), never a pickled file system.
* **No secret in the recipe**: credentials are found by each process itself (environment,
  ``~/.aws``, instance role), as the AWS SDK does, so they never reach a task or a log.
* ``s3a://`` and ``s3://`` name the same object (``bucket/key``); any other scheme is
  refused with the href in the message.

No pyspark import here: this module runs inside Python workers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow.parquet as pq
from pyarrow import fs as pafs

from udfs.reader import _s3, object_store_env

#: URI schemes served by :func:`filesystem` as S3 objects.
S3_SCHEMES = ("s3", "s3a")


def is_object_store(href: str) -> bool:
    """True for ``s3://`` / ``s3a://`` hrefs; False for local paths and ``file:`` URIs."""
    scheme, sep, _ = href.partition("://")
    return bool(sep) and scheme.lower() in S3_SCHEMES


def store_options(root: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The recipe of the object-store settings for hrefs under ``root`` (driver side).

    Parameters
    ----------
    root : str
        A table root: local path, ``file:`` URI, ``s3://`` or ``s3a://`` URI.
    environ : mapping, optional
        Environment to read (default ``os.environ``).

    Returns
    -------
    dict of str to str
        Empty for local roots; else :func:`udfs.reader.object_store_env` (endpoint, TLS,
        addressing, region; never credentials).
    """
    return object_store_env(environ) if is_object_store(root) else {}


def filesystem(href: str, options: Mapping[str, str] | None = None) -> tuple[Any, str]:
    """The pyarrow file system holding ``href`` and the path of ``href`` inside it.

    Parameters
    ----------
    href : str
        Local path, ``file:`` URI, ``s3://bucket/key`` or ``s3a://bucket/key``.
    options : mapping, optional
        The recipe of :func:`store_options`; None: this process's environment.

    Returns
    -------
    (pyarrow.fs.FileSystem, str)
        ``LocalFileSystem`` and the path, or a ``S3FileSystem`` and ``bucket/key``. An
        href names the object's key as it is (no percent-escapes undone), as a local
        path names a file: what :func:`pipelines.object_store.read_arrow` gives.

    Raises
    ------
    ValueError
        For another URI scheme, or an S3 href without a bucket.
    """
    scheme, sep, rest = href.partition("://")
    if sep and scheme.lower() in S3_SCHEMES:
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise ValueError(f"no bucket in the object-store href {href!r}")
        settings = object_store_env() if options is None else options
        return _s3(tuple(sorted(settings.items()))), f"{bucket}/{key.lstrip('/')}"
    if href.startswith("file:"):
        return pafs.LocalFileSystem(), "/" + href.removeprefix("file:").lstrip("/")
    if sep:
        raise ValueError(
            f"cannot read {href!r}: table files are local paths, s3:// or s3a:// hrefs"
        )
    return pafs.LocalFileSystem(), href


def open_parquet(href: str, options: Mapping[str, str] | None = None) -> pq.ParquetFile:
    """A Parquet file opened for random access (its row groups read on demand).

    ``options``: the recipe of :func:`store_options` (None: this process's environment).
    Raises ``FileNotFoundError`` (an ``OSError``) naming the href when it is missing.
    """
    fs, path = filesystem(href, options)
    try:
        return pq.ParquetFile(fs.open_input_file(path))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"table file {href} not found ({e})") from e
