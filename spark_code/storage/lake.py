"""Delta tables read without Spark (delta-rs): current rows as Arrow, versions, what each commit recorded."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import TableNotFoundError as _NoDeltaTable

from spark_code.storage import files, uris
from spark_code.storage.uris import is_s3

# Operations that rewrite files without changing rows: a consumer has nothing to take from them.
NO_DATA_CHANGE = {"OPTIMIZE", "VACUUM START", "VACUUM END", "SET TBLPROPERTIES"}
# The tables an output holds (each a Delta table at <output>/<name>).
TABLES = ("raw_images", "cnn_features", "quarantined_images", "training_features", "scaled_features", "pca_features")
KEY = "path"  # every table has one row per photo path
# Every table records its changes (a derived table reads them) and is checkpointed every 10 commits (Delta's
# default). Deletion vectors stay off: with pyspark 3.5.8 and delta-spark 3.3.2 a MERGE or DELETE on a table with
# them fails (AMBIGUOUS_REFERENCE filePath), so a merge rewrites the files holding the paths it touches.
TABLE_PROPERTIES = {
    "delta.enableChangeDataFeed": "true",
    "delta.enableDeletionVectors": "false",
    "delta.checkpointInterval": "10",  # Spark's default, said for delta-rs too (its own default is 100)
}
# One writer at a time on S3 (the run lock), as Spark's S3SingleDriverLogStore assumes: no locking service.
S3_WRITE_OPTIONS = {"AWS_S3_ALLOW_UNSAFE_RENAME": "true"}
ROWS_REMOVED = "fruits.rowsRemoved"  # commitInfo field: the rows a delta-rs overwrite removed
HISTORY_LIMIT = 50  # commits searched back for the newest one this project wrote (compactions come between)
# The most paths a delta-rs commit names in its predicate: its predicate handling recurses once per literal, and
# deltalake 1.6.6 overflows an 8 MiB thread stack (a segfault) near 15,000 paths (5,000: 0.5 s, +60 MiB).
# A batch touching more (a whole root copied again, new CNN settings) is merged by Spark (`tables.commit`).
MAX_NAMED_PATHS = 5_000


_SPARK_METRIC = {
    "num_added_rows": "numOutputRows",
    "num_target_rows_inserted": "numTargetRowsInserted",
    "num_target_rows_updated": "numTargetRowsUpdated",
    "num_target_rows_deleted": "numTargetRowsDeleted",
    "num_deleted_rows": "numDeletedRows",
}


@dataclass(frozen=True)
class Commit:
    """One commit of a table: its version, operation, what this project recorded in it (`userMetadata`: the
    batch, the model that derived the rows) and the rows it added and removed (Delta's operation metrics)."""

    version: int
    operation: str
    recorded: dict = field(default_factory=dict)
    rows_added: int = 0
    rows_removed: int = 0
    overwrite: bool = False  # a WRITE that replaced the table's rows (with a predicate: the rows matching it)

    @classmethod
    def from_history(cls, entry: dict) -> Commit:
        """A commit from a delta-rs history entry."""
        found = {k: int(v) for k, v in (entry.get("operationMetrics") or {}).items() if str(v).isdigit()}
        metrics = {_SPARK_METRIC.get(k, k): v for k, v in found.items()}  # delta-rs' names as Spark's
        updated = metrics.get("numTargetRowsUpdated", 0)
        added = metrics.get("numOutputRows", 0) if entry.get("operation") == "WRITE" else 0
        added += metrics.get("numTargetRowsInserted", 0) + updated
        removed = metrics.get("numTargetRowsDeleted", 0) + metrics.get("numDeletedRows", 0) + updated
        removed += int(entry.get(ROWS_REMOVED) or 0)  # what a delta-rs overwrite of this project recorded
        text = entry.get("userMetadata") or ""
        try:
            recorded = json.loads(text) if text else {}
        except ValueError:
            recorded = {}
        overwrite = (entry.get("operationParameters") or {}).get("mode") == "Overwrite"
        return cls(int(entry["version"]), entry.get("operation", ""), recorded, added, removed, overwrite)


class OldLayoutError(RuntimeError):
    """An output written before its tables were Delta tables; the message says what to run."""


def refuse_old_layout(output: str) -> None:
    """Fail, naming the folder and what to run, when `output` holds a table in the layout before Delta Lake
    (`<table>/v-<time>-<id>/_COMMITTED` folders, one per batch): never read or write it as if it were current."""
    root = output.rstrip("/")
    for name in TABLES:
        folder = f"{root}/{name}"
        entries = files.list_names(folder)
        if entries and "_delta_log" not in entries:
            raise OldLayoutError(
                f"{folder} holds a table in the layout before Delta Lake (v-*/_COMMITTED folders). Move the old "
                f"output aside (e.g. mv {root.removeprefix('file:')} {root.removeprefix('file:')}.pre-delta, or "
                "set FRUITS_OUTPUT_URI to a new folder) and run `python -m fruits_assets` again: it rebuilds "
                "every table and model from the photos."
            )


def storage_options(uri: str) -> dict[str, str]:
    """delta-rs options for `uri`: on S3 the standard credential chain and region, plus plain HTTP when
    AWS_ENDPOINT_URL names an http:// S3 API (an emulator); nothing for a local folder."""
    if not is_s3(uri):
        return {}
    options = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
    if endpoint.startswith("http://"):
        options["AWS_ALLOW_HTTP"] = "true"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["AWS_REGION"] = region
    return options


def table_of(output: str, name: str) -> str:
    """Where table `name` of an output (a local folder or s3://) is."""
    return f"{uris.qualify(output)}/{name}"


def table_uri(uri: str) -> str:
    """The URI delta-rs opens: s3a:// read as s3://, `file:` as a plain path."""
    if uri.startswith("s3a://"):
        return "s3://" + uri[len("s3a://") :]
    return uri.removeprefix("file:")


def open_table(uri: str) -> DeltaTable | None:
    """The Delta table at `uri` as of its newest version, or None when there is none."""
    try:
        return DeltaTable(table_uri(uri), storage_options=storage_options(uri))
    except _NoDeltaTable:
        return None


def read(uri: str, columns: list[str] | None = None, where: pc.Expression | None = None) -> pa.Table | None:
    """The current rows of the table at `uri` (only `columns`, only rows matching `where`, if given: the Parquet
    statistics skip what cannot match), or None when there is no table."""
    table = open_table(uri)
    if table is None:
        return None
    if where is None:
        return table.to_pyarrow_table(columns=columns)
    return table.to_pyarrow_dataset().to_table(columns=columns, filter=where)


def scan(uri: str, columns: list[str], where: pc.Expression) -> Iterator[pa.RecordBatch] | None:
    """`read`, as record batches: a big table is never whole in memory (None when there is no table)."""
    table = open_table(uri)
    if table is None:
        return None
    return iter(table.to_pyarrow_dataset().to_batches(columns=columns, filter=where))


def version(uri: str) -> int | None:
    """The newest version of the table at `uri` (None: no table)."""
    table = open_table(uri)
    return None if table is None else table.version()


def consumed(uri: str, source: str) -> int:
    """The newest version of table `source` whose changes the table at `uri` has taken (-1: none yet), as its
    commits record it in Delta's transaction identifiers (appId = the source's name)."""
    table = open_table(uri)
    if table is None:
        return -1
    found = table.transaction_version(source)
    return -1 if found is None else int(found)


def history(uri: str, limit: int = HISTORY_LIMIT) -> list[Commit]:
    """The newest commits of the table at `uri`, newest first ([] when there is no table)."""
    table = open_table(uri)
    return [] if table is None else [Commit.from_history(entry) for entry in table.history(limit)]


def commit_at(uri: str, version: int) -> Commit | None:
    """The commit that made `version` of the table at `uri` (None when it is not in the log any more)."""
    table = open_table(uri)
    if table is None or version > table.version():
        return None
    entries = table.history(table.version() - version + 1)
    return next((Commit.from_history(e) for e in entries if int(e["version"]) == version), None)


def last_commit(uri: str) -> Commit | None:
    """The newest commit this project wrote to the table at `uri` (compactions and the like skipped)."""
    return next((c for c in history(uri) if c.operation not in NO_DATA_CHANGE), None)


def data_version(uri: str) -> int | None:
    """The version of the newest commit that changed rows of the table at `uri` (None: no table): what a table
    derived from it must have taken to be current."""
    commit = last_commit(uri)
    return None if commit is None else commit.version


def change_feed(uri: str, after: int, until: int) -> pa.Table:
    """The change data feed of versions `after`+1 … `until` of the table at `uri`, read on the driver: each
    changed row with its `_change_type` and `_commit_version` (Spark's names), strings as plain strings."""
    table = open_table(uri)
    if table is None:
        raise _NoDeltaTable(f"no table at {uri!r}")
    feed = pa.table(table.load_cdf(starting_version=after + 1, ending_version=until).read_all())
    fields = [
        pa.field(f.name, pa.string()) if pa.types.is_string_view(f.type) else f
        for f in feed.schema
        if f.name != "_commit_timestamp"
    ]
    feed = feed.select([f.name for f in fields]).cast(pa.schema(fields))
    return feed.set_column(
        feed.schema.get_field_index("_commit_version"),
        "_commit_version",
        feed.column("_commit_version").cast(pa.int64()),
    )


def rows(uri: str) -> int:
    """How many rows the table at `uri` holds now, from the log's file statistics (no data read; 0: no table)."""
    table = open_table(uri)
    return 0 if table is None else rows_of(table)


def rows_of(table: DeltaTable) -> int:
    """How many rows an open table's version holds, from the log's file statistics."""
    actions = pa.table(table.get_add_actions(flatten=True))  # delta-rs hands Arrow over by the C data interface
    return int(pc.sum(actions.column("num_records")).as_py() or 0) if actions.num_rows else 0


def write(uri: str, rows: pa.Table, removed: list[str] | None = None, replace: bool = False, recorded=None) -> Commit:
    """One commit of rows the driver holds (the raw table's batch), with delta-rs: `rows` upserted by path and the
    `removed` paths deleted, or with `replace` the table's rows replaced (created on first write); `recorded`
    goes to the commit's `userMetadata`, as Spark's commits have it. Spark reads what this writes, its change data
    feed included, and the other way round.

    With removals the commit is an overwrite of the rows whose path is removed or upserted (Delta's replaceWhere):
    it rewrites the files that hold them, as a MERGE would, and records their change data. (delta-rs' MERGE would
    write Arrow string views into the Parquet schema, on which pyarrow's filters fail.)"""
    table = open_table(uri)
    options = {**storage_options(uri), **(S3_WRITE_OPTIONS if is_s3(uri) else {})}
    write = functools.partial(write_deltalake, table_uri(uri), rows, storage_options=options)
    if table is None or replace:
        gone = 0 if table is None else rows_of(table)
        properties = _properties(recorded, gone)
        write(mode="overwrite", schema_mode="overwrite", configuration=TABLE_PROPERTIES, commit_properties=properties)
    elif removed:
        touched = touched_paths(rows, removed)
        if len(touched) > MAX_NAMED_PATHS:
            raise ValueError(
                f"{uri}: a delta-rs commit names at most {MAX_NAMED_PATHS} paths, this one touches {len(touched)}: "
                "commit it with Spark (tables.commit with a Spark session)"
            )
        predicate = f"{KEY} IN ({', '.join(map(sql_string, touched))})"
        write(mode="overwrite", predicate=predicate, commit_properties=_properties(recorded, len(set(removed))))
    else:
        write(mode="append", commit_properties=_properties(recorded, 0))
    return history(uri, 1)[0]


def touched_paths(rows: pa.Table, removed: list[str] | None) -> list[str]:
    """The paths a commit of `rows` upserted and `removed` deleted touches (sorted, each once)."""
    return sorted(set(removed or ()) | set(rows.column(KEY).to_pylist()))


def _properties(recorded: dict | None, rows_removed: int) -> CommitProperties:
    """What a delta-rs commit records: `userMetadata` as Spark's commits have it, and the rows it removed (its
    operation metrics count only files removed)."""
    metadata = {"userMetadata": json.dumps(recorded or {}, sort_keys=True), ROWS_REMOVED: str(rows_removed)}
    return CommitProperties(custom_metadata=metadata)


def sql_string(value: str) -> str:
    """`value` as an SQL string literal (quotes doubled; any other character stands for itself)."""
    return "'" + value.replace("'", "''") + "'"
