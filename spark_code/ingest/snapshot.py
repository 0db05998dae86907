"""What is in the image root now: a cheap listing (names, sizes, mtimes; no contents) and its diff with the last one."""

from __future__ import annotations

import base64
import json
import logging
import time
import zlib
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from spark_code.storage import files, tree, uris

logger = logging.getLogger(__name__)

Entry = tree.Entry  # (size in bytes, modification time in ns)


def list_root(root: str, client=None) -> dict[str, Entry]:
    """The snapshot of a local folder or s3:// prefix: every file the Spark listing lists, by path relative to the
    root; stat / ListObjectsV2 only (the same walk as spark_code.ingest.images.list_frame: the two always agree)."""
    return tree.walk(root, client).files


@dataclass
class Changes:
    """New, changed and deleted files since the last snapshot, and files deferred because still being written."""

    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    accepted: dict[str, Entry] = field(default_factory=dict, repr=False)  # the new and changed files' entries

    def __bool__(self) -> bool:
        return bool(self.new or self.changed or self.deleted)

    def counts(self) -> dict[str, int]:
        """How many files of each kind."""
        return {kind: len(getattr(self, kind)) for kind in KINDS}


KINDS = ("new", "changed", "deleted", "deferred")


ENTRY_COLUMNS = ("path", "size", "mtime_ns")


def entries_table(entries: dict[str, Entry]) -> pa.Table:
    """{path: (size, mtime_ns)} as a table (`path`, `size`, `mtime_ns`), built column by column."""
    values = entries.values()
    columns = (list(entries), [entry[0] for entry in values], [entry[1] for entry in values])
    types = (pa.string(), pa.int64(), pa.int64())
    return pa.table([pa.array(c, t) for c, t in zip(columns, types, strict=True)], names=list(ENTRY_COLUMNS))


def entries_of(table: pa.Table) -> dict[str, Entry]:
    """A table of entries (see `entries_table`) as {path: (size, mtime_ns)}."""
    sizes, mtimes = table.column("size").to_pylist(), table.column("mtime_ns").to_pylist()
    return dict(zip(table.column("path").to_pylist(), zip(sizes, mtimes, strict=True), strict=True))


class State:
    """The sensor's memory between ticks: the accepted snapshot (a table: the corpus, compared and stored without
    a Python object per file) and the few files seen still moving last tick (`pending`, a dict)."""

    def __init__(self, accepted: dict[str, Entry] | pa.Table | None = None, pending: dict[str, Entry] | None = None):
        self.table = accepted if isinstance(accepted, pa.Table) else entries_table(accepted or {})
        self.pending = dict(pending or {})

    @property
    def accepted(self) -> dict[str, Entry]:
        """The accepted snapshot as {path: (size, mtime_ns)} (a Python object per file: for small states)."""
        return entries_of(self.table)

    def lookup(self, paths: list[str]) -> dict[str, Entry]:
        """The accepted entries of `paths` (those it holds)."""
        if not paths:
            return {}
        return entries_of(
            self.table.filter(pc.is_in(self.table.column("path"), value_set=pa.array(paths, pa.string())))
        )

    def replaced(self, removed: list[str], added: dict[str, Entry], pending: dict[str, Entry]) -> State:
        """A new state: these accepted paths removed (deleted, or changed: their new entry is in `added`), then
        these entries added (new or changed paths); with `pending`."""
        kept = self.table
        if removed:
            gone = pc.is_in(kept.column("path"), value_set=pa.array(removed, pa.string()))
            kept = kept.filter(pc.invert(gone))
        return State(pa.concat_tables([kept, entries_table(added)]) if added else kept, pending)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, State) or self.pending != other.pending:
            return False
        if self.table is other.table or self.table.num_rows != other.table.num_rows:
            return self.table is other.table
        return self.table.sort_by("path").equals(other.table.sort_by("path"))

    def encode(self) -> str:
        """A compact cursor string (zlib + base64 of JSON)."""
        raw = json.dumps({"accepted": self.accepted, "pending": self.pending}, separators=(",", ":"))
        return base64.b64encode(zlib.compress(raw.encode(), 9)).decode()

    @classmethod
    def decode(cls, cursor: str | None) -> State:
        """The state a cursor string holds (empty for no cursor)."""
        if not cursor:
            return cls()
        data = json.loads(zlib.decompress(base64.b64decode(cursor)))
        return cls(
            {k: tuple(v) for k, v in data["accepted"].items()}, {k: tuple(v) for k, v in data["pending"].items()}
        )


DEFAULT_SETTLE_S = 30.0  # a new file is taken once unmodified this long (a copy still running is not taken)


def advance(
    state: State, current: dict[str, Entry], settle_s: float, now_ns: int | None = None
) -> tuple[State, Changes]:
    """Compare a new snapshot with the state; return the next state and what changed.

    A new or changed file is accepted when it has not been modified for `settle_s` seconds, or when it has the
    same size and mtime as on the previous tick; otherwise it may still be being written and waits (deferred).
    The corpus is compared as tables (two hash joins); only the files that moved are looked at one by one.
    """
    now_ns = now_ns if now_ns is not None else time.time_ns()
    now = entries_table(current)
    moved = entries_of(now.join(state.table, list(ENTRY_COLUMNS), join_type="left anti"))
    gone = state.table.join(now, "path", join_type="left anti").column("path").to_pylist()
    known = state.lookup(list(moved))
    changes, pending = Changes(deleted=sorted(gone)), {}
    for path, entry in sorted(moved.items()):
        if now_ns - entry[1] >= settle_s * 1e9 or state.pending.get(path) == entry:
            changes.accepted[path] = entry
            (changes.changed if path in known else changes.new).append(path)
        else:
            pending[path] = entry
            changes.deferred.append(path)
    return state.replaced([*gone, *changes.changed], changes.accepted, pending), changes


def run_key(previous_cursor: str | None, changes: Changes) -> str:
    """A short id of the snapshot a tick accepted (the sensor's run key: one run per distinct snapshot): the
    previous snapshot's cursor and the changes applied to it, with the accepted entries. The same tick evaluated again
    gets the same key; it costs what the batch costs, not a hash of every entry of the corpus."""
    import hashlib

    entries = sorted(changes.accepted.items())
    key = json.dumps([previous_cursor or "", entries, changes.deleted])
    return hashlib.sha1(key.encode()).hexdigest()[:16]


# ---- a cursor that stays small: the snapshot itself lives as Parquet beside the tables --------------------------

KEEP_SNAPSHOTS = 3


def _state_table(state: State) -> pa.Table:
    pending = entries_table(state.pending)
    flags = (pa.repeat(False, state.table.num_rows), pa.repeat(True, pending.num_rows))
    tables = [t.append_column("pending", f) for t, f in zip((state.table, pending), flags, strict=True)]
    return pa.concat_tables(tables)


def _state_of(table: pa.Table) -> State:
    pending = table.column("pending")
    accepted = table.filter(pc.invert(pending)).select(list(ENTRY_COLUMNS))
    return State(accepted, entries_of(table.filter(pending)))


def store(state: State, folder: str) -> str:
    """Write the state as Parquet in `folder` (local or s3://) and return a cursor of a few bytes pointing at it.

    The cursor's size does not grow with the corpus; the newest KEEP_SNAPSHOTS files are kept.
    """
    import hashlib

    sink = pa.BufferOutputStream()
    pq.write_table(_state_table(state), sink, compression="zstd")
    data = sink.getvalue().to_pybytes()
    name = f"snapshot-{time.time_ns():020d}-{hashlib.sha1(data).hexdigest()[:12]}.parquet"
    uri = _write(folder, name, data)
    return json.dumps({"snapshot": uri, "files": state.table.num_rows, "pending": len(state.pending)})


def restore(cursor: str | None) -> State:
    """The state behind a cursor: a pointer written by `store`, or an inline cursor of `State.encode`."""
    if not cursor or not cursor.startswith("{"):
        return State.decode(cursor)
    uri = json.loads(cursor)["snapshot"]
    try:
        return _state_of(pq.read_table(files.open_input(uri)))
    except (OSError, ValueError) as error:  # removed by hand: the next batch's diff with the tables still holds
        logger.warning("sensor snapshot %s unreadable (%s): starting from an empty snapshot", uri, error)
        return State()


# ---- the batch a tick found, handed to the run it requests (raw_images then lists nothing) ------------------------

KEEP_FILES = 20  # per kind (snapshot-, changes-): a run queued behind more ticks than this lists the root itself


def store_changes(changes: Changes, before: State, folder: str) -> str:
    """Write what a tick found as Parquet in `folder` (rel path, size, mtime, new/changed/deleted; a deleted file
    with its last entry); return its URI, for the run that ingests exactly this batch."""
    import hashlib

    accepted, deleted = changes.accepted, before.lookup(changes.deleted)
    rows = [(path, *accepted[path], kind) for kind in ("new", "changed") for path in getattr(changes, kind)]
    rows += [(path, *deleted[path], "deleted") for path in changes.deleted]
    columns = list(zip(*rows, strict=True)) if rows else [[], [], [], []]
    types = (pa.string(), pa.int64(), pa.int64(), pa.string())
    table = pa.table(
        [pa.array(c, type=t) for c, t in zip(columns, types, strict=True)], names=["path", "size", "mtime_ns", "change"]
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    data = sink.getvalue().to_pybytes()
    return _write(folder, f"changes-{time.time_ns():020d}-{hashlib.sha1(data).hexdigest()[:12]}.parquet", data)


def load_changes(uri: str) -> list[tuple[str, int, int, str]] | None:
    """The (rel path, size, mtime_ns, change) rows `store_changes` wrote; None if the file is gone or unreadable."""

    try:
        table = pq.read_table(files.open_input(uri))
    except (OSError, ValueError) as error:
        logger.warning("sensor changes %s unreadable (%s): the batch lists the root instead", uri, error)
        return None
    return list(zip(*(table.column(c).to_pylist() for c in ("path", "size", "mtime_ns", "change")), strict=True))


def _write(folder: str, name: str, data: bytes) -> str:
    """Write file `name` whole into `folder`, keep the newest files of its kind; return its URI."""
    uri = uris.join(folder, name)
    files.write_whole(uri, data)
    kind = name.split("-", 1)[0] + "-"
    files.prune(folder, kind, ".parquet", KEEP_SNAPSHOTS if kind == "snapshot-" else KEEP_FILES)
    return uri
