"""Every listed file featurized or quarantined with its reason, both tables served by one cached CNN pass."""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_code.featurize.udf import CnnFeaturizer, FeaturizeCounters
from spark_code.ingest.images import LISTING_COLUMNS, VANISHED, attach_content, set_aside


@dataclass
class Featurized:
    """One featurization pass: features and quarantine rows, both served from a single cached CNN pass."""

    features: DataFrame
    quarantined: DataFrame
    counters: FeaturizeCounters
    _cached: DataFrame
    _also_cached: tuple[DataFrame, ...] = ()

    def release(self) -> None:
        """Drop the cached CNN output (and any other cached input of the two tables) once both are written."""
        for frame in (self._cached, *self._also_cached):
            frame.unpersist()


def target_partitions(images: int, parallelism: int, images_per_task: int = 384) -> int:
    """Enough tasks to keep every core busy, few enough that per-task overhead stays small, small enough that one
    finishes every few seconds: progress counts finished tasks, and the last wave leaves a core idle for at most
    one task (~4 s of CNN work on one core)."""
    waves = max(1, -(-images // (parallelism * images_per_task)))
    return parallelism * waves


def featurize_listing(spark: SparkSession, listing: DataFrame, root: str, featurizer: CnnFeaturizer) -> Featurized:
    """Featurize every listed file once; files with no class folder, empty, too large, not images, undecodable or
    vanished become quarantine rows with their reason.

    Both outputs keep the listing's identity columns (`path`, `label`, `length`, `modification_time`).
    """
    keys = list(LISTING_COLUMNS)
    usable, not_read = set_aside(listing)
    count = usable.count()
    images = attach_content(spark, usable, root)
    images = images.coalesce(target_partitions(count, spark.sparkContext.defaultParallelism))
    error_col = featurizer.getOrDefault(featurizer.errorCol)
    result = featurizer.transform(images).persist(StorageLevel.MEMORY_AND_DISK)
    features = result.filter(F.col(error_col).isNull()).select(*keys, featurizer.getOutputCol())
    reasons = [
        result.filter(F.col(error_col).isNotNull()).select(*keys, F.col(error_col).alias("reason")),
        not_read,
        usable.join(result.select("path"), "path", "left_anti").select(*keys, F.lit(VANISHED).alias("reason")),
    ]
    quarantined = reduce(DataFrame.unionByName, reasons)
    return Featurized(features, quarantined, featurizer.counters, result)
