"""Validation: featurize a training set, train the fruit classifier on the PCA features, score it on the corpus."""

import json
from typing import Any

import numpy as np
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    Output,
    ResourceParam,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
    asset_check,
)
from dagster_pyspark import PySparkResource
from pyspark.ml import PipelineModel
from pyspark.ml.feature import PCAModel, StandardScalerModel
from pyspark.sql import functions as F

from fruits_assets.assets import GROUP, current_features, pca_features
from fruits_assets.io_managers import UNCHANGED
from fruits_assets.metadata import latest_metadata
from fruits_assets.progress import SparkProgress
from fruits_assets.resources import ClassifierSettings, CnnResource, ImageSource, ModelStore, TableStore
from spark_code import batches, classifier_fit, lifecycle, openset, storage, unchanged
from spark_code import classifier as clf
from spark_code.images import list_images, require_images
from spark_code.lifecycle import SavedModel
from spark_code.serving import CNN_SETTINGS
from spark_code.triage import featurize_listing

QUARANTINE_ROWS_SHOWN = 100


def _table(records: list[dict], columns: list[tuple[str, str]]) -> MetadataValue:
    schema = TableSchema(columns=[TableColumn(name, kind) for name, kind in columns])
    return MetadataValue.table(records=[TableRecord(r) for r in records], schema=schema)


@asset(group_name=GROUP, kinds={"spark", "tensorflow", "parquet"})
def training_features(
    context: AssetExecutionContext,
    pyspark: PySparkResource,
    training_source: ImageSource,
    cnn: CnnResource,
    tables: TableStore,
    pyspark_step_launcher: ResourceParam[Any],
):
    """CNN features of the labelled training photos (same model and settings as `cnn_features`), made once per
    photo: a run featurizes only training photos that are new, changed or made with other CNN settings, and writes
    nothing when none is (the saved version stays current: the IO manager records it without a rewrite).
    """
    if unchanged.training_changes(training_source.root, tables.base_uri, cnn.model_key()) is None:
        yield _unchanged_training(context, tables, training_source)  # checked without Spark: nothing to featurize
        return
    spark = pyspark.spark_session
    listing = list_images(spark, training_source.root).cache()
    listed = listing.count()
    require_images(listed, training_source.root)
    previous = tables.table("training_features")
    kept, todo = batches.reusable(previous, listing, cnn.model_key())
    run = featurize_listing(spark, todo, training_source.root, cnn.featurizer())
    new_rows = run.features.withColumn(batches.MODEL_COLUMN, F.lit(cnn.model_key()))
    with SparkProgress(spark.sparkContext, "training_features", todo.count(), run.counters.decoded):
        featurized = run.features.count()  # the CNN pass over new or changed training photos only
    quarantined = run.quarantined.orderBy("path").collect()
    reused = 0 if kept is None else kept.count()
    context.log.info(
        "training set: %d listed, %d reused, %d featurized, %d quarantined",
        listed,
        reused,
        featurized,
        len(quarantined),
    )
    all_kept = previous is not None and featurized == 0 and reused == previous.count()
    if all_kept:
        context.log.info("training set unchanged: its saved version stays current")
    shown = [{"path": r.path, "reason": r.reason} for r in quarantined[:QUARANTINE_ROWS_SHOWN]]
    rows = new_rows if kept is None else kept.select(*new_rows.columns).unionByName(new_rows)
    yield Output(
        UNCHANGED if all_kept else rows,
        metadata={
            "unchanged": all_kept,
            "root": training_source.root,
            "listed": listed,
            "reused": reused,
            "featurized": featurized,
            "cnn_images": run.counters.values()["cnn_images"],
            "quarantined": len(quarantined),
            "quarantined_files": _table(shown, [("path", "string"), ("reason", "string")]),
        },
    )
    run.release()


def _unchanged_training(context: AssetExecutionContext, tables: TableStore, training_source: ImageSource) -> Output:
    """The saved training table stays current: every listed photo has its row, made with these CNN settings."""
    rows = unchanged.table_rows(tables.base_uri, "training_features")
    context.log.info("training set unchanged (%d photos, checked without Spark): its saved version stays current", rows)
    metadata = {"unchanged": True, "root": training_source.root, "listed": rows, "reused": rows, "featurized": 0}
    empty = _table([], [("path", "string"), ("reason", "string")])
    return Output(UNCHANGED, metadata={**metadata, "cnn_images": 0, "quarantined": 0, "quarantined_files": empty})


def _evaluation_metadata(evaluation: clf.Evaluation) -> dict:
    per_class = [
        {"label": label, "images": v["images"], "accuracy": round(v["accuracy"], 4), "f1": round(v["f1"], 4)}
        for label, v in sorted(evaluation.per_class.items(), key=lambda item: item[1]["accuracy"])
    ]
    confused = [{"true": t, "predicted": p, "images": n} for t, p, n in evaluation.confused]
    return {
        **evaluation.summary(),
        "per_class_accuracy": _table(
            per_class, [("label", "string"), ("images", "int"), ("accuracy", "float"), ("f1", "float")]
        ),
        "most_confused": _table(confused, [("true", "string"), ("predicted", "string"), ("images", "int")]),
    }


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
    cnn_features, _ = current_features(tables)  # every batch's current rows
    accept = classifier.known_accept_rate
    fitted = classifier_fit.validate(training, cnn_features, scaler, pca, classifier.logistic(), accept)
    known = fitted.model.labels()
    evaluation = clf.evaluate(fitted.scored.pairs(), known)
    raw = clf.evaluate(fitted.raw_scored.pairs(), fitted.raw_labels)
    rejection = _open_set_model(fitted.scored, known, fitted.model.scores, classifier, fitted.protocol)
    model = fitted.model.pipeline
    metadata = {
        **_evaluation_metadata(evaluation),
        **_openset_metadata(rejection, fitted.protocol, fitted.scored, known),
        "k": pca.getK(),
        "classes": len(known),
        "raw_accuracy": round(raw.accuracy, 4),
        "raw_macro_f1": round(raw.macro_f1, 4),
    }
    record = _fit_record(inputs, tables.batches(), evaluation, metadata)
    extras = {
        CNN_SETTINGS: json.dumps({"image_size": cnn.image_size}),
        openset.OPENSET_JSON: rejection.to_json(),
    }
    uri = models.save(model, "fruit_classifier", record, extras=extras).uri
    context.log.info("classifier: %s; on raw features: %s", evaluation.summary(), raw.summary())
    return MaterializeResult(metadata={**metadata, "retrained": True, "model_uri": MetadataValue.path(uri)})


RUNNING_JSON = "running.json"  # the running evaluation after later batches (rewritten beside the model)


def _classifier_inputs(tables: TableStore, models: ModelStore, classifier: ClassifierSettings, cnn: CnnResource):
    """Everything the trained classifier depends on: when all are unchanged, it is reused, not retrained."""
    spark = tables.pyspark.spark_session
    return {
        "training_features": storage.latest_uri(spark, tables.base_uri, "training_features"),
        "scaler": models.latest_uri("scaled_features"),
        "pca": models.latest_uri("pca_features"),
        "cnn_model": cnn.model_key(),
        "settings": fitted_settings(classifier),
    }


def fitted_settings(classifier: ClassifierSettings) -> dict:
    """The settings a classifier is fitted with: when any differs from the saved one's, it is retrained."""
    return classifier.model_dump(include={"max_iter", "reg_param", "unknown_score", "known_accept_rate"})


def _fit_record(inputs: dict, evaluated: list[str], evaluation: clf.Evaluation, metadata: dict) -> dict:
    """The fit's inputs, the batches its evaluation covered, the hit counts, and its plain-number metadata."""
    numbers = {k: v for k, v in metadata.items() if isinstance(v, int | float | str) and not isinstance(v, bool)}
    hits = round(evaluation.accuracy * evaluation.rows)
    return {"inputs": inputs, "evaluated_batches": evaluated, "rows": evaluation.rows, "hits": hits, "fit": numbers}


def _reuse_classifier(context, saved: SavedModel, tables: TableStore) -> MaterializeResult:
    """Keep the saved classifier; score only the batches its evaluation has not covered and add them to the
    running totals (accuracy over every evaluated row). The fit-time figures (macro-F1, open set, raw) are kept."""
    spark, model, uri = tables.pyspark.spark_session, saved.model, saved.uri
    running = storage.read_text(spark, f"{uri}/{RUNNING_JSON}")  # "" until a later batch was evaluated
    record = json.loads(running) if running else saved.fitted_with
    new = [key for key in tables.batches() if key not in set(record["evaluated_batches"])]
    rows = storage.read_partitions(spark, tables.base_uri, "cnn_features", new) if new else None
    batch_rows = batch_hits = 0
    if rows is not None and not rows.isEmpty():
        try:
            batch = clf.evaluate_model(model, rows)
            batch_rows, batch_hits = batch.rows, round(batch.accuracy * batch.rows)
        except ValueError:  # only classes the model does not know: nothing to add
            pass
    record = {
        **record,
        "evaluated_batches": [*record["evaluated_batches"], *new],
        "rows": record["rows"] + batch_rows,
        "hits": record["hits"] + batch_hits,
    }
    storage.write_text(spark, f"{uri}/{RUNNING_JSON}", json.dumps(record))
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


def _open_set_model(
    scored: clf.ScoredRows,
    known: list[str],
    scores: openset.FeatureScores,
    classifier: ClassifierSettings,
    protocol: clf.OpenSetProtocol | None,
) -> openset.OpenSetModel:
    """The configured score (or, for `auto`, the protocol's best), calibrated on the corpus's known-class rows."""
    score = classifier.unknown_score
    if score == "auto":
        score = openset.best(protocol.reports).score if protocol else openset.KNN_PROBABILITY
    is_known = np.isin(scored.labels, known)
    values = {name: scored.values(name)[is_known] for name in openset.SCORES}
    return openset.calibrated(score, values, scores, classifier.known_accept_rate)


def _openset_metadata(
    rejection: openset.OpenSetModel, protocol: clf.OpenSetProtocol | None, scored: clf.ScoredRows, known: list[str]
) -> dict:
    decision = rejection.decision
    accepted = decision.known(scored.values(decision.score))
    is_known = np.isin(scored.labels, known)
    metadata = {
        "unknown_score": decision.score,
        "unknown_threshold": round(decision.threshold, 6),
        "known_accepted": round(float(accepted[is_known].mean()), 4),
    }
    if (~is_known).any():
        metadata["unknown_class_rows_rejected"] = round(float(1 - accepted[~is_known].mean()), 4)
    if protocol is not None:
        metadata.update(protocol.summary())
        metadata["openset_protocol"] = MetadataValue.md(_protocol_markdown(protocol, rejection.accept_rate))
    return metadata


def _protocol_markdown(protocol: clf.OpenSetProtocol, accept_rate: float) -> str:
    lines = [
        f"Held out {len(protocol.held_out)} of {len(protocol.held_out) + len(protocol.known_classes)} training classes "
        f"(sorted positions {openset.HELD_OUT_OFFSET} mod {openset.HELD_OUT_EVERY}); knowns: "
        f"{protocol.known_rows} test photos, unknowns: {protocol.unknown_rows}.",
        "",
        f"| score | AUROC | unknowns rejected at {accept_rate:.0%} knowns accepted |",
        "|---|---:|---:|",
    ]
    lines += [f"| {r.score} | {r.auroc:.4f} | {r.rejected_at_accept:.4f} |" for r in protocol.reports]
    return "\n".join(lines)


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


VALIDATION_ASSETS = [training_features, fruit_classifier]
VALIDATION_CHECKS = [accuracy_above_floor, pca_costs_little_accuracy]
