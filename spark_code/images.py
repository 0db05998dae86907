"""List image files with Spark's binaryFile source and decode them into model-ready pixel arrays."""

from __future__ import annotations

import io
import logging
import os
import re
from urllib.parse import unquote, urlparse

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff")
IMAGE_GLOB = "*.{" + ",".join(IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS)) + "}"
LISTING_COLUMNS = ("path", "label", "length", "modification_time")
NO_CLASS_FOLDER = "no class folder: the file lies directly under the image root"
VANISHED = "file vanished between listing and reading"
# Errors Pillow raises for bytes that are not a readable image (clip-retrieval catches the same family).
DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class ImageRootError(ValueError):
    """The configured image root is missing or holds no image file."""


def qualify_root(root: str) -> str:
    """Return the root as Spark writes it in the binaryFile `path` column (`file:/abs` or `s3://...`)."""
    if urlparse(root).scheme:
        return root.rstrip("/")
    return "file:" + os.path.abspath(root)


def check_root_exists(spark: SparkSession, root: str) -> None:
    """Fail fast, naming the path, when the image root does not exist."""
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(qualify_root(root))
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if not fs.exists(path):
        raise ImageRootError(
            f"image root {root!r} does not exist: point FRUITS_IMAGE_ROOT (or the image_source "
            "resource's `root`) at a folder with one sub-folder of images per fruit class"
        )


def read_binary_files(spark: SparkSession, root: str) -> DataFrame:
    """Spark's binaryFile source over every image file under `root`, recursively (bytes are read lazily)."""
    check_root_exists(spark, root)
    return (
        spark.read.format("binaryFile")
        .option("pathGlobFilter", IMAGE_GLOB)
        .option("recursiveFileLookup", "true")
        .load(qualify_root(root))
    )


def with_label(files: DataFrame, root: str) -> DataFrame:
    """Add `label`: the name of the file's folder, or null for a file directly under the root."""
    parent = F.regexp_extract("path", r"^(.*)/[^/]+$", 1)
    name = F.regexp_extract("path", r"/([^/]+)/[^/]+$", 1)
    return files.withColumn("label", F.when((parent != F.lit(qualify_root(root))) & (name != ""), name))


def list_images(spark: SparkSession, root: str) -> DataFrame:
    """The image listing: `path`, `label`, `length`, `modification_time`; never reads file contents.

    Spark's scans skip 0-byte files, so those are added back from the file index (they are then quarantined).
    """
    files = read_binary_files(spark, root)
    listed = files.select("path", "length", F.col("modificationTime").alias("modification_time"))
    return with_label(listed.unionByName(empty_files(spark, files, listed)), root).select(*LISTING_COLUMNS)


def spark_path(uri: str) -> str:
    """`file:///a%20b/c.jpg` (a file index URI) → `file:/a b/c.jpg` (the binaryFile `path` form)."""
    parts = urlparse(uri)
    authority = f"//{parts.netloc}" if parts.netloc else ""
    return f"{parts.scheme}:{authority}{unquote(parts.path)}"


def empty_files(spark: SparkSession, files: DataFrame, listed: DataFrame) -> DataFrame:
    """Files in the file index that the scan dropped: 0-byte files, with their modification time."""
    schema = "path string, length long, modification_time timestamp"
    if len(files._jdf.inputFiles()) == listed.count():  # the common case, one JVM call: no empty file
        return spark.createDataFrame([], schema)
    indexed = spark.createDataFrame([(spark_path(u),) for u in files.inputFiles()], "path string")
    missing = [row.path for row in indexed.join(listed, "path", "left_anti").collect()]
    rows = [(path, 0, _modification_time(spark, path)) for path in missing]
    return spark.createDataFrame(rows, schema)


def _hadoop_fs(spark: SparkSession, path: str):
    """(Hadoop FileSystem, Path) of a path or URI, through the session's Hadoop configuration."""
    hpath = spark.sparkContext._jvm.org.apache.hadoop.fs.Path(path)
    return hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), hpath


def _modification_time(spark: SparkSession, path: str):
    from datetime import datetime, timezone

    fs, hpath = _hadoop_fs(spark, path)
    status = fs.getFileStatus(hpath)
    return datetime.fromtimestamp(status.getModificationTime() / 1000, tz=timezone.utc)


def require_images(count: int, root: str) -> None:
    """Fail with a message naming the root when it holds no image file."""
    if count == 0:
        raise ImageRootError(
            f"image root {root!r} holds no image file matching {IMAGE_GLOB}: "
            "check the path and that it has one sub-folder per class"
        )


EXPLICIT_PATHS_BELOW = 1000


def _exists(spark: SparkSession, path: str) -> bool:
    fs, hpath = _hadoop_fs(spark, path)
    return fs.exists(hpath)


def _escape_glob(path: str) -> str:
    return re.sub(r"([\\*?\[\]{}])", r"\\\1", path)


def attach_content(spark: SparkSession, listing: DataFrame, root: str) -> DataFrame:
    """Join the listed images to their bytes without shuffling the bytes (the listing is broadcast).

    A small listing (an incremental batch) reads only its own files; a large one scans the root once.
    """
    paths = [row.path for row in listing.select("path").limit(EXPLICIT_PATHS_BELOW).collect()]
    if len(paths) < EXPLICIT_PATHS_BELOW:
        if not paths:
            return listing.withColumn("content", F.lit(None).cast("binary")).limit(0)
        present = [p for p in paths if _exists(spark, p)]  # a file deleted since listing is quarantined later
        if not present:
            return listing.withColumn("content", F.lit(None).cast("binary")).limit(0)
        files = spark.read.format("binaryFile").load([_escape_glob(p) for p in present])
    else:
        files = read_binary_files(spark, root)
    return files.select("path", "content").join(F.broadcast(listing), on="path", how="inner")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; transparent pixels are composited on white."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def decode_image(data: bytes, size: int) -> np.ndarray:
    """Decode image bytes to a `size`×`size`×3 uint8 RGB array (EXIF-rotated, bilinear resize).

    Raises one of `DECODE_ERRORS` when the bytes are not a readable image.
    """
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (size, size))  # JPEG: let the decoder downscale big photos cheaply
        image = ImageOps.exif_transpose(image)
        rgb = _to_rgb(image).resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8)


def try_decode(data: bytes | None, size: int) -> tuple[np.ndarray | None, str | None]:
    """Decode, returning `(pixels, None)` or `(None, reason)` for an unreadable image."""
    if not data:
        return None, "empty file (0 bytes)"
    try:
        return decode_image(data, size), None
    except UnidentifiedImageError:
        return None, "undecodable image: not in any format Pillow recognises"
    except DECODE_ERRORS as error:
        return None, f"undecodable image: {type(error).__name__}: {error}"
