"""The emr deployment against real S3/EMR/IAM APIs: a moto server on loopback, reached by boto3 over HTTP."""

import json
import os
import pickle
import re
import subprocess
import sys
import zipfile
import zipimport
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from dagster import (
    DagsterInstance,
    DagsterResourceFunctionError,
    ResourceDefinition,
    asset,
    asset_check,
    build_init_resource_context,
    materialize,
)

from fruits_assets.deploy.emr.launcher import STEP_LAUNCHER_KEY, EmrStepLauncher, missing_step_launcher
from fruits_assets.deploy.emr.preflight import check_bucket, check_cluster, preflight
from fruits_assets.deploy.emr.settings import ENV_VARS, DeploymentError, EmrSettings, deployment
from spark_code.featurize.cnn import WEIGHTS_FILE
from tests.moto_server import moto_server, set_auth

pytestmark = pytest.mark.slow  # a browser, a cluster, moto or whole materializations

REPO = Path(__file__).resolve().parents[2]
REGION = "eu-west-3"
BUCKET = "fruits-data"


def _load_recipe():
    spec = spec_from_file_location("emr_cluster", REPO / "bootstrap" / "emr_cluster.py")
    module = module_from_spec(spec)
    sys.modules["emr_cluster"] = module
    spec.loader.exec_module(module)
    return module


recipe = _load_recipe()


@pytest.fixture(scope="module")
def moto_url():
    with moto_server() as url:
        yield url


@pytest.fixture
def aws(moto_url, monkeypatch):
    """boto3 pointed at the moto server (AWS_ENDPOINT_URL); fake keys live only in this test process."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    session = boto3.session.Session(region_name=REGION)
    s3 = session.client("s3")
    try:
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    except ClientError as error:
        if error.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
            raise
    return session


def _settings(**overrides) -> EmrSettings:
    values = {
        "staging_bucket": BUCKET,
        "staging_prefix": "fruits/staging",
        "output_uri": f"s3://{BUCKET}/fruits/output",
        "image_root": f"s3://{BUCKET}/fruits/images",
        "region": REGION,
    }
    return EmrSettings(**(values | overrides))


def _cluster(aws, settings: EmrSettings) -> str:
    return recipe.create_cluster(aws.client("emr"), recipe.job_flow_request(settings))


# ---- deployment switch and settings ----------------------------------------------------------------------------


def test_deployment_switch_defaults_to_local_and_names_bad_values():
    assert deployment({}) == "local"
    assert deployment({"FRUITS_DEPLOYMENT": "EMR"}) == "emr"
    with pytest.raises(DeploymentError, match="FRUITS_DEPLOYMENT='gcp'.*'local' or 'emr'"):
        deployment({"FRUITS_DEPLOYMENT": "gcp"})


def test_missing_settings_are_all_named():
    with pytest.raises(DeploymentError) as error:
        EmrSettings.from_env({"FRUITS_EMR_STAGING_BUCKET": BUCKET})
    message = str(error.value)
    for name in ("FRUITS_OUTPUT_URI", "FRUITS_IMAGE_ROOT", "FRUITS_EMR_CLUSTER_ID"):
        assert name in message
    assert "FRUITS_EMR_STAGING_BUCKET" not in message


def test_settings_from_env_default_to_paris():
    env = {
        "FRUITS_EMR_CLUSTER_ID": "j-1ABCDEFGHIJKL",
        "FRUITS_EMR_STAGING_BUCKET": BUCKET,
        "FRUITS_OUTPUT_URI": f"s3://{BUCKET}/out/",
        "FRUITS_IMAGE_ROOT": f"s3://{BUCKET}/images",
    }
    settings = EmrSettings.from_env(env)
    assert (settings.region, settings.output_uri) == ("eu-west-3", f"s3://{BUCKET}/out")
    assert settings.node_env()["PYSPARK_PYTHON"] == settings.python == "/usr/bin/python3.11"
    assert settings.node_env()["FRUITS_EMR_NODE"] == "true" and settings.python_version == "3.11"


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ({"FRUITS_EMR_REGION": "eu-west-9"}, "region 'eu-west-9'"),
        ({"FRUITS_EMR_CLUSTER_ID": "cluster-1"}, "cluster_id 'cluster-1'"),
        ({"FRUITS_OUTPUT_URI": "/local/out"}, "output_uri '/local/out'.*s3://"),
        ({"FRUITS_EMR_STAGING_BUCKET": "Bad_Bucket"}, "staging_bucket 'Bad_Bucket'"),
    ],
)
def test_bad_settings_named_before_any_aws_call(override, pattern):
    env = {
        "FRUITS_EMR_CLUSTER_ID": "j-1ABCDEFGHIJKL",
        "FRUITS_EMR_STAGING_BUCKET": BUCKET,
        "FRUITS_OUTPUT_URI": f"s3://{BUCKET}/out",
        "FRUITS_IMAGE_ROOT": f"s3://{BUCKET}/images",
    }
    with pytest.raises(DeploymentError, match=pattern):
        EmrSettings.from_env(env | override)


def test_spark_steps_without_the_launcher_are_named():
    @asset(required_resource_keys={STEP_LAUNCHER_KEY})
    def wired():
        return 1

    @asset
    def unwired(wired):
        return wired

    @asset_check(asset=wired)
    def no_data_check():
        return True

    @asset_check(asset=wired)
    def data_check(wired):
        return True

    assert missing_step_launcher([wired, unwired, no_data_check, data_check]) == ["unwired", "wired_data_check"]


def test_emr_resources_replace_spark_and_paths_and_keep_plain_settings(monkeypatch):

    from fruits_assets.deploy.deployments import emr_resources
    from fruits_assets.deploy.emr.launcher import ClusterCnnResource, ClusterPySparkResource

    settings = _settings(cluster_id="j-1ABCDEFGHIJKL", training_root=f"s3://{BUCKET}/train")
    monkeypatch.setenv("FRUITS_ACCURACY_FLOOR", "0.97")
    resources = emr_resources(settings)
    assert resources["classifier"].accuracy_floor == 0.97  # plain settings come from the same FRUITS_* variables
    assert isinstance(resources["pyspark"], ClusterPySparkResource)
    assert isinstance(resources[STEP_LAUNCHER_KEY], EmrStepLauncher)
    assert resources[STEP_LAUNCHER_KEY].cluster_id == "j-1ABCDEFGHIJKL"
    assert resources["io_manager"].base_uri == f"s3://{BUCKET}/fruits/output"
    assert resources["models"].base_uri == f"s3://{BUCKET}/fruits/output/models"
    assert (resources["image_source"].root, resources["training_source"].root) == (
        f"s3://{BUCKET}/fruits/images",
        f"s3://{BUCKET}/train",
    )
    assert isinstance(resources["cnn"], ClusterCnnResource)
    assert resources["cnn"].weights_path == f"/mnt/fruits/weights/{WEIGHTS_FILE}"


# ---- the cluster recipe ----------------------------------------------------------------------------------------


def test_cluster_recipe_is_accepted_and_the_cluster_found(aws):
    settings = _settings()
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
    assert groups["CORE"]["InstanceType"] == "m5.xlarge"
    assert request["AutoTerminationPolicy"] == {"IdleTimeout": 3600}

    aws.client("s3").put_object(Bucket=BUCKET, Key="fruits/images/Apple/1.jpg", Body=b"jpeg")
    preflight(settings.model_copy(update={"cluster_id": cluster_id}), aws)
    recipe.terminate(emr, cluster_id)
    with pytest.raises(DeploymentError, match=f"{cluster_id}.*TERMINATED"):
        check_cluster(emr, cluster_id, REGION)


def test_recipe_uploads_bootstrap_weights_and_package(aws, tmp_path):
    settings = _settings()
    weights = tmp_path / "w.h5"
    weights.write_bytes(b"\x89HDF fake weights")
    uris = recipe.upload_bootstrap(aws.client("s3"), settings, weights)
    assert f"s3://{BUCKET}/fruits/staging/bootstrap/weights/{WEIGHTS_FILE}" in uris
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


def test_a_python_mismatch_is_refused_naming_both(aws):
    from fruits_assets.deploy.emr.preflight import check_python, node_python

    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    with pytest.raises(DeploymentError, match=rf"this Python is {here} but the cluster's nodes run Python 3\.9"):
        check_python("3.9", "/usr/bin/python3.9")
    check_python(here, "/usr/bin/python" + here)
    settings = _settings(cluster_id="j-1ABCDEFGHIJKL", python="/opt/node/bin/python")
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
    launcher = EmrStepLauncher(
        cluster_id="j-3NOSUCHCLUSTER",
        region_name=REGION,
        staging_bucket=BUCKET,
        output_uri=f"s3://{BUCKET}/out",
        image_root=f"s3://{BUCKET}/images",
    )

    @asset(required_resource_keys={STEP_LAUNCHER_KEY})
    def spark_work():
        ran.append(True)

    with pytest.raises(DagsterResourceFunctionError) as error:
        materialize([spark_work], resources={STEP_LAUNCHER_KEY: launcher}, instance=DagsterInstance.ephemeral())
    assert isinstance(error.value.__cause__, DeploymentError)
    assert "'j-3NOSUCHCLUSTER' not found in eu-west-3" in str(error.value.__cause__)
    assert ran == []


def test_iam_policy_allows_the_job_and_denies_other_buckets(aws, moto_url):
    settings = _settings()
    s3_admin, iam = aws.client("s3"), aws.client("iam")
    s3_admin.create_bucket(Bucket="someone-elses", CreateBucketConfiguration={"LocationConstraint": REGION})
    s3_admin.put_object(Bucket=BUCKET, Key="fruits/images/Apple/1.jpg", Body=b"jpeg")
    queue = "https://sqs.eu-west-3.amazonaws.com/123456789012/fruits-images"
    policy = recipe.render_iam_policy(settings, account_id="123456789012", events_queue=queue)
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
    assert resources["iam:PassRole"] == [
        "arn:aws:iam::123456789012:role/EMR_DefaultRole",
        "arn:aws:iam::123456789012:role/EMR_EC2_DefaultRole",
    ]
    assert resources["sqs:ReceiveMessage"] == ["arn:aws:sqs:eu-west-3:123456789012:fruits-images"]
    assert "sqs:ReceiveMessage" not in {
        a for s in recipe.render_iam_policy(settings, "1")["Statement"] for a in s["Action"]
    }
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


# ---- the step launcher: staging, spark-submit arguments, events -------------------------------------------------


def _play_primary_node(emr, s3, cluster_id: str, step_id: str, workdir: Path) -> None:
    """Do what spark-submit does on the primary node: fetch the main file and --py-files from S3, run the main."""
    args = emr.describe_step(ClusterId=cluster_id, StepId=step_id)["Step"]["Config"]["Args"]
    py_files = args[args.index("--py-files") + 1]
    main_uri, bucket, key = args[-3:]
    local = {}
    for uri in (main_uri, py_files):
        target = workdir / Path(uri).name
        s3.download_file(uri.split("/")[2], uri.split("/", 3)[3], str(target))
        local[uri] = target
    env = {**os.environ, "PYTHONPATH": str(local[py_files])}  # --py-files puts the package on the path
    subprocess.run([sys.executable, str(local[main_uri]), bucket, key], env=env, cwd=REPO, check=True, timeout=120)


def test_step_launcher_stages_package_submits_step_and_reads_events(aws, monkeypatch, tmp_path):
    from dagster import execute_job, reconstructable
    from dagster_aws.emr import pyspark_step_launcher
    from dagster_aws.emr.emr import EmrJobRunner

    settings = _settings()
    cluster_id = _cluster(aws, settings)
    for field, var in [
        ("staging_bucket", "FRUITS_EMR_STAGING_BUCKET"),
        ("staging_prefix", "FRUITS_EMR_STAGING_PREFIX"),
    ]:
        monkeypatch.setenv(var, getattr(settings, field))
    monkeypatch.setenv("FRUITS_EMR_CLUSTER_ID", cluster_id)
    monkeypatch.setenv("FRUITS_EMR_REGION", REGION)
    monkeypatch.setenv("FRUITS_OUTPUT_URI", settings.output_uri)
    monkeypatch.setenv("FRUITS_IMAGE_ROOT", settings.image_root)
    emr, s3 = aws.client("emr"), aws.client("s3")
    submitted = []

    def step_completes(self, log, cluster, step_id):  # moto never finishes steps: run it as the primary would
        submitted.append(step_id)
        _play_primary_node(emr, s3, cluster, step_id, tmp_path)
        return True

    monkeypatch.setattr(EmrJobRunner, "is_emr_step_complete", step_completes)
    monkeypatch.setattr(pyspark_step_launcher.time, "sleep", lambda seconds: None)
    from tests import emr_job

    with DagsterInstance.ephemeral() as instance, execute_job(reconstructable(emr_job.emr_probe), instance) as result:
        assert result.success
        run_id = result.run_id
    (output,) = [e.step_output_data for e in result.all_events if e.step_key == "where_am_i" and e.is_successful_output]
    remote = {key: value.value for key, value in output.metadata.items()}
    assert remote["pid"] != os.getpid()  # the step ran in the 'primary node' process
    assert remote["package"].endswith("fruits_assets/__init__.py")

    (step_id,) = submitted
    step = emr.describe_step(ClusterId=cluster_id, StepId=step_id)["Step"]
    args = step["Config"]["Args"]
    run_prefix = f"fruits/staging/{run_id}/where_am_i"
    assert args[:5] == ["/usr/lib/spark/bin/spark-submit", "--master", "yarn", "--deploy-mode", "client"]
    confs = {args[i + 1] for i, a in enumerate(args) if a == "--conf"}
    assert {"spark.executor.memoryOverhead=2g", "spark.python.worker.reuse=true", "spark.app.name=where_am_i"} <= confs
    assert "spark.sql.execution.arrow.maxRecordsPerBatch=256" in confs
    assert args[args.index("--py-files") + 1] == f"s3://{BUCKET}/{run_prefix}/code.zip"
    assert args[-3:] == [f"s3://{BUCKET}/{run_prefix}/step_main.py", BUCKET, f"{run_prefix}/step_run_ref.pkl"]
    settings = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{run_prefix}/fruits_settings.json")["Body"].read())
    assert settings["FRUITS_OUTPUT_URI"] == f"s3://{BUCKET}/fruits/output"  # the run's settings, beside the step

    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=run_prefix)["Contents"]}
    assert {f"{run_prefix}/{n}" for n in ("code.zip", "step_main.py", "step_run_ref.pkl", "events.pkl")} <= keys
    names = zipfile.ZipFile(tmp_path / "code.zip").namelist()
    assert "fruits_assets/deploy/deployments.py" in names and "spark_code/storage/versions.py" in names
    package = zipimport.zipimporter(str(tmp_path / "code.zip"))  # what --py-files puts on the Python path
    assert package.find_spec("fruits_assets") and package.find_spec("spark_code")
    assert not [n for n in names if n.startswith((".venv", "tests/", "bench/", "data/"))]
    events = pickle.loads(s3.get_object(Bucket=BUCKET, Key=f"{run_prefix}/events.pkl")["Body"].read())
    assert "STEP_SUCCESS" in events


# ---- bootstrap consistency ----------------------------------------------------------------------------------------


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.split("#")[0].split(";")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def test_bootstrap_installs_the_project_pins_but_never_pyspark():
    dependencies = re.search(r"^dependencies = \[(.*?)^\]", (REPO / "pyproject.toml").read_text(), re.S | re.M)
    project = _pins(re.findall(r'"([^"]+)"', dependencies.group(1)))
    boot = REPO / "bootstrap"
    with_deps = _pins((boot / "requirements-emr.txt").read_text().splitlines())
    no_deps = _pins((boot / "requirements-emr-nodeps.txt").read_text().splitlines())
    expected = {name: v for name, v in project.items() if name not in ("pyspark", "tensorflow", "dagster-webserver")}
    assert with_deps | no_deps == expected | {"dagster-spark": project["dagster-pyspark"]}  # its no-deps dependency
    assert "pyspark" not in with_deps | no_deps and "dagster-pyspark" in no_deps
    script = (boot / "bootstrap-emr.sh").read_text()
    assert "set -euo pipefail" in script and "--no-deps" in script and "/usr/bin/python3.11" in script
    assert not re.search(r"pip install[^\n]*\bpyspark\b", script)
    # Bootstrap actions run before EMR installs Spark: nothing may import pyspark (dagster_pyspark does).
    assert not re.search(r"^import[^\n]*\b(pyspark|dagster_pyspark|dagster_spark)\b", script, re.M)
    assert "constraints-emr.txt" in script
    subprocess.run(["bash", "-n", str(boot / "bootstrap-emr.sh")], check=True)


def test_the_nodes_get_this_venvs_exact_versions():
    import importlib.metadata

    pins = dict(line.split("==") for line in recipe.constraints().splitlines())
    assert pins["dagster"] == importlib.metadata.version("dagster")
    assert pins["grpcio"] == importlib.metadata.version("grpcio")  # transitive, not a top-level pin
    assert not {"pyspark", "py4j", "fruits-features"} & {name.lower() for name in pins}


def test_local_resources_bind_no_step_launcher():
    from fruits_assets.deploy.deployments import local_resources

    resources = local_resources("/tmp", "/tmp/out", None)
    assert isinstance(resources[STEP_LAUNCHER_KEY], ResourceDefinition)
    launcher = resources[STEP_LAUNCHER_KEY]
    assert launcher.resource_fn(build_init_resource_context()) is None


def test_the_project_definitions_build_for_emr(monkeypatch):
    from fruits_assets.defs import ASSETS, CHECKS, build_defs
    from fruits_assets.deploy.deployments import resources_for

    assert missing_step_launcher([*ASSETS, *CHECKS]) == []  # every Spark asset and check goes to the cluster
    settings = _settings(cluster_id="j-1ABCDEFGHIJKL", training_root=f"s3://{BUCKET}/train")
    for field, var in ENV_VARS.items():
        value = getattr(settings, field, None)
        if value is not None:
            monkeypatch.setenv(var, value)
    monkeypatch.setenv("FRUITS_DEPLOYMENT", "emr")
    defs = build_defs(resources_for())
    job = defs.resolve_job_def("materialize_all")  # resolves: every resource key the assets need is bound
    assert STEP_LAUNCHER_KEY in job.resource_defs and "tables" in job.resource_defs


# ---- S3 for Spark outside EMR (S3A) -------------------------------------------------------------------------------


def test_s3a_serves_both_schemes_at_pysparks_hadoop_version(tmp_path):
    from spark_code.storage import s3a

    assert s3a.is_s3("s3://b/k") and s3a.is_s3("s3a://b/k") and not s3a.is_s3("/data") and not s3a.is_s3("s3://")
    assert s3a.split("s3a://bucket/a/b") == ("bucket", "a/b")
    assert s3a.hadoop_version() == "3.3.4"  # pyspark 3.5's Hadoop: hadoop-aws must be exactly this
    with pytest.raises(s3a.S3ASetupError, match=r"hadoop-aws:3\.3\.4.*run \./install\.sh"):
        s3a.jars(tmp_path)  # an empty cache names the fix
    conf = s3a.spark_conf("http://127.0.0.1:5000", "eu-west-3")
    assert (
        conf["spark.hadoop.fs.s3.impl"] == conf["spark.hadoop.fs.s3a.impl"] == "org.apache.hadoop.fs.s3a.S3AFileSystem"
    )
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert "hadoop-aws-3.3.4.jar" in conf["spark.driver.extraClassPath"]
    assert "aws-java-sdk-bundle" in conf["spark.driver.extraClassPath"]


def test_a_local_run_with_s3_paths_gets_s3a_and_a_local_one_does_not():
    from fruits_assets.deploy.settings import Settings
    from fruits_assets.deploy.spark_conf import local_spark_config

    local = local_spark_config(settings=Settings.from_env({}))
    assert not [key for key in local if "s3a" in key]
    on_s3 = local_spark_config(settings=Settings.from_env({"FRUITS_OUTPUT_URI": "s3a://bucket/out"}))
    assert on_s3["spark.hadoop.fs.s3.impl"] == "org.apache.hadoop.fs.s3a.S3AFileSystem"


def test_a_failed_steps_stderr_is_summed_up_by_its_python_error():
    from fruits_assets.deploy.emr.launcher import _stderr_summary

    stderr = "\n".join(
        [
            "26/12/04 19:10:25 WARN Utils: Your hostname resolves to a loopback address",
            "Traceback (most recent call last):",
            '  File "/tmp/spark-1/code.zip/spark_code/classify/softmax.py", line 8, in <module>',
            "ModuleNotFoundError: No module named 'scipy'",
            "26/12/04 19:10:32 INFO ShutdownHookManager: Shutdown hook called",
            "26/12/04 19:10:32 INFO MetricsSystemImpl: s3a-file-system metrics system shutdown complete.",
        ]
    )
    error, tail = _stderr_summary(stderr)
    assert error == "ModuleNotFoundError: No module named 'scipy'"
    assert tail.splitlines()[0] == "Traceback (most recent call last):" and "MetricsSystemImpl" not in tail
