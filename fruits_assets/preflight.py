"""Checks before any Spark work on EMR: the cluster is live, every bucket exists and may be listed."""

from __future__ import annotations

import boto3
from botocore.exceptions import ClientError

from fruits_assets.emr_settings import DeploymentError, EmrSettings, split_s3_uri

LIVE_CLUSTER_STATES = ("STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING")


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
