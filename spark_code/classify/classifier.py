"""Fruit classifier on the PCA features: Spark ML multinomial logistic regression, evaluated on a held-out set."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pyspark.ml import PipelineModel
from pyspark.ml.feature import PCAModel
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame

from spark_code.classify import openset, rejection_metrics, softmax
from spark_code.reduction.scaler_pca import as_vectors

logger = logging.getLogger(__name__)

PREDICTED = "predicted_label"


# L2 strength: 1e-3 until 2026-12-07; 3e-4 scores 0.9702 instead of 0.9691 on the bf16 features of the Test photos
# (k=256), while 5-fold CV on the Training photos cannot tell them apart (0.9948 both): see docs/performance.md.
REG_PARAM = 3e-4
CURVE_MAX_ITER = 100  # the accuracy-against-k curve only compares k values: at most 100 iterations per fit


@dataclass(frozen=True)
class LogisticSettings:
    """Multinomial logistic-regression settings (Spark ML names)."""

    max_iter: int = 200
    reg_param: float = REG_PARAM
    elastic_net: float = 0.0

    def accuracy_by_k(self, fit: tuple, valid: tuple, ks: list[int]) -> dict[int, float]:
        """The PCA's accuracy-against-k curve (`reduction.choose_k.AccuracyByK`): this regression fitted on the first
        k columns of `fit` and scored on `valid` ((features, labels) each), at most CURVE_MAX_ITER iterations."""
        return softmax.accuracy_by_k(fit, valid, ks, self.reg_param, min(CURVE_MAX_ITER, self.max_iter))


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


def _pca_stage(model: PipelineModel) -> PCAModel | None:
    return next((stage for stage in model.stages if isinstance(stage, PCAModel)), None)


def _reduced_col(model: PipelineModel) -> str:
    pca = _pca_stage(model)
    return pca.getOutputCol() if pca is not None else model.stages[0].getOutputCol()


KNOWN = "known"


def score_rows(
    model: PipelineModel,
    scores: openset.FeatureScores,
    features: DataFrame,
    decision: openset.Decision | None = None,
) -> DataFrame:
    """`path`, `label`, predicted label, one column per open-set score (`openset.SCORES`), and `known` under
    `decision`, per row. The scores are computed by the same NumPy code as `fruits classify`, on the pipeline's
    PCA output.
    """
    reduced = _reduced_col(model)
    transformed = model.transform(as_vectors(features, model.stages[0].getInputCol())).select(
        "path", "label", PREDICTED, vector_to_array("probability").alias("_p"), vector_to_array(reduced).alias("_x")
    )

    def score(batches):
        for pdf in batches:
            if not len(pdf):
                continue
            x, p = np.stack(pdf["_x"].to_numpy()), np.stack(pdf["_p"].to_numpy())
            out = pdf[["path", "label", PREDICTED]].copy()
            for name, values in scores.all_values(x, p).items():
                out[name] = values
            if decision is not None:
                known = decision.known(out[decision.score].to_numpy(), out[openset.MAX_PROBABILITY].to_numpy())
                out[KNOWN] = pd.Series(known, index=out.index, dtype=bool)
            yield out

    schema = f"path string, label string, {PREDICTED} string, " + ", ".join(f"{n} double" for n in openset.SCORES)
    return transformed.mapInPandas(score, schema + (f", {KNOWN} boolean" if decision is not None else ""))


@dataclass(frozen=True)
class ScoredRows:
    """Per test row: true label, predicted label and every open-set score (small columns, collected)."""

    labels: np.ndarray
    predicted: np.ndarray
    scores: dict[str, np.ndarray]

    def values(self, score: str) -> np.ndarray:
        """The named score's values."""
        return self.scores[score]

    def pairs(self) -> list[tuple[str, str]]:
        """(true label, predicted label) per row, for `evaluate`."""
        return list(zip(self.labels.tolist(), self.predicted.tolist(), strict=True))


@dataclass(frozen=True)
class OpenSetProtocol:
    """The held-out-classes protocol: both scores' reports, and which classes were known / held out."""

    reports: list[rejection_metrics.ScoreReport]
    known_classes: list[str]
    held_out: list[str]
    known_rows: int
    unknown_rows: int

    def summary(self) -> dict[str, float | int]:
        """Flat figures for metadata and JSON."""
        figures = {"openset_known_rows": self.known_rows, "openset_unknown_rows": self.unknown_rows}
        figures["openset_held_out_classes"] = len(self.held_out)
        for item in self.reports:
            figures.update(item.summary())
        return figures
