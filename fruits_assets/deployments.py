"""The deployment switch: the same assets bound to local resources or to AWS EMR through the PySpark step launcher."""

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import boto3
from botocore.exceptions import ClientError
from dagster import AssetChecksDefinition, ConfigurableResource, InitResourceContext, ResourceDependency, StepLauncher
from dagster._config.pythonic_config import ConfigurableResourceFactory  # public in the docs, not re-exported
from dagster_aws.emr.pyspark_step_launcher import EmrPySparkStepLauncher
from dagster_aws.s3 import S3Resource
from dagster_pyspark import PySparkResource
from pydantic import BaseModel, Field, field_validator

from fruits_assets.io_managers import SparkParquetIOManager
from fruits_assets.resources import CnnResource, ImageSource, ModelStore, TableStore

logger = logging.getLogger(__name__)

DEPLOYMENT_ENV = "FRUITS_DEPLOYMENT"
DEPLOYMENTS = ("local", "emr")
DEFAULT_REGION = "eu-west-3"  # Paris: data of EU users stays in the EU.
STEP_LAUNCHER_KEY = "pyspark_step_launcher"
EMR_PYTHON = "/usr/bin/python3.11"  # EMR 7.x carries 3.9 (system default) and 3.11; the pins need >= 3.11.
NODE_WEIGHTS = "/mnt/fruits/weights/mobilenet_v2_1.0_224_no_top.weights.h5"  # where bootstrap-emr.sh copies them
JOB_FLOW_INFO = Path("/mnt/var/lib/info/job-flow.json")  # present on every EMR node; holds the cluster id
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fruits_assets", "spark_code")
LIVE_CLUSTER_STATES = ("STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING")

# Settings field -> env var. Everything the emr deployment needs comes from these (or their defaults).
ENV_VARS = {
    "cluster_id": "FRUITS_EMR_CLUSTER_ID",
    "region": "FRUITS_EMR_REGION",
    "staging_bucket": "FRUITS_EMR_STAGING_BUCKET",
    "staging_prefix": "FRUITS_EMR_STAGING_PREFIX",
    "package_uri": "FRUITS_EMR_PACKAGE_URI",
    "output_uri": "FRUITS_OUTPUT_URI",
    "image_root": "FRUITS_IMAGE_ROOT",
    "training_root": "FRUITS_TRAINING_ROOT",
}

# spark-submit settings for this job on m5.xlarge nodes (4 vCPU, 16 GiB, 12 GiB for YARN): two executors of
# 2 cores per node; TensorFlow lives in the Python workers, outside the JVM heap, so the overhead is large.
EMR_SPARK_CONF = {
    "spark.executor.cores": "2",
    "spark.executor.memory": "3g",
    "spark.executor.memoryOverhead": "2g",
    "spark.driver.memory": "4g",
    "spark.python.worker.reuse": "true",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.execution.arrow.maxRecordsPerBatch": "256",
    "spark.sql.files.openCostInBytes": "65536",
    "spark.sql.session.timeZone": "UTC",
    "spark.executorEnv.TF_CPP_MIN_LOG_LEVEL": "2",
}


class DeploymentError(ValueError):
    """The deployment's settings are missing or invalid, or AWS refuses them; the message names what to fix."""


def deployment(env: Mapping[str, str] | None = None) -> str:
    """The deployment named by FRUITS_DEPLOYMENT (default `local`)."""
    name = (env if env is not None else os.environ).get(DEPLOYMENT_ENV, "local").strip().lower() or "local"
    if name not in DEPLOYMENTS:
        raise DeploymentError(f"{DEPLOYMENT_ENV}={name!r} is not a deployment: use one of {', '.join(DEPLOYMENTS)}")
    return name


def known_regions() -> list[str]:
    """Regions where EMR exists, from botocore's bundled endpoint data (no network)."""
    return boto3.session.Session().get_available_regions("emr")


def _s3_uri(value: str, field: str) -> str:
    parsed = urlparse(value)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"{field} {value!r} must be an s3://bucket/prefix URI ({ENV_VARS[field]})")
    return value.rstrip("/")


def split_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, key) of an s3:// URI."""
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


class EmrSettings(BaseModel):
    """Where and how the emr deployment runs; built from FRUITS_* env vars by `from_env`."""

    cluster_id: str | None = Field(default=None, description="EMR cluster (job flow) id, j-…; None at creation.")
    region: str = Field(default=DEFAULT_REGION, description="AWS region of the cluster and buckets.")
    staging_bucket: str = Field(description="Bucket for the step launcher's package, step refs and events.")
    staging_prefix: str = Field(default="fruits/staging", description="Key prefix inside the staging bucket.")
    package_uri: str | None = Field(default=None, description="Prebuilt code zip on S3; None: deploy local code.")
    output_uri: str = Field(description="s3:// base of the tables and models.")
    image_root: str = Field(description="s3:// prefix with one folder of images per class.")
    training_root: str | None = Field(default=None, description="s3:// prefix of labelled training images.")
    weights_path: str = Field(default=NODE_WEIGHTS, description="Weights file on the nodes (see bootstrap-emr.sh).")
    python: str = Field(default=EMR_PYTHON, description="Python of the driver and the workers on the nodes.")

    @field_validator("region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        if value not in known_regions():
            raise ValueError(f"region {value!r} is not an AWS region with EMR (FRUITS_EMR_REGION), e.g. eu-west-3")
        return value

    @field_validator("cluster_id")
    @classmethod
    def _cluster_id_shape(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"j-[0-9A-Z]{8,20}", value):
            raise ValueError(f"cluster_id {value!r} is not an EMR cluster id like j-2AXXXXXXGAPLF")
        return value

    @field_validator("staging_bucket")
    @classmethod
    def _bucket_name(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", value):
            raise ValueError(f"staging_bucket {value!r} is not an S3 bucket name (FRUITS_EMR_STAGING_BUCKET)")
        return value

    @field_validator("staging_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return value.strip("/") or "fruits/staging"

    @field_validator("output_uri", "image_root", "training_root", "package_uri")
    @classmethod
    def _s3(cls, value: str | None, info) -> str | None:
        return None if value is None else _s3_uri(value, info.field_name)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, require_cluster: bool = True) -> "EmrSettings":
        """Settings from FRUITS_* env vars; every missing one is named in a single error."""
        env = os.environ if env is None else env
        values = {field: env[var] for field, var in ENV_VARS.items() if env.get(var, "").strip()}
        values.setdefault("region", env.get("AWS_REGION") or DEFAULT_REGION)
        if require_cluster and "cluster_id" not in values:
            values["cluster_id"] = cluster_id_on_node()
        required = ["staging_bucket", "output_uri", "image_root"] + (["cluster_id"] if require_cluster else [])
        missing = [ENV_VARS[field] for field in required if not values.get(field)]
        if missing:
            raise DeploymentError(f"{DEPLOYMENT_ENV}=emr needs {', '.join(missing)}: see README, 'Run on AWS EMR'")
        try:
            return cls(**values)
        except ValueError as error:
            raise DeploymentError(f"invalid emr settings: {error}") from error

    def staging_uri(self, *parts: str) -> str:
        """s3:// URI under the staging prefix."""
        return "/".join([f"s3://{self.staging_bucket}", self.staging_prefix, *parts])

    def node_env(self) -> dict[str, str]:
        """Env vars every node exports (spark-env): the remote step rebuilds these same Definitions from them."""
        env = {
            DEPLOYMENT_ENV: "emr",
            "PYSPARK_PYTHON": self.python,
            "PYSPARK_DRIVER_PYTHON": self.python,
            "AWS_DEFAULT_REGION": self.region,
            ENV_VARS["region"]: self.region,
            ENV_VARS["staging_bucket"]: self.staging_bucket,
            ENV_VARS["staging_prefix"]: self.staging_prefix,
            ENV_VARS["output_uri"]: self.output_uri,
            ENV_VARS["image_root"]: self.image_root,
            "FRUITS_WEIGHTS": self.weights_path,  # on the nodes; a local FRUITS_WEIGHTS is never sent there
            "FRUITS_ENGINE": os.environ.get("FRUITS_ENGINE", "onnx"),  # the nodes serve the CNN the same way
        }
        for field in ("package_uri", "training_root"):
            if getattr(self, field):
                env[ENV_VARS[field]] = getattr(self, field)
        return env


def cluster_id_on_node(info: Path = JOB_FLOW_INFO) -> str | None:
    """On an EMR node, the id of its own cluster (from job-flow.json); elsewhere None."""
    try:
        return json.loads(info.read_text())["jobFlowId"]
    except (OSError, ValueError, KeyError):
        return None


# ---- checks run before any Spark work -------------------------------------------------------------------------


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def check_bucket(s3_client, uri: str, what: str) -> None:
    """Fail with a clear message if the bucket of `uri` is missing or this identity may not list its prefix."""
    bucket, prefix = split_s3_uri(uri)
    try:
        s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    except ClientError as error:
        code = _error_code(error)
        if code in ("404", "NoSuchBucket"):
            raise DeploymentError(f"{what} bucket {bucket!r} does not exist: create it or fix the setting") from error
        if code in ("403", "AccessDenied", "Forbidden"):
            raise DeploymentError(
                f"no permission to list {what} location {uri!r}: grant s3:ListBucket on bucket {bucket!r} and "
                "object access under the prefix (see bootstrap/iam-policy.json)"
            ) from error
        raise


def check_cluster(emr_client, cluster_id: str, region: str) -> str:
    """Fail with a clear message unless `cluster_id` is a live cluster in `region`; return its state."""
    try:
        state = emr_client.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]["State"]
    except ClientError as error:
        if _error_code(error) in ("InvalidRequestException", "ResourceNotFoundException", "ValidationException"):
            raise DeploymentError(
                f"EMR cluster {cluster_id!r} not found in {region}: create one (bootstrap/emr_cluster.py create) "
                "and set FRUITS_EMR_CLUSTER_ID"
            ) from error
        if _error_code(error) in ("AccessDeniedException", "AccessDenied"):
            raise DeploymentError(f"no permission to describe EMR cluster {cluster_id!r} in {region}") from error
        raise
    if state not in LIVE_CLUSTER_STATES:
        raise DeploymentError(f"EMR cluster {cluster_id!r} is {state}: start a new one and set FRUITS_EMR_CLUSTER_ID")
    return state


def preflight(settings: EmrSettings, session: boto3.session.Session | None = None) -> None:
    """Check the cluster and every bucket the run touches, before any Spark work starts."""
    session = session or boto3.session.Session(region_name=settings.region)
    s3 = session.client("s3", region_name=settings.region)
    check_bucket(s3, settings.staging_uri(), "staging")
    check_bucket(s3, settings.output_uri, "output")
    check_bucket(s3, settings.image_root, "image")
    if settings.cluster_id:
        check_cluster(session.client("emr", region_name=settings.region), settings.cluster_id, settings.region)


# ---- resources ------------------------------------------------------------------------------------------------


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

    def settings(self) -> "EmrSettings":
        """These fields as validated EmrSettings."""
        return EmrSettings(
            cluster_id=self.cluster_id,
            region=self.region_name,
            staging_bucket=self.staging_bucket,
            staging_prefix=self.staging_prefix,
            package_uri=self.package_uri,
            output_uri=self.output_uri,
            image_root=self.image_root,
        )

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


class S3Artifacts(ConfigurableResource):
    """Small artifacts (a saved model folder, metrics JSON) copied to and from an s3:// prefix."""

    s3: ResourceDependency[S3Resource]
    base_uri: str = Field(description="s3://bucket/prefix holding the artifacts.")

    @field_validator("base_uri")
    @classmethod
    def _is_s3(cls, value: str) -> str:
        if not value.startswith("s3://"):
            raise ValueError(f"base_uri {value!r} must be an s3:// URI")
        return value.rstrip("/")

    def _key(self, name: str) -> tuple[str, str]:
        bucket, prefix = split_s3_uri(self.base_uri)
        return bucket, "/".join(part for part in (prefix, name.strip("/")) if part)

    def put_json(self, name: str, value: Any) -> str:
        """Write `value` as JSON at `<base_uri>/<name>`; return its URI."""
        bucket, key = self._key(name)
        self.s3.get_client().put_object(Bucket=bucket, Key=key, Body=json.dumps(value, sort_keys=True).encode())
        return f"s3://{bucket}/{key}"

    def get_json(self, name: str) -> Any:
        """Read the JSON artifact `name`."""
        bucket, key = self._key(name)
        return json.loads(self.s3.get_client().get_object(Bucket=bucket, Key=key)["Body"].read())

    def put_dir(self, local_dir: str | Path, name: str) -> list[str]:
        """Upload every file under `local_dir` to `<base_uri>/<name>/…`; return the keys written."""
        bucket, prefix = self._key(name)
        client, keys = self.s3.get_client(), []
        for path in sorted(p for p in Path(local_dir).rglob("*") if p.is_file()):
            key = f"{prefix}/{path.relative_to(local_dir).as_posix()}"
            client.upload_file(str(path), bucket, key)
            keys.append(key)
        logger.info("uploaded %d files to s3://%s/%s", len(keys), bucket, prefix)
        return keys

    def get_dir(self, name: str, local_dir: str | Path) -> Path:
        """Download every object under `<base_uri>/<name>/` into `local_dir`; return it."""
        bucket, prefix = self._key(name)
        client, target = self.s3.get_client(), Path(local_dir)
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
            for item in page.get("Contents", []):
                path = target / item["Key"][len(prefix) + 1 :]
                path.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, item["Key"], str(path))
        return target


def emr_resources(settings: EmrSettings | None = None, base: Mapping[str, Any] | None = None) -> dict:
    """Resources of the emr deployment: Spark on the cluster via the step launcher, tables and models on S3.

    `base` (e.g. the local resources) supplies every key this deployment does not replace, such as plain settings.
    """
    settings = settings or EmrSettings.from_env()
    pyspark = ClusterPySparkResource(spark_config={"spark.app.name": "fruits-features"})
    s3 = S3Resource(region_name=settings.region)
    training = {"training_source": ImageSource(root=settings.training_root)} if settings.training_root else {}
    return {
        **(base or {}),
        **training,
        STEP_LAUNCHER_KEY: EmrStepLauncher(
            cluster_id=settings.cluster_id,
            region_name=settings.region,
            staging_bucket=settings.staging_bucket,
            staging_prefix=settings.staging_prefix,
            package_uri=settings.package_uri,
            output_uri=settings.output_uri,
            image_root=settings.image_root,
        ),
        "pyspark": pyspark,
        "io_manager": SparkParquetIOManager(base_uri=settings.output_uri, pyspark=pyspark),
        "models": ModelStore(base_uri=f"{settings.output_uri}/models", pyspark=pyspark),
        "tables": TableStore(base_uri=settings.output_uri, pyspark=pyspark),
        "image_source": ImageSource(root=settings.image_root, state_uri=f"{settings.output_uri}/_sensor/new_images"),
        "cnn": ClusterCnnResource(
            weights_path=settings.weights_path,
            batch_size=int(os.environ.get("FRUITS_BATCH_SIZE", "16")),
            image_size=int(os.environ.get("FRUITS_IMAGE_SIZE", "224")),
            engine=os.environ.get("FRUITS_ENGINE", "onnx"),
        ),
        "s3": s3,
        "artifacts": S3Artifacts(s3=s3, base_uri=f"{settings.output_uri}/artifacts"),
    }


# ---- wiring: which steps go to the cluster --------------------------------------------------------------------

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
