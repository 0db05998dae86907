"""Reduce: `scaled_features` and `pca_features`, each derived from its source table's changes by one saved model,
with the checks of the PCA."""

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    Config,
    MetadataValue,
    Output,
    ResourceParam,
    asset,
    asset_check,
)
from pydantic import Field
from pyspark.ml.feature import PCAModel, StandardScalerModel
from pyspark.sql import DataFrame

from fruits_assets.defs.partitions import GROUP
from fruits_assets.io import plots
from fruits_assets.io.io_manager import UNCHANGED
from fruits_assets.io.metadata import latest_metadata, table, variance_markdown
from fruits_assets.io.resources import ClassifierSettings, ModelStore, TableStore
from spark_code import unchanged
from spark_code.classify import choose_k
from spark_code.ingest import batches
from spark_code.reduction import lifecycle, scaler_pca
from spark_code.reduction.lifecycle import SavedModel
from spark_code.storage import lake, quality, versions
from spark_code.storage.tables import Update, removed_paths, upserts


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
    saved = models.latest(StandardScalerModel, "scaled_features")
    pending = Derivation.of(tables, "scaled_features", "cnn_features", saved)
    verdict = lifecycle.decide(saved, _scaler_inputs(saved, pending.new_rows()), refit=config.refit)
    if verdict.refit:
        cnn_features, cnn_model = tables.current_features()
        model = scaler_pca.fit_scaler(cnn_features, "features", "scaled_features")
        fitted_with = {"cnn_model": cnn_model, "cnn_features_version": tables.version("cnn_features")}
        saved = models.save(model, "scaled_features", fitted_with)
        pending = Derivation.of(tables, "scaled_features", "cnn_features", saved)
    update = pending.update(lambda rows: scaler_pca.scaled_part(saved.model, rows, KEEP))
    context.log.info("scaler %s (%s): %s", saved.uri, verdict.reason, pending.describe())
    metadata = {"model_uri": MetadataValue.path(saved.uri), "refit": verdict.refit, **pending.metadata()}
    return Output(update, metadata=metadata)


@dataclass(frozen=True)
class Derivation:
    """What a table derived row by row from a source table (through a saved model) has to take: every source row
    when the model is not the one that derived its rows (a refit), else the source's changes since the version it
    last took (none: nothing to write)."""

    tables: TableStore
    name: str
    source: str
    model: SavedModel | None
    taken: int
    until: int | None
    everything: bool

    @classmethod
    def of(cls, tables: TableStore, name: str, source: str, model: SavedModel | None) -> "Derivation":
        """The derivation of table `name` from `source` with `model`, as the tables stand now."""
        derived_with = unchanged.derived_with(tables.base_uri, name)
        everything = model is None or derived_with != model.version
        return cls(tables, name, source, model, tables.consumed(name, source), tables.version(source), everything)

    @functools.cached_property
    def _net(self) -> DataFrame | None:
        if self.everything or self.until is None or self.until <= self.taken:
            return None
        # Not cached: after a long pause these rows (1,280 floats each) can outgrow the driver's heap; a batch's
        # few rows are read again at little cost.
        return self.tables.changes(self.source, self.taken, self.until)

    def new_rows(self) -> DataFrame | None:
        """The source rows the model has not derived yet (every row for a new model; None when there is none)."""
        if self.everything:
            return self.tables.table(self.source)
        return None if self._net is None else upserts(self._net)

    def update(self, derive: Callable[[DataFrame], DataFrame]) -> Update | None:
        """The commit that brings the table up to date (UNCHANGED when it is): rows made by `derive`."""
        recorded = {"model": self.model.version}
        source = None if self.until is None else (self.source, self.until)
        if self.everything:
            return Update(
                derive(self.tables.require_table(self.source)), replace=True, source=source, recorded=recorded
            )
        if self._net is None:
            return UNCHANGED
        return Update(derive(upserts(self._net)), removed_paths(self._net), source=source, recorded=recorded)

    def describe(self) -> str:
        """For the log: what this run derives."""
        if self.everything:
            return f"every row of {self.source} (version {self.until})"
        if self._net is None:
            return f"{self.name} is current with {self.source} version {self.until}"
        return f"the changes of {self.source} versions {self.taken + 1}..{self.until}"

    def metadata(self) -> dict:
        """What the UI shows of the derivation."""
        return {"source_version": self.until, "rederived": self.everything, "derived": self.describe()}


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
    saved, wanted = models.latest(PCAModel, "pca_features"), config.choice().inputs(scaler_uri)
    pending = Derivation.of(tables, "pca_features", "scaled_features", saved)
    verdict, drift = lifecycle.decide_with_drift(
        saved,
        wanted,
        lambda model: pending.new_rows(),
        refit=config.refit,
        max_drift=config.max_drift,
        refit_on_drift=config.refit_on_drift,
    )
    if verdict.refit:
        saved = _fit_pca(config, tables, models, scaler_uri, classifier)
        pending = Derivation.of(tables, "pca_features", "scaled_features", saved)
    context.log.info(
        "PCA %s: k=%d, %s (drift %s), %s", saved.uri, saved.model.getK(), verdict.reason, drift, pending.describe()
    )
    projected = pending.new_rows()
    update = pending.update(lambda rows: scaler_pca.pca_part(saved.model, saved.uri, rows, KEEP))
    refit_due = drift is not None and drift > config.max_drift
    metadata = _pca_metadata(config, saved, verdict.refit, drift, refit_due, projected)
    return Output(update, metadata={**metadata, **pending.metadata()})


def _fit_pca(config: PcaConfig, tables: TableStore, models: ModelStore, scaler_uri: str, classifier) -> SavedModel:
    """Fit the PCA on every current scaled row, choose k, save it with what it was fitted with."""
    scaled = tables.require_table("scaled_features")

    def rows():  # read only when k is chosen by accuracy
        scaler = functools.partial(models.load, StandardScalerModel, "scaled_features")
        return choose_k.curve_rows(scaled, tables.table("training_features"), scaler)

    model, fitted_with = choose_k.fit_pca(scaled, config.choice(), scaler_uri, classifier.logistic(), rows)
    return models.save(model, "pca_features", fitted_with)


def _pca_metadata(
    config: PcaConfig,
    saved: SavedModel,
    refit: bool,
    drift,
    refit_due: bool,
    projected: DataFrame | None,
) -> dict:
    """What the UI shows of a PCA run: k, the variance curve and its plots, drift, the batches projected."""
    model, fitted_with = saved.model, saved.fitted_with
    curve, accuracy = fitted_with["curve"], {int(k): a for k, a in fitted_with.get("accuracy_curve", {}).items()}
    k = model.getK()
    metadata = {
        "k": k,
        "explained_variance": float(curve[k - 1]),
        "variance_target": config.variance_target if config.k is None else None,
        "k_choice": fitted_with.get("k_choice"),
        "accuracy_curve_on": fitted_with.get("accuracy_curve_on"),
        "input_dim": len(curve),
        "bytes_per_photo_vector": 4 * k,
        "refit": refit,
        "drift": drift,
        "max_drift": config.max_drift,
        "refit_due": refit_due and not refit,
        "cumulative_variance": MetadataValue.md(variance_markdown(curve, k)),
        "variance_plot": MetadataValue.md(plots.variance_plot(curve, k, None if config.k else config.variance_target)),
        **_accuracy_metadata(accuracy, k),
        **_scatter(model, projected),
        "model_uri": MetadataValue.path(saved.uri),
    }
    return {key: value for key, value in metadata.items() if value is not None}


def _scatter(model: PCAModel, rows: DataFrame | None) -> dict:
    """The first two components of (a sample of) the rows projected in this run, as a plot; {} if none. The sample
    is drawn from the scaled rows and only it is projected."""
    if rows is None:
        return {}
    head = scaler_pca.Projection.first(model, min(2, model.getK()))
    projected = scaler_pca.first_two(
        rows, "scaled_features", project=lambda rows: scaler_pca.transform_arrays(head, rows)
    )
    return {"pca_scatter": MetadataValue.md(plots.scatter_plot(*projected))}


def _accuracy_metadata(accuracy: dict[int, float], k: int) -> dict:
    if not accuracy:
        return {}
    records = [{"k": key, "accuracy": round(value, 4)} for key, value in sorted(accuracy.items())]
    return {
        "accuracy_by_k": table(records, [("k", "int"), ("accuracy", "float")]),
        "accuracy_plot": MetadataValue.md(plots.accuracy_plot(accuracy, k)),
    }


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
    empty = quality.empty_labels(tables.batch_rows("pca_features", newest))
    return AssetCheckResult(passed=empty == 0, metadata={"empty_labels": empty, "batch": newest or ""})
