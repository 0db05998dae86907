"""The emr deployment's settings: which cluster, region, buckets and paths, validated before any AWS call."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import boto3
from dagster import Config
from pydantic import Field, field_validator

from fruits_assets.deploy.settings import Settings, SettingsError
from spark_code.featurize.cnn import WEIGHTS_FILE
from spark_code.storage.s3a import is_s3

DEPLOYMENT_ENV = Settings.variable("deployment")
DEFAULT_REGION = "eu-west-3"  # Paris: data of EU users stays in the EU.
NODE_WEIGHTS = "fruits/weights"  # under the node folder (FRUITS_EMR_NODE_DIR): where bootstrap-emr.sh copies them

# EmrSettings field -> the Settings field (and so the FRUITS_* variable) it comes from.
SOURCES = {
    "cluster_id": "emr_cluster_id",
    "region": "emr_region",
    "staging_bucket": "emr_staging_bucket",
    "staging_prefix": "emr_staging_prefix",
    "package_uri": "emr_package_uri",
    "output_uri": "output_uri",
    "image_root": "image_root",
    "training_root": "training_root",
    "python": "emr_python",
    "node_dir": "emr_node_dir",
    "poll_seconds": "emr_poll_seconds",
}
ENV_VARS = {field: Settings.variable(source) for field, source in SOURCES.items()}


class DeploymentError(ValueError):
    """The deployment's settings are missing or invalid, or AWS refuses them; the message names what to fix."""


def deployment(env: Mapping[str, str] | None = None) -> str:
    """The deployment named by FRUITS_DEPLOYMENT (default `local`)."""
    try:
        return Settings.from_env(env).deployment
    except SettingsError as error:
        raise DeploymentError(str(error)) from None


def known_regions() -> list[str]:
    """Regions where EMR exists, from botocore's bundled endpoint data (no network)."""
    return boto3.session.Session().get_available_regions("emr")


def _s3_uri(value: str, field: str) -> str:
    if not is_s3(value):
        raise ValueError(f"{field} {value!r} must be an s3://bucket/prefix (or s3a://) URI ({ENV_VARS[field]})")
    return value.rstrip("/")


class EmrSettings(Config):
    """Where and how the emr deployment runs; built from FRUITS_* env vars by `from_env`. The one declaration of
    these fields: the step launcher's config holds them as one nested value (`EmrStepLauncher.emr`)."""

    cluster_id: str | None = Field(default=None, description="EMR cluster (job flow) id, j-…; None at creation.")
    region: str = Field(default=DEFAULT_REGION, description="AWS region of the cluster and buckets.")
    staging_bucket: str = Field(description="Bucket for the step launcher's package, step refs and events.")
    staging_prefix: str = Field(default="fruits/staging", description="Key prefix inside the staging bucket.")
    package_uri: str | None = Field(default=None, description="Prebuilt code zip on S3; None: deploy local code.")
    output_uri: str = Field(description="s3:// base of the tables and models.")
    image_root: str = Field(description="s3:// prefix with one folder of images per class.")
    training_root: str | None = Field(default=None, description="s3:// prefix of labelled training images.")
    python: str = Field(default="/usr/bin/python3.11", description="Python of the driver and workers on the nodes.")
    node_dir: str = Field(default="/mnt", description="The nodes' folder of weights and job-flow.json.")
    poll_seconds: float = Field(default=15.0, description="Seconds between two polls of a running step.")

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
    def from_settings(cls, settings: Settings | None = None, require_cluster: bool = True) -> EmrSettings:
        """The emr fields of the project's settings (FRUITS_* variables, set explicitly: the local defaults do not
        apply on EMR); every missing one is named in a single error."""
        settings = settings or Settings.from_env()
        chosen = settings.model_fields_set
        values = {field: getattr(settings, source) for field, source in SOURCES.items() if source in chosen}
        values.setdefault("region", os.environ.get("AWS_REGION") or DEFAULT_REGION)
        values |= {field: getattr(settings, SOURCES[field]) for field in ("python", "node_dir", "poll_seconds")}
        required = ["staging_bucket", "output_uri", "image_root"] + (["cluster_id"] if require_cluster else [])
        missing = [ENV_VARS[field] for field in required if not values.get(field)]
        if missing:
            raise DeploymentError(f"{DEPLOYMENT_ENV}=emr needs {', '.join(missing)}: see README, 'Run on AWS EMR'")
        try:
            return cls(**values)
        except ValueError as error:
            raise DeploymentError(f"invalid emr settings: {error}") from error

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, require_cluster: bool = True) -> EmrSettings:
        """`from_settings` of the FRUITS_* variables in `env` (default: the process environment)."""
        try:
            return cls.from_settings(Settings.from_env(env), require_cluster)
        except SettingsError as error:
            raise DeploymentError(str(error)) from error

    def staging_uri(self, *parts: str) -> str:
        """s3:// URI under the staging prefix."""
        return "/".join([f"s3://{self.staging_bucket}", self.staging_prefix, *parts])

    @property
    def weights_path(self) -> str:
        """The Keras weights file on the nodes, where bootstrap-emr.sh copies it."""
        return f"{self.node_dir.rstrip('/')}/{NODE_WEIGHTS}/{WEIGHTS_FILE}"

    @property
    def python_version(self) -> str | None:
        """The nodes' Python as `3.11`, when their interpreter's name says it (EMR's /usr/bin/python3.11)."""
        match = re.search(r"python(\d+\.\d+)$", self.python)
        return match.group(1) if match else None

    def node_env(self) -> dict[str, str]:
        """What every node exports (spark-env): its Python for the driver and the workers, the region, and that it is
        a node. The steps' FRUITS_* settings travel with each step (fruits_assets.deploy.emr.job), not here."""
        return {
            "PYSPARK_PYTHON": self.python,
            "PYSPARK_DRIVER_PYTHON": self.python,
            "AWS_DEFAULT_REGION": self.region,
            Settings.variable("emr_node"): "true",
        }
