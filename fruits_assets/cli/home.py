"""The project-local Dagster instance (`.dagster/`) that the main command, `dagster dev` and its daemon share."""

import contextlib
import fcntl
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from dagster import DagsterInstance

PROJECT_DIR = Path(__file__).resolve().parents[2]
PROJECT_HOME = PROJECT_DIR / ".dagster"
INSTANCE_YAML = "telemetry:\n  enabled: false\n"


def dagster_home(environ: Mapping[str, str] = os.environ) -> Path:
    """The Dagster instance folder: DAGSTER_HOME when set, else the project's `.dagster/` (made if missing).

    DAGSTER_HOME must be an absolute path to an existing folder, as Dagster itself requires.
    """
    configured = environ.get("DAGSTER_HOME")
    if configured:
        home = Path(configured)
        if not home.is_absolute() or not home.is_dir():
            raise ValueError(
                f"DAGSTER_HOME={configured!r} is not an absolute path to an existing folder: create it, "
                f"or unset DAGSTER_HOME to use the project's instance in {PROJECT_HOME}"
            )
        return home
    PROJECT_HOME.mkdir(exist_ok=True)
    config = PROJECT_HOME / "dagster.yaml"
    if not config.exists():
        config.write_text(INSTANCE_YAML)
    return PROJECT_HOME


def ui_command(home: Path) -> str:
    """The shell command that opens this instance in the UI (from the repository root)."""
    if home == PROJECT_HOME and _env_file_points_here():
        return ".venv/bin/dagster dev"
    return f"DAGSTER_HOME={home} .venv/bin/dagster dev"


def _env_file_points_here() -> bool:
    env_file = PROJECT_DIR / ".env"
    return env_file.exists() and f"DAGSTER_HOME=${{DAGSTER_HOME:-{PROJECT_HOME}}}" in env_file.read_text()


@contextlib.contextmanager
def instance_at(home: Path) -> Iterator[DagsterInstance]:
    """The Dagster instance of `home`, opened under a file lock: two commands started at once on a new instance
    would otherwise both create its SQLite tables, and one would fail ("table snapshots already exists")."""
    with open(home / ".instance.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        instance = DagsterInstance.get()
        fcntl.flock(lock, fcntl.LOCK_UN)
    with instance:
        yield instance
