"""Multinomial logistic regression on the driver (NumPy + SciPy L-BFGS): the accuracy curve's many small fits."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from spark_code.reduction import blas

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SoftmaxModel:
    """Fitted weights (features × classes), intercepts and class names."""

    weights: np.ndarray
    intercept: np.ndarray
    classes: np.ndarray

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The most likely class of each row of `x`."""
        return self.classes[np.argmax(x @ self.weights + self.intercept, axis=1)]


TOL = 1e-6  # Spark ML's default `tol`: stop when an iteration improves the objective by less than this


def fit_softmax(
    x: np.ndarray,
    labels: np.ndarray,
    reg_param: float,
    max_iter: int,
    tol: float = TOL,
    start: SoftmaxModel | None = None,
) -> SoftmaxModel:
    """Minimise mean cross-entropy + reg_param/2·‖W‖² (intercepts free): Spark ML's multinomial objective with
    `standardization=False` and no elastic net. Deterministic for given rows (full batch, L-BFGS), stopping after
    `max_iter` iterations or when one improves the objective by less than `tol` (relative, as Spark's `tol`).

    `start` (optional) is where the search starts, e.g. the solution of a nearby problem (`warm_start`): the
    objective is strictly convex, so it changes how many iterations are needed, not the solution they reach."""
    from scipy.optimize import minimize  # imported when fitting: not at every start of the main command

    classes, y = np.unique(labels, return_inverse=True)
    x = np.ascontiguousarray(x, dtype=np.float32)  # the products in float32 (twice as fast), the optimiser in float64
    n, d = x.shape
    c = len(classes)
    rows = np.arange(n)

    def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[: d * c].reshape(d, c), theta[d * c :]
        z = x @ w.astype(np.float32) + b.astype(np.float32)
        z -= z.max(axis=1, keepdims=True)  # log-softmax, computed in place: one exp per entry
        p = np.exp(z)
        total = p.sum(axis=1)
        loss = -float((z[rows, y] - np.log(total)).sum(dtype=np.float64)) / n + 0.5 * reg_param * float((w * w).sum())
        p /= total[:, None]
        p[rows, y] -= 1.0  # the residual: probabilities minus the one-hot labels
        p /= n
        gradient = (x.T @ p).astype(np.float64) + reg_param * w
        return loss, np.concatenate([gradient.ravel(), p.sum(axis=0, dtype=np.float64)])

    theta0 = np.zeros(d * c + c) if start is None else warm_start(start, classes, d)
    options = {"maxiter": max_iter, "ftol": tol}
    with blas.single_thread():
        result = minimize(loss_and_grad, theta0, jac=True, method="L-BFGS-B", options=options)
    logger.debug("softmax fit: %d rows × %d, %d classes: %d iterations", n, d, c, result.nit)
    return SoftmaxModel(result.x[: d * c].reshape(d, c), result.x[d * c :], classes)


def warm_start(model: SoftmaxModel, classes: np.ndarray, dimension: int) -> np.ndarray:
    """`model`'s weights as a starting point for `classes` on `dimension` features: its rows beyond the dimension
    dropped or zero rows added (nested PCA columns), classes it lacks at zero."""
    weights, intercept = np.zeros((dimension, len(classes))), np.zeros(len(classes))
    rows = min(dimension, model.weights.shape[0])
    position = {label: i for i, label in enumerate(model.classes.tolist())}
    for j, label in enumerate(classes.tolist()):
        if label in position:
            weights[:rows, j] = model.weights[:rows, position[label]]
            intercept[j] = model.intercept[position[label]]
    return np.concatenate([weights.ravel(), intercept])


def accuracy_by_k(
    fit: tuple[np.ndarray, np.ndarray],
    valid: tuple[np.ndarray, np.ndarray],
    ks: list[int],
    reg_param: float,
    max_iter: int,
) -> dict[int, float]:
    """Validation accuracy of a softmax regression on the first k columns, for each k in `ks`;
    `fit` and `valid` are (features, labels)."""
    (fit_x, fit_labels), (valid_x, valid_labels) = fit, valid
    curve, model = {}, None
    for k in sorted(ks):  # each fit starts from the previous k's solution (the first k columns are shared)
        model = fit_softmax(fit_x[:, :k], fit_labels, reg_param, max_iter, start=model)
        curve[k] = float(np.mean(model.predict(valid_x[:, :k]) == valid_labels))
    return curve


def spark_model(model: SoftmaxModel, features_col: str):
    """The same weights as a Spark ML `LogisticRegressionModel` (multinomial; intercepts centred as Spark centres
    them): it saves, loads and transforms like one `LogisticRegression.fit` returns. Class i is prediction i.
    Built through public API only: Spark ML's save layout of the model, loaded (`storage.ml_layout`)."""
    from pyspark.ml.classification import LogisticRegressionModel
    from pyspark.ml.linalg import DenseMatrix, DenseVector
    from pyspark.sql import SparkSession

    from spark_code.storage import ml_layout

    coefficients = model.weights.T  # classes × features
    rows, cols = coefficients.shape
    data = {
        "numClasses": rows,
        "numFeatures": cols,
        "interceptVector": DenseVector((model.intercept - model.intercept.mean()).tolist()),
        "coefficientMatrix": DenseMatrix(rows, cols, coefficients.flatten(order="F").tolist()),
        "isMultinomial": True,
    }
    params = {"featuresCol": features_col, "family": "multinomial", "standardization": False}
    spark = SparkSession.getActiveSession() or SparkSession.builder.getOrCreate()  # the running session, any thread
    return ml_layout.build_model(spark, LogisticRegressionModel, "logreg", params, data)
