"""Classify: `fruit_classifier`, trained on the training photos' PCA features and scored on the corpus, reused while
its inputs are unchanged; with its checks (accuracy floor, cost of the PCA)."""

import json
from typing import Any

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    ResourceParam,
    asset,
    asset_check,
)
from pyspark.ml import PipelineModel
from pyspark.ml.feature import PCAModel, StandardScalerModel

from fruits_assets.defs.featurize import training_features
from fruits_assets.defs.partitions import GROUP
from fruits_assets.defs.reduction import pca_features
from fruits_assets.io.classifier_metadata import evaluation_metadata, openset_metadata
from fruits_assets.io.metadata import latest_metadata
from fruits_assets.io.resources import ClassifierSettings, CnnResource, ModelStore, TableStore
from spark_code import unchanged
from spark_code.classify import classifier as clf
from spark_code.classify import classifier_fit
from spark_code.reduction import lifecycle
from spark_code.reduction.lifecycle import SavedModel
from spark_code.storage import versions
from spark_code.storage.tables import upserts


@asset(group_name=GROUP, deps=[pca_features, "cnn_features", training_features], kinds={"spark"})
def fruit_classifier(
    context: AssetExecutionContext,
    tables: TableStore,
    models: ModelStore,
    classifier: ClassifierSettings,
    cnn: CnnResource,
    pyspark_step_launcher: ResourceParam[Any],
) -> MaterializeResult:
    """Multinomial logistic regression on the PCA features of the training set, scored on the corpus, with its
    open-set rejection (`unknown`): feature-space scores fitted on the training photos, measured by the
    held-out-classes protocol, the threshold calibrated to accept `known_accept_rate` of the corpus's known photos.

    Saves scaler + PCA + classifier + label index as one Spark ML pipeline (plus `openset.json`); also scores the
    same classifier on the raw (scaled) 1280-d features, so the cost of the dimension reduction shows.
    """
    training = tables.require_table("training_features")  # from storage: a run may have written none
    inputs = _classifier_inputs(tables, models, classifier, cnn)
    saved = models.latest(PipelineModel, "fruit_classifier")
    if not lifecycle.decide(saved, {"inputs": inputs}).refit:  # same training rows, scaler, PCA and settings
        return _reuse_classifier(context, saved, tables)
    scaler = models.load(StandardScalerModel, "scaled_features")
    pca = models.load(PCAModel, "pca_features")
    cnn_features, _ = tables.current_features()  # every batch's current rows
    accept = classifier.known_accept_rate
    fitted = classifier_fit.validate(training, cnn_features, scaler, pca, classifier.logistic(), accept)
    known = fitted.model.labels()
    evaluation = clf.evaluate(fitted.scored.pairs(), known)
    raw = clf.evaluate(fitted.raw_scored.pairs(), fitted.raw_labels)
    rejection = classifier_fit.open_set_model(
        fitted.scored, known, fitted.model.scores, classifier.unknown_score, accept, fitted.protocol
    )
    model = fitted.model.pipeline
    metadata = {
        **evaluation_metadata(evaluation),
        **openset_metadata(rejection, fitted.protocol, fitted.scored, known),
        "k": pca.getK(),
        "classes": len(known),
        "raw_accuracy": round(raw.accuracy, 4),
        "raw_macro_f1": round(raw.macro_f1, 4),
    }
    record = _fit_record(inputs, tables.version("cnn_features"), evaluation, metadata)
    extras = classifier_fit.sidecars(model, rejection, cnn.image_size)
    uri = models.save(model, "fruit_classifier", record, extras=extras).uri
    context.log.info("classifier: %s; on raw features: %s", evaluation.summary(), raw.summary())
    return MaterializeResult(metadata={**metadata, "retrained": True, "model_uri": MetadataValue.path(uri)})


RUNNING_JSON = "running.json"  # the running evaluation after later batches (rewritten beside the model)


def _classifier_inputs(tables: TableStore, models: ModelStore, classifier: ClassifierSettings, cnn: CnnResource):
    """Everything the trained classifier depends on: when all are unchanged, it is reused, not retrained."""
    return {
        "training_features": unchanged.training_input(tables.base_uri),
        "scaler": models.latest_uri("scaled_features"),
        "pca": models.latest_uri("pca_features"),
        "cnn_model": cnn.model_key(),
        "settings": fitted_settings(classifier),
    }


def fitted_settings(classifier: ClassifierSettings) -> dict:
    """The settings a classifier is fitted with: when any differs from the saved one's, it is retrained."""
    return classifier.model_dump(include={"max_iter", "reg_param", "unknown_score", "known_accept_rate"})


def _fit_record(inputs: dict, evaluated: int | None, evaluation: clf.Evaluation, metadata: dict) -> dict:
    """The fit's inputs, the version of cnn_features its evaluation covered, the hit counts, and its plain-number
    metadata."""
    numbers = {k: v for k, v in metadata.items() if isinstance(v, int | float | str) and not isinstance(v, bool)}
    hits = round(evaluation.accuracy * evaluation.rows)
    return {"inputs": inputs, "evaluated_version": evaluated, "rows": evaluation.rows, "hits": hits, "fit": numbers}


def _reuse_classifier(context, saved: SavedModel, tables: TableStore) -> MaterializeResult:
    """Keep the saved classifier; score only the feature rows that changed since the version of cnn_features its
    evaluation covered and add them to the running totals (accuracy over every evaluated row). The fit-time figures
    (macro-F1, open set, raw) are kept."""
    spark, model, uri = tables.pyspark.spark_session, saved.model, saved.uri
    running = versions.read_text(spark, f"{uri}/{RUNNING_JSON}")  # "" until a later batch was evaluated
    record = json.loads(running) if running else saved.fitted_with
    evaluated, until = record.get("evaluated_version", -1), tables.version("cnn_features")
    rows = None
    if until is not None and until > evaluated:
        rows = upserts(tables.changes("cnn_features", evaluated, until))
    batch_rows = batch_hits = 0
    if rows is not None and not rows.isEmpty():
        try:
            batch = clf.evaluate_model(model, rows)
            batch_rows, batch_hits = batch.rows, round(batch.accuracy * batch.rows)
        except ValueError:  # only classes the model does not know: nothing to add
            pass
    record = {
        **record,
        "evaluated_version": until,
        "rows": record["rows"] + batch_rows,
        "hits": record["hits"] + batch_hits,
    }
    versions.write_text(spark, f"{uri}/{RUNNING_JSON}", json.dumps(record))
    accuracy = record["hits"] / record["rows"] if record["rows"] else 0.0
    context.log.info("classifier reused (%s): %d new rows scored, running accuracy %.4f", uri, batch_rows, accuracy)
    return MaterializeResult(
        metadata={
            **record["fit"],
            "accuracy": round(accuracy, 4),
            "test_rows": record["rows"],
            "retrained": False,
            "batch_rows": batch_rows,
            "batch_accuracy": round(batch_hits / batch_rows, 4) if batch_rows else None,
            "model_uri": MetadataValue.path(uri),
        }
    )


@asset_check(asset=fruit_classifier)
def accuracy_above_floor(context: AssetCheckExecutionContext, classifier: ClassifierSettings) -> AssetCheckResult:
    """Test accuracy (classes known to the model) reaches the configured floor."""
    accuracy = latest_metadata(context.instance, "fruit_classifier").get("accuracy")
    passed = accuracy is not None and accuracy >= classifier.accuracy_floor
    return AssetCheckResult(passed=passed, metadata={"accuracy": accuracy, "floor": classifier.accuracy_floor})


@asset_check(asset=fruit_classifier)
def pca_costs_little_accuracy(context: AssetCheckExecutionContext, classifier: ClassifierSettings) -> AssetCheckResult:
    """Accuracy on the PCA features stays within the allowed drop of accuracy on the raw 1280-d features."""
    metadata = latest_metadata(context.instance, "fruit_classifier")
    pca_accuracy, raw_accuracy = metadata.get("accuracy"), metadata.get("raw_accuracy")
    if pca_accuracy is None or raw_accuracy is None:
        return AssetCheckResult(passed=False, description="fruit_classifier carries no accuracy metadata")
    cost = round(raw_accuracy - pca_accuracy, 4)
    return AssetCheckResult(
        passed=cost <= classifier.max_pca_accuracy_drop,
        metadata={
            "pca_accuracy": pca_accuracy,
            "raw_accuracy": raw_accuracy,
            "cost": cost,
            "max_drop": classifier.max_pca_accuracy_drop,
        },
    )
