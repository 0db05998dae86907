"""The classifier's fits on the driver (the training set is small) and its scoring in one Spark pass over the corpus."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.ml import PipelineModel
from pyspark.ml.feature import IndexToString, PCAModel, StandardScalerModel
from pyspark.sql import DataFrame

from spark_code.classify import openset, rejection_metrics, softmax
from spark_code.classify.classifier import PREDICTED, LogisticSettings, OpenSetProtocol, ScoredRows
from spark_code.classify.serving import CNN_SETTINGS, SERVING_JSON, ServingPipeline
from spark_code.reduction import blas, scaler_pca

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scorer:
    """What scores the corpus: a classifier's NumPy pipeline and (optional) its open-set feature scores."""

    pipeline: ServingPipeline
    scores: openset.FeatureScores | None = None


@dataclass(frozen=True)
class FittedClassifier:
    """One fit: the Spark ML pipeline that is saved, its NumPy twin that scores, and its open-set feature scores."""

    pipeline: PipelineModel
    numpy: ServingPipeline
    scores: openset.FeatureScores | None

    def labels(self) -> list[str]:
        """The classes the model knows, in its output order."""
        return self.numpy.labels

    def scorer(self) -> Scorer:
        """What `score_corpus` scores the corpus with."""
        return Scorer(self.numpy, self.scores)


def training_arrays(train: DataFrame, column: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """(features as float64, labels) of the labelled training rows, in path order (the same whatever the
    partitioning): one collect of photos × 1280 floats."""
    table = train.filter(train.label.isNotNull()).select("path", "label", column).toPandas()
    table = table.sort_values("path", ignore_index=True)
    x = np.stack(table[column].to_numpy()).astype(np.float64) if len(table) else np.zeros((0, 0))
    return x, table["label"].to_numpy().astype(object)


def fit_classifier(
    x: np.ndarray,
    labels: np.ndarray,
    scaler: StandardScalerModel,
    pca: PCAModel | None,
    settings: LogisticSettings,
    with_scores: bool = True,
    start: FittedClassifier | None = None,
) -> FittedClassifier:
    """Scaler → PCA (optional) → multinomial logistic regression on CNN features `x`, fitted on the driver with
    Spark ML's objective (`softmax.fit_softmax`), returned as the Spark ML pipeline the project saves
    (scaler, [PCA], LogisticRegressionModel, IndexToString) and as NumPy arrays; with the feature scores
    (`openset.fit_feature_scores`) of the reduced training rows unless `with_scores` is false. The fit starts from
    `start`'s solution when given (mapped to this fit's features and classes; see `softmax.fit_softmax`)."""
    if settings.elastic_net:
        raise ValueError("the driver fit has no L1 term: elastic_net must be 0")
    shift, scale, _ = scaler_pca.affine(scaler)
    reduced = (x - shift) * scale if shift is not None else x * scale
    components = None if pca is None else scaler_pca.components(pca)
    if components is not None:
        reduced = reduced @ components
    fit = softmax.fit_softmax(
        reduced, labels, settings.reg_param, settings.max_iter, start=_in_space(start, components)
    )
    features_col = scaler.getOutputCol() if pca is None else pca.getOutputCol()
    head = softmax.spark_model(fit, features_col)
    labels_stage = IndexToString(inputCol="prediction", outputCol=PREDICTED, labels=[str(c) for c in fit.classes])
    stages = [scaler] if pca is None else [scaler, pca]
    twin = ServingPipeline(
        mean=np.zeros_like(scale) if shift is None else shift,
        scale=scale,
        components=components,
        coefficients=fit.weights.T,
        intercepts=fit.intercept,
        labels=[str(c) for c in fit.classes],
        image_size=0,
    )
    scores = openset.fit_feature_scores(reduced, labels) if with_scores else None
    return FittedClassifier(PipelineModel([*stages, head, labels_stage]), twin, scores)


def _in_space(start: FittedClassifier | None, components: np.ndarray | None) -> softmax.SoftmaxModel | None:
    """`start`'s regression as weights on this fit's features: scaled features (`components` None) or the same PCA."""
    if start is None:
        return None
    head = start.numpy
    weights = head.coefficients.T  # on the start's own features
    if head.components is not None and components is None:
        weights = head.components @ weights  # from PCA features back to the scaled features they project
    classes = np.asarray(head.labels, dtype=object)
    return softmax.SoftmaxModel(weights, np.asarray(head.intercepts), classes)


def score_corpus(features: DataFrame, models: dict[str, Scorer], column: str = "features") -> dict:
    """{name: ScoredRows} of every model on every row of `features` (`label` and CNN features), in one pass: each
    Arrow batch is scored by every model with NumPy (the arithmetic of Spark's transform and of `fruits classify`);
    only labels, predictions and scores come back to the driver."""
    names = list(models)
    heads = {name: (scorer.pipeline, scorer.scores) for name, scorer in models.items()}

    def score(batches):
        for pdf in batches:
            if not len(pdf):
                continue
            x = np.stack(pdf[column].to_numpy()).astype(np.float64)
            out = {"label": pdf["label"].to_numpy()}
            for index, (head, scores) in enumerate(heads.values()):
                p = head.probabilities(x)
                out[f"p{index}"] = np.asarray(head.labels, dtype=object)[p.argmax(axis=1)]
                values = {openset.MAX_PROBABILITY: p.max(axis=1)}
                if scores is not None:
                    values = scores.all_values(head.project(x), p)
                for score_name in openset.SCORES:
                    out[f"s{index}_{score_name}"] = values.get(score_name, np.full(len(x), np.nan))
            yield pd.DataFrame(out)

    columns = ["label string"]
    for index in range(len(names)):
        columns += [f"p{index} string", *(f"s{index}_{s} double" for s in openset.SCORES)]
    table = features.select("label", column).mapInPandas(score, ", ".join(columns)).toPandas()
    labels = table["label"].to_numpy().astype(object)
    return {
        name: ScoredRows(
            labels=labels,
            predicted=table[f"p{index}"].to_numpy().astype(object),
            scores={s: table[f"s{index}_{s}"].to_numpy(dtype=np.float64) for s in openset.SCORES},
        )
        for index, name in enumerate(names)
    }


def protocol_split(labels: np.ndarray) -> tuple[list[str], list[str]] | None:
    """(known classes, held-out classes) of the held-out-classes protocol; None when either would be empty."""
    classes = sorted({str(label) for label in labels})
    held_out = rejection_metrics.held_out_classes(classes)
    known = [c for c in classes if c not in held_out]
    return (known, held_out) if held_out and known else None


def protocol_result(
    scored: ScoredRows, known: list[str], held_out: list[str], accept_rate: float
) -> OpenSetProtocol | None:
    """The protocol's reports from the corpus scored by the model trained on the known classes only (None when the
    corpus has no row of a known class, or only such rows)."""
    is_known = np.isin(scored.labels, known)
    if is_known.all() or not is_known.any():
        return None
    reports = [rejection_metrics.report(s, scored.values(s), is_known, accept_rate) for s in openset.SCORES]
    return OpenSetProtocol(reports, known, held_out, int(is_known.sum()), int((~is_known).sum()))


@dataclass(frozen=True)
class Validation:
    """The classifier, its raw-feature twin and the protocol's model, fitted and scored on the corpus."""

    model: FittedClassifier
    scored: ScoredRows  # the classifier on the corpus
    raw_scored: ScoredRows  # the same regression on the scaled 1280-d features
    raw_labels: list[str]
    protocol: OpenSetProtocol | None


def validate(
    training: DataFrame,
    corpus: DataFrame,
    scaler: StandardScalerModel,
    pca: PCAModel,
    settings: LogisticSettings,
    accept_rate: float,
) -> Validation:
    """Fit the classifier, its raw-feature twin and the held-out-classes protocol's model on the training rows
    (one collect, three driver fits), then score all three on the corpus in one pass."""
    started = time.perf_counter()
    x, labels = training_arrays(training)
    split = protocol_split(labels)
    with blas.single_thread():  # small products: OpenBLAS's threads cost more than they give (see `blas`)
        models = {"model": fit_classifier(x, labels, scaler, pca, settings)}
        models["raw"] = fit_classifier(x, labels, scaler, None, settings, with_scores=False, start=models["model"])
        if split is not None:
            kept = np.isin(labels, split[0])
            models["protocol"] = fit_classifier(x[kept], labels[kept], scaler, pca, settings, start=models["model"])
    fitted = time.perf_counter()
    scored = score_corpus(corpus, {name: fit.scorer() for name, fit in models.items()})
    protocol = None if split is None else protocol_result(scored["protocol"], *split, accept_rate)
    logger.info(
        "classifier: %d training rows, %d fits in %.1f s; corpus scored in %.1f s",
        len(x),
        len(models),
        fitted - started,
        time.perf_counter() - fitted,
    )
    return Validation(models["model"], scored["model"], scored["raw"], models["raw"].labels(), protocol)


def open_set_model(
    scored: ScoredRows,
    known: list[str],
    scores: openset.FeatureScores,
    score: str,
    accept_rate: float,
    protocol: OpenSetProtocol | None,
) -> openset.OpenSetModel:
    """The open-set decision: `score` (for `auto`, the held-out-classes protocol's best), calibrated to accept
    `accept_rate` of the corpus's known-class rows."""
    if score == "auto":
        score = rejection_metrics.best(protocol.reports).score if protocol else openset.KNN_PROBABILITY
    is_known = np.isin(scored.labels, known)
    values = {name: scored.values(name)[is_known] for name in openset.SCORES}
    return openset.calibrated(score, values, scores, accept_rate)


def sidecars(pipeline: PipelineModel, rejection: openset.OpenSetModel, image_size: int) -> dict[str, str]:
    """The files saved beside a classifier's Spark pipeline, which the app reads without Spark: its arrays
    (`serving.json`), its open-set model (`openset.json`) and its CNN input size (`cnn.json`)."""
    return {
        CNN_SETTINGS: json.dumps({"image_size": image_size}),
        openset.OPENSET_JSON: rejection.to_json(),
        SERVING_JSON: serving_json(pipeline),
    }


def serving_json(pipeline: PipelineModel) -> str:
    """The `serving.json` sidecar of a classifier pipeline: the numbers its Spark ML stages hold (scaler, PCA,
    logistic regression as Spark stores it, labels), read through their public API, for the app to read without
    Spark."""
    stages = {type(stage).__name__: stage for stage in pipeline.stages}
    shift, scale, _ = scaler_pca.affine(stages["StandardScalerModel"])
    regression = stages["LogisticRegressionModel"]
    pca = stages.get("PCAModel")
    return ServingPipeline(
        mean=np.zeros_like(scale) if shift is None else shift,
        scale=scale,
        components=None if pca is None else pca.pc.toArray(),
        coefficients=regression.coefficientMatrix.toArray(),
        intercepts=regression.interceptVector.toArray(),
        labels=list(stages["IndexToString"].getLabels()),
        image_size=0,
    ).arrays_json()
