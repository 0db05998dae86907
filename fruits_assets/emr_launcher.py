"""Launcher wiring of the emr deployment: the EMR step launcher, cluster-side Spark and CNN, which steps need it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dagster import AssetChecksDefinition, InitResourceContext, StepLauncher
from dagster._config.pythonic_config import ConfigurableResourceFactory  # public in the docs, not re-exported
from dagster_aws.emr.pyspark_step_launcher import EmrPySparkStepLauncher
from dagster_pyspark import PySparkResource
from pydantic import Field

from fruits_assets.emr_settings import DEFAULT_REGION, DEPLOYMENT_ENV, DeploymentError, EmrSettings, cluster_id_on_node
from fruits_assets.preflight import preflight
from fruits_assets.resources import CnnResource
from fruits_assets.spark_conf import EMR_SPARK_CONF

STEP_LAUNCHER_KEY = "pyspark_step_launcher"
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fruits_assets", "spark_code")
# EmrStepLauncher field -> the EmrSettings field it carries.
LAUNCHER_FIELDS = {
    "cluster_id": "cluster_id",
    "region_name": "region",
    "staging_bucket": "staging_bucket",
    "staging_prefix": "staging_prefix",
    "package_uri": "package_uri",
    "output_uri": "output_uri",
    "image_root": "image_root",
}


def copy_packages(target: Path) -> Path:
    """Copy the importable code (fruits_assets, spark_code: .py files only) into `target`; return it."""
    for package in PACKAGES:
        shutil.copytree(PACKAGE_ROOT / package, target / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


class FruitsEmrStepLauncher(EmrPySparkStepLauncher):
    """dagster-aws's EMR launcher, zipping only fruits_assets + spark_code (never the venv) for each step."""

    def launch_step(self, step_context) -> Iterator:
        """Stage a clean copy of the code as the job package, then launch the step as dagster-aws does."""
        if not self.deploy_local_job_package:
            yield from super().launch_step(step_context)
            return
        with tempfile.TemporaryDirectory(prefix="fruits-emr-package-") as folder:
            self.local_job_package_path = str(copy_packages(Path(folder)))
            yield from super().launch_step(step_context)


class EmrStepLauncher(ConfigurableResourceFactory[StepLauncher]):
    """Runs each Spark step on an EMR cluster with spark-submit; checks cluster and buckets first."""

    cluster_id: str = Field(description="EMR cluster id; env FRUITS_EMR_CLUSTER_ID.")
    region_name: str = Field(default=DEFAULT_REGION, description="AWS region; env FRUITS_EMR_REGION.")
    staging_bucket: str = Field(description="Staging bucket; env FRUITS_EMR_STAGING_BUCKET.")
    staging_prefix: str = Field(default="fruits/staging", description="Staging key prefix.")
    package_uri: str | None = Field(default=None, description="Prebuilt code zip on S3; None deploys local code.")
    output_uri: str = Field(description="s3:// base of tables and models (checked before the run).")
    image_root: str = Field(description="s3:// image root (checked before the run).")
    spark_config: dict[str, str] = Field(default_factory=lambda: dict(EMR_SPARK_CONF))
    wait_for_logs: bool = Field(default=False, description="Copy the step's driver logs back (adds minutes).")
    preflight: bool = Field(default=True, description="Check cluster and buckets when the run starts.")

    @classmethod
    def for_settings(cls, emr: EmrSettings) -> EmrStepLauncher:
        """The launcher of these emr settings."""
        return cls(**{field: getattr(emr, source) for field, source in LAUNCHER_FIELDS.items()})

    def settings(self) -> EmrSettings:
        """These fields as validated EmrSettings."""
        return EmrSettings(**{source: getattr(self, field) for field, source in LAUNCHER_FIELDS.items()})

    def create_resource(self, context: InitResourceContext) -> StepLauncher:
        settings = self.settings()
        if self.preflight and cluster_id_on_node() is None:  # on the cluster, the plan process already checked
            preflight(settings)
        return FruitsEmrStepLauncher(
            region_name=settings.region,
            staging_bucket=settings.staging_bucket,
            staging_prefix=settings.staging_prefix,
            wait_for_logs=self.wait_for_logs,
            action_on_failure="CONTINUE",
            cluster_id=settings.cluster_id,
            spark_config=dict(self.spark_config),
            local_job_package_path=str(PACKAGE_ROOT),
            deploy_local_job_package=settings.package_uri is None,
            s3_job_package_path=settings.package_uri,
        )


class ClusterPySparkResource(PySparkResource):
    """PySparkResource that starts Spark only when a step asks for it (on the cluster, never in the plan process)."""

    def setup_for_execution(self, context: InitResourceContext) -> None:
        """Nothing: the session is created on first use."""

    @property
    def spark_session(self) -> Any:
        """The SparkSession spark-submit set up on the cluster (created on first use)."""
        if self._spark_session is None:
            from dagster_pyspark.resources import spark_session_from_config

            self._spark_session = spark_session_from_config(self.spark_config)
        return self._spark_session


class ClusterCnnResource(CnnResource):
    """CnnResource whose weights file is checked on the cluster nodes (where the bootstrap put it), not locally."""

    def setup_for_execution(self, context: InitResourceContext) -> None:
        """Check the weights file only when running on an EMR node."""
        if cluster_id_on_node() is not None:
            super().setup_for_execution(context)


SPARK_RESOURCE_KEYS = frozenset({"pyspark", "models", "tables", "io_manager"})  # resources that touch Spark


def needs_spark(definition) -> bool:
    """Whether an asset or check step touches Spark: a Spark resource, or a DataFrame loaded or stored."""
    node = definition.node_def
    if not isinstance(definition, AssetChecksDefinition):
        return True  # an asset's output is a DataFrame stored by the Parquet IO manager
    data_inputs = [i for i in node.input_defs if not i.dagster_type.is_nothing]
    return bool(SPARK_RESOURCE_KEYS & node.required_resource_keys) or bool(data_inputs)


def missing_step_launcher(definitions: list) -> list[str]:
    """Names of the Spark steps that do not require the `pyspark_step_launcher` resource."""
    return sorted(
        d.node_def.name
        for d in definitions
        if needs_spark(d) and STEP_LAUNCHER_KEY not in d.node_def.required_resource_keys
    )


def require_step_launcher(definitions: list) -> None:
    """Fail unless every Spark step requires the step launcher (else it would run Spark locally against S3)."""
    missing = missing_step_launcher(definitions)
    if missing:
        raise DeploymentError(
            f"{DEPLOYMENT_ENV}=emr: {', '.join(missing)} must require the {STEP_LAUNCHER_KEY!r} resource "
            f'(add required_resource_keys={{"{STEP_LAUNCHER_KEY}"}} to their decorators)'
        )
