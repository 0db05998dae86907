"""The local Spark JVM's class-data archive (AppCDS): Spark's classes loaded and verified once, at install, then mapped
at every start (start-up ~1 s and the first jobs ~2 s sooner on 2 cores)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_FOLDER = Path.home() / ".cache" / "fruits" / "jvm"


def archive_path(folder: Path = DEFAULT_FOLDER) -> Path:
    """Where the archive of this venv's Spark lives, named for the venv and for the state of its jars and its Java.
    The JVM maps an archive only while every jar has the size and time it had when the archive was made, and silently
    ignores it otherwise: a venv re-installed in place gets a new name, so `build` makes a new archive."""
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    return folder / f"{_venv_prefix(pyspark.__version__, jars)}-{_digest(_class_path_state(jars))}.jsa"


def _venv_prefix(version: str, jars: Path) -> str:
    """The part of an archive's name that names the venv (its pyspark version and jars folder), not its state."""
    return f"spark-{version}-{_digest(f'{version}:{jars.resolve()}')}"


def _class_path_state(jars: Path) -> str:
    """What the JVM checks before it maps an archive: each jar's size and time (pyspark's and Delta Lake's, which
    every local session puts on its class path), and the Java that maps it."""
    from spark_code.storage import ivy, tables

    java_home = os.environ.get("JAVA_HOME")
    java = Path(java_home, "bin", "java") if java_home else Path(shutil.which("java") or "java")
    try:
        extra = tables.jars()
    except ivy.JarsMissingError:
        extra = []
    stats = {f: f.stat() for f in [*extra, *sorted(jars.glob("*.jar")), java.resolve()] if f.exists()}
    return "\n".join(f"{f}:{st.st_size}:{st.st_mtime_ns}" for f, st in stats.items())


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _prune_stale(path: Path) -> None:
    """Remove the archives this venv's jars or Java outgrew (~150 MB each); other venvs' archives stay."""
    prefix = path.name[: path.name.rindex("-")]
    legacy = path.with_name(f"{prefix}.jsa")  # named for the venv alone, before the state was in the name
    for stale in [*path.parent.glob(f"{prefix}-*.jsa"), legacy]:
        if stale != path and stale.is_file():
            stale.unlink()
            logger.info("removed a stale class archive: %s", stale)


def java_options(folder: Path = DEFAULT_FOLDER) -> dict[str, str]:
    """The driver JVM's option that maps the archive, when `build` made one ({} otherwise: Spark starts as usual).
    A JVM that cannot map it (another Java, another class path) starts without it, silently."""
    path = archive_path(folder)
    if not path.is_file():
        return {}
    return {"spark.driver.extraJavaOptions": f"-XX:SharedArchiveFile={path} -Xshare:auto -Xlog:cds=off,cds+dynamic=off"}


def build(folder: Path = DEFAULT_FOLDER) -> Path:
    """Make the archive (once; ~20 s): a JVM runs the jobs a run runs (Arrow, Parquet, pandas UDFs, Spark ML) and
    archives the classes it loaded when it exits; then it is moved into place."""
    path = archive_path(folder)
    _prune_stale(path)
    if path.is_file():
        return path
    import subprocess

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        dumped = Path(scratch) / path.name
        subprocess.run(
            [sys.executable, "-m", "fruits_assets.deploy.archive_jobs", str(dumped)], check=True, timeout=600
        )
        if not dumped.is_file():
            raise RuntimeError(f"the JVM wrote no class archive at {dumped}: is this Java 13 or newer?")
        os.replace(dumped, path)
    logger.info("class archive of the Spark JVM: %s", path)
    return path


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(build())
