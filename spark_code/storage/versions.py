"""Versioned, atomically published models (Spark ML models and their sidecars) under a base URI (local or s3://):
the one place that says which version of a model is the newest committed one."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from spark_code.storage import files, uris

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

logger = logging.getLogger(__name__)

COMMITTED = "_COMMITTED"
VERSION_PREFIX = "v-"


class ModelNotFoundError(LookupError):
    """No committed version of a model exists yet."""


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


def hadoop_fs(spark: SparkSession, uri: str):
    """(Hadoop FileSystem, Path) of a path or URI, through the session's Hadoop configuration."""
    path = spark.sparkContext._jvm.org.apache.hadoop.fs.Path(uri)
    return path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), path


def new_version_uri(base_uri: str, name: str) -> str:
    """A fresh, lexically time-ordered version folder for `name` under `base_uri`."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{uris.qualify(base_uri)}/{name}/{VERSION_PREFIX}{stamp}-{uuid.uuid4().hex[:8]}"


def version_name(uri: str | None) -> str | None:
    """The version folder's name (`v-<time>-<id>`) of a version URI: what identifies it wherever the output moves."""
    return None if uri is None else uri.rstrip("/").rsplit("/", 1)[-1]


def commit(spark: SparkSession, version_uri: str) -> None:
    """Publish a fully written version: readers only ever see versions carrying the marker."""
    fs, path = hadoop_fs(spark, f"{version_uri}/{COMMITTED}")
    fs.create(path, True).close()


def committed_of(paths: Iterable[str]) -> list[str]:
    """The committed version names among file paths relative to a model's folder (a `v-…/_COMMITTED` marker
    publishes its version), oldest first: the one rule for which versions readers may use."""
    parts = (path.split("/") for path in paths)
    return sorted({p[0] for p in parts if len(p) == 2 and p[1] == COMMITTED and p[0].startswith(VERSION_PREFIX)})


def committed_names(folder: str) -> list[str]:
    """Names of the committed versions in a model's folder (local or s3://), oldest first ([] if none)."""
    return committed_of(files.list_tree(folder))


def list_versions(base_uri: str, name: str) -> tuple[list[str], list[str]]:
    """(committed, uncommitted) version URIs of model `name` under `base_uri`, oldest first."""
    uri = f"{uris.qualify(base_uri)}/{name}"
    done = committed_names(uri)
    pending = sorted(set(n for n in files.list_names(uri) if n.startswith(VERSION_PREFIX)) - set(done))
    return [f"{uri}/{n}" for n in done], [f"{uri}/{n}" for n in pending]


def newest(base_uri: str, name: str) -> str | None:
    """URI of the newest committed version of model `name` (None if it has none)."""
    uri = f"{uris.qualify(base_uri)}/{name}"
    done = committed_names(uri)
    return f"{uri}/{done[-1]}" if done else None


MODEL_CACHE = Path.home() / ".cache" / "fruits" / "models"  # versions of s3:// models, copied once


def local_folder(base_uri: str, name: str, cache: Path = MODEL_CACHE) -> Path:
    """The newest committed version of model `name` as a local folder: the folder itself on a local disk; on S3 a
    copy made once under `cache` (a version is never rewritten, so a copy is good for ever; its marker is copied
    last, so a half-made copy is made again). A ModelNotFoundError names the fix when there is none."""
    uri = newest(base_uri, name)
    if uri is None:
        raise ModelNotFoundError(
            f"no committed {name!r} under {base_uri.removeprefix('file:')!r}: materialize the fruit_classifier "
            "asset first, or point --models / FRUITS_OUTPUT_URI at the folder that holds it"
        )
    if not uris.is_s3(uri):
        return Path(uri.removeprefix("file:"))
    bucket, key = uris.split(uri)
    target = cache / bucket / key
    if not (target / COMMITTED).exists():
        for name_in_version in sorted(files.list_tree(uri), key=lambda rel: rel == COMMITTED):
            local = target / name_in_version
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(files.read_bytes(f"{uri}/{name_in_version}") or b"")
    return target


def latest_uri(base_uri: str, name: str) -> str:
    """URI of the newest committed version of model `name`, or a ModelNotFoundError naming it."""
    uri = newest(base_uri, name)
    if uri is None:
        raise ModelNotFoundError(f"no committed version of {name!r} under {base_uri!r}: materialize it first")
    return uri


def prune(spark: SparkSession, base_uri: str, name: str, keep: int) -> None:
    """Delete all but the newest `keep` committed versions, and failed writes older than those kept."""
    committed, pending = list_versions(base_uri, name)
    kept = committed[-keep:]
    doomed = committed[:-keep] + [p for p in pending if kept and p < kept[0]]
    for uri in doomed:
        fs, path = hadoop_fs(spark, uri)
        fs.delete(path, True)
        logger.info("pruned old version %s", uri)


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
    return model_class.load(latest_uri(base_uri, name))
