"""Asset checks: counts reconcile, vectors are finite and full-length, PCA is complete and reaches its target."""

from typing import Any

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    ResourceParam,
    asset_check,
)
from pyspark.sql import functions as F

from fruits_assets.metadata import latest_metadata
from fruits_assets.resources import ModelStore, TableStore
from spark_code import batches, quality, unchanged
from spark_code.cnn import FEATURE_DIM
from spark_code.s3a import is_s3


def listing_counts(context: AssetCheckExecutionContext) -> dict[str, int]:
    """`files_found` and `skipped` of the newest raw_images listing ({} when the instance has none)."""
    metadata = latest_metadata(context.instance, "raw_images")
    return {key: metadata[key] for key in ("files_found", "skipped") if key in metadata}


@asset_check(asset="cnn_features")
def counts_reconcile(
    context: AssetCheckExecutionContext, tables: TableStore, pyspark_step_launcher: ResourceParam[Any]
) -> AssetCheckResult:
    """The newest batch reconciles: each file it took is featurized or quarantined, exactly once (`batch_*`).
    When that batch came from a listing of the root (which costs the corpus anyway), the same holds over every
    batch's current rows, and every file found under the root is featurized, quarantined or skipped by rule
    (files_found = the three together). A sensor's batch (its change list, no listing) is checked on its own rows:
    the check costs what the batch costs."""
    newest = tables.batches()[-1:]
    taken = tables.require_parts("raw_images", newest).filter(F.col(batches.CHANGE) != batches.DELETED)
    parts = (tables.require_parts(name, newest) for name in ("cnn_features", "quarantined_images"))
    batch = quality.reconcile(taken, *parts)
    counts, passed = {f"batch_{k}": v for k, v in batch.items()}, quality.counts_reconcile(batch)
    listed = listing_counts(context)
    if listed:
        every = {**_every_batch(tables), **listed}
        counts, passed = {**counts, **every}, passed and quality.counts_reconcile(every)
    return AssetCheckResult(passed=passed, metadata={**counts, "batch": ",".join(newest)})


def _every_batch(tables: TableStore) -> dict[str, int]:
    """Reconciliation counts over every batch's current rows (with pyarrow on the driver for a local output)."""
    if not is_s3(tables.base_uri):
        return unchanged.reconcile(tables.base_uri)
    names = ("raw_images", "cnn_features", "quarantined_images")
    return quality.reconcile(*(tables.require_current(name) for name in names))


@asset_check(asset="cnn_features")
def features_are_finite_1280(tables: TableStore, pyspark_step_launcher: ResourceParam[Any]) -> AssetCheckResult:
    """Each feature vector of the newest batch holds exactly 1280 finite floats (each batch is checked when it
    is made: the check costs what the batch costs)."""
    newest = tables.batches()[-1:]
    bad = quality.bad_vectors(tables.require_parts("cnn_features", newest), "features", FEATURE_DIM)
    return AssetCheckResult(passed=bad == 0, metadata={"bad_vectors": bad, "batch": ",".join(newest)})


@asset_check(asset="pca_features")
def pca_rows_match_features(
    tables: TableStore, models: ModelStore, pyspark_step_launcher: ResourceParam[Any]
) -> AssetCheckResult:
    """Every batch has a PCA part made by the current PCA model, and the newest batch's part has one row per
    feature row of that batch."""
    keys = tables.batches()
    missing = sorted(set(keys) - models.derived_batches(models.latest_uri("pca_features")))
    newest = keys[-1:]
    pca_rows = tables.require_parts("pca_features", newest).count()
    feature_rows = tables.require_parts("cnn_features", newest).count()
    metadata = {"pca_rows": pca_rows, "feature_rows": feature_rows, "batch": ",".join(newest)}
    metadata["batches_without_part"] = len(missing)
    return AssetCheckResult(passed=pca_rows == feature_rows and not missing, metadata=metadata)


@asset_check(asset="pca_features")
def explained_variance_reaches_target(context: AssetCheckExecutionContext) -> AssetCheckResult:
    """The kept components explain at least the configured share of the variance."""
    metadata = latest_metadata(context.instance, "pca_features")
    reached, target = metadata.get("explained_variance"), metadata.get("variance_target")
    if reached is None:
        return AssetCheckResult(passed=False, description="pca_features carries no explained_variance metadata")
    if target is None:
        return AssetCheckResult(
            passed=True, description="k was fixed: no variance target", metadata={"reached": reached}
        )
    return AssetCheckResult(passed=reached >= target, metadata={"reached": reached, "target": target})


@asset_check(asset="pca_features")
def pca_basis_fits_new_rows(context: AssetCheckExecutionContext) -> AssetCheckResult:
    """The saved PCA explains the new rows about as well as the rows it was fitted on (drift within `max_drift`);
    a warning, not a failure: the rows are projected anyway, and the refit_models job (daily_refit) refits."""
    metadata = latest_metadata(context.instance, "pca_features")
    drift, bound = metadata.get("drift"), metadata.get("max_drift")
    passed = drift is None or bound is None or drift <= bound
    description = None if passed else "the data drifted: run the refit_models job (daily_refit runs it at 03:00)"
    return AssetCheckResult(
        passed=passed,
        severity=AssetCheckSeverity.WARN,
        description=description,
        metadata={"drift": drift, "max_drift": bound},
    )


@asset_check(asset="pca_features")
def labels_not_empty(tables: TableStore, pyspark_step_launcher: ResourceParam[Any]) -> AssetCheckResult:
    """Every PCA row of the newest batch carries a non-blank class label."""
    newest = tables.batches()[-1:]
    empty = quality.empty_labels(tables.require_parts("pca_features", newest))
    return AssetCheckResult(passed=empty == 0, metadata={"empty_labels": empty, "batch": ",".join(newest)})


ALL_CHECKS = [
    counts_reconcile,
    features_are_finite_1280,
    pca_rows_match_features,
    explained_variance_reaches_target,
    pca_basis_fits_new_rows,
    labels_not_empty,
]
