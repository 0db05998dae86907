"""List every file under the image root, read the listed files' bytes, and decode them into model-ready pixels."""

from __future__ import annotations

import functools
import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_code.storage import files, uris, versions
from spark_code.storage.tree import RULES, RootListing, local_path, scan_is_safe, walk

logger = logging.getLogger(__name__)

LISTING_COLUMNS = ("path", "label", "length", "modification_time")
LISTING_SCHEMA = "path string, label string, length long, modification_time timestamp"
NO_CLASS_FOLDER = "no class folder: the file lies directly under the image root"
VANISHED = "file vanished between listing and reading"
MAX_FILE_BYTES = 256 * 2**20  # a larger file (a video, an archive) is quarantined unread
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class ImageRootError(ValueError):
    """The configured image root is missing or holds no file."""


def check_root_exists(root: str) -> None:
    """Fail fast, naming the path, when the image root does not exist (local or S3)."""
    if not files.exists(uris.qualify(root)):
        raise ImageRootError(
            f"image root {root!r} does not exist: point FRUITS_IMAGE_ROOT (or the image_source "
            "resource's `root`) at a folder with one sub-folder of images per fruit class"
        )


def label_of(rel: str) -> str | None:
    """The class of a file: the first folder under the root (deeper folders only organise), None at the root."""
    return rel.split("/", 1)[0] if "/" in rel else None


def _timestamp(mtime_ns: int) -> datetime:
    return EPOCH + timedelta(milliseconds=mtime_ns // 1_000_000)  # milliseconds, as Hadoop's file status has them


@dataclass
class Listed:
    """The listing as a DataFrame (`path`, `label`, `length`, `modification_time`) and the walk that found it."""

    frame: DataFrame
    found: RootListing

    def counts(self) -> dict:
        """Files found, listed and skipped (see `listing_counts`)."""
        return listing_counts(self.found)


def listing_counts(found: RootListing) -> dict:
    """Files found, listed and skipped (in total and by rule), for metadata and the reconciliation check."""
    return {
        "files_found": found.found(),
        "listed": len(found.files),
        "skipped": sum(found.skipped.values()),
        "skipped_by_rule": {rule: found.skipped[rule] for rule in RULES if found.skipped[rule]},
    }


def list_frame(spark: SparkSession, root: str) -> Listed:
    """Every file under `root` by the rules of `listing` (the sensor's too), as a DataFrame; no contents.

    The walk runs on the driver (os.scandir locally, ListObjectsV2 on S3): Spark's own file index hides names
    starting with `_` or `.` and follows symbolic links into loops, so it does not decide what is listed.
    """
    rows, found = walk_rows(root)
    return Listed(spark.createDataFrame(rows, LISTING_SCHEMA), found)


def walk_rows(root: str) -> tuple[list[tuple], RootListing]:
    """(listing rows, the walk) of `root` on the driver, as `list_frame` lists it, without a DataFrame."""
    check_root_exists(root)
    found = walk(root)
    rows = listing_rows(root, sorted(found.files.items()))
    logger.info("listed %d files under %s, skipped %s", len(rows), root, dict(found.skipped))
    return rows, found


def listing_rows(root: str, entries) -> list[tuple]:
    """Listing rows (path, label, length, modification_time) of (path relative to `root`, (size, mtime_ns)) pairs."""
    base = uris.qualify(root)
    return [(f"{base}/{rel}", label_of(rel), size, _timestamp(mtime_ns)) for rel, (size, mtime_ns) in entries]


def list_images(spark: SparkSession, root: str) -> DataFrame:
    """The listing of `root`: `path`, `label`, `length`, `modification_time` (see `list_frame`)."""
    return list_frame(spark, root).frame


def require_images(count: int, root: str) -> None:
    """Fail with a message naming the root when it holds no file."""
    if count == 0:
        raise ImageRootError(
            f"image root {root!r} holds no file (hidden files and OS clutter are skipped): "
            "check the path and that it has one sub-folder of photos per class"
        )


EXPLICIT_PATHS_BELOW = 1000


def _exists(spark: SparkSession, path: str) -> bool:
    if path.startswith("file:"):
        return os.path.exists(local_path(path))
    fs, hpath = versions.hadoop_fs(spark, path)
    return fs.exists(hpath)


def _escape_glob(path: str) -> str:
    return re.sub(r"([\\*?\[\]{}])", r"\\\1", path)


def spark_cannot_read(rel: str) -> bool:
    """Whether Spark would leave this file out (its file index hides names starting with `_` or `.`) or fail on it
    (Hadoop's checksum file of a name with `:` is not a valid path)."""
    hidden = any((part.startswith("_") and "=" not in part) or part.startswith(".") for part in rel.split("/"))
    return hidden or ":" in rel


def _read_explicit(spark: SparkSession, paths: list[str]) -> DataFrame:
    present = [p for p in paths if _exists(spark, p)]  # a file deleted since listing is quarantined later
    if not present:
        return spark.createDataFrame([], "path string, content binary")
    return spark.read.format("binaryFile").load([_escape_glob(p) for p in present]).select("path", "content")


def _scan(spark: SparkSession, root: str) -> DataFrame:
    files = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(uris.qualify(root))
    return files.filter(F.col("length") <= MAX_FILE_BYTES).select("path", "content")  # pushed down: big files unread


def _read_bytes(spark: SparkSession, path: str) -> bytes | None:
    """A file's bytes (a local file with Python, others through Hadoop's FileSystem); None if it is gone."""
    if path.startswith("file:"):
        try:
            with open(local_path(path), "rb") as file:
                return file.read()
        except FileNotFoundError:
            return None
    if not _exists(spark, path):
        return None
    fs, hpath = versions.hadoop_fs(spark, path)
    stream = fs.open(hpath)
    try:
        return bytes(spark.sparkContext._jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
    finally:
        stream.close()


def _read_on_driver(spark: SparkSession, paths: list[str]) -> DataFrame:
    """Bytes of the few files Spark cannot read by name, read on the driver (a vanished file is left out)."""
    rows = [(path, data) for path in paths if (data := _read_bytes(spark, path)) is not None]
    return spark.createDataFrame(rows, "path string, content binary")


def _can_scan(root: str, count: int, unreadable: int, explicit_below: int) -> bool:
    """Scanning the whole root beats naming each file for big listings, unless links could lead Spark in a loop or
    the root holds a file the scan would fail on or read twice (one Spark cannot read by name)."""
    if count < explicit_below or unreadable:
        return False
    return scan_is_safe(root)


def attach_content(
    spark: SparkSession, listing: DataFrame, root: str, explicit_below: int = EXPLICIT_PATHS_BELOW
) -> DataFrame:
    """Join the listed files to their bytes without shuffling the bytes (the listing is broadcast).

    A listing of fewer than `explicit_below` files (an incremental batch) reads only its own files; a larger one
    scans the root once when that is safe. Files Spark cannot read by name are read on the driver; a listed file
    missing here has vanished since.
    """
    base = uris.qualify(root) + "/"
    paths = [row.path for row in listing.select("path").collect()]
    hidden = {p for p in paths if spark_cannot_read(p[len(base) :] if p.startswith(base) else p)}
    visible = [p for p in paths if p not in hidden]
    parts = [_read_on_driver(spark, sorted(hidden))] if hidden else []
    if visible:
        scan = _can_scan(root, len(visible), len(hidden), explicit_below)
        parts.append(_scan(spark, root) if scan else _read_explicit(spark, visible))
    if not parts:
        return listing.withColumn("content", F.lit(None).cast("binary")).limit(0)
    files = functools.reduce(DataFrame.unionByName, parts)
    return files.join(F.broadcast(listing), on="path", how="inner")


def set_aside(listing: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(files worth reading, quarantine rows with `reason` for the others: no class folder, empty, too large)."""
    label, length = F.col("label"), F.col("length")
    too_large = F.concat(F.lit("too large for a photo: "), length.cast("string"), F.lit(f" bytes > {MAX_FILE_BYTES}"))
    reason = (
        F.when(label.isNull(), NO_CLASS_FOLDER)
        .when(length == 0, "empty file (0 bytes)")
        .when(length > MAX_FILE_BYTES, F.concat(too_large, F.lit(", not read")))
    )
    tagged = listing.select(*LISTING_COLUMNS, reason.alias("reason"))
    return tagged.filter(F.col("reason").isNull()).drop("reason"), tagged.filter(F.col("reason").isNotNull())
