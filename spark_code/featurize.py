"""MobileNetV2 features in Spark: the model spec, weights broadcast once, a per-worker model cache, the UDF."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_code.images import try_decode

logger = logging.getLogger(__name__)

FEATURE_DIM = 1280
RESULT_TYPE = "struct<features: array<float>, error: string>"


WEIGHTS_FILE = "mobilenet_v2_1.0_224_no_top.weights.h5"
WORKSPACE_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / WEIGHTS_FILE


def default_weights_path() -> str | None:
    """FRUITS_WEIGHTS, else the workspace copy in ../shared if present, else None (Keras downloads them)."""
    if "FRUITS_WEIGHTS" in os.environ:
        return os.environ["FRUITS_WEIGHTS"] or None
    return str(WORKSPACE_WEIGHTS) if WORKSPACE_WEIGHTS.exists() else None


class WeightsError(ValueError):
    """The Keras weights file is missing or does not fit MobileNetV2 (no top)."""


@dataclass(frozen=True)
class CnnSpec:
    """MobileNetV2 (ImageNet, no top, average pooling) and the preprocessing that belongs to it."""

    input_size: int = 224
    feature_dim: int = FEATURE_DIM

    def build(self, weights: str | None):
        """Build the Keras model; `weights` is a weights-file path, "imagenet" (download) or None."""
        import tensorflow as tf

        return tf.keras.applications.MobileNetV2(
            weights=weights,
            include_top=False,
            pooling="avg",
            input_shape=(self.input_size, self.input_size, 3),
        )

    @staticmethod
    def preprocess(pixels: np.ndarray) -> np.ndarray:
        """Keras' own MobileNetV2 preprocessing (RGB scaled to [-1, 1])."""
        from tensorflow.keras.applications.mobilenet_v2 import preprocess_input

        return preprocess_input(pixels.astype(np.float32))


def weights_fingerprint(weights_path: str | None) -> str:
    """A short id of the weights file (path, size, mtime) used as the worker cache key."""
    if weights_path is None:
        return "imagenet-download"
    stat = os.stat(weights_path)
    key = f"{os.path.abspath(weights_path)}:{stat.st_size}:{stat.st_mtime_ns}"
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def load_weights(spec: CnnSpec, weights_path: str | None) -> list[np.ndarray]:
    """Load the weights on the driver with Keras' own loader; clear errors for a missing or wrong file."""
    if weights_path is not None and not os.path.isfile(weights_path):
        raise WeightsError(
            f"weights file {weights_path!r} not found: set FRUITS_WEIGHTS to the path of "
            "mobilenet_v2_1.0_224_no_top.weights.h5, or unset it to let Keras download the ImageNet weights"
        )
    if weights_path is None:
        return _download_weights(spec)
    try:
        model = spec.build(weights_path)
    except (ValueError, OSError, KeyError, TypeError) as error:
        raise WeightsError(
            f"weights file {weights_path!r} is not a Keras MobileNetV2 (alpha 1.0, no top) weights file: {error}"
        ) from error
    return model.get_weights()


def _download_weights(spec: CnnSpec) -> list[np.ndarray]:
    """Keras' own ImageNet download: the fallback on machines with internet."""
    try:
        return spec.build("imagenet").get_weights()
    except Exception as error:  # Keras wraps network failures in a bare Exception
        raise WeightsError(
            f"Keras could not download the MobileNetV2 ImageNet weights ({error}): "
            "set FRUITS_WEIGHTS to a local mobilenet_v2_1.0_224_no_top.weights.h5"
        ) from error


_DRIVER_WEIGHTS: dict[tuple[str, int], Future] = {}
_DRIVER_LOADER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cnn-weights")
_DRIVER_BROADCASTS: dict[tuple[int, str, int], object] = {}


def preload_weights(spec: CnnSpec, weights_path: str | None) -> None:
    """Start loading the weights on the driver in the background (TensorFlow import included, ~6 s), so that it
    overlaps the work before the CNN step, e.g. the listing. Errors surface when the weights are used."""
    key = (weights_fingerprint(weights_path), spec.input_size)
    if key not in _DRIVER_WEIGHTS:
        logger.info("loading CNN weights from %s on the driver", weights_path or "Keras download")
        _DRIVER_WEIGHTS[key] = _DRIVER_LOADER.submit(load_weights, spec, weights_path)


def driver_weights(spec: CnnSpec, weights_path: str | None) -> list[np.ndarray]:
    """The weights, loaded once per driver process (waiting for a preload under way)."""
    preload_weights(spec, weights_path)
    key = (weights_fingerprint(weights_path), spec.input_size)
    try:
        return _DRIVER_WEIGHTS[key].result()
    except Exception:
        del _DRIVER_WEIGHTS[key]  # a later call tries again (e.g. the download, once the network is back)
        raise


def broadcast_weights(spark: SparkSession, spec: CnnSpec, weights_path: str | None):
    """Load the weights once per driver and broadcast them once per SparkContext."""
    if weights_path is not None and not os.path.isfile(weights_path):
        load_weights(spec, weights_path)  # raises the WeightsError that names the file
    key = (id(spark.sparkContext), weights_fingerprint(weights_path), spec.input_size)
    if key not in _DRIVER_BROADCASTS:
        _DRIVER_BROADCASTS[key] = spark.sparkContext.broadcast(driver_weights(spec, weights_path))
    return _DRIVER_BROADCASTS[key]


_WORKER_MODELS: dict[tuple[str, int], object] = {}


def cached_model(spec: CnnSpec, fingerprint: str, weights_broadcast, tf_threads: int) -> tuple[object, bool]:
    """This Python worker's compiled model, built on first use and reused by every later batch and task.

    Returns `(predict, built_now)`.
    """
    key = (fingerprint, spec.input_size)
    if key in _WORKER_MODELS:
        return _WORKER_MODELS[key], False
    _WORKER_MODELS[key] = build_predict(spec, weights_broadcast.value, tf_threads)
    logger.info("built CNN in worker pid %s", os.getpid())
    return _WORKER_MODELS[key], True


def build_predict(spec: CnnSpec, weights: list[np.ndarray], tf_threads: int):
    """A traced `tf.function` running the model in inference mode on float32 batches of any length."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    _set_tf_threads(tf, tf_threads)
    model = spec.build(None)
    model.set_weights(weights)
    signature = [tf.TensorSpec([None, spec.input_size, spec.input_size, 3], tf.float32)]
    return tf.function(lambda x: model(x, training=False), input_signature=signature)


def _set_tf_threads(tf, threads: int) -> None:
    """Pin TF's thread pools (once per process) so Spark task slots and TF threads do not oversubscribe."""
    if threads <= 0:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TF already initialised in this process: keep its pools
        pass


def featurize_contents(contents: pd.Series, predict, spec: CnnSpec, batch_size: int, timings=None) -> pd.DataFrame:
    """Decode and featurize one Arrow batch of image bytes, `batch_size` images per model call.

    `timings`, if given, is a two-item list that receives decode and inference seconds.
    """
    features: list[np.ndarray | None] = [None] * len(contents)
    errors: list[str | None] = [None] * len(contents)
    timings = timings if timings is not None else [0.0, 0.0]
    for start in range(0, len(contents), batch_size):
        t0 = time.perf_counter()
        chunk = range(start, min(start + batch_size, len(contents)))
        decoded = [(i, *try_decode(contents.iat[i], spec.input_size)) for i in chunk]
        good = [(i, pixels) for i, pixels, _ in decoded if pixels is not None]
        for i, _, error in decoded:
            errors[i] = error
        t1 = time.perf_counter()
        if good:
            output = predict(spec.preprocess(np.stack([pixels for _, pixels in good]))).numpy()
            for (i, _), vector in zip(good, output, strict=True):
                features[i] = vector
        timings[0] += t1 - t0
        timings[1] += time.perf_counter() - t1
    return pd.DataFrame({"features": features, "error": errors})


@dataclass
class FeaturizeCounters:
    """Spark accumulators filled as a featurization runs: images decoded, run through the CNN, models built."""

    decoded: object
    inferred: object
    models_built: object
    decode_s: object
    inference_s: object

    @classmethod
    def create(cls, sc) -> FeaturizeCounters:
        """New zeroed accumulators, also registered in this driver's process-wide totals."""
        counters = cls(*(sc.accumulator(0) for _ in range(3)), sc.accumulator(0.0), sc.accumulator(0.0))
        _ALL_COUNTERS.append(counters)
        return counters

    def values(self) -> dict[str, int]:
        """Current counts (read on the driver after an action)."""
        return {
            "images_decoded": self.decoded.value,
            "cnn_images": self.inferred.value,
            "models_built": self.models_built.value,
        }

    def seconds(self) -> dict[str, float]:
        """Task seconds spent decoding and in the model, summed over all tasks."""
        return {"decode_s": round(self.decode_s.value, 2), "inference_s": round(self.inference_s.value, 2)}


_ALL_COUNTERS: list[FeaturizeCounters] = []


def process_totals() -> dict[str, int]:
    """Counts summed over every featurization this driver process ran (tests and the benchmark read them)."""
    totals = {"images_decoded": 0, "cnn_images": 0, "models_built": 0}
    for counters in _ALL_COUNTERS:
        for key, value in counters.values().items():
            totals[key] += value
    return totals


def make_udf(spec: CnnSpec, fingerprint: str, weights_bc, batch_size: int, tf_threads: int, counters):
    """The iterator pandas UDF: bytes in, struct(features, error) out; the model is cached per worker."""

    @F.pandas_udf(RESULT_TYPE)
    def featurize(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        predict, built = cached_model(spec, fingerprint, weights_bc, tf_threads)
        counters.models_built.add(int(built))
        for contents in batches:
            timings = [0.0, 0.0]
            result = featurize_contents(contents, predict, spec, batch_size, timings)
            counters.decode_s.add(timings[0])
            counters.inference_s.add(timings[1])
            counters.decoded.add(len(contents))
            counters.inferred.add(int(result["error"].isna().sum()))
            yield result

    return featurize


class CnnFeaturizer(Transformer, HasInputCol, HasOutputCol, DefaultParamsReadable, DefaultParamsWritable):
    """Image bytes (`inputCol`) → 1280-d MobileNetV2 features (`outputCol`) and a decode error (`errorCol`).

    After `transform`, `counters` holds accumulators of images decoded and run through the CNN.
    """

    errorCol = Param(Params._dummy(), "errorCol", "column for the decode error", TypeConverters.toString)
    weightsPath = Param(Params._dummy(), "weightsPath", "Keras weights file", TypeConverters.toString)
    batchSize = Param(Params._dummy(), "batchSize", "images per model call", TypeConverters.toInt)
    imageSize = Param(Params._dummy(), "imageSize", "square model input size", TypeConverters.toInt)
    tfThreads = Param(Params._dummy(), "tfThreads", "TF threads per worker (0: TF default)", TypeConverters.toInt)

    @keyword_only
    def __init__(
        self,
        *,
        inputCol: str = "content",
        outputCol: str = "features",
        errorCol: str = "error",
        weightsPath: str | None = None,
        batchSize: int = 64,
        imageSize: int = 224,
        tfThreads: int = 0,
    ):
        super().__init__()
        self._setDefault(inputCol="content", outputCol="features", errorCol="error")
        self._setDefault(batchSize=64, imageSize=224, tfThreads=0)
        self._set(**self._input_kwargs)
        self.counters: FeaturizeCounters | None = None

    def spec(self) -> CnnSpec:
        """The model spec these params describe."""
        return CnnSpec(input_size=self.getOrDefault(self.imageSize))

    def weights_path(self) -> str | None:
        """The weights file, or None for Keras' own download."""
        return self.getOrDefault(self.weightsPath) if self.isDefined(self.weightsPath) else None

    def _transform(self, dataset: DataFrame) -> DataFrame:
        spark = dataset.sparkSession
        spec, path = self.spec(), self.weights_path()
        weights_bc = broadcast_weights(spark, spec, path)
        self.counters = FeaturizeCounters.create(spark.sparkContext)
        udf = make_udf(
            spec,
            weights_fingerprint(path),
            weights_bc,
            self.getOrDefault(self.batchSize),
            self.getOrDefault(self.tfThreads),
            self.counters,
        )
        result = udf(F.col(self.getInputCol()))
        return (
            dataset.withColumn("_cnn", result)
            .withColumn(self.getOutputCol(), F.col("_cnn.features"))
            .withColumn(self.getOrDefault(self.errorCol), F.col("_cnn.error"))
            .drop("_cnn", self.getInputCol())
        )


@dataclass
class Featurized:
    """One featurization pass: features and quarantine rows, both served from a single cached CNN pass."""

    features: DataFrame
    quarantined: DataFrame
    counters: FeaturizeCounters
    _cached: DataFrame
    _also_cached: tuple[DataFrame, ...] = ()

    def release(self) -> None:
        """Drop the cached CNN output (and any other cached input of the two tables) once both are written."""
        for frame in (self._cached, *self._also_cached):
            frame.unpersist()


def target_partitions(images: int, parallelism: int, images_per_task: int = 2048) -> int:
    """Enough tasks to keep every core busy, few enough that per-task overhead stays small."""
    waves = max(1, -(-images // (parallelism * images_per_task)))
    return parallelism * waves


def featurize_listing(spark: SparkSession, listing: DataFrame, root: str, featurizer: CnnFeaturizer) -> Featurized:
    """Featurize every listed file once; files with no class folder, empty, too large, not images, undecodable or
    vanished become quarantine rows with their reason.

    Both outputs keep the listing's identity columns (`path`, `label`, `length`, `modification_time`).
    """
    from functools import reduce

    from pyspark import StorageLevel

    from spark_code.images import LISTING_COLUMNS, VANISHED, attach_content, set_aside

    keys = list(LISTING_COLUMNS)
    usable, not_read = set_aside(listing)
    count = usable.count()
    images = attach_content(spark, usable, root)
    images = images.coalesce(target_partitions(count, spark.sparkContext.defaultParallelism))
    error_col = featurizer.getOrDefault(featurizer.errorCol)
    result = featurizer.transform(images).persist(StorageLevel.MEMORY_AND_DISK)
    features = result.filter(F.col(error_col).isNull()).select(*keys, featurizer.getOutputCol())
    reasons = [
        result.filter(F.col(error_col).isNotNull()).select(*keys, F.col(error_col).alias("reason")),
        not_read,
        usable.join(result.select("path"), "path", "left_anti").select(*keys, F.lit(VANISHED).alias("reason")),
    ]
    quarantined = reduce(DataFrame.unionByName, reasons)
    return Featurized(features, quarantined, featurizer.counters, result)
