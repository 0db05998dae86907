"""The README's EMR recipe, command by command, on the emulated EMR: images read from s3://, every table and model
written to s3:// by Spark (S3A) in YARN containers, the same outputs as a local run, the sensor's batch under the
Dagster daemon, its tick from S3 events, classify. The emulator and its cluster: tests/deploy/conftest.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dagster import AssetKey, DagsterEventType, DagsterRunStatus, build_sensor_context

from fruits_assets.defs.partitions import CHANGES_TAG
from spark_code.ingest import snapshot
from spark_code.storage import lake
from tests.emr_session import BUCKET, CLASSES, IMAGES, OUTPUT, PREFIX, REPO, new_steps, step_ids, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.cnn]

ASSETS = ("raw_images", "cnn_features", "quarantined_images", "scaled_features", "pca_features", "fruit_classifier")


def _recorded(shell) -> tuple[set[str], set[str]]:
    """(assets materialized, checks evaluated) in the newest run of the shell's instance."""
    instance = shell.instance()
    run = instance.get_runs(limit=1)[0]
    assert run.status == DagsterRunStatus.SUCCESS
    assets = {
        e.asset_materialization.asset_key.to_user_string()
        for e in instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
    }
    checks = {
        e.dagster_event.event_specific_data.check_name
        for e in instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)
    }
    return assets, checks


# ---- the recipe ------------------------------------------------------------------------------------------------


def test_bootstrap_installs_the_launching_versions_and_no_pyspark(shell, cluster):
    record = shell.client("s3").get_object(
        Bucket=BUCKET, Key=f"{PREFIX}/staging/bootstrap/clusters/{cluster}/node.json"
    )
    node = json.loads(record["Body"].read())
    assert node["python"].rsplit(".", 1)[0] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert "pyspark" not in node["packages"] and "dagster-pyspark" in node["packages"]
    assert not {"tensorflow", "tensorflow-cpu", "keras", "tf2onnx"} & set(node["packages"])  # ONNX Runtime only
    assert "onnxruntime" in node["packages"]
    import importlib.metadata

    here = {d.metadata["Name"].lower(): d.version for d in importlib.metadata.distributions()}
    shared = set(node["packages"]) & set(here) - {"pip", "setuptools", "wheel"}
    assert len(shared) > 50  # transitive dependencies too, not only the top-level pins
    assert {name: node["packages"][name] for name in shared} == {name: here[name] for name in shared}
    state = shell.client("emr").describe_cluster(ClusterId=cluster)["Cluster"]["Status"]["State"]
    assert state == "WAITING"


def test_main_command_runs_every_spark_step_on_the_cluster(shell, cluster, first_run):
    out = first_run.stdout + first_run.stderr
    for asset in ("raw_images", "cnn_features", "scaled_features", "pca_features", "fruit_classifier"):
        assert f"{asset}: done in" in out, out[-3000:]
    assert "checks: 9/9 passed" in out and f"output: {OUTPUT}" in out
    steps = shell.client("emr").list_steps(ClusterId=cluster)["Steps"]
    assert len(steps) == 1 and {s["Status"]["State"] for s in steps} == {"COMPLETED"}  # every Spark step in one
    assert all(s["Config"]["Args"][0] == "/usr/lib/spark/bin/spark-submit" for s in steps)
    tables = ("raw_images", "cnn_features", "quarantined_images", "scaled_features", "pca_features")
    counts = {table: len(shell.table(table)) for table in tables}  # Delta tables on S3, read without Spark
    assert counts == {**dict.fromkeys(tables, 12), "quarantined_images": 0}
    assert shell.committed("models/fruit_classifier/")
    run = shell.instance().get_runs(limit=1)[0]  # what `dagster dev` on this DAGSTER_HOME shows
    assert run.tags["dagster/partition"]
    materialized, checks = _recorded(shell)
    assert set(ASSETS) | {"training_features"} <= materialized and len(checks) == 9
    step_keys = {e.step_key for e in shell.instance().all_logs(run.run_id, of_type=DagsterEventType.STEP_SUCCESS)}
    assert {"raw_images", "cnn_features", "pca_features", "fruit_classifier"} <= step_keys  # each its own step


def test_nothing_new_submits_no_step_and_says_so(shell, later_runs):
    done, steps = later_runs["nothing"]
    assert steps == [] and done.returncode == 0
    assert "nothing new in" in done.stdout + done.stderr and "every asset is current" in done.stdout + done.stderr


def test_one_new_photo_is_one_emr_step_with_every_asset_and_check_recorded(shell, later_runs):
    done, steps = later_runs["one"]
    out = done.stdout + done.stderr
    assert len(steps) == 1 and steps[0]["Status"]["State"] == "COMPLETED", steps
    # run with IAM enforced, as the runner of `policy` (the nodes as their instance profile of `policy --nodes`)
    args = steps[0]["Config"]["Args"]
    assert args[args.index("--py-files") + 1] == later_runs["package"]  # the prebuilt zip, none staged per run
    assert later_runs["package"].startswith(f"s3://{BUCKET}/{PREFIX}/staging/packages/fruits-")
    run_id = shell.instance().get_runs(limit=1)[0].run_id
    listed = shell.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/staging/{run_id}/")
    staged = [o["Key"] for o in listed.get("Contents", [])]
    assert any(k.endswith("/step_run_ref.pkl") for k in staged) and not any(k.endswith("/code.zip") for k in staged)
    assert "checks: 9/9 passed" in out, out[-3000:]
    materialized, checks = _recorded(shell)
    assert set(ASSETS) <= materialized and len(checks) == 9
    assert "training_features" not in materialized  # no training photo changed: not run on the cluster
    raw = shell.instance().get_latest_materialization_event(AssetKey("raw_images")).asset_materialization
    assert raw.metadata["image_count"].value == 1


def test_outputs_equal_a_local_run_on_the_same_photos(shell, first_run, photos, spark, weights_path, tmp_path):
    from fruits_assets.cli.materialize import materialize_batch
    from fruits_assets.defs import ASSETS as ALL_ASSETS
    from fruits_assets.defs import CHECKS
    from fruits_assets.deploy.deployments import local_resources
    from tests.helpers import metadata_of

    resources = local_resources(
        str(photos["images"]), str(tmp_path / "out"), weights_path, None, str(photos["training"])
    )
    local = materialize_batch([*ALL_ASSETS, *CHECKS], resources)
    assert local.success

    def by_path(rows, root):
        return {r["path"].split(root.rstrip("/") + "/", 1)[-1]: r for r in rows}

    remote = by_path(shell.table("cnn_features", version=0), IMAGES.replace("s3://", ""))  # the first batch's
    local_rows = lake.read(str(tmp_path / "out" / "cnn_features")).to_pylist()
    here = by_path(local_rows, str(photos["images"]))
    assert sorted(remote) == sorted(here) and len(here) == 12
    for path, row in here.items():
        assert remote[path]["label"] == row["label"]
        assert np.abs(np.asarray(remote[path]["features"]) - np.asarray(row["features"])).max() < 1e-4
    run = shell.instance().get_runs(limit=1)[0]
    events = shell.instance().all_logs(run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
    pca = next(
        e.asset_materialization.metadata
        for e in events
        if e.asset_materialization.asset_key.to_user_string() == "pca_features"
    )
    assert pca["k"].value == metadata_of(local, "pca_features")["k"]


def _tick(source, cursor=None):
    from fruits_assets.defs.automation import new_images

    context = build_sensor_context(cursor=cursor, resources={"image_source": source})
    result = new_images(context)
    return result, result.cursor or cursor


def test_the_sensor_under_the_dagster_daemon_runs_its_batch_on_the_cluster(
    shell, cluster, first_run, photos, monkeypatch
):
    """The README's later batches: the daemon ticks `new_images` (turned on as in the UI), launches the run in a run
    worker, whose Spark steps go to the cluster through the step launcher."""
    from fruits_assets.io.resources import ImageSource

    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(name, shell.exports[name])
    listing = ImageSource(root=IMAGES, settle_seconds=0.0, state_uri=f"{OUTPUT}/_sensor/new_images")
    _, cursor = _tick(listing)  # the cursor an earlier tick left: what the main command already took
    new = photos["extra"][0]
    shell.aws("s3", "cp", str(new), f"{IMAGES}/{CLASSES[0]}/{new.name}", "--quiet")
    before = step_ids(shell, cluster)
    dagster = str(Path(sys.executable).parent / "dagster")
    env = {"FRUITS_DEPLOYMENT": "emr", "FRUITS_SETTLE_SECONDS": "0"}  # the upload above is complete: no settle wait
    shell.run(dagster, "sensor", "cursor", "new_images", "--set", cursor, "-w", "workspace.yaml", **env)
    shell.run(dagster, "sensor", "start", "new_images", "-w", "workspace.yaml", **env)  # the UI's toggle
    log = open(shell.home / "daemon.log", "wb")  # noqa: SIM115  closed below
    daemon = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"],
        cwd=REPO,
        env=shell.env | env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        instance = shell.instance()
        finished = wait_for(lambda: (run := _sensor_run(instance)) is not None and run.is_finished, 600, 2)
    finally:
        daemon.send_signal(signal.SIGINT)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
        log.close()
    run = _sensor_run(instance)
    daemon_log = (shell.home / "daemon.log").read_text(errors="replace")[-3000:]
    assert finished and run.status == DagsterRunStatus.SUCCESS, daemon_log
    assert run.tags["fruits/new"] == "1" and run.job_name == "materialize_all"
    raw = instance.get_latest_materialization_event(AssetKey("raw_images")).asset_materialization
    assert raw.metadata["image_count"].value == 1
    (step,) = new_steps(shell, cluster, before)  # the run worker's Spark steps: one EMR step
    assert step["Status"]["State"] == "COMPLETED" and "raw_images" in step["Name"]


def _sensor_run(instance):
    """The newest run the `new_images` sensor requested, or None."""
    runs = [r for r in instance.get_runs(limit=5) if r.tags.get("dagster/sensor_name") == "new_images"]
    return runs[0] if runs else None


def test_the_sensor_takes_its_batch_from_s3_events(shell, first_run, photos, monkeypatch):
    from fruits_assets.io.resources import ImageSource

    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(name, shell.exports[name])
    state = f"{OUTPUT}/_sensor/new_images"
    _, cursor = _tick(ImageSource(root=IMAGES, settle_seconds=0.0, state_uri=state))  # what is there now
    sqs = shell.client("sqs")
    queue = sqs.create_queue(QueueName="fruits-images")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    shell.client("s3").put_bucket_notification_configuration(
        Bucket=BUCKET,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": arn,
                    "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": f"{PREFIX}/images/"}]}},
                }
            ]
        },
    )
    events = ImageSource(root=IMAGES, settle_seconds=0.0, state_uri=state, events_queue=queue)
    new = photos["extra"][1]
    shell.aws("s3", "cp", str(new), f"{IMAGES}/{CLASSES[1]}/{new.name}", "--quiet")
    result, _ = _tick(events, cursor)
    (request,) = result.run_requests
    assert request.tags["fruits/new"] == "1"
    # the run takes exactly the files of the stored changes (raw_images reads them, as from a listing tick: the
    # daemon test above runs such a batch on the cluster)
    changes = snapshot.load_changes(request.tags[CHANGES_TAG])
    assert [(path, change) for path, _, _, change in changes] == [(f"{CLASSES[1]}/{new.name}", "new")]
    assert changes[0][1] == new.stat().st_size
    assert sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=0).get("Messages") is None  # acknowledged


def test_classify_with_models_on_s3(shell, first_run, photos):
    photo = photos["extra"][2]
    done = shell.run(
        str(Path(sys.executable).parent / "fruits"), "classify", "--models", f"{OUTPUT}/models", str(photo), "--json"
    )
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["label"] == CLASSES[2], answer
