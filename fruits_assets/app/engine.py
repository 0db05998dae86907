"""The app's engine: the CNN and a saved classifier loaded once; photos in, fruits (or `unknown`) out."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spark_code.classify.serving import ServingPipeline
from spark_code.featurize.cnn import DEFAULT_ENGINE, CnnEngine, CnnSpec, build_predict, model_payload
from spark_code.featurize.decode import try_decode

UNKNOWN = "unknown"


class NotAnImageError(ValueError):
    """A file Pillow cannot read as an image."""


@dataclass(frozen=True)
class Prediction:
    """The top classes of one photo; `label` is "unknown" when the open-set score rejects it (`score` is its value)."""

    path: str
    label: str
    top: list[tuple[str, float]]
    pca: np.ndarray
    score: float = float("nan")

    def as_json(self) -> dict:
        """What `fruits classify --json` prints for it (and `POST /classify` answers): label, top-3, score."""
        top = [{"label": label, "probability": round(p, 4)} for label, p in self.top]
        return {"photo": self.path, "label": self.label, "top": top, "score": self.score}


class FruitClassifier:
    """The CNN and the saved pipeline, loaded once; `classify` takes photo paths or bytes of any size/format."""

    def __init__(
        self,
        pipeline: ServingPipeline,
        weights_path: str | None,
        threshold: float | None = None,
        top: int = 3,
        engine: str = DEFAULT_ENGINE,
        onnx_cache: str | None = None,
        score: str | None = None,
    ):
        self.pipeline, self.top = pipeline, top
        self.decision = pipeline.decision(score, threshold)  # the saved score and threshold unless given
        self._asked = (score, threshold)
        self.spec = CnnSpec(input_size=pipeline.image_size)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        cnn = CnnEngine.chosen(engine, self.spec, threads=0, onnx_cache=onnx_cache)  # all cores
        self.engine = cnn.label
        self.predict = build_predict(cnn, model_payload(cnn, weights_path))  # the Spark path's model and payload

    def with_pipeline(self, pipeline: ServingPipeline) -> FruitClassifier:
        """The same CNN (not rebuilt) with another saved pipeline of the same input size, e.g. a newer version."""
        if pipeline.image_size != self.spec.input_size:
            raise ValueError(f"image size {pipeline.image_size} != the CNN's {self.spec.input_size}: build anew")
        twin = copy.copy(self)
        twin.pipeline, twin.decision = pipeline, pipeline.decision(self._asked[0], self._asked[1])
        return twin

    def decode(self, data: bytes, name: str = "photo") -> np.ndarray:
        """Model-ready uint8 pixels of one encoded image, decoded as the Spark pipeline decodes it."""
        pixels, error = try_decode(data, self.spec.input_size)
        if error is not None:
            raise NotAnImageError(f"{name}: {error}")
        return pixels

    def features(self, data: bytes, name: str = "photo") -> np.ndarray:
        """The 1280-d CNN features of one encoded image, decoded and preprocessed as the Spark pipeline does."""
        return self.predict(self.decode(data, name)[np.newaxis]).astype(np.float32)

    def classify_pixels(self, pixels: np.ndarray, names: list[str]) -> list[Prediction]:
        """Top classes of a batch of decoded photos (N, S, S, 3): one CNN call and one matrix product for all."""
        features = self.predict(pixels).astype(np.float32).astype(np.float64)
        probabilities = self.pipeline.probabilities(features)
        values = self.pipeline.score(self.decision.score, features)
        projected = self.pipeline.project(features)
        predictions = []
        for row, name in enumerate(names):
            order = np.argsort(-probabilities[row])[: self.top]
            top = [(self.pipeline.labels[i], float(probabilities[row, i])) for i in order]
            label = top[0][0] if self.decision.known(values[row], top[0][1]) else UNKNOWN
            predictions.append(Prediction(name, label, top, projected[row], float(values[row])))
        return predictions

    def classify_bytes(self, data: bytes, name: str = "photo") -> Prediction:
        """Top classes of one encoded image, or `unknown` when the open-set decision rejects it."""
        return self.classify_pixels(self.decode(data, name)[np.newaxis], [name])[0]

    def classify(self, path: str | Path) -> Prediction:
        """Top classes of one photo file."""
        return self.classify_bytes(Path(path).read_bytes(), str(path))
