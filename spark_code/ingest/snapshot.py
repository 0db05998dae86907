"""What is in the image root now: a cheap listing (names, sizes, mtimes; no contents) and its diff with the last one."""

from __future__ import annotations

import base64
import json
import logging
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from spark_code.ingest import listing
from spark_code.storage import files
from spark_code.storage.s3a import is_s3

logger = logging.getLogger(__name__)

Entry = listing.Entry  # (size in bytes, modification time in ns)


def list_local(root: str) -> dict[str, Entry]:
    """Every file under a local root that the Spark listing lists, by path relative to the root; stat only."""
    return listing.walk_local(root).files  # the same walk as spark_code.ingest.images.list_frame: the two always agree


def list_s3(root: str, client=None) -> dict[str, Entry]:
    """Every object under an s3:// prefix that the Spark listing lists, by key relative to the prefix (no GETs)."""
    return listing.walk_s3(root, client).files


def list_root(root: str) -> dict[str, Entry]:
    """The snapshot of a local folder or s3:// prefix."""
    return list_s3(root) if is_s3(root) else list_local(root)


@dataclass
class Changes:
    """New, changed and deleted files since the last snapshot, and files deferred because still being written."""

    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.new or self.changed or self.deleted)

    def counts(self) -> dict[str, int]:
        """How many files of each kind."""
        return {k: len(v) for k, v in vars(self).items()}


@dataclass
class State:
    """The sensor's memory between ticks: the accepted snapshot and the files seen still moving last tick."""

    accepted: dict[str, Entry] = field(default_factory=dict)
    pending: dict[str, Entry] = field(default_factory=dict)

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


def advance(
    state: State, current: dict[str, Entry], settle_s: float, now_ns: int | None = None
) -> tuple[State, Changes]:
    """Compare a new snapshot with the state; return the next state and what changed.

    A new or changed file is accepted when it has not been modified for `settle_s` seconds, or when it has the
    same size and mtime as on the previous tick; otherwise it may still be being written and waits (deferred).
    """
    now_ns = now_ns if now_ns is not None else time.time_ns()
    get = state.accepted.get
    moved = [path for path, entry in current.items() if get(path) != entry]  # the one pass over every file
    changes, accepted, pending = Changes(), dict(state.accepted), {}
    for path in moved:
        entry = current[path]
        settled = now_ns - entry[1] >= settle_s * 1e9 or state.pending.get(path) == entry
        if not settled:
            pending[path] = entry
            changes.deferred.append(path)
            continue
        (changes.changed if path in state.accepted else changes.new).append(path)
        accepted[path] = entry
    for path in state.accepted.keys() - current.keys():
        changes.deleted.append(path)
        del accepted[path]
    for kind in (changes.new, changes.changed, changes.deleted, changes.deferred):
        kind.sort()
    return State(accepted, pending), changes


def run_key(previous_cursor: str | None, changes: Changes, state: State) -> str:
    """A short id of the snapshot a tick accepted (the sensor's run key: one run per distinct snapshot): the
    previous snapshot's cursor and the changes applied to it, with the new entries. The same tick evaluated again
    gets the same key; it costs what the batch costs, not a hash of every entry of the corpus."""
    import hashlib

    entries = [(path, state.accepted[path]) for path in (*changes.new, *changes.changed)]
    key = json.dumps([previous_cursor or "", entries, changes.deleted])
    return hashlib.sha1(key.encode()).hexdigest()[:16]


# ---- a cursor that stays small: the snapshot itself lives as Parquet beside the tables --------------------------

KEEP_SNAPSHOTS = 3


def _state_table(state: State):
    import pyarrow as pa

    entries = [*state.accepted.values(), *state.pending.values()]
    columns = {
        "path": pa.array([*state.accepted, *state.pending], pa.string()),
        "size": pa.array([entry[0] for entry in entries], pa.int64()),
        "mtime_ns": pa.array([entry[1] for entry in entries], pa.int64()),
        "pending": pa.array([False] * len(state.accepted) + [True] * len(state.pending), pa.bool_()),
    }
    return pa.table(columns)


def _state_of(table) -> State:
    import pyarrow.compute as pc

    def entries(rows) -> dict[str, Entry]:
        sizes, mtimes = rows.column("size").to_pylist(), rows.column("mtime_ns").to_pylist()
        return dict(zip(rows.column("path").to_pylist(), zip(sizes, mtimes, strict=True), strict=True))

    pending = table.column("pending")
    return State(entries(table.filter(pc.invert(pending))), entries(table.filter(pending)))


def store(state: State, folder: str) -> str:
    """Write the state as Parquet in `folder` (local or s3://) and return a cursor of a few bytes pointing at it.

    The cursor's size does not grow with the corpus; the newest KEEP_SNAPSHOTS files are kept.
    """
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(_state_table(state), sink, compression="zstd")
    data = sink.getvalue().to_pybytes()
    name = f"snapshot-{time.time_ns():020d}-{hashlib.sha1(data).hexdigest()[:12]}.parquet"
    uri = _write(folder, name, data)
    return json.dumps({"snapshot": uri, "files": len(state.accepted), "pending": len(state.pending)})


def restore(cursor: str | None) -> State:
    """The state behind a cursor: a pointer written by `store`, or an inline cursor of `State.encode`."""
    if not cursor or not cursor.startswith("{"):
        return State.decode(cursor)
    import pyarrow.parquet as pq

    uri = json.loads(cursor)["snapshot"]
    try:
        return _state_of(pq.read_table(files.open_input(uri)))
    except (OSError, ValueError) as error:  # removed by hand: the next batch's diff with the tables still holds
        logger.warning("sensor snapshot %s unreadable (%s): starting from an empty snapshot", uri, error)
        return State()


# ---- the batch a tick found, handed to the run it requests (raw_images then lists nothing) ------------------------

KEEP_FILES = 20  # per kind (snapshot-, changes-): a run queued behind more ticks than this lists the root itself


def store_changes(changes: Changes, before: State, state: State, folder: str) -> str:
    """Write what a tick found as Parquet in `folder` (rel path, size, mtime, new/changed/deleted; a deleted file
    with its last entry); return its URI, for the run that ingests exactly this batch."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [(path, *state.accepted[path], kind) for kind in ("new", "changed") for path in getattr(changes, kind)]
    rows += [(path, *before.accepted[path], "deleted") for path in changes.deleted]
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
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(files.open_input(uri))
    except (OSError, ValueError) as error:
        logger.warning("sensor changes %s unreadable (%s): the batch lists the root instead", uri, error)
        return None
    return list(zip(*(table.column(c).to_pylist() for c in ("path", "size", "mtime_ns", "change")), strict=True))


def _write(folder: str, name: str, data: bytes) -> str:
    """Write file `name` whole into `folder`, keep the newest files of its kind; return its URI."""
    uri = f"{folder.rstrip('/')}/{name}" if is_s3(folder) else str(Path(folder.removeprefix("file:")) / name)
    files.write_whole(uri, data)
    kind = name.split("-", 1)[0] + "-"
    files.prune(folder, kind, ".parquet", KEEP_SNAPSHOTS if kind == "snapshot-" else KEEP_FILES)
    return uri
