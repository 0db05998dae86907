"""Versioned, atomically published Parquet tables and Spark ML models under a base URI (local or s3://)."""

from __future__ import annotations

import logging
import os
import time
import uuid
from datetime import datetime, timezone
from urllib.parse import urlparse

from pyspark.sql import DataFrame, SparkSession

logger = logging.getLogger(__name__)

COMMITTED = "_COMMITTED"
VERSION_PREFIX = "v-"
JOB_GROUP = "spark.jobGroup.id"  # SparkContext.setJobGroup's local property


class TableNotFoundError(LookupError):
    """No committed version of a table exists yet."""


class OutputNotWritableError(PermissionError):
    """The output folder cannot be created or written."""


def check_writable(base_uri: str) -> None:
    """Fail before any work, naming the folder, when a local output folder cannot be created or written.

    (s3:// outputs are checked by the EMR deployment's bucket checks.)
    """
    if urlparse(base_uri).scheme not in ("", "file"):
        return
    folder = base_uri[len("file:") :] if base_uri.startswith("file:") else base_uri
    probe = os.path.join(folder, f".write-probe-{uuid.uuid4().hex[:8]}")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(probe, "wb") as file:
            file.write(b"ok")
        os.remove(probe)
    except OSError as error:
        raise OutputNotWritableError(
            f"output folder {base_uri!r} is not writable ({error.strerror or error}): set FRUITS_OUTPUT_URI to a "
            "folder you can write, or fix its permissions"
        ) from error


def qualify(uri: str) -> str:
    """A local path becomes an absolute `file:` URI (as Spark writes it in a `path` column); URIs with a scheme are
    kept, without a trailing slash."""
    return uri.rstrip("/") if urlparse(uri).scheme else "file:" + os.path.abspath(uri)


def hadoop_fs(spark: SparkSession, uri: str):
    """(Hadoop FileSystem, Path) of a path or URI, through the session's Hadoop configuration."""
    path = spark.sparkContext._jvm.org.apache.hadoop.fs.Path(uri)
    return path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), path


def new_version_uri(base_uri: str, name: str) -> str:
    """A fresh, lexically time-ordered version folder for `name` under `base_uri`."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{qualify(base_uri)}/{name}/{VERSION_PREFIX}{stamp}-{uuid.uuid4().hex[:8]}"


def version_name(uri: str | None) -> str | None:
    """The version folder's name (`v-<time>-<id>`) of a version URI: what identifies it wherever the output moves."""
    return None if uri is None else uri.rstrip("/").rsplit("/", 1)[-1]


def commit(spark: SparkSession, version_uri: str) -> None:
    """Publish a fully written version: readers only ever see versions carrying the marker."""
    fs, path = hadoop_fs(spark, f"{version_uri}/{COMMITTED}")
    fs.create(path, True).close()


def _local_folder(uri: str) -> str | None:
    """The local folder behind a `file:` URI (None for any other scheme): listed with `os.scandir`, microseconds a
    folder, where the Hadoop file system costs Py4J round trips (a hundred batches × three tables each step)."""
    parsed = urlparse(uri)
    return parsed.path if parsed.scheme == "file" and not parsed.netloc else None


def _subfolders(folder: str) -> list[str]:
    try:
        return [entry.name for entry in os.scandir(folder) if entry.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return []


def list_versions(spark: SparkSession, base_uri: str, name: str) -> tuple[list[str], list[str]]:
    """(committed, uncommitted) version URIs of `name`, oldest first."""
    uri = f"{qualify(base_uri)}/{name}"
    local = _local_folder(uri)
    if local is not None:
        versions = [n for n in _subfolders(local) if n.startswith(VERSION_PREFIX)]
        done = {n for n in versions if os.path.exists(os.path.join(local, n, COMMITTED))}
        return sorted(f"{uri}/{n}" for n in done), sorted(f"{uri}/{n}" for n in set(versions) - done)
    fs, path = hadoop_fs(spark, uri)
    if not fs.exists(path):
        return [], []
    committed, pending = [], []
    for status in fs.listStatus(path):
        child = status.getPath()
        if status.isDirectory() and child.getName().startswith(VERSION_PREFIX):
            marker = child.suffix("/" + COMMITTED)
            (committed if fs.exists(marker) else pending).append(child.toString())
    return sorted(committed), sorted(pending)


def latest_uri(spark: SparkSession, base_uri: str, name: str) -> str:
    """URI of the newest committed version of `name`."""
    committed, _ = list_versions(spark, base_uri, name)
    if not committed:
        raise TableNotFoundError(f"no committed version of {name!r} under {base_uri!r}: materialize it first")
    return committed[-1]


def prune(spark: SparkSession, base_uri: str, name: str, keep: int) -> None:
    """Delete all but the newest `keep` committed versions, and failed writes older than those kept."""
    committed, pending = list_versions(spark, base_uri, name)
    kept = committed[-keep:]
    doomed = committed[:-keep] + [p for p in pending if kept and p < kept[0]]
    for uri in doomed:
        fs, path = hadoop_fs(spark, uri)
        fs.delete(path, True)
        logger.info("pruned old version %s", uri)


def write_table(df: DataFrame, base_uri: str, name: str, keep: int = 2) -> str:
    """Write `df` as a new Parquet version of `name`, publish it atomically, prune old versions; return its URI."""
    uri = new_version_uri(base_uri, name)
    spark = df.sparkSession
    group = spark.sparkContext.getLocalProperty(JOB_GROUP)
    spark.sparkContext.setLocalProperty(JOB_GROUP, f"fruits-write-{uri.rsplit('/', 1)[-1]}")
    try:
        df.write.mode("errorifexists").parquet(uri)
    except Exception:
        _wait_for_tasks(spark, spark.sparkContext.getLocalProperty(JOB_GROUP))
        _discard(spark, uri)  # a full disk gets its space back; readers keep the previous version
        raise
    finally:
        spark.sparkContext.setLocalProperty(JOB_GROUP, group)
    commit(df.sparkSession, uri)
    prune(df.sparkSession, base_uri, name, keep)
    return uri


def _wait_for_tasks(spark: SparkSession, group: str, timeout_s: float = 60.0) -> None:
    """Wait until the tasks of a failed write have stopped: Spark fails the job at the first task error while
    the other tasks are still being killed, and one of them could write a file after the version is deleted."""
    tracker, deadline = spark.sparkContext.statusTracker(), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        jobs = [tracker.getJobInfo(job) for job in tracker.getJobIdsForGroup(group)]
        stages = [tracker.getStageInfo(s) for job in jobs if job is not None for s in job.stageIds]
        if not any(stage is not None and stage.numActiveTasks > 0 for stage in stages):
            return
        time.sleep(0.2)
    logger.warning("tasks of the failed write %s still running after %.0f s", group, timeout_s)


def _discard(spark: SparkSession, uri: str) -> None:
    """Delete a failed, uncommitted version (best effort: an undeleted one stays invisible and is pruned later)."""
    logger.error("write of %s failed: it is not published, the previous version stays current", uri)
    try:
        fs, path = hadoop_fs(spark, uri)
        fs.delete(path, True)
    except Exception as error:  # the write's own error is the one to raise
        logger.warning("could not delete the failed version %s: %s", uri, error)


def read_table(spark: SparkSession, base_uri: str, name: str) -> DataFrame:
    """The newest committed version of table `name`."""
    return spark.read.parquet(latest_uri(spark, base_uri, name))


def write_text(spark: SparkSession, uri: str, text: str) -> None:
    """Write a small text file through Hadoop's FileSystem (local, HDFS or S3 alike)."""
    write_bytes(spark, uri, text.encode())


def write_bytes(spark: SparkSession, uri: str, data: bytes) -> None:
    """Write a small file through Hadoop's FileSystem (local, HDFS or S3 alike), replacing any file there."""
    fs, path = hadoop_fs(spark, uri)
    stream = fs.create(path, True)
    try:
        stream.write(bytearray(data))
    finally:
        stream.close()


def read_text(spark: SparkSession, uri: str) -> str:
    """Read a small text file through Hadoop's FileSystem ("" if it does not exist)."""
    fs, path = hadoop_fs(spark, uri)
    if not fs.exists(path):
        return ""
    stream = fs.open(path)
    try:
        jvm = spark.sparkContext._jvm
        return jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
    finally:
        stream.close()


def save_model(spark: SparkSession, model, base_uri: str, name: str, keep: int = 2, extras: dict | None = None) -> str:
    """Save a Spark ML model (plus small `extras` text files beside it) as a new committed version; return its URI."""
    uri = new_version_uri(base_uri, name)
    model.write().save(uri)
    for file_name, text in (extras or {}).items():
        write_text(spark, f"{uri}/{file_name}", text)
    commit(spark, uri)
    prune(spark, base_uri, name, keep)
    return uri


def load_model(spark: SparkSession, model_class, base_uri: str, name: str):
    """Load the newest committed version of model `name` with `model_class.load`."""
    return model_class.load(latest_uri(spark, base_uri, name))


def partition_uris(spark: SparkSession, base_uri: str, name: str, keys=None) -> dict[str, str]:
    """{partition key: newest committed version URI} of a partitioned table `name` (only `keys` if given)."""
    local = _local_folder(f"{qualify(base_uri)}/{name}")
    if local is not None:
        names = _subfolders(local)
    else:
        fs, path = hadoop_fs(spark, f"{qualify(base_uri)}/{name}")
        names = [s.getPath().getName() for s in fs.listStatus(path) if s.isDirectory()] if fs.exists(path) else []
    found = {}
    for key in names:
        if keys is None or key in keys:
            committed, _ = list_versions(spark, base_uri, f"{name}/{key}")
            if committed:
                found[key] = committed[-1]
    return dict(sorted(found.items()))


def read_partitions(spark: SparkSession, base_uri: str, name: str, keys=None) -> DataFrame | None:
    """The newest committed version of each partition of `name` (only `keys` if given), unioned; None if none."""
    uris = partition_uris(spark, base_uri, name, keys)
    missing = sorted(set(keys or ()) - set(uris))
    if missing:
        logger.warning("%s: no committed data for partition(s) %s", name, ", ".join(missing))
    return spark.read.parquet(*uris.values()) if uris else None
