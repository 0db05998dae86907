"""Reduce: `scaled_features` and `pca_features`, each derived from its source table's changes by one saved model,
with the checks of the PCA."""

import functools
from typing import Any

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    Config,
    Output,
    ResourceParam,
    asset,
    asset_check,
)
from pydantic import Field
from pyspark.ml.feature import PCAModel, StandardScalerModel
from pyspark.sql import DataFrame

from fruits_assets.defs.partitions import GROUP
from fruits_assets.io.derivation import reuse_or_refit
from fruits_assets.io.metadata import latest_metadata
from fruits_assets.io.pca_metadata import pca_metadata
from fruits_assets.io.resources import ClassifierSettings, ModelStore, TableStore
from spark_code import quality, unchanged
from spark_code.ingest import batches
from spark_code.reduction import choose_k, lifecycle, scaler_pca
from spark_code.reduction.lifecycle import SavedModel
from spark_code.storage import lake, versions


class ScalerConfig(Config):
    """Refit policy of the scaler: reuse the saved one (new images are scaled with it) unless `refit`, or unless it
    was fitted on features of other CNN settings."""

    refit: bool = Field(default=False, description="Fit a new scaler on all current features (the daily schedule).")


KEEP = [*batches.IDENTITY, "label", batches.BATCH]  # what a derived row keeps of its photo's row


@asset(group_name=GROUP, kinds={"spark", "delta"}, deps=["cnn_features"])
def scaled_features(
    context: AssetExecutionContext,
    config: ScalerConfig,
    models: ModelStore,
    tables: TableStore,
    pyspark_step_launcher: ResourceParam[Any],
):
    """Features standardised by a Spark ML StandardScaler saved with the asset, stored as float32 (the CNN's
    precision: 5 KB per photo): a run scales only the rows of cnn_features that changed since the version this
    table last took (its change data feed). A refit (config, or features of other CNN settings) scales every row
    again and replaces the table."""
    derived = reuse_or_refit(
        tables,
        models,
        ("scaled_features", "cnn_features"),
        StandardScalerModel,
        decide=lambda saved, pending: (
            lifecycle.decide(saved, _scaler_inputs(saved, pending.new_rows()), refit=config.refit),
            None,
        ),
        fit=lambda: _fit_scaler(tables, models),
    )
    update = derived.pending.update(lambda rows: scaler_pca.scaled_part(derived.saved.model, rows, KEEP))
    context.log.info("scaler %s (%s): %s", derived.saved.uri, derived.verdict.reason, derived.pending.describe())
    return Output(update, metadata=derived.metadata())


def _fit_scaler(tables: TableStore, models: ModelStore) -> SavedModel:
    """Fit the scaler on every current feature row; save it with the CNN settings and table version it saw."""
    cnn_features, cnn_model = tables.current_features()
    model = scaler_pca.fit_scaler(cnn_features, "features", "scaled_features")
    fitted_with = {"cnn_model": cnn_model, "cnn_features_version": tables.version("cnn_features")}
    return models.save(model, "scaled_features", fitted_with)


def _scaler_inputs(saved: SavedModel | None, new: DataFrame | None) -> dict:
    """What the new rows need of the scaler: features of the CNN settings it was fitted on (new rows of other
    settings cannot be scaled like the old ones)."""
    if saved is None or new is None:
        return {}
    found = batches.cnn_models(new)
    if not found:  # an empty batch asks nothing of the scaler
        return {}
    return {"cnn_model": found[0] if len(found) == 1 else found}


class PcaConfig(Config):
    """A fixed number of components `k`, or the share of variance to keep, or by default the smallest k whose
    classifier accuracy is within `accuracy_tolerance` of the best k's; and the refit policy."""

    k: int | None = Field(default=None, ge=1, description="Fixed number of components (overrides the others).")
    variance_target: float | None = Field(
        default=None, gt=0.0, le=1.0, description="Keep the smallest k reaching this cumulative explained variance."
    )
    accuracy_tolerance: float = Field(
        default=choose_k.KChoice.accuracy_tolerance,
        ge=0.0,
        le=0.1,
        description="Default choice: the smallest k whose validation accuracy is within this of the best k's.",
    )
    refit: bool = Field(default=False, description="Fit a new PCA even if the saved one still fits (daily schedule).")
    max_drift: float = Field(
        default=0.03,
        ge=0.0,
        le=1.0,
        description="Drift bound: the check pca_basis_fits_new_rows warns when the saved basis explains this much "
        "less of the new rows' variance than of the rows it was fitted on.",
    )
    refit_on_drift: bool = Field(
        default=False,
        description="Refit in the same run when the drift bound is passed (a run over every batch); by default the "
        "check warns and the refit_models job (daily_refit) refits.",
    )

    def choice(self) -> choose_k.KChoice:
        """How k is chosen (what a saved PCA must still match to be reused)."""
        return choose_k.KChoice(self.k, self.variance_target, self.accuracy_tolerance)


@asset(group_name=GROUP, kinds={"spark", "delta"}, deps=["scaled_features", "training_features"])
def pca_features(
    context: AssetExecutionContext,
    config: PcaConfig,
    models: ModelStore,
    tables: TableStore,
    classifier: ClassifierSettings,
    pyspark_step_launcher: ResourceParam[Any],
):
    """PCA projection (path, label, pca_features as float32, pca_model) from one fit, k fixed, reaching a variance
    target, or by default the smallest k whose logistic-regression accuracy is within the tolerance of the best.

    The saved PCA projects only the scaled rows that changed since the version of scaled_features this table last
    took. It is refit, and every row projected again, when `refit` is set (the refit_models job), k or the scaler
    changed, or, with `refit_on_drift`, the data drifted: the share of the new rows' variance the saved basis
    explains is more than `max_drift` below its share at fit time. By default drift is measured and reported
    (`drift`, `refit_due`, and the check pca_basis_fits_new_rows warns), so a batch run costs what the batch costs.
    """
    scaler_uri = models.latest_uri("scaled_features")
    wanted = config.choice().inputs(scaler_uri)
    derived = reuse_or_refit(
        tables,
        models,
        ("pca_features", "scaled_features"),
        PCAModel,
        decide=lambda saved, pending: lifecycle.decide_with_drift(
            saved,
            wanted,
            lambda model: pending.new_rows(),
            refit=config.refit,
            max_drift=config.max_drift,
            refit_on_drift=config.refit_on_drift,
        ),
        fit=lambda: _fit_pca(config, tables, models, scaler_uri, classifier),
    )
    saved, pending = derived.saved, derived.pending
    context.log.info(
        "PCA %s: k=%d, %s (drift %s), %s",
        saved.uri,
        saved.model.getK(),
        derived.verdict.reason,
        derived.drift,
        pending.describe(),
    )
    projected = pending.new_rows()
    update = pending.update(lambda rows: scaler_pca.pca_part(saved.model, saved.uri, rows, KEEP))
    target = config.variance_target if config.k is None else None
    shown = pca_metadata(saved, target, (derived.drift, config.max_drift), derived.verdict.refit, projected)
    return Output(update, metadata={**shown, **pending.metadata()})


def _fit_pca(config: PcaConfig, tables: TableStore, models: ModelStore, scaler_uri: str, classifier) -> SavedModel:
    """Fit the PCA on every current scaled row, choose k, save it with what it was fitted with."""
    scaled = tables.require_table("scaled_features")

    def rows():  # read only when k is chosen by accuracy
        scaler = functools.partial(models.load, StandardScalerModel, "scaled_features")
        training = lake.read(tables.uri("training_features"), ["path", "label", "features"])  # small: the driver's
        return choose_k.curve_rows(scaled, training, scaler)

    accuracy_by_k = classifier.logistic().accuracy_by_k  # the classifier's fits, as the curve's judge of each k
    model, fitted_with = choose_k.fit_pca(scaled, config.choice(), scaler_uri, accuracy_by_k, rows)
    return models.save(model, "pca_features", fitted_with)


@asset_check(asset="pca_features")
def pca_rows_match_features(
    tables: TableStore, models: ModelStore, pyspark_step_launcher: ResourceParam[Any]
) -> AssetCheckResult:
    """The PCA table was derived by the current PCA model and has taken every change of the scaled table, which has
    taken every change of the features: one PCA row per feature row (counts from the tables' logs, no data read)."""
    pca_rows, feature_rows = (lake.rows(tables.uri(name)) for name in ("pca_features", "cnn_features"))
    derived_with = unchanged.derived_with(tables.base_uri, "pca_features")
    current = derived_with == versions.version_name(models.latest_uri("pca_features"))
    behind = [
        reason for name in ("scaled_features", "pca_features") if (reason := unchanged.behind(tables.base_uri, name))
    ]
    metadata = {"pca_rows": pca_rows, "feature_rows": feature_rows, "derived_with": derived_with or ""}
    metadata["behind"] = "; ".join(behind)
    return AssetCheckResult(passed=pca_rows == feature_rows and current and not behind, metadata=metadata)


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
    newest = tables.newest_batch()
    empty = quality.empty_labels(tables.batch_rows("pca_features", newest, ["label"]))
    return AssetCheckResult(passed=empty == 0, metadata={"empty_labels": empty, "batch": newest or ""})
