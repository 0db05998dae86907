"""Cluster recipe (boto3): upload the bootstrap, weights and code, create the EMR cluster, wait for it, terminate it."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.exceptions import WaiterError

from fruits_assets.deploy.emr import iam
from fruits_assets.deploy.emr.launcher import PACKAGE_ROOT, PACKAGES
from fruits_assets.deploy.emr.settings import EmrSettings
from fruits_assets.deploy.settings import Settings
from fruits_assets.deploy.spark_conf import EMR_SPARK_CONF
from spark_code.featurize import cnn, onnx_export
from spark_code.featurize.cnn import WEIGHTS_FILE, CnnEngine, CnnSpec
from spark_code.storage.uris import split

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
RELEASE = "emr-7.13.0"  # newest EMR 7.x (2026-04-21): Spark 3.5, Python 3.9 + 3.11
BOOTSTRAP_FILES = ("bootstrap-emr.sh", "requirements-emr.txt", "requirements-emr-nodeps.txt")
CONSTRAINTS = "constraints-emr.txt"  # generated from the launching venv at upload: the nodes get its exact versions
NOT_FOR_NODES = {"pyspark", "py4j", "fruits-features"}  # EMR's own Spark; the project travels as the step's zip

# Sapphire Rapids (AMX-BF16, AVX512_BF16): the CNN runs in bf16 on OpenVINO; 4 vCPU and 16 GiB, as m5.xlarge, so the
# executor settings stay as they are.
DEFAULT_INSTANCE_TYPE = "m7i.xlarge"

# Cluster-wide spark-defaults: the job's settings plus YARN-friendly defaults for a small 4 vCPU / 16 GiB cluster.
SPARK_DEFAULTS = {
    **EMR_SPARK_CONF,
    "spark.dynamicAllocation.enabled": "true",
}


class ClusterFailedError(RuntimeError):
    """The cluster ended before it was ready (e.g. a bootstrap action failed); the message says why."""


@dataclass(frozen=True)
class ClusterSpec:
    """Shape of the cluster: 1 primary + `core_nodes` core nodes of `instance_type`, optional spot core nodes."""

    name: str = "fruits-features"
    release: str = RELEASE
    instance_type: str = DEFAULT_INSTANCE_TYPE
    core_nodes: int = 2
    spot: bool = False
    idle_timeout_s: int = 3600
    service_role: str = iam.SERVICE_ROLE  # EMR's current one (AmazonEMRServicePolicy_v2)
    instance_profile: str = iam.NODES_ROLE  # scoped to the recipe's prefixes (`policy --nodes`)
    subnet_id: str | None = None

    def __post_init__(self):
        if not self.release.startswith("emr-7."):
            raise ValueError(f"release {self.release!r}: use an EMR 7.x release (Spark 3.5, Python 3.11)")
        if not 1 <= self.core_nodes <= 50:
            raise ValueError(f"core_nodes {self.core_nodes} must be between 1 and 50")
        if not 60 <= self.idle_timeout_s <= 7 * 24 * 3600:
            raise ValueError(f"idle_timeout_s {self.idle_timeout_s} must be between 60 s and 7 days")


def bootstrap_uri(settings: EmrSettings) -> str:
    """Where the bootstrap script, its requirements and the weights live on S3."""
    return settings.staging_uri("bootstrap")


def log_uri(settings: EmrSettings) -> str:
    """Where EMR writes cluster, step and bootstrap logs."""
    return settings.staging_uri("logs") + "/"


def configurations(settings: EmrSettings) -> list[dict]:
    """spark-env (python3.11 + the FRUITS_* settings the remote step rebuilds its Definitions from), spark-defaults,
    and EMR's own Delta Lake (`delta-defaults`: its jars on Spark's classpath; the session settings are in
    spark-defaults)."""
    return [
        {
            "Classification": "spark-env",
            "Configurations": [{"Classification": "export", "Properties": settings.node_env()}],
            "Properties": {},
        },
        {"Classification": "spark-defaults", "Properties": dict(SPARK_DEFAULTS)},
        {"Classification": "delta-defaults", "Properties": {"delta.enabled": "true"}},
    ]


def _instance_groups(spec: ClusterSpec) -> list[dict]:
    core = {"Name": "core", "InstanceRole": "CORE", "InstanceType": spec.instance_type}
    core |= {"InstanceCount": spec.core_nodes, "Market": "SPOT" if spec.spot else "ON_DEMAND"}
    primary = {"Name": "primary", "InstanceRole": "MASTER", "InstanceType": spec.instance_type}
    return [primary | {"InstanceCount": 1, "Market": "ON_DEMAND"}, core]


def job_flow_request(settings: EmrSettings, spec: ClusterSpec | None = None) -> dict:
    """The `run_job_flow` request for this project's cluster."""
    spec = spec or ClusterSpec()
    instances = {"InstanceGroups": _instance_groups(spec), "KeepJobFlowAliveWhenNoSteps": True}
    if spec.subnet_id:
        instances["Ec2SubnetId"] = spec.subnet_id
    return {
        "Name": spec.name,
        "ReleaseLabel": spec.release,
        "LogUri": log_uri(settings),
        "Applications": [{"Name": "Hadoop"}, {"Name": "Spark"}],
        "Instances": instances,
        "BootstrapActions": [
            {
                "Name": "fruits-bootstrap",
                "ScriptBootstrapAction": {
                    "Path": f"{bootstrap_uri(settings)}/bootstrap-emr.sh",
                    "Args": [bootstrap_uri(settings), WEIGHTS_FILE, settings.python, settings.node_dir],
                },
            }
        ],
        "Configurations": configurations(settings),
        "AutoTerminationPolicy": {"IdleTimeout": spec.idle_timeout_s},
        "ServiceRole": spec.service_role,
        "JobFlowRole": spec.instance_profile,
        "VisibleToAllUsers": True,
        "Tags": [{"Key": "project", "Value": "fruits-features"}, iam.MANAGED_POLICY_TAG],
    }


def create_cluster(emr_client, request: dict) -> str:
    """Start the cluster; return its id."""
    cluster_id = emr_client.run_job_flow(**request)["JobFlowId"]
    logger.info("cluster %s requested (%s)", cluster_id, request["ReleaseLabel"])
    return cluster_id


def wait_until_ready(emr_client, cluster_id: str, delay_s: float = 30, timeout_s: float = 1800) -> None:
    """Block until the cluster is RUNNING or WAITING (bootstrap done); fail if it terminates instead."""
    delay = max(1, round(delay_s))
    config = {"Delay": delay, "MaxAttempts": max(1, int(timeout_s // delay))}
    try:
        emr_client.get_waiter("cluster_running").wait(ClusterId=cluster_id, WaiterConfig=config)
    except WaiterError as error:
        status = emr_client.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]
        reason = (status.get("StateChangeReason") or {}).get("Message") or "no reason given"
        raise ClusterFailedError(
            f"cluster {cluster_id} is {status['State']}: {reason} (bootstrap logs: the cluster's LogUri, "
            "node/<instance>/bootstrap-actions/)"
        ) from error


def terminate(emr_client, cluster_id: str) -> None:
    """Terminate the cluster (billing stops once it is TERMINATED)."""
    emr_client.terminate_job_flows(JobFlowIds=[cluster_id])
    logger.info("cluster %s terminating", cluster_id)


def constraints() -> str:
    """`name==version` of every package of this (the launching) venv but pyspark and the project itself."""
    pins = {
        f"{dist.metadata['Name']}=={dist.version}"
        for dist in importlib.metadata.distributions()
        if dist.metadata["Name"] and dist.metadata["Name"].lower().replace("_", "-") not in NOT_FOR_NODES
    }
    return "\n".join(sorted(pins, key=str.lower)) + "\n"


def converted_model(weights: Path, image_size: int) -> list[Path]:
    """The ONNX model of these weights and input size and its sidecar, converted here once (TensorFlow runs on the
    launching side only: the nodes install ONNX Runtime) and kept in this machine's ONNX cache."""
    spec = CnnSpec(input_size=image_size)
    cnn.model_payload(CnnEngine("onnx", spec), str(weights))  # converts, or finds the cached conversion intact
    model, sidecar = onnx_export.cache_paths(
        onnx_export.default_cache_dir(), image_size, onnx_export.file_digest(str(weights))
    )
    return [model, sidecar]


def upload_bootstrap(s3_client, settings: EmrSettings, weights: Path, image_size: int = 224) -> list[str]:
    """Upload the bootstrap script, its requirements, the launching venv's constraints, the Keras weights and the
    ONNX model converted from them (with its sidecar: digest, input size); return their URIs."""
    bucket, prefix = split(bootstrap_uri(settings))
    files = [(HERE / name, f"{prefix}/{name}") for name in BOOTSTRAP_FILES]
    files.append((weights, f"{prefix}/weights/{WEIGHTS_FILE}"))
    files += [(path, f"{prefix}/onnx/{path.name}") for path in converted_model(weights, image_size)]
    for path, key in files:
        s3_client.upload_file(str(path), bucket, key)
    s3_client.put_object(Bucket=bucket, Key=f"{prefix}/{CONSTRAINTS}", Body=constraints().encode())
    return [f"s3://{bucket}/{key}" for _, key in files] + [f"s3://{bucket}/{prefix}/{CONSTRAINTS}"]


def build_package(zip_path: Path) -> Path:
    """Zip fruits_assets + spark_code (Python files only) for spark-submit --py-files."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for package in PACKAGES:
            for path in sorted((PACKAGE_ROOT / package).rglob("*.py")):
                archive.write(path, path.relative_to(PACKAGE_ROOT).as_posix())
    return zip_path


def _code_version() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PACKAGE_ROOT, capture_output=True, text=True)
    return result.stdout.strip() or "dev"


def upload_package(s3_client, settings: EmrSettings, version: str | None = None) -> str:
    """Build and upload the code zip; return its URI (use it as FRUITS_EMR_PACKAGE_URI)."""
    uri = settings.staging_uri("packages", f"fruits-{version or _code_version()}.zip")
    bucket, key = split(uri)
    with tempfile.TemporaryDirectory() as folder:
        s3_client.upload_file(str(build_package(Path(folder) / "fruits.zip")), bucket, key)
    return uri


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    upload = sub.add_parser(
        "upload", help="upload bootstrap, requirements, weights and the ONNX model (converted here)"
    )
    upload.add_argument("--weights", type=Path, required=True, help="local Keras weights file")
    sub.add_parser("package", help="upload the code zip; prints its URI (FRUITS_EMR_PACKAGE_URI)")
    for name in ("create", "request"):
        cmd = sub.add_parser(name, help="start the cluster" if name == "create" else "print the run_job_flow request")
        cmd.add_argument("--core-nodes", type=int, default=2)
        cmd.add_argument("--instance-type", default=DEFAULT_INSTANCE_TYPE, help="default: bf16 CPUs (README)")
        cmd.add_argument("--spot", action="store_true", help="core nodes on spot")
        cmd.add_argument("--idle-timeout", type=int, default=3600, help="seconds idle before auto-termination")
        cmd.add_argument("--subnet-id")
        cmd.add_argument("--wait", action="store_true", help="wait until the cluster is ready")
    policy = sub.add_parser("policy", help="print the IAM policy for these settings (whoever runs Dagster)")
    policy.add_argument("--account-id", required=True)
    policy.add_argument("--nodes", action="store_true", help="the nodes' instance-profile policy instead")
    sub.add_parser("roles", help="create EMR_DefaultRole_V2 and the nodes' scoped instance profile (once per account)")
    sub.add_parser("terminate", help="terminate FRUITS_EMR_CLUSTER_ID")
    return parser


def _spec(args) -> ClusterSpec:
    return ClusterSpec(
        core_nodes=args.core_nodes,
        instance_type=args.instance_type,
        spot=args.spot,
        idle_timeout_s=args.idle_timeout,
        subnet_id=args.subnet_id,
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: upload | package | request | create | policy | roles | terminate (settings: FRUITS_* env vars)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = _parser().parse_args(argv)
    settings = EmrSettings.from_env(require_cluster=args.command == "terminate")
    session = boto3.session.Session(region_name=settings.region)
    if args.command == "upload":
        size = Settings.from_env().image_size
        print("\n".join(upload_bootstrap(session.client("s3"), settings, args.weights, size)))
    elif args.command == "package":
        print(upload_package(session.client("s3"), settings))
    elif args.command == "request":
        print(json.dumps(job_flow_request(settings, _spec(args)), indent=2))
    elif args.command == "create":
        emr = session.client("emr")
        cluster_id = create_cluster(emr, job_flow_request(settings, _spec(args)))
        if args.wait:
            try:
                wait_until_ready(emr, cluster_id, delay_s=settings.poll_seconds)
            except ClusterFailedError as error:
                logger.error("%s", error)
                return 1
        print(cluster_id)
    elif args.command == "policy":
        render = iam.nodes_policy if args.nodes else iam.runner_policy
        print(json.dumps(render(settings, args.account_id, Settings.from_env().events_queue), indent=2))
    elif args.command == "roles":
        account = session.client("sts").get_caller_identity()["Account"]
        print("\n".join(iam.create_roles(session.client("iam"), settings, account, Settings.from_env().events_queue)))
    else:
        terminate(session.client("emr"), settings.cluster_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
