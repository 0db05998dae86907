"""MobileNetV2 features in Spark: the pandas UDF and the CnnFeaturizer transformer, with their counters."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from spark_code.featurize.cnn import (
    BATCH_SIZE,
    DEFAULT_ENGINE,
    IMAGE_SIZE,
    CnnEngine,
    CnnSpec,
    Predict,
    weights_fingerprint,
)
from spark_code.featurize.decode import try_decode
from spark_code.featurize.model_cache import BROADCASTS, WorkerModels

logger = logging.getLogger(__name__)

RESULT_TYPE = "struct<features: array<float>, error: string>"


def featurize_contents(
    contents: pd.Series, predict: Predict, spec: CnnSpec, batch_size: int, timings=None
) -> pd.DataFrame:
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
            output = predict(np.stack([pixels for _, pixels in good]))
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

    created: ClassVar[list[FeaturizeCounters]] = []  # every set this driver process made (for process_totals)

    @classmethod
    def create(cls, sc) -> FeaturizeCounters:
        """New zeroed accumulators, also registered in this driver's process-wide totals."""
        counters = cls(*(sc.accumulator(0) for _ in range(3)), sc.accumulator(0.0), sc.accumulator(0.0))
        cls.created.append(counters)
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


def process_totals() -> dict[str, int]:
    """Counts summed over every featurization this driver process ran (tests and the benchmark read them)."""
    totals = {"images_decoded": 0, "cnn_images": 0, "models_built": 0}
    for counters in FeaturizeCounters.created:
        for key, value in counters.values().items():
            totals[key] += value
    return totals


def make_udf(engine: CnnEngine, fingerprint: str, payload_bc, batch_size: int, counters):
    """The iterator pandas UDF: bytes in, struct(features, error) out; the model is cached per worker."""

    @F.pandas_udf(RESULT_TYPE)
    def featurize(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        predict, built = WorkerModels.get(engine, fingerprint, lambda: payload_bc.value)
        counters.models_built.add(int(built))
        for contents in batches:
            timings = [0.0, 0.0]
            result = featurize_contents(contents, predict, engine.spec, batch_size, timings)
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
    threads = Param(Params._dummy(), "threads", "CNN threads per task (0: the engine's default)", TypeConverters.toInt)
    engine = Param(
        Params._dummy(), "engine", "CNN runtime: auto, onnx, openvino or tensorflow", TypeConverters.toString
    )
    onnxCache = Param(Params._dummy(), "onnxCache", "folder of converted ONNX models", TypeConverters.toString)

    @keyword_only
    def __init__(
        self,
        *,
        inputCol: str = "content",
        outputCol: str = "features",
        errorCol: str = "error",
        weightsPath: str | None = None,
        batchSize: int = BATCH_SIZE,
        imageSize: int = IMAGE_SIZE,
        threads: int = 0,
        engine: str = DEFAULT_ENGINE,
        onnxCache: str | None = None,
    ):
        super().__init__()
        self._setDefault(inputCol="content", outputCol="features", errorCol="error")
        self._setDefault(batchSize=BATCH_SIZE, imageSize=IMAGE_SIZE, threads=0, engine=DEFAULT_ENGINE)
        self._set(**self._input_kwargs)
        self.counters: FeaturizeCounters | None = None

    def spec(self) -> CnnSpec:
        """The model spec these params describe."""
        return CnnSpec(input_size=self.getOrDefault(self.imageSize))

    def weights_path(self) -> str | None:
        """The weights file, or None for Keras' own download."""
        return self.getOrDefault(self.weightsPath) if self.isDefined(self.weightsPath) else None

    def cnn_engine(self) -> CnnEngine:
        """The runtime and precision these params describe (`auto` chosen for the driver's CPU)."""
        cache = self.getOrDefault(self.onnxCache) if self.isDefined(self.onnxCache) else None
        return CnnEngine.chosen(self.getOrDefault(self.engine), self.spec(), self.getOrDefault(self.threads), cache)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        spark = dataset.sparkSession
        engine, path = self.cnn_engine(), self.weights_path()
        payload_bc = BROADCASTS.get(spark, engine, path)
        self.counters = FeaturizeCounters.create(spark.sparkContext)
        fingerprint = weights_fingerprint(path)
        udf = make_udf(engine, fingerprint, payload_bc, self.getOrDefault(self.batchSize), self.counters)
        result = udf(F.col(self.getInputCol()))
        return (
            dataset.withColumn("_cnn", result)
            .withColumn(self.getOutputCol(), F.col("_cnn.features"))
            .withColumn(self.getOrDefault(self.errorCol), F.col("_cnn.error"))
            .drop("_cnn", self.getInputCol())
        )
