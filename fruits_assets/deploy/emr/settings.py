"""The emr deployment's settings: which cluster, region, buckets and paths, validated before any AWS call."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from dagster import Config
from pydantic import Field, create_model, field_validator, model_validator

from fruits_assets.deploy.settings import Settings, SettingsError, s3_uri
from spark_code.featurize.cnn import WEIGHTS_FILE

DEPLOYMENT_ENV = Settings.variable("deployment")
DEFAULT_REGION = "eu-west-3"  # Paris: data of EU users stays in the EU.
NODE_WEIGHTS = "fruits/weights"  # under the node folder (FRUITS_EMR_NODE_DIR): where bootstrap-emr.sh copies them
NODE_ONNX = "fruits/onnx"  # under the node folder: the ONNX model converted at upload, copied by bootstrap-emr.sh
BOOTSTRAP_WEIGHTS = ("bootstrap", "weights", WEIGHTS_FILE)  # under the staging prefix: the weights as uploaded
BOOTSTRAP_ONNX = ("bootstrap", "onnx")  # under the staging prefix: the ONNX model and its sidecar

# The FRUITS_EMR_* fields are declared once, in Settings (fruits_assets/deploy/settings.py): EmrSettings takes each
# emr_<field> there as its <field>, as it is (type, default, description, check). emr_node is the nodes' own flag.
EMR_FIELDS = tuple(f.removeprefix("emr_") for f in Settings.model_fields if f.startswith("emr_") and f != "emr_node")
ROOTS = ("output_uri", "image_root", "training_root")  # settings of every deployment: required s3:// URIs on EMR
ENV_VARS = {field: Settings.variable(f"emr_{field}") for field in EMR_FIELDS} | {
    root: Settings.variable(root) for root in ROOTS
}


class DeploymentError(ValueError):
    """The deployment's settings are missing or invalid, or AWS refuses them; the message names what to fix."""


def deployment(env: Mapping[str, str] | None = None) -> str:
    """The deployment named by FRUITS_DEPLOYMENT (default `local`)."""
    try:
        return Settings.from_env(env).deployment
    except SettingsError as error:
        raise DeploymentError(str(error)) from None


def _declared_in_settings(field: str) -> tuple:
    """(type, FieldInfo) of Settings' emr_<field>: the one declaration of that FRUITS_EMR_* variable."""
    info = Settings.model_fields[f"emr_{field}"]
    return info.annotation, info


_EmrFields = create_model(
    "_EmrFields", __base__=Config, __module__=__name__, **{field: _declared_in_settings(field) for field in EMR_FIELDS}
)


class EmrSettings(_EmrFields):
    """Where and how the emr deployment runs; built from FRUITS_* env vars by `from_env`. Its FRUITS_EMR_* fields
    (cluster_id, region, staging_bucket, staging_prefix, package_uri, python, node_dir, poll_seconds) come from
    Settings (see EMR_FIELDS); the roots are declared here, as EMR needs them. The step launcher's config holds
    these settings as one nested value (`EmrStepLauncher.emr`)."""

    output_uri: str = Field(description="s3:// base of the tables and models.")
    image_root: str = Field(description="s3:// prefix with one folder of images per class.")
    training_root: str | None = Field(default=None, description="s3:// prefix of labelled training images.")

    @field_validator(*ROOTS)
    @classmethod
    def _s3(cls, value: str | None, info) -> str | None:
        return None if value is None else s3_uri(value, info.field_name, ENV_VARS[info.field_name])

    @model_validator(mode="before")
    @classmethod
    def _region_default(cls, values):
        """No region (FRUITS_EMR_REGION unset): AWS_REGION, else eu-west-3."""
        if isinstance(values, dict) and not values.get("region"):
            values = {**values, "region": os.environ.get("AWS_REGION") or DEFAULT_REGION}
        return values

    @model_validator(mode="after")
    def _bucket_required(self) -> EmrSettings:
        if not self.staging_bucket:
            raise ValueError(f"staging_bucket is required ({ENV_VARS['staging_bucket']})")
        return self

    @classmethod
    def from_settings(cls, settings: Settings | None = None, require_cluster: bool = True) -> EmrSettings:
        """The emr fields of the project's settings (the roots set explicitly: their local defaults do not apply on
        EMR); every missing one is named in a single error."""
        settings = settings or Settings.from_env()
        values = {field: getattr(settings, f"emr_{field}") for field in EMR_FIELDS}
        values |= {root: getattr(settings, root) for root in ROOTS if root in settings.model_fields_set}
        required = ["staging_bucket", "output_uri", "image_root"] + (["cluster_id"] if require_cluster else [])
        missing = [ENV_VARS[field] for field in required if not values.get(field)]
        if missing:
            raise DeploymentError(f"{DEPLOYMENT_ENV}=emr needs {', '.join(missing)}: see docs/emr.md, 'The recipe'")
        if settings.engine == "tensorflow":
            raise DeploymentError(
                f"{Settings.variable('engine')}={settings.engine}: the EMR nodes run the ONNX model converted at "
                f"upload (no TensorFlow on them); unset {Settings.variable('engine')} (auto) or set onnx or openvino"
            )
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
    def onnx_cache(self) -> str:
        """The nodes' ONNX cache folder, where bootstrap-emr.sh copies the model converted at upload."""
        return f"{self.node_dir.rstrip('/')}/{NODE_ONNX}"

    @property
    def python_version(self) -> str | None:
        """The nodes' Python as `3.11`, when their interpreter's name says it (EMR's /usr/bin/python3.11)."""
        match = re.search(r"python(\d+\.\d+)$", self.python)
        return match.group(1) if match else None

    def node_env(self) -> dict[str, str]:
        """What every node exports (spark-env): its Python for the driver and the workers, the region, and that it is
        a node. The steps' FRUITS_* settings travel with each step (fruits_assets.deploy.emr_job), not here."""
        return {
            "PYSPARK_PYTHON": self.python,
            "PYSPARK_DRIVER_PYTHON": self.python,
            "AWS_DEFAULT_REGION": self.region,
            Settings.variable("emr_node"): "true",
        }
