"""Asset checks: counts reconcile, vectors are finite and full-length, PCA is complete and reaches its target."""

from typing import Any

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetKey, ResourceParam, asset_check
from pyspark.sql import DataFrame

from fruits_assets.resources import TableStore
from spark_code import quality
from spark_code.cnn import FEATURE_DIM

STEP_LAUNCHER = "pyspark_step_launcher"  # Spark checks run where the Spark assets run (on EMR: on the cluster)


def listing_counts(context: AssetCheckExecutionContext) -> dict[str, int]:
    """`files_found` and `skipped` of the newest raw_images listing ({} when the instance has none)."""
    event = context.instance.get_latest_materialization_event(AssetKey("raw_images"))
    metadata = event.asset_materialization.metadata if event and event.asset_materialization else {}
    return {key: metadata[key].value for key in ("files_found", "skipped") if key in metadata}


@asset_check(asset="cnn_features")
def counts_reconcile(
    context: AssetCheckExecutionContext, tables: TableStore, pyspark_step_launcher: ResourceParam[Any]
) -> AssetCheckResult:
    """Over every batch, each file listed now is either featurized or quarantined, exactly once; and every file
    found under the root is featurized, quarantined or skipped by rule (files_found = the three together)."""
    names = ("raw_images", "cnn_features", "quarantined_images")
    raw, features, quarantine = (tables.require_current(name) for name in names)
    counts = {**quality.reconcile(raw, features, quarantine), **listing_counts(context)}
    return AssetCheckResult(passed=quality.counts_reconcile(counts), metadata=counts)


@asset_check(asset="cnn_features")
def features_are_finite_1280(tables: TableStore, pyspark_step_launcher: ResourceParam[Any]) -> AssetCheckResult:
    """Each current feature vector holds exactly 1280 finite floats."""
    bad = quality.bad_vectors(tables.require_current("cnn_features"), "features", FEATURE_DIM)
    return AssetCheckResult(passed=bad == 0, metadata={"bad_vectors": bad})


@asset_check(asset="pca_features")
def pca_rows_match_features(
    pca_features: DataFrame, tables: TableStore, pyspark_step_launcher: ResourceParam[Any]
) -> AssetCheckResult:
    """The PCA table has one row per current featurized image."""
    pca_rows, feature_rows = pca_features.count(), tables.require_current("cnn_features").count()
    return AssetCheckResult(
        passed=pca_rows == feature_rows, metadata={"pca_rows": pca_rows, "feature_rows": feature_rows}
    )


@asset_check(asset="pca_features")
def explained_variance_reaches_target(context: AssetCheckExecutionContext) -> AssetCheckResult:
    """The kept components explain at least the configured share of the variance."""
    event = context.instance.get_latest_materialization_event(AssetKey("pca_features"))
    metadata = event.asset_materialization.metadata if event and event.asset_materialization else {}
    reached = metadata["explained_variance"].value if "explained_variance" in metadata else None
    target = metadata["variance_target"].value if "variance_target" in metadata else None
    if reached is None:
        return AssetCheckResult(passed=False, description="pca_features carries no explained_variance metadata")
    if target is None:
        return AssetCheckResult(
            passed=True, description="k was fixed: no variance target", metadata={"reached": reached}
        )
    return AssetCheckResult(passed=reached >= target, metadata={"reached": reached, "target": target})


@asset_check(asset="pca_features", required_resource_keys={STEP_LAUNCHER})
def labels_not_empty(pca_features: DataFrame) -> AssetCheckResult:
    """Every PCA row carries a non-blank class label."""
    empty = quality.empty_labels(pca_features)
    return AssetCheckResult(passed=empty == 0, metadata={"empty_labels": empty})


ALL_CHECKS = [
    counts_reconcile,
    features_are_finite_1280,
    pca_rows_match_features,
    explained_variance_reaches_target,
    labels_not_empty,
]
