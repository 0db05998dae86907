"""A real fruit classifier trained on a small sample of photos by the asset's trainer and saved with the asset's
sidecars (serve tests, bench)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spark_code.classify import classifier_fit
from spark_code.classify.classifier import LogisticSettings
from spark_code.classify.openset import KNN_PROBABILITY
from spark_code.featurize.cnn import DEFAULT_ENGINE, CnnEngine, CnnSpec, Predict, build_predict, model_payload
from spark_code.featurize.decode import try_decode
from spark_code.reduction import scaler_pca
from spark_code.storage import versions

ACCEPT_RATE = 0.95  # known photos accepted (the `known_accept_rate` default)


def first_photos(folder: Path, n: int, skip: int = 0) -> list[Path]:
    """Photos `skip` to `skip + n` of a class folder, in name order."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".jpg")[skip : skip + n]


def cnn(weights: str, onnx_cache: str | None = None, engine: str = DEFAULT_ENGINE) -> Predict:
    """The project's CNN (by default the engine chosen for this CPU, as the pipeline and the app choose it; every
    core)."""
    engine = CnnEngine.chosen(engine, CnnSpec(), threads=0, onnx_cache=onnx_cache)
    return build_predict(engine, model_payload(engine, weights))


def features(predict: Predict, photos: list[Path], batch: int = 32) -> np.ndarray:
    """The CNN features of photos (all readable), decoded as the pipeline decodes them."""
    pixels = [try_decode(p.read_bytes(), CnnSpec().input_size)[0] for p in photos]
    return np.concatenate([predict(np.stack(pixels[i : i + batch])) for i in range(0, len(pixels), batch)])


def _table(spark, predict: Predict, root: Path, classes: list[str], n: int, skip: int = 0):
    photos = [(c, p) for c in classes for p in first_photos(root / c, n, skip)]
    vectors = features(predict, [p for _, p in photos])
    rows = [(str(p), c, v.tolist()) for (c, p), v in zip(photos, vectors, strict=True)]
    return spark.createDataFrame(rows, "path string, label string, features array<float>")


def train_and_save(spark, predict: Predict, roots: tuple[Path, Path], classes: list[str], models: str, n=(6, 4)) -> str:
    """Train on `n[0]` photos per class of `roots[0]` (Training), fit the scaler and PCA (95 % of the variance) and
    calibrate the unknown threshold on `n[1]` per class of `roots[1]` (Test); commit it as a new `fruit_classifier`
    version under `models`. Returns the version's URI."""
    train, corpus = _table(spark, predict, roots[0], classes, n[0]), _table(spark, predict, roots[1], classes, n[1])
    return save_trained(spark, train, corpus, models)


def save_trained(spark, train, corpus, models: str) -> str:
    """Fit the scaler and the PCA (95 % of the variance) on `corpus`, the classifier on `train` with the asset's
    trainer, its unknown threshold calibrated on `corpus`; commit it with the asset's sidecars as a new
    `fruit_classifier` version under `models` (tables: `path`, `label`, `features`). Returns the version's URI."""
    scaler = scaler_pca.fit_scaler(corpus, "features", "scaled_features")
    pca = scaler_pca.VariancePCA(inputCol="scaled_features", outputCol="pca_features", varianceTarget=0.95)
    pca_model = pca.fit(scaler_pca.transform_arrays(scaler, corpus))
    fitted = classifier_fit.validate(train, corpus, scaler, pca_model, LogisticSettings(), ACCEPT_RATE)
    rejection = classifier_fit.open_set_model(
        fitted.scored, fitted.model.labels(), fitted.model.scores, KNN_PROBABILITY, ACCEPT_RATE, fitted.protocol
    )
    pipeline = fitted.model.pipeline
    extras = classifier_fit.sidecars(pipeline, rejection, CnnSpec().input_size)
    return versions.save_model(spark, pipeline, models, "fruit_classifier", extras=extras)
