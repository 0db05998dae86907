"""Asset checks: counts reconcile, vectors are finite and full-length, PCA is complete and reaches its target."""

from typing import Any

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetKey, ResourceParam, asset_check

from fruits_assets.resources import ModelStore, TableStore
from spark_code import quality
from spark_code.cnn import FEATURE_DIM


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
    labels_not_empty,
]
