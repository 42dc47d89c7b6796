"""Reading and writing the tables of :mod:`pipelines.datamodel`, in Delta (default) or Parquet.

Every write is keyed: ``merge`` inserts only rows whose key is not in the table yet
(Delta MERGE; for Parquet an anti-join then append), so every job can be re-run safely.
"""

from __future__ import annotations

import json
import os

import pyarrow as pa
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
