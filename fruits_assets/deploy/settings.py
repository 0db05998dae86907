"""Settings: every FRUITS_* environment variable, read and validated here and nowhere else."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from spark_code.classify.accuracy import ACCURACY_FLOOR, LOWEST_ACCURACY_FLOOR
from spark_code.featurize import cnn
from spark_code.featurize.cnn import WEIGHTS_FILE
from spark_code.ingest.snapshot import DEFAULT_SETTLE_S
from spark_code.storage.uris import is_s3

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED = REPO_ROOT.parent / "shared"
DEFAULT_IMAGE_ROOT = SHARED / "fruits-360" / "Test"
DEFAULT_TRAINING_ROOT = SHARED / "fruits-360" / "Training"
DEFAULT_OUTPUT = REPO_ROOT / "data"
WORKSPACE_WEIGHTS = SHARED / "weights" / WEIGHTS_FILE
PREFIX = "FRUITS_"


class SettingsError(ValueError):
    """A FRUITS_* variable is invalid; the message names each variable, its value and the fix."""


def _workspace_weights() -> str | None:
    return str(WORKSPACE_WEIGHTS) if WORKSPACE_WEIGHTS.exists() else None


# ---- the emr deployment's checks: they travel with the emr_* fields into EmrSettings (deploy/emr/settings.py) ----

DEFAULT_STAGING_PREFIX = "fruits/staging"


@functools.cache
def known_regions() -> tuple[str, ...]:
    """Regions where EMR exists, from botocore's bundled endpoint data (no network)."""
    import boto3  # only when FRUITS_EMR_REGION is set

    return tuple(boto3.session.Session().get_available_regions("emr"))


def s3_uri(value: str, field: str, variable: str) -> str:
    """`value` without its trailing slash when it is an s3://bucket/prefix (or s3a://) URI; else a ValueError."""
    if not is_s3(value):
        raise ValueError(f"{field} {value!r} must be an s3://bucket/prefix (or s3a://) URI ({variable})")
    return value.rstrip("/")


def _region(value: str | None) -> str | None:
    if value is not None and value not in known_regions():
        raise ValueError(f"region {value!r} is not an AWS region with EMR (FRUITS_EMR_REGION), e.g. eu-west-3")
    return value


def _cluster_id(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"j-[0-9A-Z]{8,20}", value):
        raise ValueError(f"cluster_id {value!r} is not an EMR cluster id like j-2AXXXXXXGAPLF")
    return value


def _bucket(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", value):
        raise ValueError(f"staging_bucket {value!r} is not an S3 bucket name (FRUITS_EMR_STAGING_BUCKET)")
    return value


def _prefix(value: str) -> str:
    return value.strip("/") or DEFAULT_STAGING_PREFIX


def _package_uri(value: str | None) -> str | None:
    return None if value is None else s3_uri(value, "package_uri", "FRUITS_EMR_PACKAGE_URI")


class Settings(BaseModel):
    """The project's settings, one field per FRUITS_<FIELD> variable (unset or blank: the default)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    deployment: Literal["local", "emr"] = Field(default="local", description="Where Spark runs: local or emr.")
    image_root: str = Field(default=str(DEFAULT_IMAGE_ROOT), description="Folder (or s3:// prefix) of class folders.")
    training_root: str = Field(default=str(DEFAULT_TRAINING_ROOT), description="Labelled training photos.")
    output_uri: str = Field(default=str(DEFAULT_OUTPUT), description="Where tables and models are written.")
    weights: str | None = Field(
        default_factory=_workspace_weights,
        description=f"Keras weights file; default ../shared/weights/{WEIGHTS_FILE}, else Keras downloads them.",
    )
    batch_size: int = Field(default=cnn.BATCH_SIZE, gt=0, le=cnn.MAX_BATCH_SIZE, description="Images per model call.")
    image_size: int = Field(
        default=cnn.IMAGE_SIZE, ge=cnn.MIN_IMAGE_SIZE, le=cnn.MAX_IMAGE_SIZE, description="Square model input, pixels."
    )
    engine: Literal[cnn.ENGINES] = Field(
        default=cnn.DEFAULT_ENGINE,
        description="CNN runtime: auto (bf16 where the CPU has it), onnx, openvino or tensorflow.",
    )
    onnx_cache: str | None = Field(default=None, description="Folder of converted ONNX models (default ~/.cache).")
    events_queue: str | None = Field(default=None, description="SQS queue of the s3:// root's S3 event notifications.")
    settle_seconds: float = Field(
        default=DEFAULT_SETTLE_S,
        ge=0.0,
        le=86_400,
        description="The sensor takes a new file once unmodified this long, s.",
    )
    accuracy_floor: float = Field(
        default=ACCURACY_FLOOR, ge=LOWEST_ACCURACY_FLOOR, le=1.0, description="Least test accuracy the check accepts."
    )
    spark_master: str = Field(default="local[*]", description="Spark master of the local deployment.")
    driver_memory: str = Field(
        default="1536m", pattern=r"^\d+[kmgt]?$", description="Spark driver memory (JVM heap), e.g. 1536m or 4g."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="WARNING", description="`fruits` CLI.")
    serve_max_upload_mb: float = Field(default=20.0, gt=0, le=1024, description="`fruits serve`: largest upload, MB.")
    serve_queue: int = Field(default=128, gt=0, le=10_000, description="`fruits serve`: photos admitted at once.")
    serve_batch_window_ms: float = Field(default=5.0, ge=0, le=1000, description="`fruits serve`: batch window, ms.")
    serve_poll_seconds: float = Field(default=5.0, gt=0, le=3600, description="`fruits serve`: new-model check, s.")
    # The emr deployment's FRUITS_EMR_* variables, declared here only: EmrSettings (deploy/emr/settings.py) takes
    # these fields as they are (type, default, description, check), less the emr_ prefix.
    emr_cluster_id: Annotated[str | None, AfterValidator(_cluster_id)] = Field(
        default=None, description="EMR cluster (job flow) id, j-…; unset when creating one."
    )
    emr_region: Annotated[str | None, AfterValidator(_region)] = Field(
        default=None, description="AWS region of the cluster and buckets; unset: AWS_REGION, else eu-west-3."
    )
    emr_staging_bucket: Annotated[str | None, AfterValidator(_bucket)] = Field(
        default=None, description="Bucket for the step launcher's package, step refs, events and logs."
    )
    emr_staging_prefix: Annotated[str, AfterValidator(_prefix)] = Field(
        default=DEFAULT_STAGING_PREFIX, description="Key prefix inside the staging bucket."
    )
    emr_package_uri: Annotated[str | None, AfterValidator(_package_uri)] = Field(
        default=None, description="Prebuilt code zip on S3; unset: each step zips the local code."
    )
    emr_python: str = Field(
        default="/usr/bin/python3.11", description="Python of the driver and workers on the EMR nodes (EMR 7.x: 3.11)."
    )
    emr_node_dir: str = Field(
        default="/mnt", description="EMR nodes' disk: <dir>/fruits/weights, <dir>/var/lib/info/job-flow.json."
    )
    emr_poll_seconds: float = Field(
        default=15.0, ge=0.1, le=300, description="Seconds between two polls of a running EMR step."
    )
    emr_node: bool = Field(default=False, description="Set by the cluster's spark-env on EMR nodes, never by hand.")

    @field_validator("deployment", "engine", mode="before")
    @classmethod
    def _lower(cls, value):
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value):
        return value.strip().upper() if isinstance(value, str) else value

    @classmethod
    def variable(cls, field: str) -> str:
        """The environment variable of `field`."""
        return PREFIX + field.upper()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from FRUITS_* variables of `env` (default: the process environment); blank means unset.
        Every invalid variable is named in one SettingsError."""
        env = os.environ if env is None else env
        values = {
            field: env[cls.variable(field)] for field in cls.model_fields if env.get(cls.variable(field), "").strip()
        }
        try:
            return cls(**values)
        except ValidationError as error:
            raise SettingsError(_explain(error, values)) from None

    def to_env(self) -> dict[str, str]:
        """The FRUITS_* variables of the fields set explicitly: `from_env` of them gives these settings back."""
        return {self.variable(field): str(getattr(self, field)) for field in sorted(self.model_fields_set)}


def _explain(error: ValidationError, values: Mapping[str, str]) -> str:
    """One line per invalid variable: its name, its value, what is wrong and what to do."""
    lines = []
    for problem in error.errors():
        field = str(problem["loc"][0]) if problem["loc"] else "?"
        name = Settings.variable(field)
        described = Settings.model_fields[field].description if field in Settings.model_fields else ""
        lines.append(
            f"{name}={values.get(field)!r}: {problem['msg']} ({described} Fix or unset {name}; see "
            "docs/configuration.md)"
        )
    return "invalid settings:\n  " + "\n  ".join(lines)
