"""What is in the image root now: a cheap listing (names, sizes, mtimes; no contents) and its diff with the last one."""

from __future__ import annotations

import base64
import json
import logging
import os
import time
import zlib
from dataclasses import dataclass, field
from urllib.parse import urlparse

from spark_code.images import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

Entry = tuple[int, int]  # (size in bytes, modification time in ns)


SUFFIXES = tuple(f".{extension.lower()}" for extension in IMAGE_EXTENSIONS)


def _is_image(name: str) -> bool:
    return name.lower().endswith(SUFFIXES)  # the same files as the Spark listing's glob filter


def list_local(root: str) -> dict[str, Entry]:
    """Every image file under a local root (recursive), by path relative to the root; stat only."""
    base = urlparse(root).path if root.startswith("file:") else root
    found = {}
    for folder, _, names in os.walk(base):
        for name in names:
            if _is_image(name):
                stat = os.stat(os.path.join(folder, name))
                found[os.path.relpath(os.path.join(folder, name), base)] = (stat.st_size, stat.st_mtime_ns)
    return found


def list_s3(root: str, client=None) -> dict[str, Entry]:
    """Every image object under an s3:// prefix, by key relative to the prefix (ListObjectsV2, no GETs)."""
    import boto3

    parsed = urlparse(root)
    prefix = parsed.path.lstrip("/").rstrip("/") + "/"
    client = client or boto3.client("s3")
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=parsed.netloc, Prefix=prefix):
        for item in page.get("Contents", []):
            key = item["Key"][len(prefix) :]
            if _is_image(key.rsplit("/", 1)[-1]):
                found[key] = (item["Size"], int(item["LastModified"].timestamp() * 1e9))
    return found


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
