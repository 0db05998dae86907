"""The emr deployment against real S3/EMR/IAM APIs (moto on loopback): the cluster recipe, checks before any
Spark work (the step launcher: test_emr_launcher.py)."""

import hashlib
import importlib.metadata
import json
import re
import sys
import zipfile
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from dagster import (
    DagsterInstance,
    DagsterResourceFunctionError,
    asset,
    materialize,
)

from fruits_assets.deploy.emr.launcher import STEP_LAUNCHER_KEY, EmrStepLauncher
from fruits_assets.deploy.emr.preflight import check_bucket, check_cluster, preflight
from fruits_assets.deploy.emr.settings import DeploymentError
from spark_code.featurize import onnx_export
from spark_code.featurize.cnn import WEIGHTS_FILE
from tests.deploy.conftest import BUCKET, REGION, REPO, emr_settings, recipe
from tests.moto_server import set_auth

pytestmark = pytest.mark.slow  # a browser, a cluster, moto or whole materializations


# ---- the cluster recipe ----------------------------------------------------------------------------------------


def test_cluster_recipe_is_accepted_and_the_cluster_found(aws):
    settings = emr_settings()
    request = recipe.job_flow_request(settings, recipe.ClusterSpec(core_nodes=3, spot=True))
    emr = aws.client("emr")
    cluster_id = recipe.create_cluster(emr, request)

    cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    assert re.fullmatch(r"j-[0-9A-Z]+", cluster_id)
    assert (cluster["Name"], cluster["ReleaseLabel"]) == ("fruits-features", "emr-7.13.0")
    assert cluster["Status"]["State"] in ("STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING")
    assert cluster["LogUri"] == f"s3://{BUCKET}/fruits/staging/logs/"
    assert {app["Name"] for app in cluster["Applications"]} == {"Hadoop", "Spark"}
    env = next(c for c in cluster["Configurations"] if c["Classification"] == "spark-env")["Configurations"][0]
    assert env["Properties"]["PYSPARK_PYTHON"] == "/usr/bin/python3.11"
    assert env["Properties"]["FRUITS_EMR_NODE"] == "true"
    assert not [name for name in env["Properties"] if name.startswith("FRUITS_") and name != "FRUITS_EMR_NODE"]
    action = request["BootstrapActions"][0]["ScriptBootstrapAction"]
    assert action["Args"][2:] == ["/usr/bin/python3.11", "/mnt"]  # the nodes' Python and folder, as set
    defaults = next(c for c in cluster["Configurations"] if c["Classification"] == "spark-defaults")["Properties"]
    assert defaults["spark.python.worker.reuse"] == "true"
    assert defaults["spark.sql.execution.arrow.maxRecordsPerBatch"] == "256"
    assert defaults["spark.executor.memoryOverhead"] == "2g"
    (action,) = emr.list_bootstrap_actions(ClusterId=cluster_id)["BootstrapActions"]
    assert action["ScriptPath"] == f"s3://{BUCKET}/fruits/staging/bootstrap/bootstrap-emr.sh"
    groups = {g["InstanceGroupType"]: g for g in emr.list_instance_groups(ClusterId=cluster_id)["InstanceGroups"]}
    assert groups["MASTER"]["RequestedInstanceCount"] == 1 and groups["MASTER"]["Market"] == "ON_DEMAND"
    assert groups["CORE"]["RequestedInstanceCount"] == 3 and groups["CORE"]["Market"] == "SPOT"
    assert groups["CORE"]["InstanceType"] == "m7i.xlarge"  # bf16 CPUs: the CNN's default engine runs in bf16
    assert request["AutoTerminationPolicy"] == {"IdleTimeout": 3600}

    aws.client("s3").put_object(Bucket=BUCKET, Key="fruits/images/Apple/1.jpg", Body=b"jpeg")
    preflight(settings.model_copy(update={"cluster_id": cluster_id}), aws)
    recipe.terminate(emr, cluster_id)
    with pytest.raises(DeploymentError, match=f"{cluster_id}.*TERMINATED"):
        check_cluster(emr, cluster_id, REGION)


def test_recipe_uploads_bootstrap_weights_onnx_model_and_package(aws, tmp_path, weights_path):
    settings = emr_settings()
    uris = recipe.upload_bootstrap(aws.client("s3"), settings, Path(weights_path))
    assert f"s3://{BUCKET}/fruits/staging/bootstrap/weights/{WEIGHTS_FILE}" in uris
    digest = onnx_export.file_digest(weights_path)
    onnx_key = f"fruits/staging/bootstrap/onnx/mobilenet_v2-224px-{digest}"
    assert {f"s3://{BUCKET}/{onnx_key}.onnx", f"s3://{BUCKET}/{onnx_key}.json"} <= set(uris)
    sidecar = json.loads(aws.client("s3").get_object(Bucket=BUCKET, Key=f"{onnx_key}.json")["Body"].read())
    model = aws.client("s3").get_object(Bucket=BUCKET, Key=f"{onnx_key}.onnx")["Body"].read()
    assert sidecar["weights_sha256"] == digest and sidecar["sha256"] == hashlib.sha256(model).hexdigest()
    body = aws.client("s3").get_object(Bucket=BUCKET, Key="fruits/staging/bootstrap/bootstrap-emr.sh")["Body"]
    assert body.read() == (REPO / "bootstrap" / "bootstrap-emr.sh").read_bytes()

    uri = recipe.upload_package(aws.client("s3"), settings, version="test")
    assert uri == f"s3://{BUCKET}/fruits/staging/packages/fruits-test.zip"
    local = tmp_path / "pkg.zip"
    aws.client("s3").download_file(BUCKET, "fruits/staging/packages/fruits-test.zip", str(local))
    names = zipfile.ZipFile(local).namelist()
    assert {
        "fruits_assets/definitions.py",
        "fruits_assets/deploy/deployments.py",
        "spark_code/storage/versions.py",
    } <= set(names)
    assert not [n for n in names if n.startswith(("tests/", ".venv/", "bench/")) or "__pycache__" in n]


# ---- bad input: clear errors before any Spark work ---------------------------------------------------------------


def test_missing_bucket_and_unknown_cluster_fail_clearly(aws):
    s3, emr = aws.client("s3"), aws.client("emr")
    with pytest.raises(DeploymentError, match="staging bucket 'no-such-bucket' does not exist"):
        check_bucket(s3, "s3://no-such-bucket/prefix", "staging")
    with pytest.raises(DeploymentError, match="'j-3NOSUCHCLUSTER' not found in eu-west-3"):
        check_cluster(emr, "j-3NOSUCHCLUSTER", REGION)


def test_package_drift_between_this_venv_and_the_nodes_is_refused_naming_each(aws):
    from fruits_assets.deploy.emr.preflight import check_packages, node_record

    here = {d.metadata["Name"].lower(): d.version for d in importlib.metadata.distributions()}
    check_packages({"dagster": here["dagster"], "pip": "1.0", "only-on-nodes": "1.0"})  # same, or not compared
    with pytest.raises(DeploymentError, match=rf"dagster {here['dagster']} here, 0\.1 on the nodes; pyarrow") as error:
        check_packages({"dagster": "0.1", "pyarrow": "0.2", "numpy": here["numpy"]})
    assert "numpy" not in str(error.value) and "emr_cluster.py upload" in str(error.value)
    settings = emr_settings(cluster_id="j-1ABCDEFGHIJKL")
    assert node_record(aws.client("s3"), settings) == {}  # nothing recorded: nothing to compare


def test_a_python_mismatch_is_refused_naming_both(aws):
    from fruits_assets.deploy.emr.preflight import check_python, node_python

    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    with pytest.raises(DeploymentError, match=rf"this Python is {here} but the cluster's nodes run Python 3\.9"):
        check_python("3.9", "/usr/bin/python3.9")
    check_python(here, "/usr/bin/python" + here)
    settings = emr_settings(cluster_id="j-1ABCDEFGHIJKL", python="/opt/node/bin/python")
    assert node_python(aws.client("s3"), settings) is None  # no record and no version in the name: not known
    key = "fruits/staging/bootstrap/clusters/j-1ABCDEFGHIJKL/node.json"
    aws.client("s3").put_object(Bucket=BUCKET, Key=key, Body=json.dumps({"python": "3.12.4", "packages": {}}))
    assert node_python(aws.client("s3"), settings) == "3.12"  # what the node's bootstrap recorded wins


def test_each_step_runs_with_the_launching_sides_settings(aws, monkeypatch):
    from fruits_assets.deploy.deployments import emr_resources
    from fruits_assets.deploy.emr import step_main
    from fruits_assets.deploy.settings import Settings

    launching = {
        "FRUITS_DEPLOYMENT": "emr",
        "FRUITS_EMR_CLUSTER_ID": "j-1ABCDEFGHIJKL",
        "FRUITS_EMR_STAGING_BUCKET": BUCKET,
        "FRUITS_OUTPUT_URI": f"s3a://{BUCKET}/run-output",
        "FRUITS_IMAGE_ROOT": f"s3://{BUCKET}/images",
        "FRUITS_BATCH_SIZE": "32",
        "FRUITS_IMAGE_SIZE": "160",
        "FRUITS_ACCURACY_FLOOR": "0.97",
        "FRUITS_EVENTS_QUEUE": "https://sqs.eu-west-3.amazonaws.com/123456789012/fruits-images",
    }
    settings = Settings.from_env(launching)
    assert settings.to_env() == launching  # exactly what was set, nothing the launching machine defaulted
    launcher = emr_resources(settings=settings)[STEP_LAUNCHER_KEY]
    assert launcher.step_env == launching and launcher.preflight
    key = "fruits/staging/run-1/raw_images/step_run_ref.pkl"
    aws.client("s3").put_object(
        Bucket=BUCKET,
        Key=key.replace("step_run_ref.pkl", step_main.SETTINGS_FILE),
        Body=json.dumps(launcher.step_env).encode(),
    )
    for name in launching:  # the node's environment, restored after the test
        monkeypatch.setenv(name, "")
    monkeypatch.setenv("FRUITS_OUTPUT_URI", f"s3://{BUCKET}/frozen-at-creation")  # overridden on the node
    monkeypatch.setenv("FRUITS_EMR_NODE", "true")  # what the cluster's spark-env exports
    step_main.load_settings(aws.client("s3"), BUCKET, key)  # what the step's main file does first
    resources = emr_resources(settings=Settings.from_env())
    assert resources["io_manager"].base_uri == f"s3a://{BUCKET}/run-output"
    assert (resources["cnn"].batch_size, resources["cnn"].image_size) == (32, 160)
    assert resources["classifier"].accuracy_floor == 0.97
    assert resources["image_source"].events_queue == launching["FRUITS_EVENTS_QUEUE"]
    assert resources["cnn"].on_node and not resources[STEP_LAUNCHER_KEY].preflight  # checked where it was launched


def test_bad_cluster_stops_the_run_before_the_step_starts(aws):
    ran = []
    emr = emr_settings(
        cluster_id="j-3NOSUCHCLUSTER", output_uri=f"s3://{BUCKET}/out", image_root=f"s3://{BUCKET}/images"
    )
    launcher = EmrStepLauncher(emr=emr)

    @asset(required_resource_keys={STEP_LAUNCHER_KEY})
    def spark_work():
        ran.append(True)

    with pytest.raises(DagsterResourceFunctionError) as error:
        materialize([spark_work], resources={STEP_LAUNCHER_KEY: launcher}, instance=DagsterInstance.ephemeral())
    assert isinstance(error.value.__cause__, DeploymentError)
    assert "'j-3NOSUCHCLUSTER' not found in eu-west-3" in str(error.value.__cause__)
    assert ran == []


def test_iam_policy_allows_the_job_and_denies_other_buckets(aws, moto_url):
    from fruits_assets.deploy.emr import iam as policies

    settings = emr_settings(training_root=f"s3://{BUCKET}/fruits/training")
    s3_admin, iam = aws.client("s3"), aws.client("iam")
    s3_admin.create_bucket(Bucket="someone-elses", CreateBucketConfiguration={"LocationConstraint": REGION})
    s3_admin.put_object(Bucket=BUCKET, Key="fruits/images/Apple/1.jpg", Body=b"jpeg")
    queue = "https://sqs.eu-west-3.amazonaws.com/123456789012/fruits-images"
    policy = policies.runner_policy(settings, account_id="123456789012", events_queue=queue)
    actions = {a for s in policy["Statement"] for a in s["Action"]}
    assert {a for a in actions if not a.startswith("s3:")} == {  # the README's flow, and nothing more
        "elasticmapreduce:RunJobFlow",
        "elasticmapreduce:TerminateJobFlows",
        "elasticmapreduce:DescribeCluster",
        "elasticmapreduce:AddJobFlowSteps",
        "elasticmapreduce:DescribeStep",
        "elasticmapreduce:ListSteps",
        "elasticmapreduce:CancelSteps",
        "iam:PassRole",
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
    }
    resources = {a: s["Resource"] for s in policy["Statement"] for a in s["Action"]}
    assert resources["iam:PassRole"] == [  # EMR's current service role, the nodes' scoped instance profile
        "arn:aws:iam::123456789012:role/EMR_DefaultRole_V2",
        "arn:aws:iam::123456789012:role/fruits-emr-nodes",
    ]
    assert resources["sqs:ReceiveMessage"] == ["arn:aws:sqs:eu-west-3:123456789012:fruits-images"]
    listing = policies.runner_policy(settings, "1")  # no events queue: the sensor lists the root
    assert "sqs:ReceiveMessage" not in {a for s in listing["Statement"] for a in s["Action"]}
    folders = ("images", "training", "output", "staging")
    prefixes = {f"arn:aws:s3:::{BUCKET}/fruits/{p}{s}" for p in folders for s in ("", "/*")}  # the prefix key too
    objects = {r for s in policy["Statement"] for r in s["Resource"] if r.startswith("arn:aws:s3:::") and "/" in r}
    assert objects == prefixes  # every prefix the recipe uses, and no other
    nodes = policies.nodes_policy(settings, "123456789012", queue)
    assert {a.split(":")[0] for s in nodes["Statement"] for a in s["Action"]} == {"s3"}  # no EMR, IAM or SQS
    assert {r for s in nodes["Statement"] for r in s["Resource"] if "/" in r} == prefixes
    request = recipe.job_flow_request(settings)
    assert (request["ServiceRole"], request["JobFlowRole"]) == ("EMR_DefaultRole_V2", "fruits-emr-nodes")
    assert policies.MANAGED_POLICY_TAG in request["Tags"]  # what AmazonEMRServicePolicy_v2 requires
    iam.create_user(UserName="fruits-runner")
    iam.put_user_policy(UserName="fruits-runner", PolicyName="fruits", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="fruits-runner")["AccessKey"]
    runner = boto3.session.Session(
        aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"], region_name=REGION
    ).client("s3")
    set_auth(moto_url, 0)
    try:
        check_bucket(runner, settings.staging_uri(), "staging")
        runner.put_object(Bucket=BUCKET, Key="fruits/staging/run/step_run_ref.pkl", Body=b"ref")
        runner.put_object(Bucket=BUCKET, Key="fruits/output/pca_features/v-1/_COMMITTED", Body=b"")
        assert runner.get_object(Bucket=BUCKET, Key="fruits/images/Apple/1.jpg")["Body"].read() == b"jpeg"
        with pytest.raises(ClientError, match="AccessDenied"):
            runner.put_object(Bucket=BUCKET, Key="fruits/images/Apple/2.jpg", Body=b"overwrite")
        with pytest.raises(DeploymentError, match="no permission to list staging location 's3://someone-elses"):
            check_bucket(runner, "s3://someone-elses/staging", "staging")
    finally:
        set_auth(moto_url, float("inf"))
