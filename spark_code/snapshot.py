"""What is in the image root now: a cheap listing (names, sizes, mtimes; no contents) and its diff with the last one."""

from __future__ import annotations

import base64
import json
import logging
import time
import zlib
from dataclasses import dataclass, field

from spark_code import listing

logger = logging.getLogger(__name__)

Entry = listing.Entry  # (size in bytes, modification time in ns)


def list_local(root: str) -> dict[str, Entry]:
    """Every file under a local root that the Spark listing lists, by path relative to the root; stat only."""
    return listing.walk_local(root).files  # the same walk as spark_code.images.list_root: the two always agree


def list_s3(root: str, client=None) -> dict[str, Entry]:
    """Every object under an s3:// prefix that the Spark listing lists, by key relative to the prefix (no GETs)."""
    return listing.walk_s3(root, client).files


def list_root(root: str) -> dict[str, Entry]:
    """The snapshot of a local folder or s3:// prefix."""
    return list_s3(root) if root.startswith("s3://") else list_local(root)


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
    changes, accepted, pending = Changes(), dict(state.accepted), {}
    for path, entry in current.items():
        if state.accepted.get(path) == entry:
            continue
        settled = now_ns - entry[1] >= settle_s * 1e9 or state.pending.get(path) == entry
        if not settled:
            pending[path] = entry
            changes.deferred.append(path)
            continue
        (changes.changed if path in state.accepted else changes.new).append(path)
        accepted[path] = entry
    for path in set(state.accepted) - set(current):
        changes.deleted.append(path)
        del accepted[path]
    for kind in (changes.new, changes.changed, changes.deleted, changes.deferred):
        kind.sort()
    return State(accepted, pending), changes


def digest(state: State) -> str:
    """A short id of an accepted snapshot (the sensor's run key: one run per distinct snapshot)."""
    import hashlib

    return hashlib.sha1(json.dumps(sorted(state.accepted.items())).encode()).hexdigest()[:16]
