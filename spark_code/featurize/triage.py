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
    """One featurization pass: features and quarantine rows, both served from a single cached CNN pass.

    `run_pass` runs it; `quarantined` then holds only the sources that can have rows (decode errors when some image
    failed, vanished files when fewer files were read than listed), so neither is scanned again for nothing.
    """

    features: DataFrame
    quarantined: DataFrame
    counters: FeaturizeCounters
    _cached: DataFrame
    _reasons: QuarantineSources

    def run_pass(self) -> int:
        """The CNN pass: every row computed once and cached for both tables; returns the number featurized."""
        error = F.col(self._reasons.error_col)
        totals = self._cached.agg(F.count(F.lit(1)).alias("read"), F.count(F.when(error.isNull(), 1)).alias("ok"))
        read, featurized = totals.first()
        self.quarantined = self._reasons.present(failed=read > featurized, vanished=read < self._reasons.readable)
        return featurized

    def release(self) -> None:
        """Drop the cached CNN output once both tables are written."""
        self._cached.unpersist()


@dataclass(frozen=True)
class QuarantineSources:
    """Where quarantine rows come from: files not read (set aside by rule), images that failed to decode, and files
    that vanished between the listing and the read (`readable` files were to be read)."""

    not_read: DataFrame
    failed: DataFrame
    vanished: DataFrame
    readable: int
    error_col: str

    def present(self, failed: bool = True, vanished: bool = True) -> DataFrame:
        """The quarantine rows of the sources that can have some."""
        chosen = [self.not_read, *([self.failed] if failed else []), *([self.vanished] if vanished else [])]
        return reduce(DataFrame.unionByName, chosen)


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
    parallelism = spark.sparkContext.defaultParallelism
    images = attach_content(spark, usable, root).coalesce(target_partitions(count, parallelism))
    error_col = featurizer.getOrDefault(featurizer.errorCol)
    result = featurizer.transform(images).persist(StorageLevel.MEMORY_AND_DISK)
    # small tasks for the pass (progress, balance); one file per core for the table (fewer, faster writes)
    features = result.filter(F.col(error_col).isNull()).select(*keys, featurizer.getOutputCol()).coalesce(parallelism)
    reasons = QuarantineSources(
        not_read=not_read,
        failed=result.filter(F.col(error_col).isNotNull()).select(*keys, F.col(error_col).alias("reason")),
        vanished=usable.join(result.select("path"), "path", "left_anti").select(*keys, F.lit(VANISHED).alias("reason")),
        readable=count,
        error_col=error_col,
    )
    return Featurized(features, reasons.present(), featurizer.counters, result, reasons)
