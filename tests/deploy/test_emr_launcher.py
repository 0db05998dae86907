"""The EMR step launcher against real S3/EMR APIs (moto on loopback): what it stages, the spark-submit step it
adds, the events it relays, and how a failed step is explained."""

import json
import os
import pickle
import subprocess
import sys
import zipfile
import zipimport
from pathlib import Path

import pytest
from dagster import (
    DagsterInstance,
)

from tests.deploy.conftest import BUCKET, REGION, REPO, emr_settings, make_cluster

pytestmark = pytest.mark.slow  # a browser, a cluster, moto or whole materializations


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

    settings = emr_settings()
    cluster_id = make_cluster(aws, settings)
    aws.client("s3").put_object(Bucket=BUCKET, Key="fruits/images/Apple/1.jpg", Body=b"jpeg")  # preflight: photos
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

    describe_step = EmrJobRunner.describe_step

    def step_completes(self, cluster, step_id):  # moto never runs steps: run it once as the primary node would
        if step_id not in submitted:
            submitted.append(step_id)
            _play_primary_node(emr, s3, cluster, step_id, tmp_path)
        answer = describe_step(self, cluster, step_id)
        answer["Step"]["Status"]["State"] = "COMPLETED"
        return answer

    monkeypatch.setattr(EmrJobRunner, "describe_step", step_completes)
    monkeypatch.setattr(pyspark_step_launcher.time, "sleep", lambda seconds: None)
    from tests import emr_job

    with DagsterInstance.ephemeral() as instance, execute_job(reconstructable(emr_job.emr_probe), instance) as result:
        assert result.success
        run_id = result.run_id
    (output,) = [e.step_output_data for e in result.all_events if e.step_key == "where_am_i" and e.is_successful_output]
    remote = {key: value.value for key, value in output.metadata.items()}
    assert remote["pid"] != os.getpid()  # the step ran in the 'primary node' process
    assert remote["package"].endswith("fruits_assets/__init__.py")
    (then,) = [e.step_output_data for e in result.all_events if e.step_key == "and_then" and e.is_successful_output]
    assert then.metadata["pid"].value == remote["pid"]  # both Dagster steps ran in the one EMR step's process
    assert [e.step_key for e in result.all_events if e.is_step_success] == ["where_am_i", "and_then", "after"]

    (step_id,) = submitted  # one EMR step (run once) for the two launcher steps
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


def test_a_failed_steps_stderr_is_summed_up_by_its_python_error():
    from fruits_assets.deploy.emr.failure import stderr_summary

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
    error, tail = stderr_summary(stderr)
    assert error == "ModuleNotFoundError: No module named 'scipy'"
    assert tail.splitlines()[0] == "Traceback (most recent call last):" and "MetricsSystemImpl" not in tail
