"""Resources: the image source, the CNN settings and the model store, all validated early."""

import json
import os
from collections.abc import Iterator
from typing import Literal
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc
from dagster import ConfigurableResource, InitResourceContext, ResourceDependency
from dagster_pyspark import PySparkResource
from pydantic import Field, field_validator, model_validator

from spark_code import unchanged
from spark_code.classify.accuracy import ACCURACY_FLOOR, LOWEST_ACCURACY_FLOOR
from spark_code.classify.classifier import REG_PARAM, LogisticSettings
from spark_code.featurize import cnn
from spark_code.featurize.cnn import CnnEngine, CnnSpec
from spark_code.featurize.model_cache import DRIVER_PAYLOADS
from spark_code.featurize.udf import CnnFeaturizer
from spark_code.ingest import batches
from spark_code.ingest.images import ImageRootError
from spark_code.ingest.snapshot import DEFAULT_SETTLE_S
from spark_code.reduction import lifecycle
from spark_code.reduction.lifecycle import SavedModel
from spark_code.storage import lake, tables, versions
from spark_code.storage.uris import is_s3


def _is_local(uri: str) -> bool:
    return urlparse(uri).scheme in ("", "file")


class OutputLocation(ConfigurableResource):
    """Where the tables and models are (FRUITS_OUTPUT_URI), for decisions made without Spark (the daily refit's
    schedule); the IO manager, `tables` and `models` write and read there."""

    base_uri: str = Field(description="The output folder or s3:// prefix; env FRUITS_OUTPUT_URI.")


class ImageSource(ConfigurableResource):
    """Where the photos are: a folder (or s3:// prefix) with one sub-folder per fruit class."""

    root: str = Field(description="Image root; env FRUITS_IMAGE_ROOT.")
    settle_seconds: float = Field(
        default=DEFAULT_SETTLE_S, ge=0.0, description="The sensor takes a new file once unmodified this long."
    )
    state_uri: str | None = Field(
        default=None,
        description="Where the sensor keeps its listing snapshots (Parquet; its cursor only points at the newest). "
        "None keeps the snapshot inside the cursor.",
    )
    events_queue: str | None = Field(
        default=None,
        description="SQS queue URL receiving the S3 event notifications of an s3:// root (env FRUITS_EVENTS_QUEUE): "
        "the sensor drains it instead of listing the root.",
    )

    @model_validator(mode="after")
    def _events_need_s3(self):
        if self.events_queue and not is_s3(self.root):
            raise ValueError(
                f"events_queue is set but the image root {self.root!r} is not an s3:// prefix: S3 event "
                "notifications exist only for S3; unset FRUITS_EVENTS_QUEUE to list a local folder"
            )
        if self.events_queue and self.state_uri is None:
            raise ValueError("events_queue needs state_uri: the sensor keeps the snapshot the events update there")
        return self

    def setup_for_execution(self, context: InitResourceContext) -> None:
        if _is_local(self.root) and not os.path.isdir(urlparse(self.root).path or self.root):
            raise ImageRootError(
                f"image root {self.root!r} is not a folder: set FRUITS_IMAGE_ROOT to a folder with one "
                "sub-folder of images per fruit class (here: ../shared/fruits-360/Test)"
            )


class CnnResource(ConfigurableResource):
    """MobileNetV2 settings: the Keras weights file, the engine that runs it, the model batch and input sizes."""

    weights_path: str | None = Field(
        default=None, description="Keras weights file (env FRUITS_WEIGHTS); None lets Keras download them."
    )
    batch_size: int = Field(
        default=cnn.BATCH_SIZE,
        gt=0,
        le=cnn.MAX_BATCH_SIZE,
        description="Images per model call (env FRUITS_BATCH_SIZE).",
    )
    image_size: int = Field(
        default=cnn.IMAGE_SIZE,
        ge=cnn.MIN_IMAGE_SIZE,
        le=cnn.MAX_IMAGE_SIZE,
        description="Square model input size in pixels (env FRUITS_IMAGE_SIZE).",
    )
    engine: Literal[cnn.ENGINES] = Field(
        default=cnn.DEFAULT_ENGINE,
        description="CNN runtime (env FRUITS_ENGINE): auto (OpenVINO bf16 on CPUs with native bf16, else ONNX "
        "Runtime fp32), onnx, openvino, or tensorflow.",
    )
    threads: int = Field(default=1, ge=0, le=256, description="CNN threads per Spark task (0: the engine's default).")
    onnx_cache: str | None = Field(
        default=None, description="Folder of converted ONNX models (env FRUITS_ONNX_CACHE; default ~/.cache/...)."
    )

    @field_validator("weights_path")
    @classmethod
    def _weights_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("weights_path is blank: give a weights file path or leave it unset")
        return value

    def setup_for_execution(self, context: InitResourceContext) -> None:
        cnn.require_weights_file(self.weights_path, " (here: ../shared/weights/)")
        DRIVER_PAYLOADS.preload(self.cnn_engine(), self.weights_path)  # overlaps the listing

    def cnn_engine(self) -> CnnEngine:
        """The engine and precision these settings describe (`auto`: chosen for this machine's CPU)."""
        return CnnEngine.chosen(self.engine, CnnSpec(input_size=self.image_size), self.threads, self.onnx_cache)

    def settings(self) -> dict:
        """What a featurizing asset shows of these settings: batch and input sizes, the model key, engine and
        precision."""
        engine = self.cnn_engine()
        return {
            "batch_size": self.batch_size,
            "image_size": self.image_size,
            "cnn_model": self.model_key(),
            "engine": engine.name,
            "precision": engine.precision,
        }

    def model_key(self) -> str:
        """What makes a feature vector: input size, engine and precision, weights (file name and size, or Keras'
        download)."""
        size = os.path.getsize(self.weights_path) if self.weights_path and os.path.isfile(self.weights_path) else "?"
        return self.model_key_for(size)

    def model_key_for(self, weights_size: int | str) -> str:
        """The model key of these settings with a weights file of `weights_size` bytes."""
        if self.weights_path is None:
            weights = "keras-imagenet-download"
        else:
            weights = f"{os.path.basename(self.weights_path)}:{weights_size}"
        return f"mobilenet_v2-{self.image_size}px-{self.cnn_engine().label}-{weights}"

    def featurizer(self) -> CnnFeaturizer:
        """A CnnFeaturizer transformer with these settings."""
        return CnnFeaturizer(
            weightsPath=self.weights_path,
            batchSize=self.batch_size,
            imageSize=self.image_size,
            threads=self.threads,
            engine=self.engine,
            onnxCache=self.onnx_cache,
        )


class ModelStore(ConfigurableResource):
    """Versioned Spark ML models (scaler, PCA) next to the tables, under `base_uri` (local or s3://)."""

    base_uri: str = Field(description="Where fitted models are saved; env FRUITS_OUTPUT_URI + /models.")
    pyspark: ResourceDependency[PySparkResource]

    def save(self, model, name: str, fitted_with: dict, extras: dict[str, str] | None = None) -> SavedModel:
        """Save `model` as a new committed version of `name`, with what it was fitted with (its sidecar JSON) and
        small text `extras` beside it."""
        sidecars = {**(extras or {}), lifecycle.FITTED_WITH[name]: json.dumps(fitted_with)}
        uri = versions.save_model(self.pyspark.spark_session, model, self.base_uri, name, extras=sidecars)
        return SavedModel(model, uri, fitted_with)

    def load(self, model_class, name: str):
        """Load the newest committed version of `name`."""
        return versions.load_model(self.pyspark.spark_session, model_class, self.base_uri, name)

    def latest_uri(self, name: str) -> str:
        """URI of the newest committed version of model `name`."""
        return versions.latest_uri(self.base_uri, name)

    def latest(self, model_class, name: str) -> SavedModel | None:
        """The newest committed version of `name` with what it was fitted with; None if there is none."""
        uri = versions.newest(self.base_uri, name)
        if uri is None:
            return None
        fitted_with = versions.read_text(self.pyspark.spark_session, f"{uri}/{lifecycle.FITTED_WITH[name]}")
        return SavedModel(model_class.load(uri), uri, json.loads(fitted_with or "{}"))


class TableStore(ConfigurableResource):
    """The Delta tables under the output, read from storage (the truth, whatever the Dagster instance remembers)."""

    base_uri: str = Field(description="Where the IO manager writes the tables; env FRUITS_OUTPUT_URI.")
    pyspark: ResourceDependency[PySparkResource]

    def uri(self, name: str) -> str:
        """Where table `name` is."""
        return lake.table_of(self.base_uri, name)

    def table(self, name: str):
        """The current rows of table `name`; None if it has none yet."""
        uri = self.uri(name)
        return tables.read(self.pyspark.spark_session, uri) if tables.exists(uri) else None

    def require_table(self, name: str):
        """`table(name)`, or a TableNotFoundError naming it when it was never materialized."""
        return tables.read(self.pyspark.spark_session, self.uri(name))

    def version(self, name: str) -> int | None:
        """The version of the newest commit that changed rows of table `name` (None: no table)."""
        return lake.data_version(self.uri(name))

    def consumed(self, name: str, source: str) -> int:
        """The newest version of `source` whose changes table `name` has taken (-1: none)."""
        return lake.consumed(self.uri(name), source)

    def changes(self, source: str, after: int, until: int):
        """The net change of each path of table `source` in its versions `after`+1 … `until` (the raw table's,
        listing rows, read on the driver with delta-rs)."""
        on_driver = source == batches.LEDGER
        return tables.changes(self.pyspark.spark_session, self.uri(source), after, until, on_driver)

    def newest_batch(self) -> str | None:
        """The key of the newest ingest batch committed to the raw table (None: none yet)."""
        commit = unchanged.last_commit(self.base_uri, batches.LEDGER)
        return None if commit is None else commit.recorded.get(batches.BATCH)

    def batch_rows(self, name: str, key: str | None, columns: list[str]) -> Iterator[pa.RecordBatch]:
        """`columns` of the current rows of table `name` that batch `key` wrote, as Arrow record batches read with
        delta-rs (no Spark job; a big batch is never whole in memory); a TableNotFoundError when there is no table."""
        batches_read = lake.scan(self.uri(name), columns, pc.field(batches.BATCH) == (key or ""))
        if batches_read is None:
            raise tables.TableNotFoundError(f"no table at {self.uri(name)!r}: materialize it first")
        return batches_read

    def current_features(self):
        """(current rows of `cnn_features`, their one CNN setting); an error if they mix settings."""
        features = self.require_table("cnn_features")
        return features, batches.one_cnn_model(features)


class ClassifierSettings(ConfigurableResource):
    """The fruit classifier: logistic-regression settings and the quality bars its checks use."""

    max_iter: int = Field(default=200, ge=1, le=10_000, description="Logistic-regression iterations.")
    reg_param: float = Field(default=REG_PARAM, ge=0.0, description="L2 regularisation strength.")
    accuracy_floor: float = Field(
        default=ACCURACY_FLOOR,
        ge=LOWEST_ACCURACY_FLOOR,
        le=1.0,
        description="Least test accuracy the check accepts; env FRUITS_ACCURACY_FLOOR.",
    )
    max_pca_accuracy_drop: float = Field(
        default=0.02, ge=0.0, le=1.0, description="Largest accuracy loss of PCA vs the raw 1280-d features."
    )
    unknown_score: Literal["knn_probability", "knn", "mahalanobis", "max_probability", "auto"] = Field(
        default="knn_probability",
        description="Score that decides `unknown` (knn_probability: distance to the nearest training photo plus "
        "1 - the best class probability; auto: the best AUROC of the held-out-classes protocol).",
    )
    known_accept_rate: float = Field(
        default=0.95, ge=0.5, lt=1.0, description="Share of known-class test photos the unknown threshold accepts."
    )

    def logistic(self) -> LogisticSettings:
        """The Spark ML settings."""
        return LogisticSettings(max_iter=self.max_iter, reg_param=self.reg_param)
