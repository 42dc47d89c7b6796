"""Driver-side reads of tables on an object store without Spark: delta-rs + pyarrow.

:func:`read_arrow` is the planners' one call for a few columns of a table on the driver,
without Spark, wherever the root is: local roots and Delta on ``s3://`` / ``s3a://`` through
:meth:`pipelines.lakehouse.Lakehouse.read_arrow` (delta-rs for the snapshot's files, pyarrow
for the scan), Parquet tables on an object store through a pyarrow dataset here, and Delta
tables delta-rs cannot read through Spark.

Decisions
---------
* **Settings from the environment only** (:func:`storage_options`): the endpoint from
  ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (plain ``http://`` endpoints need
  delta-rs's ``AWS_ALLOW_HTTP``), the region from ``AWS_REGION`` /
  ``AWS_DEFAULT_REGION``; credentials are never copied into the options: delta-rs and the
  AWS SDK behind ``pyarrow.fs.S3FileSystem`` read them from the environment or the
  credential chain themselves.
* **delta-rs reads the log, pyarrow scans the files** (as for local tables): delta-rs
  lists the snapshot's files and partition values; the Parquet scan, its filter and the
  ``file`` column go through the same ``S3FileSystem`` the executors use
  (:mod:`udfs.storage`). Delta-rs takes ``s3://`` only: ``s3a://`` roots are renamed for
  it; the ``file`` hrefs keep the root's own scheme.
* **What delta-rs cannot read** (a reader feature such as deletion vectors) is read with
  Spark instead (:meth:`~pipelines.lakehouse.Lakehouse.read`), filtered with the same
  pyarrow expression afterwards; ``file`` is then Spark's ``input_file_name()``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.dataset as ds

from pipelines.datamodel import TABLES
from pipelines.lakehouse import Lakehouse, ReaderFeaturesError
from udfs.storage import filesystem, is_object_store, store_options


def storage_options(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """delta-rs ``storage_options`` for S3 from the standard AWS variables, without secrets.

    Parameters
    ----------
    environ : mapping, optional
        The environment to read (default ``os.environ``).

    Returns
    -------
    dict of str to str
        ``AWS_ENDPOINT_URL`` (from ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``;
        path-style requests, delta-rs's default), ``AWS_ALLOW_HTTP="true"`` for an
        ``http://`` endpoint, ``AWS_REGION`` (from ``AWS_REGION`` or
        ``AWS_DEFAULT_REGION``), ``AWS_SKIP_SIGNATURE="true"`` when
        ``AWS_NO_SIGN_REQUEST`` is YES/TRUE. Empty on plain AWS with default settings.
    """
    env = os.environ if environ is None else environ
    out: dict[str, str] = {}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        out["AWS_ENDPOINT_URL"] = endpoint
        if urlsplit(endpoint).scheme == "http":
            out["AWS_ALLOW_HTTP"] = "true"
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        out["AWS_REGION"] = region
    if env.get("AWS_NO_SIGN_REQUEST", "").upper() in ("YES", "TRUE", "1"):
        out["AWS_SKIP_SIGNATURE"] = "true"
    return out


def delta_uri(path: str) -> str:
    """A table location as delta-rs names it: ``s3a://`` becomes ``s3://``."""
    return "s3://" + path.removeprefix("s3a://") if path.startswith("s3a://") else path


def read_arrow(
    lake: Lakehouse,
    name: str,
    columns: Sequence[str],
    where: Any = None,
    with_file: bool = False,
) -> pa.Table:
    """Some columns of a table as Arrow, on the driver, for any root (module docstring).

    Parameters and result are those of :meth:`Lakehouse.read_arrow` (``lake`` the
    tables), except that ``file`` hrefs on an object store are URIs of the root's scheme,
    tables delta-rs cannot read come through Spark instead of raising, and Parquet tables
    on an object store are read too.

    Raises
    ------
    ValueError
        For a root that is neither local nor ``s3://`` / ``s3a://``.
    """
    if lake.arrow_io:  # local roots, Delta on S3: the lakehouse's own reader
        try:
            return lake.read_arrow(name, columns, where, with_file)
        except ReaderFeaturesError:  # e.g. deletion vectors: Spark reads them
            return _spark_read(lake, name, list(columns), where, with_file)
    if not is_object_store(lake.root):
        raise ValueError(f"cannot read {name} under {lake.root}: local, s3:// or s3a:// roots")
    # Parquet tables on an object store: a hive-partitioned dataset behind ``_SUCCESS``.
    from pyarrow import fs as pafs
    from pyspark.sql.pandas.types import to_arrow_schema

    spec = TABLES[name]
    schema = to_arrow_schema(spec.schema)
    cols = list(columns)
    empty = _empty(schema, cols, with_file)
    base = lake.path(name)
    fs, fs_base = filesystem(base, store_options(lake.root))
    if fs.get_file_info(f"{fs_base}/_SUCCESS").type == pafs.FileType.NotFound:
        return empty
    part = [f for f in schema if f.name in spec.partition_by]
    hive = ds.partitioning(pa.schema(part), flavor="hive")
    dataset = ds.dataset(fs_base, format="parquet", partitioning=hive, filesystem=fs)
    if not with_file:
        return dataset.to_table(columns=cols, filter=where)
    scheme = urlsplit(base).scheme
    parts = []
    for frag in dataset.get_fragments(filter=where):
        t = frag.to_table(columns=cols, filter=where, schema=dataset.schema)
        href = f"{scheme}://{frag.path}"
        parts.append(t.append_column("file", pa.array([href] * t.num_rows, pa.string())))
    return pa.concat_tables(parts).cast(empty.schema) if parts else empty


def _empty(schema: pa.Schema, cols: Sequence[str], with_file: bool) -> pa.Table:
    """No rows, the columns' types (and ``file``)."""
    empty = pa.table({c: pa.array([], schema.field(c).type) for c in cols})
    if with_file:
        empty = empty.append_column("file", pa.array([], pa.string()))
    return empty


def _spark_read(
    lake: Lakehouse,
    name: str,
    cols: list[str],
    where: Any,
    with_file: bool,
) -> pa.Table:
    """The columns through Spark (tables delta-rs cannot read), filtered by ``where``."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import to_arrow_schema

    df = lake.read(name)
    named = _fields(where, TABLES[name].schema.fieldNames()) if where is not None else []
    needed = list(dict.fromkeys([*cols, *named]))
    selected = [F.col(c) for c in needed]
    if with_file:
        # Spark names files by URI (percent-encoded); hrefs name keys as they are.
        selected.append(F.url_decode(F.input_file_name()).alias("file"))
    t = df.select(*selected).toArrow()
    if where is not None:
        t = t.filter(where)
    empty = _empty(to_arrow_schema(TABLES[name].schema), cols, with_file)
    return t.select(empty.column_names).cast(empty.schema)


def _fields(expr: Any, names: Sequence[str]) -> list[str]:
    """The columns of ``names`` a pyarrow expression's text mentions (a superset of those
    it filters on is enough: they are only read)."""
    import re

    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", str(expr)))
    return [n for n in names if n in words]
