"""Incremental featurization: unchanged images keep their features, only new or changed images meet the CNN."""

from __future__ import annotations

import logging

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_code.featurize import CnnFeaturizer, Featurized, featurize_listing
from spark_code.images import LISTING_COLUMNS

logger = logging.getLogger(__name__)

IDENTITY = ["path", "length", "modification_time"]  # an image is the same image while these are unchanged


MODEL_COLUMN = "cnn_model"  # which CNN settings made a feature row; rows made otherwise are recomputed
NEW, CHANGED, CARRIED, DELETED = "new", "changed", "carried", "deleted"


def usable_previous(features: DataFrame | None, quarantine: DataFrame | None) -> bool:
    """Previous tables can be carried over only if both exist and carry the identity (and model) columns."""
    if features is None or quarantine is None:
        return False
    return set(IDENTITY) <= set(quarantine.columns) and {*IDENTITY, MODEL_COLUMN} <= set(features.columns)


def classify_changes(listing: DataFrame, features: DataFrame, quarantine: DataFrame) -> DataFrame:
    """One row per path listed now or known before: its listing columns, `change` and the table it was in.

    `features` must already be limited to rows made with the current CNN settings.
    """
    before = (
        features.select(*IDENTITY, F.lit("features").alias("_table"))
        .unionByName(quarantine.select(*IDENTITY, F.lit("quarantine").alias("_table")))
        .select("path", F.col("length").alias("_length"), F.col("modification_time").alias("_mtime"), "_table")
    )
    now = listing.select(*LISTING_COLUMNS, F.lit(True).alias("_listed"))
    joined = now.join(before, "path", "full_outer")
    change = (
        F.when(F.col("_listed").isNull(), DELETED)
        .when(F.col("_table").isNull(), NEW)
        .when((F.col("length") == F.col("_length")) & (F.col("modification_time") == F.col("_mtime")), CARRIED)
        .otherwise(CHANGED)
    )
    return joined.select(*LISTING_COLUMNS, "_table", change.alias("change"))


def featurize_incremental(
    spark: SparkSession,
    listing: DataFrame,
    root: str,
    featurizer: CnnFeaturizer,
    features: DataFrame | None,
    quarantine: DataFrame | None,
    model_key: str,
) -> tuple[Featurized, dict[str, int]]:
    """Featurize only new or changed images; the outputs hold every listed image (deleted ones are gone).

    `features` and `quarantine` are the previous versions (None for a first run); feature rows made by another
    CNN setting than `model_key` are recomputed. New rows get `model_key` in the `cnn_model` column. Returns the
    run and its counts: new, changed, carried, deleted, featurized and quarantined (all rows of the outputs).
    """
    if not usable_previous(features, quarantine):
        run = _featurize_tagged(spark, listing, root, featurizer, model_key)
        return run, _counts(run, {NEW: listing.count()}, {})
    current = features.filter(F.col(MODEL_COLUMN) == model_key)
    changes = classify_changes(listing, current, quarantine).persist()  # small: paths and sizes only
    tally = {(r.change, r._table): r["count"] for r in changes.groupBy("change", "_table").count().collect()}
    todo = changes.filter(F.col("change").isin(NEW, CHANGED)).select(*LISTING_COLUMNS)
    keep = changes.filter(F.col("change") == CARRIED).select(*IDENTITY)
    run = _featurize_tagged(spark, todo, root, featurizer, model_key)
    kinds = {kind: sum(n for (change, _), n in tally.items() if change == kind) for kind in (NEW, CHANGED, DELETED)}
    carried = {table: tally.get((CARRIED, table), 0) for table in ("features", "quarantine")}
    counts = _counts(run, kinds, carried)
    logger.info("incremental featurization: %s", counts)
    merged_features = current.join(keep, IDENTITY, "left_semi").select(*run.features.columns)
    merged_quarantine = quarantine.join(keep, IDENTITY, "left_semi").select(*run.quarantined.columns)
    return (
        Featurized(
            merged_features.unionByName(run.features),
            merged_quarantine.unionByName(run.quarantined),
            run.counters,
            run._cached,
            (changes,),
        ),
        counts,
    )


def _featurize_tagged(
    spark: SparkSession, listing: DataFrame, root: str, featurizer: CnnFeaturizer, model_key: str
) -> Featurized:
    """`featurize_listing`, with each feature row tagged by the CNN settings that made it."""
    run = featurize_listing(spark, listing, root, featurizer)
    run.features = run.features.withColumn(MODEL_COLUMN, F.lit(model_key))
    return run


def _counts(run: Featurized, kinds: dict[str, int], carried: dict[str, int]) -> dict[str, int]:
    """The change counts plus the rows of both outputs (new rows counted from the cached CNN pass)."""
    return {
        NEW: kinds.get(NEW, 0),
        CHANGED: kinds.get(CHANGED, 0),
        CARRIED: sum(carried.values()),
        DELETED: kinds.get(DELETED, 0),
        "featurized": carried.get("features", 0) + run.features.count(),
        "quarantined": carried.get("quarantine", 0) + run.quarantined.count(),
    }
