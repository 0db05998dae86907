"""Validation: featurize a training set, train the fruit classifier on the PCA features, score it on the corpus."""

import json
from typing import Any

import numpy as np
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetExecutionContext,
    AssetKey,
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
from pyspark.ml.feature import PCAModel, StandardScalerModel
from pyspark.sql import DataFrame

from fruits_assets.assets import GROUP, current_features, pca_features
from fruits_assets.resources import ClassifierSettings, CnnResource, ImageSource, ModelStore, TableStore
from spark_code import classifier as clf
from spark_code import openset
from spark_code.featurize import featurize_listing
from spark_code.images import list_images, require_images
from spark_code.serving import CNN_SETTINGS

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
    pyspark_step_launcher: ResourceParam[Any],
):
    """CNN features of the labelled training photos (same model and settings as `cnn_features`)."""
    spark = pyspark.spark_session
    listing = list_images(spark, training_source.root).cache()
    listed = listing.count()
    require_images(listed, training_source.root)
    run = featurize_listing(spark, listing, training_source.root, cnn.featurizer())
    featurized, quarantined = run.features.count(), run.quarantined.orderBy("path").collect()
    context.log.info("training set: %d listed, %d featurized, %d quarantined", listed, featurized, len(quarantined))
    shown = [{"path": r.path, "reason": r.reason} for r in quarantined[:QUARANTINE_ROWS_SHOWN]]
    yield Output(
        run.features,
        metadata={
            "root": training_source.root,
            "listed": listed,
            "featurized": featurized,
            "quarantined": len(quarantined),
            "quarantined_files": _table(shown, [("path", "string"), ("reason", "string")]),
        },
    )
    run.release()


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


@asset(group_name=GROUP, deps=[pca_features, "cnn_features"], kinds={"spark"})
def fruit_classifier(
    context: AssetExecutionContext,
    training_features: DataFrame,
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
    scaler = models.load(StandardScalerModel, "scaled_features")
    pca = models.load(PCAModel, "pca_features")
    cnn_features, _ = current_features(tables)  # every batch's current rows
    model = clf.train_classifier(training_features, scaler, pca, classifier.logistic())
    scores = clf.fit_feature_scores(model, training_features)
    scored = clf.collect_scores(model, scores, cnn_features)
    evaluation = clf.evaluate(scored.pairs(), clf.class_labels(model))
    raw = clf.evaluate_model(clf.train_classifier(training_features, scaler, None, classifier.logistic()), cnn_features)
    accept = classifier.known_accept_rate
    protocol = clf.openset_protocol(training_features, cnn_features, scaler, pca, classifier.logistic(), accept)
    rejection = _open_set_model(scored, clf.class_labels(model), scores, classifier, protocol)
    extras = {CNN_SETTINGS: json.dumps({"image_size": cnn.image_size}), openset.OPENSET_JSON: rejection.to_json()}
    uri = models.save(model, "fruit_classifier", extras=extras)
    context.log.info("classifier: %s; on raw features: %s", evaluation.summary(), raw.summary())
    return MaterializeResult(
        metadata={
            **_evaluation_metadata(evaluation),
            **_openset_metadata(rejection, protocol, scored, clf.class_labels(model)),
            "k": pca.getK(),
            "classes": len(clf.class_labels(model)),
            "raw_accuracy": round(raw.accuracy, 4),
            "raw_macro_f1": round(raw.macro_f1, 4),
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
        score = openset.best(protocol.reports).score if protocol else openset.KNN
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


def _latest_metadata(context: AssetCheckExecutionContext) -> dict:
    event = context.instance.get_latest_materialization_event(AssetKey("fruit_classifier"))
    metadata = event.asset_materialization.metadata if event and event.asset_materialization else {}
    return {key: value.value for key, value in metadata.items()}


@asset_check(asset=fruit_classifier)
def accuracy_above_floor(context: AssetCheckExecutionContext, classifier: ClassifierSettings) -> AssetCheckResult:
    """Test accuracy (classes known to the model) reaches the configured floor."""
    accuracy = _latest_metadata(context).get("accuracy")
    passed = accuracy is not None and accuracy >= classifier.accuracy_floor
    return AssetCheckResult(passed=passed, metadata={"accuracy": accuracy, "floor": classifier.accuracy_floor})


@asset_check(asset=fruit_classifier)
def pca_costs_little_accuracy(context: AssetCheckExecutionContext, classifier: ClassifierSettings) -> AssetCheckResult:
    """Accuracy on the PCA features stays within the allowed drop of accuracy on the raw 1280-d features."""
    metadata = _latest_metadata(context)
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
