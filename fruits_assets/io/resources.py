"""Resources: the image source, the CNN settings and the model store, all validated early."""

import json
import os
from typing import Literal
from urllib.parse import urlparse

from dagster import ConfigurableResource, InitResourceContext, ResourceDependency
from dagster_pyspark import PySparkResource
from pydantic import Field, field_validator, model_validator

from spark_code.classify.classifier import ACCURACY_FLOOR, LOWEST_ACCURACY_FLOOR, LogisticSettings
from spark_code.featurize import cnn
from spark_code.featurize.cnn import CnnEngine, CnnSpec
from spark_code.featurize.model_cache import DRIVER_PAYLOADS
from spark_code.featurize.udf import CnnFeaturizer
from spark_code.ingest import batches
from spark_code.ingest.images import ImageRootError
from spark_code.reduction import lifecycle
from spark_code.reduction.lifecycle import SavedModel
from spark_code.storage import versions
from spark_code.storage.s3a import is_s3


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
        default=30.0, ge=0.0, description="The sensor takes a new file once it has been unmodified this long."
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
        description="CNN runtime (env FRUITS_ENGINE): ONNX Runtime on the converted Keras model, or TF.",
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
        """The engine these settings describe."""
        return CnnEngine(self.engine, CnnSpec(input_size=self.image_size), self.threads, self.onnx_cache)

    def model_key(self) -> str:
        """What makes a feature vector: input size, engine and weights (file name and size, or Keras' download)."""
        size = os.path.getsize(self.weights_path) if self.weights_path and os.path.isfile(self.weights_path) else "?"
        return self.model_key_for(size)

    def model_key_for(self, weights_size: int | str) -> str:
        """The model key of these settings with a weights file of `weights_size` bytes."""
        if self.weights_path is None:
            weights = "keras-imagenet-download"
        else:
            weights = f"{os.path.basename(self.weights_path)}:{weights_size}"
        return f"mobilenet_v2-{self.image_size}px-{self.engine}-{weights}"

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
        return versions.latest_uri(self.pyspark.spark_session, self.base_uri, name)

    def derived_batches(self, uri: str) -> set[str]:
        """The ingest batches whose part of a derived table the model version `uri` has made."""
        return batches.derived_batches(self.pyspark.spark_session, uri)

    def latest(self, model_class, name: str) -> SavedModel | None:
        """The newest committed version of `name` with what it was fitted with; None if there is none."""
        spark = self.pyspark.spark_session
        try:
            uri = versions.latest_uri(spark, self.base_uri, name)
        except versions.TableNotFoundError:
            return None
        fitted_with = versions.read_text(spark, f"{uri}/{lifecycle.FITTED_WITH[name]}")
        return SavedModel(model_class.load(uri), uri, json.loads(fitted_with or "{}"))


class TableStore(ConfigurableResource):
    """Batch-partitioned tables read from storage (the truth, whatever the Dagster instance remembers)."""

    base_uri: str = Field(description="Where the IO manager writes the tables; env FRUITS_OUTPUT_URI.")
    pyspark: ResourceDependency[PySparkResource]

    def table(self, name: str):
        """The newest committed version of the unpartitioned table `name`; None if it has none yet."""
        try:
            return versions.read_table(self.pyspark.spark_session, self.base_uri, name)
        except versions.TableNotFoundError:
            return None

    def require_table(self, name: str):
        """`table(name)`, or a TableNotFoundError naming it when it was never materialized."""
        rows = self.table(name)
        if rows is None:
            raise versions.TableNotFoundError(f"no committed version of {name!r}: materialize it first")
        return rows

    def batches(self) -> list[str]:
        """Keys of every committed ingest batch."""
        return batches.committed_keys(self.pyspark.spark_session, self.base_uri)

    def rows(self, name: str, without: str | None = None):
        """Rows of batch table `name` as written, over every committed batch except `without`; None if none."""
        return self.parts(name, [key for key in self.batches() if key != without])

    def parts(self, name: str, keys: list[str]):
        """Rows of batch table `name` as written by the batches `keys` (current or not); None if there are none."""
        return versions.read_partitions(self.pyspark.spark_session, self.base_uri, name, keys) if keys else None

    def require_parts(self, name: str, keys: list[str]):
        """`parts(name, keys)`, or a TableNotFoundError naming the table when none of them is committed."""
        rows = self.parts(name, keys)
        if rows is None:
            raise versions.TableNotFoundError(f"no committed part of {name!r} for {keys}: materialize a batch first")
        return rows

    def current_rows(self, name: str, without: str | None = None):
        """Current rows of batch table `name` over every committed batch except `without`; None if there are none."""
        keys = [key for key in self.batches() if key != without]
        return batches.read_current_rows(self.pyspark.spark_session, self.base_uri, name, keys) if keys else None

    def require_current_rows(self, name: str):
        """`current_rows(name)`, or a TableNotFoundError naming the table when no batch of it is committed yet."""
        rows = self.current_rows(name)
        if rows is None:
            raise versions.TableNotFoundError(f"no committed batch of {name!r}: materialize a batch first")
        return rows

    def current_features(self):
        """(current rows of `cnn_features` over every batch, their one CNN setting); an error if they mix settings."""
        features = self.require_current_rows("cnn_features")
        return features, batches.one_cnn_model(features)


class ClassifierSettings(ConfigurableResource):
    """The fruit classifier: logistic-regression settings and the quality bars its checks use."""

    max_iter: int = Field(default=200, ge=1, le=10_000, description="Logistic-regression iterations.")
    reg_param: float = Field(default=1e-3, ge=0.0, description="L2 regularisation strength.")
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
