"""Jars Spark needs beyond pyspark's own (hadoop-aws, Delta Lake), fetched once with Spark's Ivy into a cache."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

# Where the jars are kept: Spark's own Ivy resolver fills <cache>/jars, once (./install.sh, or `fetch` below).
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fruits" / "ivy"


class JarsMissingError(RuntimeError):
    """A jar Spark needs is not cached yet; the message says how to fetch it."""


def jar_name(coordinate: str) -> str:
    """The file name Ivy gives a Maven coordinate's jar (`group_artifact-version.jar`)."""
    group, artifact, version = coordinate.split(":")
    return f"{group}_{artifact}-{version}.jar"


def cached(coordinates: list[str], cache: Path = DEFAULT_CACHE, fix: str = "") -> list[Path]:
    """The cached jars of `coordinates` (dependencies resolved with them are named by the caller), or a
    JarsMissingError naming the first missing one and the command that fetches it."""
    found = [cache / "jars" / jar_name(c) for c in coordinates]
    for coordinate, path in zip(coordinates, found, strict=True):
        if not path.exists():
            raise JarsMissingError(
                f"Spark needs {coordinate} ({path} is missing): run ./install.sh, or {sys.executable} -m {fix} "
                "(fetches it once from Maven Central)"
            )
    return found


def fetch(coordinate: str, cache: Path = DEFAULT_CACHE) -> None:
    """Resolve `coordinate` and its dependencies with Spark's own Ivy into `cache`."""
    logger.info("fetching %s into %s", coordinate, cache)
    code = (
        "from pyspark.sql import SparkSession\n"
        f"SparkSession.builder.master('local[1]').config('spark.jars.packages', {coordinate!r})"
        f".config('spark.jars.ivy', {str(cache)!r}).config('spark.ui.enabled', 'false').getOrCreate().stop()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=900)
