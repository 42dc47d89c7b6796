"""Reading and writing the tables of :mod:`pipelines.datamodel`, in Delta (default) or Parquet.

Every write is keyed: ``merge`` inserts only rows whose key is not in the table yet
(Delta MERGE; for Parquet an anti-join then append), so every job can be re-run safely.

Concurrent runs
---------------
Several runs may write the same tables at the same time (two ingests of overlapping
folders; a classify whose features stage meets another's). No lock is taken: every write
is an optimistic Delta commit, decided against the table version it lands on.

* Delta tables on a local file system or on S3 (``s3://``, ``s3a://``), written with delta-rs
  (:meth:`Lakehouse.commit_files`, :meth:`Lakehouse.append_arrow`): the rows already there are read
  from the snapshot, per group of :attr:`pipelines.datamodel.Table.group` (a scene) or per key, and
  the commit is made at exactly the next version (``max_commit_retries=0``). When another writer
  committed first, delta-rs refuses it and the decision is taken again on the new snapshot, after a
  random, growing backoff. A group (key) is thus written once: the loser finds it there and leaves
  it (or, when its caller's ``decide`` says so, replaces it in the same commit: rebuilt scenes, the
  final ``runs`` row).
* Spark writes (the analysis tables, ``ingest.writer=spark``): ``merge`` is a Delta MERGE
  (insert if absent); a concurrent writer of the same files makes Delta raise a concurrent
  modification error, and the MERGE is run again on the new snapshot.
* Files this run wrote are named ``part-run<run_id>-<uuid>``: a reader of the snapshot
  knows which run wrote a group (:func:`file_owner`) and whether it still runs.

Parquet tables have no transaction log: concurrent runs over the same Parquet root are
not supported.

Commits on S3
-------------
A Delta commit is the creation of ``_delta_log/<version>.json``; it is safe against a
concurrent writer only when that creation fails if the object exists.

* delta-rs (every write above through :meth:`Lakehouse._commit`, and :meth:`ensure`)
  commits on S3 with a conditional PUT (``If-None-Match: *``): the store refuses the
  second writer of a version with HTTP 412, delta-rs raises ``CommitFailedError`` and the
  decision is taken again. This is delta-rs's default when no locking provider is set
  (no option needed; AWS S3 since 2024, MinIO, moto's server). A store without
  conditional writes needs delta-rs's DynamoDB lock instead (``AWS_S3_LOCKING_PROVIDER=
  dynamodb``, ``DELTA_DYNAMO_TABLE_NAME``, in the environment).
* Spark (Delta's ``S3SingleDriverLogStore``) does not use conditional writes: two drivers
  committing the same version of a table on S3 can overwrite each other's commit. Spark
  writes on S3 are safe from one driver at a time only, unless the session uses
  ``io.delta.storage.S3DynamoDBLogStore`` (README, "Object storage").
* The options delta-rs gets come from the environment only
  (:func:`pipelines.object_store.storage_options`: endpoint, ``AWS_ALLOW_HTTP``, region);
  credentials are never copied: delta-rs and the AWS SDK read them themselves.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.config import StorageConfig
from pipelines.datamodel import TABLES, Table
from udfs.errors import PipelineError

log = logging.getLogger("eo")

#: Attempts of one commit that keeps losing the race to other writers of the table.
COMMIT_ATTEMPTS = 30
#: First wait after a lost race (s), doubled per attempt up to BACKOFF_MAX_S, x0.5-1.5.
BACKOFF_S = 0.05
BACKOFF_MAX_S = 2.0


class CommitConflictError(PipelineError, RuntimeError):
    """A commit lost the race to other writers of its table :data:`COMMIT_ATTEMPTS` times."""


@dataclass(frozen=True)
class Held:
    """What a table version holds of one group: its files (paths as in the Delta log) and
    the runs that wrote them (:func:`file_owner`; ``""`` unknown)."""

    files: tuple[str, ...]
    owners: tuple[str, ...]


#: ``held -> {group: verdict}``, taken on each attempt's snapshot: ``held`` maps every group
#: of the commit to what that table version holds of it; a verdict of None means this run
#: writes the group, replacing what is held, a string that the group is left to that run
#: (its id, ``""`` unknown).
Decide = Callable[[dict[tuple, Held]], dict[tuple, "str | None"]]


@dataclass
class Committed:
    """Outcome of a commit: groups written, groups left to another run (-> its id)."""

    written: list[tuple]
    left: dict[tuple, str]
    version: int | None = None


def keep_held(held: dict[tuple, Held]) -> dict[tuple, str | None]:
    """Insert if absent: a group (key) the table holds is left to whoever wrote it."""
    return {g: next((o for o in h.owners if o), "") if h.files else None for g, h in held.items()}


def replace_held(held: dict[tuple, Held]) -> dict[tuple, str | None]:
    """Always write every group, replacing what the table holds of it."""
    return dict.fromkeys(held)


_OWNER = re.compile(r"part-run([0-9A-Za-z_]+)-")


def file_owner(path: str) -> str:
    """Run id in a file name written by :func:`udfs.ingest_udfs.write_table_file` (``""``
    for other files: Spark's, or older ones)."""
    m = _OWNER.search(os.path.basename(path))
    return m.group(1) if m else ""


def _file_group(table: Table, record: dict) -> tuple:
    """The group of a file record: its columns, else its partition values."""
    parts = json.loads(record.get("partition_values") or "{}")
    return tuple(record[c] if record.get(c) is not None else parts.get(c) for c in table.group)


def _add_action(f: dict) -> Any:
    from deltalake.transaction import AddAction

    parts = f["partition_values"]
    parts = json.loads(parts) if isinstance(parts, str) else parts
    return AddAction(f["path"], f["size"], parts, f["modification_time"], True, f["stats"])


def _typed(table: Table, column: str, value: str | None) -> Any:
    """A partition value (a string in the Delta log) as its column's Python value."""
    from pyspark.sql.types import IntegralType

    if value is None:
        return None
    if isinstance(table.schema[column].dataType, IntegralType):
        return int(value)
    return value


class Lakehouse:
    """The tables under one root folder (local path or object-store URI)."""

    def __init__(self, spark: SparkSession, storage: StorageConfig) -> None:
        self.spark = spark
        root = storage.root.rstrip("/")
        # Delta takes a relative location for a table name: make local roots absolute.
        self.root = root if "://" in root or root.startswith("file:") else os.path.abspath(root)
        self.format = storage.format
        self._txn_versions: dict[str, int] = {}  # app transaction id -> last version
        self._ensured: set[str] = set()  # tables ensure() made sure of

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
            For tables that are not :attr:`arrow_io` (Parquet on an object store), or a
            Delta table whose reader features delta-rs does not read (e.g. deletion
            vectors): use :meth:`read` there.
        """
        from pyspark.sql.pandas.types import to_arrow_schema

        if not self.arrow_io:
            raise ValueError(f"read_arrow reads local tables and Delta on S3, not {self.root}")
        path = self.local_path(name)
        schema = to_arrow_schema(TABLES[name].schema)
        cols = list(columns)
        empty = pa.table({c: pa.array([], schema.field(c).type) for c in cols})
        if with_file:
            empty = empty.append_column("file", pa.array([], pa.string()))
        if self.format == "delta":
            import deltalake

            try:
                dt = self.delta_table(name)
            except deltalake.exceptions.TableNotFoundError:
                return empty
            features = dt.protocol().reader_features
            if features:
                raise ReaderFeaturesError(f"{path}: reader features {features}")
            fs, base = self._fs(name)
            dataset = _delta_dataset(dt, base, schema, TABLES[name].partition_by, fs)
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
            full = frag.path if self.local else f"{self.path(name).split('://')[0]}://{frag.path}"
            parts.append(t.append_column("file", pa.array([full] * t.num_rows, pa.string())))
        return pa.concat_tables(parts).cast(empty.schema) if parts else empty

    def ensure(self, table: Table) -> None:
        """Create the (empty) table if it does not exist yet, or add the columns an older
        table lacks (Delta, once per table and process; no-op for Parquet)."""
        if self.format != "delta" or table.name in self._ensured:
            return
        if self.arrow_io:
            # delta-rs writes the same first commit in ~0.05 s, no Spark job (~0.3 s); on
            # S3 with a conditional PUT, safe against a concurrent creator (module doc).
            import deltalake
            from pyspark.sql.pandas.types import to_arrow_schema

            path, opts = self._delta_uri(table.name), self._delta_options()
            schema = to_arrow_schema(table.schema)
            try:
                deltalake.DeltaTable.create(
                    path, schema=schema, partition_by=list(table.partition_by) or None,
                    mode="ignore", storage_options=opts,
                )  # fmt: skip
            except deltalake.exceptions.DeltaError:
                # Another run created it at the same moment (both wrote version 0).
                if not deltalake.DeltaTable.is_deltatable(path, storage_options=opts):
                    raise
            have = set(self.delta_table(table.name).schema().to_arrow().names)
            missing = [f for f in schema if f.name not in have]
            if missing:  # a table of an older data model: new (nullable) columns
                try:
                    self.delta_table(table.name).alter.add_columns(
                        [deltalake.Field.from_arrow(f.with_nullable(True)) for f in missing]
                    )
                except deltalake.exceptions.DeltaError:
                    # Added by a concurrent run; anything else shows on the next read.
                    log.info("%s: columns %s added concurrently", path, [f.name for f in missing])
            self._ensured.add(table.name)
            return
        from delta.tables import DeltaTable

        retry_concurrent(
            lambda: (
                DeltaTable.createIfNotExists(self.spark)
                .location(self.path(table.name))
                .addColumns(table.schema)
                .partitionedBy(*table.partition_by)
                .execute()
            ),
            f"create {self.path(table.name)}",
        )
        self._ensured.add(table.name)

    def merge(self, name: str, df: DataFrame) -> None:
        """Insert the rows of ``df`` whose key is not in table ``name`` yet.

        Delta: a MERGE, run again on the new snapshot when a concurrent writer's commit
        conflicts with it (:func:`retry_concurrent`), so the key stays unique. A source
        computed by executors is checkpointed first, so a retry does not compute it again.
        """
        table = TABLES[name]
        df = df.select(*table.schema.fieldNames())
        if self.format == "delta":
            from delta.tables import DeltaTable

            # Into an existing (maybe empty) table: two first writes would both append.
            self.ensure(table)
            cond = " AND ".join(f"t.{k} <=> s.{k}" for k in table.key)
            if table.partition_by:
                # Partition columns in the condition let Delta prune the target's files.
                cond += "".join(f" AND t.{p} = s.{p}" for p in table.partition_by)

            def run() -> None:
                (
                    DeltaTable.forPath(self.spark, self.path(name))
                    .alias("t")
                    .merge(df.alias("s"), cond)
                    .whenNotMatchedInsertAll()
                    .execute()
                )

            retry_concurrent(run, f"MERGE into {self.path(name)}")
            return
        if not self.exists(name):
            self.append(name, df)  # nothing to merge with: a plain (atomic) first write
            return
        keys = self.read(name).select(*table.key)
        self.append(name, df.join(keys, on=list(table.key), how="left_anti"))

    def upsert(self, name: str, df: DataFrame) -> None:
        """Insert the rows of ``df``, replacing the rows of the same key (Delta MERGE with
        update; Parquet: the rows are appended). For the final ``runs`` row through Spark."""
        table = TABLES[name]
        df = df.select(*table.schema.fieldNames())
        if self.format != "delta":
            self.append(name, df)
            return
        from delta.tables import DeltaTable

        self.ensure(table)
        cond = " AND ".join(f"t.{k} <=> s.{k}" for k in table.key)

        def run() -> None:
            (
                DeltaTable.forPath(self.spark, self.path(name))
                .alias("t")
                .merge(df.alias("s"), cond)
                .whenMatchedUpdateAll()
                .whenNotMatchedInsertAll()
                .execute()
            )

        retry_concurrent(run, f"MERGE into {self.path(name)}")

    def append(self, name: str, df: DataFrame) -> None:
        """Append rows (for tables whose rows are new by construction: runs, rejected)."""
        table = TABLES[name]
        df = df.select(*table.schema.fieldNames())
        writer = df.write.format(self.format).mode("append")
        if table.partition_by:
            writer = writer.partitionBy(*table.partition_by)
        retry_concurrent(lambda: writer.save(self.path(name)), f"append to {self.path(name)}")

    @property
    def local(self) -> bool:
        """True when the tables live on a local file system (plain path or file:)."""
        return "://" not in self.root or self.root.startswith("file:")

    def local_path(self, name: str) -> str:
        return self.path(name).removeprefix("file://").removeprefix("file:")

    @property
    def arrow_io(self) -> bool:
        """Whether the driver reads and commits the tables itself (pyarrow + delta-rs,
        :meth:`read_arrow`, :meth:`commit_files`, :meth:`append_arrow`): local roots, and
        Delta tables on ``s3://`` / ``s3a://``."""
        from udfs.storage import is_object_store

        return self.local or (self.format == "delta" and is_object_store(self.root))

    def files_href(self, name: str) -> str:
        """Where table ``name``'s files are written: a local path, or the ``s3://`` /
        ``s3a://`` URI (:func:`udfs.storage.filesystem` opens either)."""
        return self.local_path(name) if self.local else self.path(name)

    @property
    def store(self) -> dict[str, str]:
        """The object-store recipe of the root (endpoint, TLS, region; no credentials),
        for executors that write table files (:func:`udfs.storage.store_options`)."""
        from udfs.storage import store_options

        return store_options(self.root)

    def delta_table(self, name: str) -> Any:
        """``deltalake.DeltaTable`` of table ``name`` (local or S3; raises
        ``TableNotFoundError`` when it does not exist yet)."""
        import deltalake

        return deltalake.DeltaTable(self._delta_uri(name), storage_options=self._delta_options())

    def _delta_uri(self, name: str) -> str:
        if self.local:
            return self.local_path(name)
        from pipelines.object_store import delta_uri

        return str(delta_uri(self.path(name)))

    def _delta_options(self) -> dict[str, str] | None:
        if self.local:
            return None
        from pipelines.object_store import storage_options

        return dict(storage_options())

    def _fs(self, name: str) -> tuple[Any, str]:
        """pyarrow file system of table ``name``'s files and the table's path in it."""
        from udfs.storage import filesystem

        fs, base = filesystem(self.files_href(name), self.store)
        return fs, base

    def commit_files(
        self,
        name: str,
        files: list[dict],
        owner: str = "",
        decide: Decide | None = None,
    ) -> Committed:
        """Make Parquet files that executors wrote into table ``name`` part of it, atomically,
        arbitrated per group against the snapshot the commit lands on.

        ``files`` are records of :data:`udfs.ingest_udfs.FILE_SCHEMA` (paths relative to the table,
        local or on S3), each holding rows of one group of ``TABLES[name].group`` (a scene; a
        model's scene). Delta: one transaction adds them, decided against the table version it is
        committed on top of (:meth:`_commit`): ``decide`` says, per group, whether this run writes
        it, replacing the rows the table holds of it, or leaves it to the run that holds it. Without
        ``decide``, a group already in the table is left (insert if absent). Files of groups left
        are deleted. Parquet: the files are already in place, ``_SUCCESS`` marks the table as
        readable (no arbitration).

        Returns
        -------
        Committed
            The groups written and those left to another run (with its id).
        """
        table = TABLES[name]
        if self.format != "delta":
            with open(f"{self.local_path(name)}/_SUCCESS", "a"):
                pass
            return Committed(sorted({_file_group(table, f) for f in files}), {})
        if not files:
            return Committed([], {})
        by_group: dict[tuple, list[dict]] = {}
        for f in files:
            by_group.setdefault(_file_group(table, f), []).append(f)

        def actions(groups: list[tuple]) -> list[Any]:
            return [_add_action(f) for g in groups for f in by_group[g]]

        try:
            done = self._commit(name, list(by_group), actions, owner, decide or keep_held)
        except BaseException:
            self.remove_files(name, files)  # never committed: nobody will read them
            raise
        self.remove_files(name, [f for g in done.left for f in by_group[g]])
        return done

    def append_arrow(
        self,
        name: str,
        table: pa.Table,
        zstd_level: int = 1,
        owner: str = "",
        decide: Decide | None = None,
    ) -> Committed:
        """Append an Arrow table to an unpartitioned table (local, or Delta on S3); no Spark
        job, which for a few rows costs more than the write.

        Without ``decide``, rows whose key is already in the table version the commit lands
        on are dropped (a MERGE's insert-if-absent): concurrent runs never duplicate a key.
        With ``decide``, rows go by group as in :meth:`commit_files` (e.g. replace a run's
        ``runs`` row, a rebuilt scene's ``scenes`` row). One Parquet file, written for each
        attempt and committed by :meth:`_commit`.
        """
        from udfs.ingest_udfs import write_table_file

        spec = TABLES[name]
        if not self.arrow_io or spec.partition_by:
            raise ValueError(
                f"append_arrow writes unpartitioned local or S3 Delta tables, not {name}"
            )
        if table.num_rows == 0:
            return Committed([], {})
        self.ensure(spec)
        href, store = self.files_href(name), self.store
        if self.local:
            os.makedirs(href, exist_ok=True)
        if self.format != "delta":  # no log to decide against: the caller's keys are new
            record = write_table_file(href, table, {}, spec.key, zstd_level, owner=owner)
            return self.commit_files(name, [record], owner)
        cols = list(spec.group) if decide is not None else list(spec.key)
        rows = [tuple(r[c] for c in cols) for r in table.select(cols).to_pylist()]
        written: list[dict] = []

        def actions(groups: list[tuple]) -> list[Any]:
            self.remove_files(name, written)
            written.clear()
            keep = set(groups)
            part = table.filter(pa.array([r in keep for r in rows], pa.bool_()))
            if not part.num_rows:
                return []
            written.append(write_table_file(href, part, {}, spec.key, zstd_level, owner=owner,
                                            store=store))  # fmt: skip
            return [_add_action(written[0])]

        try:
            if decide is not None:
                return self._commit(name, sorted(set(rows)), actions, owner, decide)
            return self._commit(name, sorted(set(rows)), actions, owner, keep_held, by_key=True)
        except BaseException:
            self.remove_files(name, written)
            raise

    def _commit(
        self,
        name: str,
        groups: list[tuple],
        actions: Callable[[list[tuple]], list[Any]],
        owner: str,
        decide: Decide,
        by_key: bool = False,
    ) -> Committed:
        """Commit, with delta-rs, the add ``actions`` of the groups ``decide`` lets this run
        write, removing what the table held of them, against a fresh snapshot each attempt.

        The commit is made at exactly the version after the snapshot it was decided on
        (``max_commit_retries=0``): if another writer committed first, delta-rs fails it
        and the decision is taken again on the new snapshot, after a random backoff
        (:data:`COMMIT_ATTEMPTS`, :data:`BACKOFF_S`). Each commit of a run (``owner``)
        carries the app transaction ``eo:<owner>:<table>`` with the number of its commits
        to the table, so a commit whose outcome was lost (an error raised after it was
        written) is recognised as done. ``by_key``: ``groups`` are whole keys.
        """
        import deltalake
        from deltalake.transaction import RemoveAction

        spec = TABLES[name]
        self.ensure(spec)
        path = self._delta_uri(name)
        cols = spec.key if by_key else spec.group
        # The app transaction identifies this run's n-th commit to the table; a commit
        # without an owner (no run) carries none.
        app_id = f"eo:{owner}:{name}"
        txn = self._txn_versions.get(app_id, 0) + 1
        txns = [deltalake.Transaction(app_id, txn)] if owner else None
        for attempt in range(COMMIT_ATTEMPTS):
            dt = self.delta_table(name)
            entries = self._entries(dt)
            found = self._held(entries, name, cols, groups)
            held = {g: found.get(g, Held((), ())) for g in groups}
            verdicts = decide(held)
            written, left, removed = [], {}, set()
            for g, h in held.items():
                verdict = verdicts[g]
                if verdict is None:
                    written.append(g)
                    removed.update(h.files)
                else:
                    left[g] = verdict
            adds = actions(written)
            removes, rewritten = [], []
            for rel in sorted(removed):
                e = entries[rel]
                removes.append(RemoveAction(rel, True, int(time.time() * 1000), e["size"],
                                            e["partition_values"]))  # fmt: skip
                rest = self._without(name, e, cols, set(written))
                if rest is not None:
                    rewritten.append(rest)
            if not adds and not removes:
                return Committed(written, left, dt.version())
            props = deltalake.CommitProperties(
                max_commit_retries=0,
                app_transactions=txns,
                custom_metadata={"eo.run_id": owner, "eo.groups_written": str(len(written))},
            )
            try:
                dt.create_write_transaction(
                    [*adds, *[_add_action(r) for r in rewritten], *removes],
                    mode="append",
                    schema=dt.schema(),
                    partition_by=list(spec.partition_by) or None,
                    commit_properties=props,
                )
            except deltalake.exceptions.CommitFailedError:
                # Another writer created this version first (on S3: HTTP 412 to the
                # conditional PUT of the commit file).
                self.remove_files(name, rewritten)
                time.sleep(min(BACKOFF_MAX_S, BACKOFF_S * 2**attempt) * random.uniform(0.5, 1.5))
                continue
            except deltalake.exceptions.DeltaError:
                # An error after the commit was written (a post-commit hook: checkpoint, log
                # cleanup) must not fail the run: the app transaction tells.
                if not owner or (self.delta_table(name).transaction_version(app_id) or 0) < txn:
                    raise
            self._txn_versions[app_id] = txn
            log.debug("%s: %s committed %d group(s), left %d", name, owner, len(written), len(left))
            return Committed(written, left, dt.version() + 1)
        raise CommitConflictError(
            f"{name}: {COMMIT_ATTEMPTS} commits of run {owner or '-'} lost the race to other "
            f"writers of {path}; nothing of this run was committed to {name}. Re-run it."
        )

    def _entries(self, dt: Any) -> dict[str, dict[str, Any]]:
        """Path (as in the Delta log) -> size, partition values, first key's min/max."""
        acts = pa.table(dt.get_add_actions(flatten=True)).to_pylist()
        out = {}
        for a in acts:
            parts = {k[len("partition.") :]: v for k, v in a.items() if k.startswith("partition.")}
            out[a["path"]] = {
                "path": a["path"],
                "size": a["size_bytes"],
                "partition_values": {k: None if v is None else str(v) for k, v in parts.items()},
                "stats": a,
            }
        return out

    def _held(
        self, entries: dict[str, dict], name: str, cols: Sequence[str], groups: list[tuple]
    ) -> dict:
        """group -> :class:`Held`: the files of a snapshot (its :meth:`_entries`) holding
        rows of ``groups``.

        Files are pruned by the first column's min/max statistics, then read for ``cols``.
        """
        import pyarrow.parquet as pq

        if not groups:
            return {}
        spec = TABLES[name]
        fs, base = self._fs(name)
        first = {g[0] for g in groups}
        lo, hi = min(first), max(first)
        wanted = set(groups)
        found: dict[tuple, tuple[set, set]] = {}
        for rel, e in entries.items():
            st = e["stats"]
            c0 = cols[0]
            if c0 in spec.partition_by:
                if e["partition_values"].get(c0) not in {str(v) for v in first}:
                    continue
            elif st.get(f"min.{c0}") is not None and (st[f"max.{c0}"] < lo or st[f"min.{c0}"] > hi):
                continue
            data_cols = [c for c in cols if c not in spec.partition_by]
            t = pq.read_table(_join(base, rel), columns=data_cols, filesystem=fs)
            n = t.num_rows
            values = []
            for c in cols:
                if c in spec.partition_by:
                    v = e["partition_values"].get(c)
                    values.append([_typed(spec, c, v)] * n)
                else:
                    values.append(t.column(c).to_pylist())
            for g in set(zip(*values, strict=True)) & wanted:
                files, owners = found.setdefault(g, (set(), set()))
                files.add(rel)
                owners.add(file_owner(rel))
        return {g: Held(tuple(sorted(f)), tuple(sorted(o))) for g, (f, o) in found.items()}

    def _without(
        self, name: str, entry: dict[str, Any], cols: Sequence[str], groups: set[tuple]
    ) -> dict | None:
        """A new file of ``entry``'s rows outside ``groups`` (a file holding several groups,
        e.g. after compaction, loses only the replaced ones); None when none is left."""
        import pyarrow.parquet as pq

        from udfs.ingest_udfs import write_table_file

        spec = TABLES[name]
        fs, base = self._fs(name)
        t = pq.read_table(_join(base, entry["path"]), filesystem=fs)
        data_cols = [c for c in cols if c not in spec.partition_by]
        parts = entry["partition_values"]
        consts = {c: _typed(spec, c, parts.get(c)) for c in cols if c in spec.partition_by}
        keep = [
            tuple(consts.get(c, r.get(c)) for c in cols) not in groups
            for r in t.select(data_cols).to_pylist()
        ]
        if not any(keep):
            return None
        rest = t.filter(pa.array(keep, pa.bool_()))
        keys = [k for k in spec.key if k in rest.column_names]
        return write_table_file(self.files_href(name), rest, parts, keys, 1,
                                owner=file_owner(entry["path"]), store=self.store)  # fmt: skip

    def remove_files(self, name: str, files: list[dict]) -> None:
        """Delete files this run wrote and did not commit (nobody else can refer to them);
        ``files``: :data:`udfs.ingest_udfs.FILE_SCHEMA` records, paths as in the log."""
        if not files:
            return
        fs, base = self._fs(name)
        for f in files:
            try:
                fs.delete_file(_join(base, f["path"]))
            except FileNotFoundError:
                pass

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

            retry_concurrent(
                lambda: DeltaTable.forPath(self.spark, self.path(name)).delete(cond),
                f"DELETE from {self.path(name)}",
            )
            return
        kept = self.read(name).filter(~cond).localCheckpoint(eager=True)
        table = TABLES[name]
        writer = kept.write.format("parquet").mode("overwrite")
        if table.partition_by:
            writer = writer.partitionBy(*table.partition_by)
        writer.save(self.path(name))


def is_concurrent_conflict(e: BaseException) -> bool:
    """Whether a Spark error is Delta's refusal of a commit that conflicts with a concurrent
    one (``io.delta.exceptions.Concurrent*``, error class ``DELTA_CONCURRENT_*``)."""
    text = f"{type(e).__name__} {e}"
    return "io.delta.exceptions.Concurrent" in text or "DELTA_CONCURRENT" in text


def retry_concurrent(action: Callable[[], Any], what: str) -> Any:
    """Run a Spark Delta write; when a concurrent commit conflicts with it, run it again on
    the new snapshot, after a random, growing backoff (:data:`COMMIT_ATTEMPTS`)."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    for attempt in range(COMMIT_ATTEMPTS):
        try:
            return action()
        except (Py4JJavaError, PySparkException) as e:
            if not is_concurrent_conflict(e):
                raise
            log.info("%s: concurrent commit, attempt %d: %s", what, attempt + 1, e)
            time.sleep(min(BACKOFF_MAX_S, BACKOFF_S * 2**attempt) * random.uniform(0.5, 1.5))
    raise CommitConflictError(
        f"{what}: {COMMIT_ATTEMPTS} attempts conflicted with concurrent writers; re-run"
    )


class ReaderFeaturesError(ValueError):
    """A Delta table uses reader features delta-rs does not read (e.g. deletion vectors):
    read it with Spark (:meth:`Lakehouse.read`)."""


def _join(base: str, rel: str) -> str:
    """A file of a table: its path in the log (relative, percent-escaped) under ``base``
    (the table's path in its pyarrow file system)."""
    from urllib.parse import unquote

    return f"{base}/{unquote(rel)}"


def _delta_dataset(
    dt: Any, path: str, schema: pa.Schema, partition_by: Sequence[str], fs: Any = None
) -> Any:
    """A pyarrow dataset of a Delta snapshot's files under ``path`` in ``fs`` (default:
    the local file system; a ``pyarrow.fs.S3FileSystem`` and ``bucket/key`` on S3).

    The files and partition values come from delta-rs's snapshot (the log, not a folder
    listing); the scan is pyarrow's own. (``DeltaTable.to_pyarrow_dataset`` scans through
    delta-rs's file system handler, whose threads abort the interpreter at exit.)
    """
    import pyarrow.compute as pc
    import pyarrow.fs as pafs

    acts = pa.table(dt.get_add_actions(flatten=True))
    paths = [_join(path, p) for p in acts.column("path").to_pylist()]
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
        filesystem=fs or pafs.LocalFileSystem(), partitions=parts,
    )  # fmt: skip
