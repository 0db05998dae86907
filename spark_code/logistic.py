"""Multinomial logistic regression on the driver (NumPy + SciPy L-BFGS): the accuracy curve's many small fits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize


@dataclass(frozen=True)
class SoftmaxModel:
    """Fitted weights (features × classes), intercepts and class names."""

    weights: np.ndarray
    intercept: np.ndarray
    classes: np.ndarray

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The most likely class of each row of `x`."""
        return self.classes[np.argmax(x @ self.weights + self.intercept, axis=1)]


def fit_softmax(x: np.ndarray, labels: np.ndarray, reg_param: float, max_iter: int) -> SoftmaxModel:
    """Minimise mean cross-entropy + reg_param/2·‖W‖² (intercepts free): Spark ML's multinomial objective with
    `standardization=False` and no elastic net. Deterministic for given rows (full batch, L-BFGS)."""
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

    result = minimize(loss_and_grad, np.zeros(d * c + c), jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
    return SoftmaxModel(result.x[: d * c].reshape(d, c), result.x[d * c :], classes)


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
    curve = {}
    for k in sorted(ks):
        model = fit_softmax(fit_x[:, :k], fit_labels, reg_param, max_iter)
        curve[k] = float(np.mean(model.predict(valid_x[:, :k]) == valid_labels))
    return curve
