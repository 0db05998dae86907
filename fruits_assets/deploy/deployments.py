"""The resources of each deployment, one flat dict each: local (the default) and emr (through the step launcher)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dagster import ResourceDefinition

from fruits_assets.deploy.emr import STEP_LAUNCHER_KEY
from fruits_assets.deploy.settings import Settings
from fruits_assets.deploy.spark_conf import LocalPySparkResource, local_spark_config
from fruits_assets.io.io_manager import DeltaIOManager
from fruits_assets.io.resources import (
    ClassifierSettings,
    CnnResource,
    ImageSource,
    ModelStore,
    OutputLocation,
    TableStore,
)

if TYPE_CHECKING:
    from fruits_assets.deploy.emr.settings import EmrSettings


def local_resources(
    image_root: str | None = None,
    output_uri: str | None = None,
    weights_path: str | None = None,
    spark_config: dict | None = None,
    training_root: str | None = None,
    settings: Settings | None = None,
) -> dict:
    """Resources for one machine: local Spark, tables and models under a local folder. Arguments left unset come
    from `settings` (default: the FRUITS_* variables, see fruits_assets.deploy.settings)."""
    settings = settings or Settings.from_env()
    output = output_uri or settings.output_uri
    pyspark = LocalPySparkResource(spark_config=spark_config or local_spark_config(settings=settings))
    return {
        STEP_LAUNCHER_KEY: ResourceDefinition.none_resource(),  # steps run in this process
        "pyspark": pyspark,
        "io_manager": DeltaIOManager(base_uri=output, pyspark=pyspark),
        "models": ModelStore(base_uri=f"{output.rstrip('/')}/models", pyspark=pyspark),
        "tables": TableStore(base_uri=output, pyspark=pyspark),
        "image_source": ImageSource(
            root=image_root or settings.image_root,
            state_uri=f"{output.rstrip('/')}/_sensor/new_images",
            events_queue=settings.events_queue,
            settle_seconds=settings.settle_seconds,
        ),
        "cnn": CnnResource(
            weights_path=weights_path or settings.weights, onnx_cache=settings.onnx_cache, **_cnn_fields(settings)
        ),
        "training_source": ImageSource(root=training_root or settings.training_root),
        "classifier": ClassifierSettings(accuracy_floor=settings.accuracy_floor),
        "output": OutputLocation(base_uri=output),
    }


def emr_resources(emr: EmrSettings | None = None, settings: Settings | None = None) -> dict:
    """Resources of the emr deployment: Spark on the cluster via the step launcher, tables and models on S3."""
    # imported here: dagster_aws costs ~0.6 s, which a local run (each start of the main command) need not pay
    from fruits_assets.deploy.emr.launcher import ClusterCnnResource, ClusterPySparkResource, EmrStepLauncher
    from fruits_assets.deploy.emr.settings import BOOTSTRAP_WEIGHTS, EmrSettings

    settings = settings or Settings.from_env()
    emr = emr or EmrSettings.from_settings(settings)
    pyspark = ClusterPySparkResource(spark_config={"spark.app.name": "fruits-features"})
    return {
        STEP_LAUNCHER_KEY: EmrStepLauncher.for_settings(emr, settings),
        "pyspark": pyspark,
        "io_manager": DeltaIOManager(base_uri=emr.output_uri, pyspark=pyspark),
        "models": ModelStore(base_uri=f"{emr.output_uri}/models", pyspark=pyspark),
        "tables": TableStore(base_uri=emr.output_uri, pyspark=pyspark),
        "image_source": ImageSource(
            root=emr.image_root,
            state_uri=f"{emr.output_uri}/_sensor/new_images",
            events_queue=settings.events_queue,
            settle_seconds=settings.settle_seconds,
        ),
        "cnn": ClusterCnnResource(
            weights_path=emr.weights_path,
            weights_uri=emr.staging_uri(*BOOTSTRAP_WEIGHTS),
            onnx_cache=emr.onnx_cache,
            on_node=settings.emr_node,
            **_cnn_fields(settings),
        ),
        "training_source": ImageSource(root=emr.training_root or settings.training_root),
        "classifier": ClassifierSettings(accuracy_floor=settings.accuracy_floor),
        "output": OutputLocation(base_uri=emr.output_uri),
    }


def _cnn_fields(settings: Settings) -> dict:
    """The CNN settings both deployments take from FRUITS_* variables (the ONNX cache is each machine's own)."""
    return {"batch_size": settings.batch_size, "image_size": settings.image_size, "engine": settings.engine}


def resources_for(settings: Settings | None = None) -> dict:
    """The resources of the deployment the settings name (FRUITS_DEPLOYMENT: local, the default, or emr)."""
    settings = settings or Settings.from_env()
    if settings.deployment == "emr":
        from fruits_assets.defs import ASSETS, CHECKS
        from fruits_assets.deploy.emr.launcher import require_step_launcher

        require_step_launcher([*ASSETS, *CHECKS])
        return emr_resources(settings=settings)
    return local_resources(settings=settings)
