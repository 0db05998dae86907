"""One run at a time per output: a lock file (or S3 object) created atomically, taken over only from a dead run."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from spark_code.storage.s3a import is_s3

logger = logging.getLogger(__name__)

LOCK_FILE = "_RUN_LOCK"


class OutputInUseError(RuntimeError):
    """Another live run holds the output folder."""


@dataclass(frozen=True)
class RunLock:
    """A held lock: the file and who holds it."""

    path: Path
    owner: str

    def release(self) -> None:
        """Remove the lock file if it is still ours."""
        holder = _read(self.path)
        if holder is not None and holder.get("owner") == self.owner:
            self.path.unlink(missing_ok=True)


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # half-written by a process that died mid-write: treated as stale below


def _alive(holder: dict) -> bool:
    """Whether the holder's process still runs (only known on this host; elsewhere assumed alive)."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def acquire(base_uri: str, owner: str) -> RunLock | None:
    """Lock the output `base_uri` (a local folder, or an s3:// prefix) for `owner` (a run id).

    Re-entrant for the same owner. Raises OutputInUseError, naming the holder, when a live run holds it; a lock
    left by a dead process on this host is taken over (on S3, also one older than S3_STALE_AFTER_S).
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
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder is None:
                continue  # released meanwhile: try again
            if holder.get("owner") == owner:
                return RunLock(path, owner)
            if _alive(holder) and holder:
                raise OutputInUseError(_in_use(base_uri, holder)) from None
            logger.warning("taking over the run lock of %s left by a process that is gone: %s", base_uri, holder)
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as handle:
            json.dump(record, handle)
        return RunLock(path, owner)
    raise OutputInUseError(f"could not lock {base_uri}: its run lock {path} keeps changing hands; try again")


def _in_use(base_uri: str, holder: dict) -> str:
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
