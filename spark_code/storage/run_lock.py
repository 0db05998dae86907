"""One run at a time per output: an `flock` the kernel keeps while its holder lives (locally), or an S3 object
created with a conditional PUT."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlparse

from spark_code.storage.uris import is_s3

logger = logging.getLogger(__name__)

LOCK_FILE = "_RUN_LOCK"


class OutputInUseError(RuntimeError):
    """Another live run holds the output folder."""


@dataclass(frozen=True)
class RunLock:
    """A held local lock: the lock file, who holds it, and the open file whose `flock` the kernel keeps for as long
    as this process lives (`handle` is None when re-entered: only the acquisition that took it releases it)."""

    path: Path
    owner: str
    handle: IO | None = field(default=None, compare=False, repr=False)

    @property
    def created(self) -> bool:
        """Whether this acquisition took the lock (False when it re-entered one its run already holds)."""
        return self.handle is not None

    def release(self) -> None:
        """Remove the lock file and drop the kernel lock, if this acquisition took it; a re-entry does nothing."""
        if self.handle is None or self.handle.closed:
            return
        _HELD.pop(str(self.path), None)
        self.path.unlink(missing_ok=True)  # before unlocking: a waiter that got the old file sees it is gone
        self.handle.close()  # closing the file drops the flock


_HELD: dict[str, RunLock] = {}  # the locks this process holds, by path: flock is per open file, not per process


def _read(path: Path) -> dict:
    """The holder's record ({} while it is being written, or when it cannot be read)."""
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def acquire(base_uri: str, owner: str) -> RunLock | S3RunLock | None:
    """Lock the output `base_uri` (a local folder, or an s3:// prefix) for `owner` (a run id).

    Locally the lock is an `flock` on the lock file, which the kernel releases when its holder dies however it
    dies: a lock left by a dead process is free, a half-written record never makes a live lock look stale. On S3 it
    is an object created with a conditional PUT (taken over when older than S3_STALE_AFTER_S). Re-entrant for the
    same owner: the re-entry's release leaves the lock to the acquisition that took it. Raises OutputInUseError,
    naming the holder, when another run holds it.
    """
    parsed = urlparse(base_uri)
    record = {"owner": owner, "pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    if is_s3(base_uri):
        return _acquire_s3(base_uri, record)
    if parsed.scheme not in ("", "file"):
        logger.info("no run lock on %s: only local folders and s3:// are locked", base_uri)
        return None
    path = Path(parsed.path if parsed.scheme else base_uri) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    held = _HELD.get(str(path))
    if held is not None:
        if held.owner != owner:
            raise OutputInUseError(_in_use(base_uri, _read(path)))
        return RunLock(path, owner)
    for _ in range(3):
        handle = open(path, "a+")  # noqa: SIM115 -- kept open: the lock lives as long as the file is open
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            holder = _holder(path)
            if holder.get("owner") == owner:  # the same run in another process (a step of it)
                return RunLock(path, owner)
            raise OutputInUseError(_in_use(base_uri, holder)) from None
        if not _same_file(handle, path):  # released and removed while we waited for it: take the new file
            handle.close()
            continue
        left = _read(path)
        if left:
            logger.warning("taking over the run lock of %s left by a process that is gone: %s", base_uri, left)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(record))
        handle.flush()
        lock = _HELD[str(path)] = RunLock(path, owner, handle)
        return lock
    raise OutputInUseError(f"could not lock {base_uri}: its run lock {path} keeps changing hands; try again")


def _same_file(handle: IO, path: Path) -> bool:
    try:
        return os.fstat(handle.fileno()).st_ino == path.stat().st_ino
    except FileNotFoundError:
        return False


def _holder(path: Path, wait_s: float = 1.0) -> dict:
    """The holder's record, waiting up to `wait_s` for a holder that is still writing it."""
    deadline = time.monotonic() + wait_s
    while not (holder := _read(path)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return holder


def _in_use(base_uri: str, holder: dict) -> str:
    if not holder:  # held (the kernel says so) but its record is not written yet
        return (
            f"output {base_uri!r} is in use by another run (its lock record is still being written): wait for that "
            "run to finish, or point FRUITS_OUTPUT_URI elsewhere. Nothing was written by this run."
        )
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("since", 0)))
    return (
        f"output {base_uri!r} is in use by run {holder.get('owner')} (pid {holder.get('pid')} on "
        f"{holder.get('host')}, since {since}): wait for that run to finish, or point FRUITS_OUTPUT_URI elsewhere. "
        "Nothing was written by this run."
    )


S3_STALE_AFTER_S = 24 * 3600  # an S3 lock this old is taken over: its run (on another host) cannot be asked


@dataclass(frozen=True)
class S3RunLock:
    """A lock held as an S3 object created with a conditional PUT (If-None-Match: *)."""

    client: object
    bucket: str
    key: str
    owner: str
    created: bool  # False when re-entered: only the acquisition that created it releases it

    def release(self) -> None:
        """Delete the lock object if this acquisition created it and it is still ours."""
        if self.created and (_read_s3(self.client, self.bucket, self.key) or {}).get("owner") == self.owner:
            self.client.delete_object(Bucket=self.bucket, Key=self.key)


def _alive(holder: dict) -> bool:
    """Whether an S3 lock's holder may still run: a process gone from this host is not; elsewhere it cannot be
    asked, so it is assumed alive until the lock is S3_STALE_AFTER_S old."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def _read_s3(client, bucket: str, key: str) -> dict | None:
    from botocore.exceptions import ClientError

    try:
        return json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise
    except ValueError:
        return {}


def _acquire_s3(base_uri: str, record: dict, client=None) -> S3RunLock:
    """`acquire` for an s3:// output: S3's conditional PUT creates the lock object only if there is none."""
    import boto3
    from botocore.exceptions import ClientError

    parsed = urlparse(base_uri)
    bucket, key = parsed.netloc, "/".join(part for part in (parsed.path.strip("/"), LOCK_FILE) if part)
    client = client or boto3.client("s3")
    owner = record["owner"]
    for _ in range(3):
        try:
            client.put_object(Bucket=bucket, Key=key, Body=json.dumps(record).encode(), IfNoneMatch="*")
            return S3RunLock(client, bucket, key, owner, created=True)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise
        holder = _read_s3(client, bucket, key)
        if holder is None:
            continue  # released meanwhile: try again
        if holder.get("owner") == owner:
            return S3RunLock(client, bucket, key, owner, created=False)
        stale = time.time() - holder.get("since", 0) > S3_STALE_AFTER_S
        if holder and _alive(holder) and not stale:
            raise OutputInUseError(_in_use(base_uri, holder))
        logger.warning("taking over the run lock of %s left by a run that is gone: %s", base_uri, holder)
        client.delete_object(Bucket=bucket, Key=key)
    raise OutputInUseError(f"could not lock {base_uri}: its run lock s3://{bucket}/{key} keeps changing hands")
