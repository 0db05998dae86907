"""One run at a time per output folder: a lock file created atomically, taken over only from a dead process."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

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
    """Lock the local output folder `base_uri` for `owner` (a run id); None for object stores (not lockable here).

    Re-entrant for the same owner. Raises OutputInUseError, naming the holder, when a live run holds it; a lock
    left by a dead process on this host is taken over.
    """
    parsed = urlparse(base_uri)
    if parsed.scheme not in ("", "file"):
        logger.info("no run lock on %s: object stores are not locked (one run per output there)", base_uri)
        return None
    path = Path(parsed.path if parsed.scheme else base_uri) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"owner": owner, "pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
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
