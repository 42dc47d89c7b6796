"""Reading and writing the tables of :mod:`pipelines.datamodel`, in Delta (default) or Parquet.

Every write is keyed: ``merge`` inserts only rows whose key is not in the table yet
(Delta MERGE; for Parquet an anti-join then append), so every job can be re-run safely.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.config import StorageConfig
from pipelines.datamodel import TABLES, Table


class Lakehouse:
    """The tables under one root folder (local path or object-store URI)."""

    def __init__(self, spark: SparkSession, storage: StorageConfig) -> None:
        self.spark = spark
        root = storage.root.rstrip("/")
        # Delta takes a relative location for a table name: make local roots absolute.
        self.root = root if "://" in root or root.startswith("file:") else os.path.abspath(root)
        self.format = storage.format

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def exists(self, name: str) -> bool:
        path = self.path(name)
        if self.format == "delta":
            from delta.tables import DeltaTable

            return bool(DeltaTable.isDeltaTable(self.spark, path))
        # Spark writes _SUCCESS after a complete Parquet write; ask Hadoop's file system
        # so the check works for object stores too.
        jvm = self.spark.sparkContext._jvm
        assert jvm is not None
        marker = jvm.org.apache.hadoop.fs.Path(f"{path}/_SUCCESS")
        fs = marker.getFileSystem(self.spark.sparkContext._jsc.hadoopConfiguration())
        return bool(fs.exists(marker))

    def read(self, name: str) -> DataFrame:
        """The table, or an empty frame of its schema when it does not exist yet."""
        table = TABLES[name]
        if not self.exists(name):
            return self.spark.createDataFrame([], table.schema)
        if self.format == "parquet":
            return self.spark.read.schema(table.schema).parquet(self.path(name))
        return self.spark.read.format("delta").load(self.path(name))

    def read_arrow(
        self, name: str, columns: Sequence[str], where: Any = None, with_file: bool = False
    ) -> pa.Table:
        """Some columns of a local table as Arrow, read on the driver without Spark.

        For the small reads of planning (a few columns, a filter), a Spark query costs
        ~0.5-1 s of scheduling; delta-rs (Delta: the snapshot of the table's log) or a
        pyarrow dataset (Parquet, hive partitions) reads them in milliseconds.

        Parameters
        ----------
        name : table name of :data:`pipelines.datamodel.TABLES`
        columns : columns to read (partition columns included)
        where : pyarrow.dataset expression, optional
            Row filter; it also prunes files by partition values and column statistics.
        with_file : bool
            Add a ``file`` column: absolute path of the Parquet file holding each row.

        Returns
        -------
        pyarrow.Table
            Empty (with the table's types) when the table does not exist yet.

        Raises
        ------
        ValueError
            For tables on an object store, or a Delta table whose reader features delta-rs
            does not read (e.g. deletion vectors): use :meth:`read` there.
        """
        from pyspark.sql.pandas.types import to_arrow_schema

        if not self.local:
            raise ValueError(f"read_arrow reads local tables, not {self.root}")
        path = self.local_path(name)
        schema = to_arrow_schema(TABLES[name].schema)
        cols = list(columns)
        empty = pa.table({c: pa.array([], schema.field(c).type) for c in cols})
        if with_file:
            empty = empty.append_column("file", pa.array([], pa.string()))
        if self.format == "delta":
            import deltalake

            try:
                dt = deltalake.DeltaTable(path)
            except deltalake.exceptions.TableNotFoundError:
                return empty
            if dt.protocol().reader_features:
                raise ValueError(f"{path}: reader features {dt.protocol().reader_features}")
            dataset = _delta_dataset(dt, path, schema, TABLES[name].partition_by)
        else:
            if not os.path.exists(f"{path}/_SUCCESS"):
                return empty
            part = [f for f in schema if f.name in TABLES[name].partition_by]
            hive = ds.partitioning(pa.schema(part), flavor="hive")
            dataset = ds.dataset(path, format="parquet", partitioning=hive)
        if not with_file:
            return dataset.to_table(columns=cols, filter=where)
        parts = []
        for frag in dataset.get_fragments(filter=where):
            t = frag.to_table(columns=cols, filter=where, schema=dataset.schema)
            full = frag.path if os.path.isabs(frag.path) else os.path.join(path, frag.path)
            parts.append(t.append_column("file", pa.array([full] * t.num_rows, pa.string())))
        return pa.concat_tables(parts).cast(empty.schema) if parts else empty

    def ensure(self, table: Table) -> None:
        """Create the (empty) table if it does not exist yet (Delta; no-op for Parquet)."""
        if self.format != "delta":
            return
        if self.local:
            # delta-rs writes the same first commit in ~0.05 s, no Spark job (~0.3 s).
            import deltalake
            from pyspark.sql.pandas.types import to_arrow_schema

            deltalake.DeltaTable.create(
                self.local_path(table.name),
                schema=to_arrow_schema(table.schema),
                partition_by=list(table.partition_by) or None,
                mode="ignore",
            )
            return
        from delta.tables import DeltaTable

        (
            DeltaTable.createIfNotExists(self.spark)
            .location(self.path(table.name))
            .addColumns(table.schema)
            .partitionedBy(*table.partition_by)
            .execute()
        )

    def merge(self, name: str, df: DataFrame) -> None:
        """Insert the rows of ``df`` whose key is not in table ``name`` yet."""
        table = TABLES[name]
        df = df.select(*table.schema.fieldNames())
        if not self.exists(name):
            self.append(name, df)  # nothing to merge with: a plain (atomic) first write
            return
        if self.format == "delta":
            from delta.tables import DeltaTable

            cond = " AND ".join(f"t.{k} <=> s.{k}" for k in table.key)
            if table.partition_by:
                # Partition columns in the condition let Delta prune the target's files.
                cond += "".join(f" AND t.{p} = s.{p}" for p in table.partition_by)
            (
                DeltaTable.forPath(self.spark, self.path(name))
                .alias("t")
                .merge(df.alias("s"), cond)
                .whenNotMatchedInsertAll()
                .execute()
            )
            return
        keys = self.read(name).select(*table.key)
        self.append(name, df.join(keys, on=list(table.key), how="left_anti"))

    def append(self, name: str, df: DataFrame) -> None:
        """Append rows (for tables whose rows are new by construction: runs, rejected)."""
        table = TABLES[name]
        df = df.select(*table.schema.fieldNames())
        writer = df.write.format(self.format).mode("append")
        if table.partition_by:
            writer = writer.partitionBy(*table.partition_by)
        writer.save(self.path(name))

    @property
    def local(self) -> bool:
        """True when the tables live on a local file system (plain path or file:)."""
        return "://" not in self.root or self.root.startswith("file:")

    def local_path(self, name: str) -> str:
        return self.path(name).removeprefix("file://").removeprefix("file:")

    def commit_files(self, name: str, files: list[dict]) -> None:
        """Make Parquet files that executors wrote into table ``name`` part of it, atomically.

        ``files`` are records of :data:`udfs.ingest_udfs.FILE_SCHEMA` (paths relative to
        the table). Delta: one transaction adding them all (written with delta-rs, which
        speaks the same protocol; Spark reads the result). Parquet: the files are already
        in place, ``_SUCCESS`` marks the table as readable.
        """
        table = TABLES[name]
        if self.format == "delta":
            import deltalake
            from deltalake.transaction import AddAction, RemoveAction

            if not files:
                return
            dt = deltalake.DeltaTable(self.local_path(name))
            actions: list[AddAction | RemoveAction] = [
                AddAction(
                    f["path"],
                    f["size"],
                    json.loads(f["partition_values"]),
                    f["modification_time"],
                    True,
                    f["stats"],
                )
                for f in files
            ]
            dt.create_write_transaction(
                actions, mode="append", schema=dt.schema(), partition_by=list(table.partition_by)
            )
            return
        with open(f"{self.local_path(name)}/_SUCCESS", "a"):
            pass

    def append_arrow(self, name: str, table: pa.Table, zstd_level: int = 1) -> None:
        """Append an Arrow table of rows new by construction to an unpartitioned local table.

        One Parquet file, written here and committed by :meth:`commit_files`: no Spark job,
        which for a few rows costs more than the write. The caller guarantees the keys are
        not in the table yet.
        """
        from udfs.ingest_udfs import write_table_file

        spec = TABLES[name]
        if not self.local or spec.partition_by:
            raise ValueError(f"append_arrow writes unpartitioned local tables, not {name}")
        if table.num_rows == 0:
            return
        self.ensure(spec)
        os.makedirs(self.local_path(name), exist_ok=True)
        record = write_table_file(self.local_path(name), table, {}, spec.key, zstd_level)
        self.commit_files(name, [record])

    def delete(self, name: str, column: str, values: list[str]) -> None:
        """Delete the rows whose ``column`` is in ``values`` (Delta only; Parquet rewrites)."""
        if values:
            self.delete_where(name, F.col(column).isin(values))

    def delete_where(self, name: str, cond: Column) -> None:
        """Delete the rows matching ``cond`` (Delta: a DELETE; Parquet: a rewrite)."""
        if not self.exists(name):
            return
        if self.format == "delta":
            from delta.tables import DeltaTable

            DeltaTable.forPath(self.spark, self.path(name)).delete(cond)
            return
        kept = self.read(name).filter(~cond).localCheckpoint(eager=True)
        table = TABLES[name]
        writer = kept.write.format("parquet").mode("overwrite")
        if table.partition_by:
            writer = writer.partitionBy(*table.partition_by)
        writer.save(self.path(name))


def _delta_dataset(dt: Any, path: str, schema: pa.Schema, partition_by: Sequence[str]) -> Any:
    """A pyarrow dataset of a Delta snapshot's files on the local file system.

    The files and partition values come from delta-rs's snapshot (the log, not a folder
    listing); the scan is pyarrow's own. (``DeltaTable.to_pyarrow_dataset`` scans through
    delta-rs's file system handler, whose threads abort the interpreter at exit.)
    """
    from urllib.parse import unquote

    import pyarrow.compute as pc
    import pyarrow.fs as pafs

    acts = pa.table(dt.get_add_actions(flatten=True))
    paths = [os.path.join(path, unquote(p)) for p in acts.column("path").to_pylist()]
    parts = []
    for i in range(acts.num_rows):
        expr = pc.scalar(True)
        for col in partition_by:
            value = acts.column(f"partition.{col}")[i].as_py()
            typ = schema.field(col).type
            expr = expr & (
                ds.field(col).is_null() if value is None
                else ds.field(col) == pa.scalar(value).cast(typ)
            )  # fmt: skip
        parts.append(expr)
    return ds.FileSystemDataset.from_paths(
        paths, schema=schema, format=ds.ParquetFileFormat(),
        filesystem=pafs.LocalFileSystem(), partitions=parts,
    )  # fmt: skip
