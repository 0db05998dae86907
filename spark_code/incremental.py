"""Incremental featurization: unchanged images keep their features, only new or changed images meet the CNN."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_code.featurize import CnnFeaturizer, Featurized, featurize_listing
from spark_code.images import LISTING_COLUMNS

logger = logging.getLogger(__name__)

IDENTITY = ["path", "length", "modification_time"]  # an image is the same image while these are unchanged


@dataclass
class Delta:
    """What a run must featurize, and what it carries over unchanged from the previous version."""

    todo: DataFrame
    carried_features: DataFrame | None
    carried_quarantine: DataFrame | None


MODEL_COLUMN = "cnn_model"  # which CNN settings made a feature row; rows made otherwise are recomputed


def usable_previous(features: DataFrame | None, quarantine: DataFrame | None) -> bool:
    """Previous tables can be carried over only if both exist and carry the identity (and model) columns."""
    if features is None or quarantine is None:
        return False
    return set(IDENTITY) <= set(quarantine.columns) and {*IDENTITY, MODEL_COLUMN} <= set(features.columns)


def plan(listing: DataFrame, features: DataFrame | None, quarantine: DataFrame | None) -> Delta:
    """Split the listing into images to featurize and rows to carry over (same path, size and mtime)."""
    if not usable_previous(features, quarantine):
        return Delta(listing, None, None)
    present = listing.select(*IDENTITY)
    carried_features = features.join(present, IDENTITY, "left_semi")
    carried_quarantine = quarantine.join(present, IDENTITY, "left_semi")
    seen = carried_features.select(*IDENTITY).unionByName(carried_quarantine.select(*IDENTITY))
    todo = listing.join(seen, IDENTITY, "left_anti").select(*LISTING_COLUMNS)
    return Delta(todo, carried_features, carried_quarantine)


def change_counts(listing: DataFrame, previous: DataFrame | None, delta: Delta) -> dict[str, int]:
    """Images new, changed (same path, other size or mtime), carried over and deleted since the previous version."""
    todo = delta.todo.count()
    if previous is None or delta.carried_features is None:
        return {"new": todo, "changed": 0, "carried": 0, "deleted": 0}
    previous_paths = previous.select("path")
    changed = delta.todo.join(previous_paths, "path", "left_semi").count()
    carried = delta.carried_features.count() + delta.carried_quarantine.count()
    deleted = previous_paths.join(listing.select("path"), "path", "left_anti").count()
    return {"new": todo - changed, "changed": changed, "carried": carried, "deleted": deleted}


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
    CNN setting than `model_key` are recomputed. New rows get `model_key` in the `cnn_model` column.
    """
    previous = None
    if usable_previous(features, quarantine):
        previous = features.select(*IDENTITY).unionByName(quarantine.select(*IDENTITY))
        features = features.filter(F.col(MODEL_COLUMN) == model_key)
    delta = plan(listing, features, quarantine)
    counts = change_counts(listing, previous, delta)
    logger.info("incremental featurization: %s", counts)
    run = featurize_listing(spark, delta.todo, root, featurizer)
    run.features = run.features.withColumn(MODEL_COLUMN, F.lit(model_key))
    if delta.carried_features is None:
        return run, counts
    merged_features = delta.carried_features.select(*run.features.columns).unionByName(run.features)
    merged_quarantine = delta.carried_quarantine.select(*run.quarantined.columns).unionByName(run.quarantined)
    return Featurized(merged_features, merged_quarantine, run.counters, run._cached), counts
