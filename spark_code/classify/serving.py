"""A saved classifier as NumPy arrays (its `serving.json`, `cnn.json` and `openset.json` sidecars): written with the
Spark ML pipeline by `fruit_classifier`, read without Spark by the app."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spark_code.classify.openset import MAX_PROBABILITY, OPENSET_JSON, Decision, OpenSetModel

CNN_SETTINGS = "cnn.json"
SERVING_JSON = "serving.json"  # the NumPy arrays of a saved classifier, written beside it (no Spark to read)


@dataclass
class ServingPipeline:
    """The saved scaler → PCA → logistic regression → labels, as NumPy arrays."""

    mean: np.ndarray
    scale: np.ndarray
    components: np.ndarray | None
    coefficients: np.ndarray
    intercepts: np.ndarray
    labels: list[str]
    image_size: int
    openset: OpenSetModel | None = None  # saved with the classifier since the open-set rejection; None before

    def arrays_json(self) -> str:
        """The scaler, PCA, regression and labels as the `serving.json` sidecar saved beside the classifier."""
        arrays = {"mean": self.mean, "scale": self.scale, "components": self.components}
        arrays |= {"coefficients": self.coefficients, "intercepts": self.intercepts, "labels": self.labels}
        return json.dumps({key: None if a is None else np.asarray(a).tolist() for key, a in arrays.items()})

    def decision(self, score: str | None = None, threshold: float | None = None) -> Decision:
        """How `unknown` is decided: the saved default score and calibrated threshold unless given.

        A pipeline saved without open-set scores decides by the best probability (threshold 0.5 by default).
        """
        if self.openset is None:
            if score not in (None, MAX_PROBABILITY):
                raise ValueError(f"score={score!r}: this classifier was saved without open-set scores; retrain it")
            return Decision(MAX_PROBABILITY, 0.5 if threshold is None else threshold)
        return self.openset.decision_for(score or self.openset.score, threshold)

    def score(self, name: str, features: np.ndarray) -> np.ndarray:
        """The named open-set score of each row of CNN features (as the Spark path computes it)."""
        if name == MAX_PROBABILITY:
            return self.probabilities(features).max(axis=1)
        if self.openset is None:
            raise ValueError(f"score={name!r}: this classifier was saved without open-set scores; retrain it")
        return self.openset.scores.values(name, self.project(features), self.probabilities(features))

    def project(self, features: np.ndarray) -> np.ndarray:
        """Scaled then PCA-projected features, as Spark's StandardScalerModel and PCAModel compute them."""
        scaled = (features - self.mean) * self.scale
        return scaled if self.components is None else scaled @ self.components

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities (softmax of the multinomial margins), columns in `labels` order."""
        margins = self.project(features) @ self.coefficients.T + self.intercepts
        margins -= margins.max(axis=1, keepdims=True)
        odds = np.exp(margins)
        return odds / odds.sum(axis=1, keepdims=True)


def load_pipeline(folder: str | Path) -> ServingPipeline:
    """Read a saved classifier version: its arrays from the `serving.json` sidecar, its CNN input size and open-set
    model. A version without the sidecar (saved before it) is refused, naming the fix."""
    folder = Path(str(folder).removeprefix("file:"))
    sidecar = folder / SERVING_JSON
    if not sidecar.exists():
        raise FileNotFoundError(
            f"{folder} has no {SERVING_JSON}: it was saved by an older version of this project; retrain it "
            "(`python -m fruits_assets`, or `dagster asset materialize` of fruit_classifier)"
        )
    arrays = {key: _array(value) for key, value in json.loads(sidecar.read_text()).items()}
    arrays["labels"] = list(arrays["labels"])
    settings = json.loads((folder / CNN_SETTINGS).read_text()) if (folder / CNN_SETTINGS).exists() else {}
    saved_openset = folder / OPENSET_JSON
    rejection = OpenSetModel.from_json(saved_openset.read_text()) if saved_openset.exists() else None
    return ServingPipeline(**arrays, image_size=int(settings.get("image_size", 224)), openset=rejection)


def _array(value):
    if value is None or (isinstance(value, list) and value and isinstance(value[0], str)):
        return value
    array = np.asarray(value, dtype=np.float64)
    return np.asfortranarray(array) if array.ndim == 2 else array  # column-major, as Spark ML's matrices are
