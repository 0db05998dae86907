"""IAM as the emulated AWS enforces it (when the moto server is told to): EMR's checks of a cluster's roles, the
nodes' instance-profile credentials, EMR calls checked against their cluster's ARN, and S3A's requests."""

from __future__ import annotations

import logging
import re

from moto.emr import responses
from moto.emr.exceptions import ValidationException
from moto.iam import access_control
from moto.iam.exceptions import NotFoundException
from moto.iam.models import iam_backends
from moto.sts.models import sts_backends

logger = logging.getLogger(__name__)

JAVA_SDK = "aws-sdk-java/"  # S3A's user agent (AWS SDK for Java v1)


def check_roles(cluster) -> None:
    """RunJobFlow's check of the roles: a service role or instance profile that does not exist is refused."""
    backend = iam_backends[cluster.emr_backend.account_id]["aws"]
    for kind, name, exists in (
        ("ServiceRole", cluster.service_role, backend.get_role),
        ("InstanceProfile", cluster.role, lambda n: backend.get_instance_profile(n).roles[0]),
    ):
        try:
            exists(name)
        except (NotFoundException, IndexError):
            cluster.emr_backend.clusters.pop(cluster.id, None)
            raise ValidationException(f"Invalid {kind}: {name} (create it: bootstrap/emr_cluster.py roles)") from None


def instance_credentials(cluster) -> dict[str, str]:
    """What the EC2 metadata service gives every process of a node: temporary credentials of the role of the
    cluster's instance profile (so IAM, when enforced, applies that role's policies to the node's calls)."""
    role = iam_backends[cluster.emr_backend.account_id]["aws"].get_instance_profile(cluster.role).roles[0]
    assumed = sts_backends[cluster.emr_backend.account_id]["aws"].assume_role(
        region_name=cluster.emr_backend.region_name,
        role_session_name=cluster.id,
        role_arn=role.arn,
        policy=None,
        duration=12 * 3600,
        external_id=None,
    )
    keys = (assumed.access_key_id, assumed.secret_access_key, assumed.session_token)
    return dict(zip(("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"), keys, strict=True))


def _cluster_resource(self) -> str:
    """The resource IAM checks an EMR call against: the cluster's ARN for a call on a cluster, else `*` (moto
    checks every EMR call against `*` otherwise, so a policy scoped to clusters would allow nothing)."""
    cluster = self._get_param("ClusterId") or self._get_param("JobFlowId") or (self._get_param("JobFlowIds") or [0])[0]
    scope = re.search(r"Credential=[^/]+/[^/]+/([^/]+)/", self.headers.get("Authorization", ""))  # the signed region
    region = scope.group(1) if scope else self.region
    return f"arn:aws:elasticmapreduce:{region}:{self.current_account}:cluster/{cluster}" if cluster else "*"


def _s3_signature(original):
    def check_signature(self) -> None:
        """moto recomputes each SigV4 signature; its canonical request differs from the AWS SDK for Java v1's
        (S3A, Spark's S3), so those requests' signatures are not verified. Who signed them (the access key) and what
        their policies allow still is."""
        if JAVA_SDK in self._headers.get("User-Agent", ""):
            return
        original(self)

    return check_signature


def install() -> None:
    """Patch moto's EMR responses and S3's signature check (in this process only)."""
    responses.ElasticMapReduceResponse._determine_resource = _cluster_resource
    if not getattr(access_control.S3IAMRequest.check_signature, "fruits_patched", False):
        access_control.S3IAMRequest.check_signature = _s3_signature(access_control.S3IAMRequest.check_signature)
        access_control.S3IAMRequest.check_signature.fruits_patched = True
