"""Checks before any Spark work on EMR: the cluster is live, every bucket exists and may be listed."""

from __future__ import annotations

import importlib.metadata
import json
import sys

import boto3
from botocore.exceptions import ClientError, ConnectTimeoutError, EndpointConnectionError, NoCredentialsError

from fruits_assets.deploy.emr.settings import DeploymentError, EmrSettings
from spark_code.storage.uris import split

NODE_RECORD = "node.json"  # what bootstrap-emr.sh records of a node: its Python and its installed packages
LIVE_CLUSTER_STATES = ("STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING")


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def check_bucket(s3_client, uri: str, what: str) -> int:
    """Fail with a clear message if the bucket of `uri` is missing or this identity may not list its prefix; return
    how many objects the first listed page holds (0 or 1)."""
    bucket, prefix = split(uri)
    try:
        return s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1).get("KeyCount", 0)
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


NOT_COMPARED = frozenset({"pip", "setuptools", "wheel"})  # a venv's own tools, never in a pickled step


def node_record(s3_client, settings: EmrSettings) -> dict:
    """What the cluster's bootstrap recorded of its nodes (`python`, `packages`); {} when it recorded nothing."""
    bucket, key = split(settings.staging_uri("bootstrap", "clusters", str(settings.cluster_id), NODE_RECORD))
    try:
        return json.loads(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())
    except (ClientError, ValueError):
        return {}


def node_python(s3_client, settings: EmrSettings) -> str | None:
    """The minor version (`3.11`) of the cluster nodes' Python: as its bootstrap recorded it, else as its name says."""
    version = node_record(s3_client, settings).get("python")
    return ".".join(version.split(".")[:2]) if version else settings.python_version


def check_packages(node: dict[str, str]) -> None:
    """Fail, naming each package, when a package both here and on the nodes has another version there: each step is
    pickled here and unpickled there, with the versions of both sides."""
    here = {dist.metadata["Name"].lower(): dist.version for dist in importlib.metadata.distributions()}
    differing = sorted(name for name in (set(node) & set(here)) - NOT_COMPARED if node[name] != here[name])
    if differing:
        listed = "; ".join(f"{name} {here[name]} here, {node[name]} on the nodes" for name in differing)
        raise DeploymentError(
            f"the cluster's nodes run other package versions than this venv ({listed}): each step is pickled here "
            "and run there; run `bootstrap/emr_cluster.py upload` (the nodes install this venv's versions), then "
            "start a new cluster (`create`) and set FRUITS_EMR_CLUSTER_ID"
        )


def check_python(node: str | None, python: str) -> None:
    """Fail unless this Python and the nodes' have the same minor version (each step is pickled here, run there)."""
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if node is not None and node != here:
        raise DeploymentError(
            f"this Python is {here} but the cluster's nodes run Python {node} ({python}): the step launcher pickles "
            f"each step here and runs it there, so both must be {node}; install the project with PYTHON=python{node} "
            "./install.sh and launch from that .venv"
        )


CREDENTIAL_ERRORS = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "UnrecognizedClientException")


def preflight(settings: EmrSettings, session: boto3.session.Session | None = None, cluster: bool = True) -> None:
    """Check the cluster (unless `cluster` is False), every bucket the run touches, the photos and the Python, before
    any Spark work starts; an unreachable endpoint or refused credentials fail here too, named."""
    session = session or boto3.session.Session(region_name=settings.region)
    try:
        _preflight(settings, session, cluster)
    except (EndpointConnectionError, ConnectTimeoutError) as error:
        raise DeploymentError(
            f"cannot reach AWS ({error}): check the network, FRUITS_EMR_REGION={settings.region!r} and "
            "AWS_ENDPOINT_URL (unset it to use AWS itself)"
        ) from error
    except NoCredentialsError as error:
        raise DeploymentError(
            "no AWS credentials found: log in (aws sso login / aws configure) or run where an instance role applies"
        ) from error
    except ClientError as error:
        if _error_code(error) not in CREDENTIAL_ERRORS:
            raise
        raise DeploymentError(
            f"AWS refused these credentials ({_error_code(error)}): check AWS_PROFILE or AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY, and that they belong to the account of the buckets"
        ) from error


def _preflight(settings: EmrSettings, session: boto3.session.Session, cluster: bool) -> None:
    s3 = session.client("s3", region_name=settings.region)
    check_bucket(s3, settings.staging_uri(), "staging")
    check_bucket(s3, settings.output_uri, "output")
    photos = check_bucket(s3, settings.image_root + "/", "image")
    if settings.cluster_id and cluster:
        check_cluster(session.client("emr", region_name=settings.region), settings.cluster_id, settings.region)
        check_python(node_python(s3, settings), settings.python)
        check_packages(node_record(s3, settings).get("packages", {}))
    if not photos:
        raise DeploymentError(
            f"image root {settings.image_root!r} holds no photos: upload them (aws s3 sync <folder> "
            f"{settings.image_root}/) or fix FRUITS_IMAGE_ROOT"
        )
