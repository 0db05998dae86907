"""Model caches: the payload loaded once per driver, broadcast once per SparkContext, built once per worker."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ClassVar

from pyspark.sql import SparkSession

from spark_code.featurize.cnn import CnnEngine, Predict, build_predict, model_payload, weights_fingerprint

logger = logging.getLogger(__name__)


class DriverPayloads:
    """Model payloads loaded once per driver process, in the background so the load overlaps the listing."""

    def __init__(self):
        self._futures: dict[tuple, Future] = {}
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cnn-model")

    @staticmethod
    def key(engine: CnnEngine, weights_path: str | None) -> tuple:
        """What identifies one payload."""
        return engine.name, weights_fingerprint(weights_path), engine.spec.input_size, engine.onnx_cache

    def preload(self, engine: CnnEngine, weights_path: str | None) -> None:
        """Start loading (TensorFlow import and, for onnx, a conversion on a cold cache); errors surface on `get`."""
        key = self.key(engine, weights_path)
        if key not in self._futures:
            logger.info("loading the CNN (%s) from %s", engine.name, weights_path or "Keras download")
            self._futures[key] = self._loader.submit(model_payload, engine, weights_path)

    def get(self, engine: CnnEngine, weights_path: str | None):
        """The payload, waiting for a preload under way; a failed load is tried again on the next call."""
        self.preload(engine, weights_path)
        key = self.key(engine, weights_path)
        try:
            return self._futures[key].result()
        except Exception:
            del self._futures[key]
            raise


DRIVER_PAYLOADS = DriverPayloads()


class WorkerModels:
    """This Python process's models, built on first use and reused by every later batch, task and job
    (as `pyspark.ml.model_cache.ModelCache` does for `predict_batch_udf`)."""

    _models: ClassVar[dict[tuple, Predict]] = {}

    @classmethod
    def get(cls, engine: CnnEngine, fingerprint: str, payload) -> tuple[Predict, bool]:
        """`(predict, built_now)`; `payload` is a callable returning the model payload, called only to build."""
        key = (engine, fingerprint)
        if key in cls._models:
            return cls._models[key], False
        cls._models[key] = build_predict(engine, payload())
        logger.info("built the CNN (%s) in pid %s", engine.name, os.getpid())
        return cls._models[key], True


class Broadcasts:
    """The driver's payload broadcast once per SparkContext, engine and weights, and reused by every job."""

    def __init__(self):
        self._broadcasts: dict[tuple, object] = {}

    def get(self, spark: SparkSession, engine: CnnEngine, weights_path: str | None):
        """The broadcast payload (loaded through DRIVER_PAYLOADS on first use)."""
        key = (id(spark.sparkContext), *DRIVER_PAYLOADS.key(engine, weights_path))
        if key not in self._broadcasts:
            self._broadcasts[key] = spark.sparkContext.broadcast(DRIVER_PAYLOADS.get(engine, weights_path))
        return self._broadcasts[key]


BROADCASTS = Broadcasts()


def warm_workers(spark: SparkSession, engine: CnnEngine, weights_path: str | None) -> None:
    """Build the CNN in this session's Python workers ahead of the first pass: one task per core, each building
    (`WorkerModels`) what the featurizer's tasks then find built. The main command runs it in the background while
    the driver lists the roots, so a small batch does not wait for a worker to start and load the model."""
    payload_bc, fingerprint = BROADCASTS.get(spark, engine, weights_path), weights_fingerprint(weights_path)
    slots = spark.sparkContext.defaultParallelism

    def build(batches):
        WorkerModels.get(engine, fingerprint, lambda: payload_bc.value)
        yield from batches

    spark.range(slots, numPartitions=slots).mapInPandas(build, "id long").collect()


_WARMING: set[tuple] = set()  # what this process already started building in its workers


def warm_workers_in_background(get_spark: Callable[[], SparkSession], engine: CnnEngine, weights_path: str | None):
    """`warm_workers` in a background thread, once per process and model, with the session `get_spark` gives (it may
    wait for one being started); a failure is only logged: the featurizing step builds the CNN itself and reports
    what fails."""
    key = DriverPayloads.key(engine, weights_path)
    if key in _WARMING:
        return
    _WARMING.add(key)

    def warm() -> None:
        try:
            warm_workers(get_spark(), engine, weights_path)
        except Exception as error:
            logger.debug("the Python workers could not build the CNN ahead of the pass: %s", error)

    threading.Thread(target=warm, name="cnn-warm-workers", daemon=True).start()
