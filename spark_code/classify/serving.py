"""The app's engine: classify photos with the saved Spark ML pipeline and the CNN, in one process, without Spark."""

from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spark_code.classify import spark_layout
from spark_code.classify.openset import MAX_PROBABILITY, OPENSET_JSON, Decision, OpenSetModel
from spark_code.featurize.cnn import DEFAULT_ENGINE, CnnEngine, CnnSpec, build_predict, model_payload
from spark_code.ingest.images import try_decode
from spark_code.storage import versions
from spark_code.storage.s3a import is_s3, split

logger = logging.getLogger(__name__)

CNN_SETTINGS = "cnn.json"
SERVING_JSON = "serving.json"  # the NumPy arrays of a saved classifier, written beside it (no Spark to read)
UNKNOWN = "unknown"


class ModelNotFoundError(LookupError):
    """No committed classifier under the given folder."""


class NotAnImageError(ValueError):
    """A file Pillow cannot read as an image."""


MODEL_CACHE = Path.home() / ".cache" / "fruits" / "models"  # versions of s3:// models, copied once


def fetch_version(base: str, name: str = "fruit_classifier", cache: Path = MODEL_CACHE, client=None) -> Path:
    """The newest committed version of model `name` under an s3:// (or s3a://) models folder, copied once into
    `cache` (a version is never rewritten, so a copy is good for ever)."""
    import boto3

    bucket, prefix = split(base.rstrip("/") + f"/{name}/")
    client = client or boto3.client("s3")
    keys = [
        item["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for item in page.get("Contents", [])
    ]
    committed = versions.committed_of(key[len(prefix) :] for key in keys)
    if not committed:
        raise ModelNotFoundError(
            f"no committed {name!r} under {base!r}: materialize the fruit_classifier asset first, or point --models "
            "/ FRUITS_OUTPUT_URI at the folder that holds it"
        )
    target = cache / bucket / prefix / committed[-1]
    if not (target / versions.COMMITTED).exists():
        files = [k for k in keys if k.startswith(f"{prefix}{committed[-1]}/")]
        for key in sorted(files, key=lambda k: k.endswith(f"/{versions.COMMITTED}")):  # the marker last: whole
            local = cache / bucket / key
            local.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, key, str(local))
    return target


def latest_version(base: str, name: str = "fruit_classifier") -> Path:
    """The newest committed version folder of model `name` under a models folder (local, or s3:// copied once)."""
    if is_s3(base):
        return fetch_version(base, name)
    newest = versions.newest(base, name)
    if newest is None:
        raise ModelNotFoundError(
            f"no committed {name!r} under {base.removeprefix('file:')!r}: materialize the fruit_classifier asset "
            "first, or point --models / FRUITS_OUTPUT_URI at the folder that holds it"
        )
    return Path(newest.removeprefix("file:"))


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
    """Read a saved classifier version: its arrays from the `serving.json` sidecar (versions saved before it from
    the Spark pipeline's files, see `spark_code.classify.spark_layout`), its CNN input size and open-set model."""
    folder = Path(str(folder).removeprefix("file:"))
    sidecar = folder / SERVING_JSON
    if sidecar.exists():
        arrays = {key: _array(value) for key, value in json.loads(sidecar.read_text()).items()}
        arrays["labels"] = list(arrays["labels"])
    else:
        arrays = spark_layout.pipeline_arrays(folder)
    settings = json.loads((folder / CNN_SETTINGS).read_text()) if (folder / CNN_SETTINGS).exists() else {}
    saved_openset = folder / OPENSET_JSON
    rejection = OpenSetModel.from_json(saved_openset.read_text()) if saved_openset.exists() else None
    return ServingPipeline(**arrays, image_size=int(settings.get("image_size", 224)), openset=rejection)


def _array(value):
    if value is None or (isinstance(value, list) and value and isinstance(value[0], str)):
        return value
    array = np.asarray(value, dtype=np.float64)
    return np.asfortranarray(array) if array.ndim == 2 else array  # column-major, as Spark ML's matrices are


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
