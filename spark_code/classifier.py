"""Fruit classifier on the PCA features: Spark ML multinomial logistic regression, evaluated on a held-out set."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from pyspark.ml import PipelineModel, Transformer
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.feature import IndexToString, PCAModel, StandardScalerModel, StringIndexer
from pyspark.sql import DataFrame

from spark_code.reduce import as_vectors

logger = logging.getLogger(__name__)

PREDICTED = "predicted_label"


@dataclass(frozen=True)
class LogisticSettings:
    """Multinomial logistic-regression settings (Spark ML names)."""

    max_iter: int = 200
    reg_param: float = 1e-3
    elastic_net: float = 0.0


def fit_head(train: DataFrame, features_col: str, settings: LogisticSettings) -> list[Transformer]:
    """Fit label index + logistic regression on a vector column; returns [LogisticRegressionModel, IndexToString]."""
    indexer = StringIndexer(inputCol="label", outputCol="label_index").fit(train)
    regression = LogisticRegression(
        featuresCol=features_col,
        labelCol="label_index",
        family="multinomial",
        maxIter=settings.max_iter,
        regParam=settings.reg_param,
        elasticNetParam=settings.elastic_net,
        standardization=False,  # inputs are already standardised (scaler) or decorrelated (PCA)
    )
    model = regression.fit(indexer.transform(train))
    return [model, IndexToString(inputCol="prediction", outputCol=PREDICTED, labels=indexer.labels)]


def train_classifier(
    train: DataFrame, scaler: StandardScalerModel, pca: PCAModel | None, settings: LogisticSettings
) -> PipelineModel:
    """The whole pipeline from 1280-d CNN features: scaler → PCA (optional) → logistic regression → label.

    `train` holds `label` and `features` (array or vector); the fitted scaler and PCA are reused as they are.
    """
    stages = [scaler] if pca is None else [scaler, pca]
    prepared = PipelineModel(stages).transform(as_vectors(train, scaler.getInputCol()))
    head_input = scaler.getOutputCol() if pca is None else pca.getOutputCol()
    return PipelineModel([*stages, *fit_head(prepared, head_input, settings)])


def predict(model: PipelineModel, features: DataFrame) -> DataFrame:
    """`path`, `label` and the predicted label of each row of a `features` table."""
    first = model.stages[0]
    return model.transform(as_vectors(features, first.getInputCol())).select("path", "label", PREDICTED)


def class_labels(model: PipelineModel) -> list[str]:
    """The classes the model knows, in its output order."""
    return list(model.stages[-1].getLabels())


@dataclass
class Evaluation:
    """Accuracy and macro-F1 on the test rows whose class the model knows; unknown-class rows counted apart."""

    accuracy: float
    macro_f1: float
    rows: int
    unknown_class_rows: int
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    confused: list[tuple[str, str, int]] = field(default_factory=list)

    def summary(self) -> dict[str, float | int]:
        """The headline figures."""
        return {
            "accuracy": round(self.accuracy, 4),
            "macro_f1": round(self.macro_f1, 4),
            "test_rows": self.rows,
            "unknown_class_rows": self.unknown_class_rows,
        }


def evaluate(pairs: list[tuple[str, str]], known: list[str], top_confused: int = 10) -> Evaluation:
    """Score (true label, predicted label) pairs; rows of classes the model never saw are left out and counted."""
    known_set = set(known)
    scored = [(t, p) for t, p in pairs if t in known_set]
    if not scored:
        raise ValueError("no test image belongs to a class of the training set: nothing to evaluate")
    hits = Counter(t for t, p in scored if t == p)
    truth = Counter(t for t, _ in scored)
    predicted = Counter(p for _, p in scored)
    per_class, f1s = {}, []
    for label in sorted(truth):
        recall = hits[label] / truth[label]
        precision = hits[label] / predicted[label] if predicted[label] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"images": truth[label], "accuracy": recall, "precision": precision, "f1": f1}
        f1s.append(f1)
    confused = Counter((t, p) for t, p in scored if t != p).most_common(top_confused)
    return Evaluation(
        accuracy=sum(hits.values()) / len(scored),
        macro_f1=float(np.mean(f1s)),
        rows=len(scored),
        unknown_class_rows=len(pairs) - len(scored),
        per_class=per_class,
        confused=[(t, p, n) for (t, p), n in confused],
    )


def evaluate_model(model: PipelineModel, test_features: DataFrame) -> Evaluation:
    """Predict every test row with `model` and score the predictions (a small collect: two strings per row)."""
    rows = predict(model, test_features).select("label", PREDICTED).collect()
    return evaluate([(r["label"], r[PREDICTED]) for r in rows], class_labels(model))
