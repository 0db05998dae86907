"""The IAM policies of the emr deployment: whoever runs Dagster, and the cluster's nodes (their instance profile)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from string import Template

from fruits_assets.deploy.emr.settings import EmrSettings
from spark_code.storage.uris import split

logger = logging.getLogger(__name__)

BOOTSTRAP = Path(__file__).resolve().parents[3] / "bootstrap"
RUNNER_POLICY = BOOTSTRAP / "iam-policy.json"  # whoever runs Dagster: the main command, dagster dev, the recipe
NODES_POLICY = BOOTSTRAP / "iam-policy-nodes.json"  # the nodes' instance profile: what the steps and bootstrap touch
SERVICE_ROLE = "EMR_DefaultRole_V2"  # EMR's current service role, with AWS' AmazonEMRServicePolicy_v2
SERVICE_POLICY_ARN = "arn:aws:iam::aws:policy/service-role/AmazonEMRServicePolicy_v2"
MANAGED_POLICY_TAG = {"Key": "for-use-with-amazon-emr-managed-policies", "Value": "true"}  # what the v2 policy needs
NODES_ROLE = "fruits-emr-nodes"  # role and instance profile of the nodes, with NODES_POLICY only


def _objects(uri: str) -> str:
    bucket, prefix = split(uri)
    prefix = prefix.strip("/")
    return f"{bucket}/{prefix}/*" if prefix else f"{bucket}/*"


def values(settings: EmrSettings, account_id: str, events_queue: str | None = None) -> dict[str, str]:
    """What fills the policies' ${…} placeholders: every bucket and prefix the recipe uses (images, training,
    output, staging: bootstrap, packages, steps, events, logs), the events queue, the roles, region and account."""
    training = settings.training_root or settings.image_root  # none: nothing more to read
    return {
        "REGION": settings.region,
        "ACCOUNT_ID": account_id,
        "IMAGES_BUCKET": split(settings.image_root)[0],
        "IMAGES_OBJECTS": _objects(settings.image_root),
        "TRAINING_BUCKET": split(training)[0],
        "TRAINING_OBJECTS": _objects(training),
        "OUTPUT_BUCKET": split(settings.output_uri)[0],
        "OUTPUT_OBJECTS": _objects(settings.output_uri),
        "STAGING_BUCKET": settings.staging_bucket,
        "STAGING_OBJECTS": _objects(settings.staging_uri()),
        "EVENTS_QUEUE": (events_queue or "").rstrip("/").rsplit("/", 1)[-1],
        "SERVICE_ROLE": SERVICE_ROLE,
        "NODES_ROLE": NODES_ROLE,
    }


def _with_prefix_key(arn: str) -> list[str]:
    """An S3 prefix's objects and the prefix itself as a key: S3 file systems (pyarrow, S3A) ask HeadObject of
    `prefix` before they list it as a folder, and S3 refuses that (403, not 404) unless the key is allowed."""
    if arn.startswith("arn:aws:s3:::") and arn.endswith("/*") and arn.count("/") > 1:
        return [arn, arn.removesuffix("/*")]
    return [arn]


def render(template: Path, settings: EmrSettings, account_id: str, events_queue: str | None = None) -> dict:
    """A policy template filled for these settings: each statement's resources once each, the events queue's
    statement left out when the sensor lists the root instead."""
    policy = json.loads(Template(template.read_text()).substitute(values(settings, account_id, events_queue)))
    for statement in policy["Statement"]:
        statement["Resource"] = list(dict.fromkeys(r for arn in statement["Resource"] for r in _with_prefix_key(arn)))
    if not events_queue:
        policy["Statement"] = [s for s in policy["Statement"] if not s["Sid"].startswith("DrainImageEvents")]
    return policy


def runner_policy(settings: EmrSettings, account_id: str, events_queue: str | None = None) -> dict:
    """The least-privilege policy of whoever runs Dagster (`emr_cluster.py policy`)."""
    return render(RUNNER_POLICY, settings, account_id, events_queue)


def nodes_policy(settings: EmrSettings, account_id: str, events_queue: str | None = None) -> dict:
    """The nodes' instance-profile policy (`emr_cluster.py policy --nodes`), in place of the deprecated
    AmazonElasticMapReduceforEC2Role that `aws emr create-default-roles` attaches."""
    return render(NODES_POLICY, settings, account_id, events_queue)


def trust_policy(service: str) -> dict:
    """The trust policy of a role that `service` (elasticmapreduce.amazonaws.com, ec2.amazonaws.com) assumes."""
    statement = {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}
    return {"Version": "2012-10-17", "Statement": [statement]}


def create_roles(iam_client, settings: EmrSettings, account_id: str, events_queue: str | None = None) -> list[str]:
    """EMR's service role (EMR_DefaultRole_V2 with AmazonEMRServicePolicy_v2) and the nodes' role and instance
    profile (fruits-emr-nodes, `nodes_policy` inline), each created unless it exists, the nodes' policy rewritten;
    return their ARNs. Replaces `aws emr create-default-roles` (deprecated v1 policies on both)."""
    arns = []
    for name, service in ((SERVICE_ROLE, "elasticmapreduce.amazonaws.com"), (NODES_ROLE, "ec2.amazonaws.com")):
        try:
            arns.append(iam_client.get_role(RoleName=name)["Role"]["Arn"])
        except iam_client.exceptions.NoSuchEntityException:
            trust = json.dumps(trust_policy(service))
            arns.append(iam_client.create_role(RoleName=name, AssumeRolePolicyDocument=trust)["Role"]["Arn"])
            logger.info("created role %s", name)
    iam_client.attach_role_policy(RoleName=SERVICE_ROLE, PolicyArn=SERVICE_POLICY_ARN)
    policy = json.dumps(nodes_policy(settings, account_id, events_queue))
    iam_client.put_role_policy(RoleName=NODES_ROLE, PolicyName="fruits-nodes", PolicyDocument=policy)
    try:
        iam_client.get_instance_profile(InstanceProfileName=NODES_ROLE)
    except iam_client.exceptions.NoSuchEntityException:
        iam_client.create_instance_profile(InstanceProfileName=NODES_ROLE)
        iam_client.add_role_to_instance_profile(InstanceProfileName=NODES_ROLE, RoleName=NODES_ROLE)
        logger.info("created instance profile %s", NODES_ROLE)
    return [*arns, iam_client.get_instance_profile(InstanceProfileName=NODES_ROLE)["InstanceProfile"]["Arn"]]
