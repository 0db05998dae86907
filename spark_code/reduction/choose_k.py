"""Choosing the PCA's k: one fit of every component, then k fixed, reaching a variance share, or the smallest k
whose classifier accuracy is within a tolerance of the best k's (the curve: the classifier's `AccuracyByK`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.ml.feature import PCAModel, StandardScalerModel
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from spark_code.reduction import scaler_pca

logger = logging.getLogger(__name__)

DEFAULT_VARIANCE = 0.95  # the largest k the accuracy curve considers reaches this share of the variance

Labelled = tuple[np.ndarray, np.ndarray]  # (features, labels) on the driver
# The classifier's accuracy on `valid` when fitted on `fit`, using the first k columns, for each k: the classify
# stage provides it (`LogisticSettings.accuracy_by_k`), so the PCA stage needs no classifier code of its own.
AccuracyByK = Callable[[Labelled, Labelled, list[int]], dict[int, float]]


@dataclass(frozen=True)
class KChoice:
    """How k is chosen: fixed `k`, else the smallest k reaching `variance_target`, else by accuracy."""

    k: int | None = None
    variance_target: float | None = None
    accuracy_tolerance: float = 0.003

    def inputs(self, scaler_uri: str) -> dict:
        """What a PCA is fitted with and must still match to be reused: k or its target, and the scaler version."""
        return {
            "k": self.k,
            "variance_target": self.variance_target,
            "accuracy_tolerance": self.accuracy_tolerance,
            "scaler": scaler_uri,
        }


def candidate_ks(explained: np.ndarray, variance_target: float = 0.95, smallest: int = 8) -> list[int]:
    """The k values an accuracy curve is measured at: powers of two from `smallest`, and the k reaching
    `variance_target`, none beyond it nor beyond the number of non-zero components."""
    rank = int(np.sum(explained > 1e-10))
    top = min(scaler_pca.smallest_k(np.cumsum(explained), variance_target), rank)
    return sorted({k for k in (2**i for i in range(int(np.log2(smallest)), 12)) if k < top} | {top})


def smallest_accurate_k(curve: dict[int, float], tolerance: float) -> int:
    """The smallest k whose accuracy is within `tolerance` of the best k's."""
    if not curve:
        raise ValueError("cannot choose k from an empty accuracy curve")
    best = max(curve.values())
    return min(k for k, accuracy in curve.items() if accuracy >= best - tolerance - 1e-12)


def curve_rows(
    scaled: DataFrame, training: pa.Table | None, scaler: Callable[[], StandardScalerModel]
) -> tuple[Labelled, DataFrame, str]:
    """(fit rows, validation rows, where they come from) for the accuracy curve: the classifier's training photos
    (`training`: path, label and raw features, read on the driver) scaled like the corpus, validated on the corpus,
    as the classifier is; without a training table yet, a split of the corpus (up to 40 photos per class fit, the
    others validate). The fit rows are scaled features on the driver, where the classifier's fits run: a training
    set is small (the classifier is fitted on it there too); the validation rows stay a DataFrame (a corpus)."""
    if training is None:
        fit, valid = split_per_class(scaled)
        return _on_driver(fit, "scaled_features"), valid, "corpus split"
    rows = training.filter(pc.is_valid(training.column("label"))).sort_by("path")
    x = scaler_pca.arrow_matrix(rows.column("features").combine_chunks(), "features", None)[0]
    fit = scaler_pca.apply_affine(scaler_pca.affine(scaler()), x)
    fit = fit.astype(scaler_pca.STORED_DTYPE).astype(np.float64)  # the precision the corpus's scaled rows are stored in
    return (fit, rows.column("label").to_numpy(zero_copy_only=False)), scaled, "training photos"


def fit_pca(
    scaled: DataFrame,
    choice: KChoice,
    scaler_uri: str,
    accuracy_by_k: AccuracyByK,
    rows_for_curve: Callable[[], tuple[Labelled, DataFrame, str]],
) -> tuple[PCAModel, dict]:
    """Fit the PCA once (all components) on `scaled`, choose k; return the model and what it was fitted with
    (`rows_for_curve` is called only when k is chosen by accuracy, see `curve_rows`)."""
    accuracy, how, curve_on = {}, "fixed" if choice.k else "variance", None
    if choice.k is None and choice.variance_target is None:  # by accuracy: every component, then only k's model
        started = time.perf_counter()
        pc, explained = scaler_pca.fit_components(scaled, "scaled_features")
        logger.debug("every component in %.1f s", time.perf_counter() - started)
        ks = candidate_ks(explained, DEFAULT_VARIANCE)
        fit_rows, valid_rows, curve_on = rows_for_curve()
        head = scaler_pca.Projection(pc[:, : max(ks)], "scaled_features", "pca_features")
        accuracy = accuracy_curve(fit_rows, valid_rows, head, ks, accuracy_by_k)
        how = "accuracy" if accuracy else "variance"
        k = smallest_accurate_k(accuracy, choice.accuracy_tolerance) if accuracy else max(ks)
        model = scaler_pca.model_keeping(pc, explained, k, "scaled_features", "pca_features")
    else:
        estimator = scaler_pca.VariancePCA(
            inputCol="scaled_features",
            outputCol="pca_features",
            k=choice.k or 0,
            varianceTarget=choice.variance_target or DEFAULT_VARIANCE,
        )
        model = estimator.fit(scaled)
    curve = scaler_pca.variance_curve(model.fullExplainedVariance)
    fitted_with = {
        **choice.inputs(scaler_uri),
        "explained_variance": curve[model.getK() - 1],
        "curve": curve,
        "accuracy_curve": {str(k): a for k, a in accuracy.items()},
        "k_choice": how,
        "accuracy_curve_on": curve_on,
    }
    return model, fitted_with


def split_per_class(labelled: DataFrame, per_class: int = 40) -> tuple[DataFrame, DataFrame]:
    """(fit rows, validation rows): up to `per_class` rows of each class, at most half of it, chosen by path hash."""
    by_class = Window.partitionBy("label")
    ranked = labelled.filter(F.col("label").isNotNull()).select(
        "*",
        F.row_number().over(by_class.orderBy(F.xxhash64("path"), "path")).alias("_rank"),
        F.count("*").over(by_class).alias("_count"),
    )
    usable = ranked.filter(F.col("_count") >= 2)
    fit = F.col("_rank") <= F.least(F.lit(per_class), F.floor(F.col("_count") / 2))
    return usable.filter(fit).drop("_rank", "_count"), usable.filter(~fit).drop("_rank", "_count")


def _projected(pca: PCAModel, rows: DataFrame, k: int, per_class: int) -> Labelled:
    """(first k PCA columns, labels) of up to `per_class` labelled rows per class (chosen by path hash), on the
    driver, in path order: the same arrays whatever the partitioning."""
    labelled = rows.filter(F.col("label").isNotNull()).select("path", "label", pca.getInputCol())
    largest = labelled.groupBy("label").count().agg(F.max("count")).first()[0] or 0
    if largest > per_class:  # rank the keys only (not the vectors), keep the first per_class of each class
        by_hash = Window.partitionBy("label").orderBy(F.xxhash64("path"), "path")
        ranked = labelled.select("path", "label").withColumn("_rank", F.row_number().over(by_hash))
        keep = ranked.filter(F.col("_rank") <= per_class).select("path")
        labelled = labelled.join(F.broadcast(keep), "path", "left_semi")
    kept = scaler_pca.transform_arrays(pca, labelled)  # project only the kept rows
    return _on_driver(kept.select("path", "label", F.slice(pca.getOutputCol(), 1, k).alias("x")), "x")


def _on_driver(rows: DataFrame, column: str) -> Labelled:
    """(`column` as a float64 matrix, labels) of labelled rows, on the driver, in path order."""
    table = rows.filter(F.col("label").isNotNull()).select("path", "label", column).toPandas()
    table = table.sort_values("path", ignore_index=True)
    x = np.stack(table[column].to_numpy()).astype(np.float64) if len(table) else np.zeros((0, 0))
    return x, table["label"].to_numpy()


def accuracy_curve(
    fit: Labelled,
    validate: DataFrame,
    pca: PCAModel,
    ks: list[int],
    accuracy_by_k: AccuracyByK,
    validate_per_class: int = 400,
) -> dict[int, float]:
    """Accuracy of the classifier (`accuracy_by_k`) on the first k components, for each k in `ks`: trained on `fit`
    (scaled features and labels on the driver, projected there), scored on the rows of `validate` whose class it
    knows (up to `validate_per_class` per class, chosen by path hash: all of them on Fruits-360, a bounded sample at
    a million photos).

    `validate` holds `path`, `label` and the PCA's input column (scaled features); `pca` must keep at least max(ks)
    components. Only the projected arrays of those rows come to the driver, where the classifier's fits are small
    (photos × k): seconds, and the same curve on one machine or a cluster.
    Empty when the labels do not allow it (fewer than 2 classes, or nothing to validate).
    """
    if not ks:
        return {}
    started = time.perf_counter()
    fit_x, fit_labels = fit[0] @ scaler_pca.components(pca)[:, : max(ks)], fit[1]
    valid_x, valid_labels = _projected(pca, validate, max(ks), per_class=validate_per_class)
    took = time.perf_counter() - started
    logger.debug("curve rows projected in %.1f s: %d fit, %d validate", took, len(fit_x), len(valid_x))
    classes = set(fit_labels)
    known = np.fromiter((label in classes for label in valid_labels), bool, len(valid_labels))
    if len(np.unique(fit_labels)) < 2 or not known.any():
        logger.warning("no accuracy curve: fewer than 2 classes with 2 labelled photos or more")
        return {}
    curve = accuracy_by_k((fit_x, fit_labels), (valid_x[known], valid_labels[known]), ks)
    for k, accuracy in curve.items():
        logger.info("accuracy with k=%d: %.4f", k, accuracy)
    return curve
