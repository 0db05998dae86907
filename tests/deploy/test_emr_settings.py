"""The emr deployment's settings, resources and bootstrap pins, and S3A for a Spark outside EMR."""

import re
import subprocess

import pytest
from dagster import (
    ResourceDefinition,
    asset,
    asset_check,
    build_init_resource_context,
)

from fruits_assets.deploy.emr.launcher import STEP_LAUNCHER_KEY, EmrStepLauncher, missing_step_launcher
from fruits_assets.deploy.emr.settings import ENV_VARS, DeploymentError, EmrSettings, deployment
from spark_code.featurize.cnn import WEIGHTS_FILE
from tests.deploy.conftest import BUCKET, REPO, emr_settings, recipe

pytestmark = pytest.mark.slow  # a browser, a cluster, moto or whole materializations


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

    settings = emr_settings(cluster_id="j-1ABCDEFGHIJKL", training_root=f"s3://{BUCKET}/train")
    monkeypatch.setenv("FRUITS_ACCURACY_FLOOR", "0.97")
    resources = emr_resources(settings)
    assert resources["classifier"].accuracy_floor == 0.97  # plain settings come from the same FRUITS_* variables
    assert isinstance(resources["pyspark"], ClusterPySparkResource)
    assert isinstance(resources[STEP_LAUNCHER_KEY], EmrStepLauncher)
    assert resources[STEP_LAUNCHER_KEY].emr.cluster_id == "j-1ABCDEFGHIJKL"
    assert resources["io_manager"].base_uri == f"s3://{BUCKET}/fruits/output"
    assert resources["models"].base_uri == f"s3://{BUCKET}/fruits/output/models"
    assert (resources["image_source"].root, resources["training_source"].root) == (
        f"s3://{BUCKET}/fruits/images",
        f"s3://{BUCKET}/train",
    )
    assert isinstance(resources["cnn"], ClusterCnnResource)
    assert resources["cnn"].weights_path == f"/mnt/fruits/weights/{WEIGHTS_FILE}"


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
    not_on_nodes = ("pyspark", "dagster-webserver", "tensorflow", "tensorflow-cpu", "keras", "tf2onnx", "onnx")
    expected = {name: v for name, v in project.items() if name not in not_on_nodes}
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
    from fruits_assets.definitions import build_defs
    from fruits_assets.defs import ASSETS, CHECKS
    from fruits_assets.deploy.deployments import resources_for

    assert missing_step_launcher([*ASSETS, *CHECKS]) == []  # every Spark asset and check goes to the cluster
    settings = emr_settings(cluster_id="j-1ABCDEFGHIJKL", training_root=f"s3://{BUCKET}/train")
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
    from spark_code.storage import s3a, uris

    assert uris.is_s3("s3://b/k") and uris.is_s3("s3a://b/k") and not uris.is_s3("/data") and not uris.is_s3("s3://")
    assert uris.split("s3a://bucket/a/b") == ("bucket", "a/b")
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


def test_the_recipes_executors_fit_an_m5_xlarge_and_scale_to_the_emulators_yarn():
    from fruits_assets.deploy.spark_conf import EMR_SPARK_CONF
    from tests.emr_emulator import yarn

    # m5.xlarge / m7i.xlarge: 12288 MB of YARN memory; the recipe's 2 executors per node: 2 x (3g + 2g) = 10240 MB
    assert yarn.NODE_YARN_MB == 12288 and yarn.containers_fit(EMR_SPARK_CONF, per_node=2)
    assert not yarn.containers_fit(EMR_SPARK_CONF, per_node=3)  # a third executor would not fit: 15 GiB
    scaled = {**EMR_SPARK_CONF, **yarn.scaled(EMR_SPARK_CONF)}
    assert scaled["spark.executor.memory"] == "1536m" and scaled["spark.executor.memoryOverhead"] == "1024m"
    assert yarn.containers_fit(scaled, node_mb=yarn.NODE_YARN_MB // yarn.SCALE, per_node=2)  # same shape, half
