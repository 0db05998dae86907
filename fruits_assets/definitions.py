"""Definitions for a deployment (FRUITS_DEPLOYMENT: local, the default, or emr): same assets, other resources."""

import os

from dagster import Definitions, ResourceDefinition, in_process_executor
from dagster_pyspark import PySparkResource

from fruits_assets.assets import cnn_features, pca_features, raw_images, scaled_features
from fruits_assets.automation import daily_refit, materialize_all, new_images, refit_models
from fruits_assets.checks import ALL_CHECKS
from fruits_assets.deployments import STEP_LAUNCHER_KEY, deployment, emr_resources, require_step_launcher
from fruits_assets.io_managers import SparkParquetIOManager
from fruits_assets.resources import (
    DEFAULT_IMAGE_ROOT,
    DEFAULT_OUTPUT,
    DEFAULT_TRAINING_ROOT,
    ClassifierSettings,
    CnnResource,
    ImageSource,
    ModelStore,
    TableStore,
    local_spark_config,
)
from fruits_assets.validation import VALIDATION_ASSETS, VALIDATION_CHECKS
from spark_code.cnn import default_weights_path

FEATURE_ASSETS = [raw_images, cnn_features, scaled_features, pca_features]
ASSETS = [*FEATURE_ASSETS, *VALIDATION_ASSETS]
CHECKS = [*ALL_CHECKS, *VALIDATION_CHECKS]


def local_resources(
    image_root: str | None = None,
    output_uri: str | None = None,
    weights_path: str | None = None,
    spark_config: dict | None = None,
    training_root: str | None = None,
) -> dict:
    """Resources for one machine: local Spark, tables and models under a local folder.

    Unset arguments come from FRUITS_IMAGE_ROOT, FRUITS_OUTPUT_URI, FRUITS_WEIGHTS, FRUITS_BATCH_SIZE,
    FRUITS_IMAGE_SIZE, FRUITS_ENGINE, FRUITS_ONNX_CACHE,
    FRUITS_TRAINING_ROOT, FRUITS_ACCURACY_FLOOR, or the workspace defaults in ../shared.
    """
    training = training_root or os.environ.get("FRUITS_TRAINING_ROOT", str(DEFAULT_TRAINING_ROOT))
    output = output_uri or os.environ.get("FRUITS_OUTPUT_URI", str(DEFAULT_OUTPUT))
    pyspark = PySparkResource(spark_config=spark_config or local_spark_config())
    return {
        STEP_LAUNCHER_KEY: ResourceDefinition.none_resource(),  # steps run in this process
        "pyspark": pyspark,
        "io_manager": SparkParquetIOManager(base_uri=output, pyspark=pyspark),
        "models": ModelStore(base_uri=f"{output.rstrip('/')}/models", pyspark=pyspark),
        "tables": TableStore(base_uri=output, pyspark=pyspark),
        "image_source": ImageSource(
            root=image_root or os.environ.get("FRUITS_IMAGE_ROOT", str(DEFAULT_IMAGE_ROOT)),
            state_uri=f"{output.rstrip('/')}/_sensor/new_images",
            events_queue=os.environ.get("FRUITS_EVENTS_QUEUE") or None,
        ),
        "cnn": CnnResource(
            weights_path=weights_path or default_weights_path(),
            batch_size=int(os.environ.get("FRUITS_BATCH_SIZE", "16")),
            image_size=int(os.environ.get("FRUITS_IMAGE_SIZE", "224")),
            engine=os.environ.get("FRUITS_ENGINE", "onnx"),
            onnx_cache=os.environ.get("FRUITS_ONNX_CACHE") or None,
        ),
        "training_source": ImageSource(root=training),
        "classifier": ClassifierSettings(accuracy_floor=float(os.environ.get("FRUITS_ACCURACY_FLOOR", "0.95"))),
    }


def resources_for(name: str | None = None) -> dict:
    """The resources of deployment `name` (default: FRUITS_DEPLOYMENT, else local)."""
    name = name or deployment()
    if name == "emr":
        require_step_launcher([*ASSETS, *CHECKS])
        return emr_resources(base=local_resources())  # plain settings (classifier) come from the local set
    return local_resources()


def build_defs(resources: dict | None = None) -> Definitions:
    """The project's Definitions; one Spark driver per run (in-process executor)."""
    return Definitions(
        assets=ASSETS,
        asset_checks=CHECKS,
        jobs=[materialize_all, refit_models],
        schedules=[daily_refit],
        sensors=[new_images],
        resources=resources or resources_for(),
        executor=in_process_executor,
    )
