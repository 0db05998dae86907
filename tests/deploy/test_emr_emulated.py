"""The README's EMR recipe, command by command, on the emulated EMR: images read from s3://, every table and model
written to s3:// by Spark (S3A), the same outputs as a local run, the sensor's batches, classify, and the bad cases."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from botocore.exceptions import ClientError
from dagster import AssetKey, DagsterEventType, DagsterRunStatus, build_sensor_context

from spark_code.storage import lake
from spark_code.storage.run_lock import LOCK_FILE
from tests.conftest import TRAINING, copy_photos, first_images
from tests.emr_session import BUCKET, PREFIX, REPO, EmrShell, wait_for
from tests.moto_server import set_auth

pytestmark = [pytest.mark.slow, pytest.mark.cnn]

CLASSES = ("Apple Braeburn", "Banana", "Cherry 1")
IMAGES = f"s3://{BUCKET}/{PREFIX}/images"
OUTPUT = f"s3://{BUCKET}/{PREFIX}/output"
ASSETS = ("raw_images", "cnn_features", "quarantined_images", "scaled_features", "pca_features", "fruit_classifier")


@pytest.fixture(scope="module")
def photos(tmp_path_factory, fruits_dir) -> dict[str, Path]:
    """A handful of Test photos (4 per class), Training photos (6 per class) and three more for later batches."""
    root = tmp_path_factory.mktemp("emr-photos")
    copy_photos(root / "images", CLASSES, 4, fruits_dir)
    copy_photos(root / "training", CLASSES, 6, TRAINING)
    extra = [first_images(fruits_dir / cls, 6)[-1] for cls in CLASSES]
    extra.append(first_images(fruits_dir / CLASSES[0], 7)[-1])
    extra.append(first_images(fruits_dir / CLASSES[1], 7)[-1])
    return {"images": root / "images", "training": root / "training", "extra": extra}


@pytest.fixture(scope="module")
def shell(tmp_path_factory):
    session = EmrShell.start(tmp_path_factory.mktemp("emr"))
    try:
        yield session
    finally:
        session.stop()


@pytest.fixture(scope="module")
def cluster(shell, photos, weights_path) -> str:
    """The README's set-up: bucket, photos, bootstrap upload, `create --wait` (the bootstrap runs on the node)."""
    shell.aws("s3", "mb", f"s3://{BUCKET}", "--region", "eu-west-3")
    shell.aws("s3", "sync", str(photos["images"]), f"{IMAGES}/", "--quiet")
    shell.aws("s3", "sync", str(photos["training"]), f"s3://{BUCKET}/{PREFIX}/training/", "--quiet")
    shell.python("bootstrap/emr_cluster.py", "roles")  # EMR_DefaultRole_V2, the nodes' scoped instance profile
    shell.python("bootstrap/emr_cluster.py", "upload", "--weights", weights_path)
    cluster_id = shell.python("bootstrap/emr_cluster.py", "create", "--wait").stdout.strip().splitlines()[-1]
    shell.env["FRUITS_EMR_CLUSTER_ID"] = cluster_id
    return cluster_id


def _new_steps(shell, cluster: str, before: set[str]) -> list[dict]:
    return [s for s in shell.client("emr").list_steps(ClusterId=cluster)["Steps"] if s["Id"] not in before]


def _step_ids(shell, cluster: str) -> set[str]:
    return {s["Id"] for s in shell.client("emr").list_steps(ClusterId=cluster)["Steps"]}


@pytest.fixture(scope="module")
def first_run(shell, cluster):
    """`FRUITS_DEPLOYMENT=emr .venv/bin/python -m fruits_assets`: the first batch, every asset."""
    return shell.python("-m", "fruits_assets", FRUITS_DEPLOYMENT="emr")


@pytest.fixture(scope="module")
def runner(shell, cluster) -> dict[str, str]:
    """Keys of an IAM user holding exactly the policy `emr_cluster.py policy` prints: whoever runs Dagster."""
    account = shell.client("sts").get_caller_identity()["Account"]
    policy = shell.python("bootstrap/emr_cluster.py", "policy", "--account-id", account).stdout
    iam = shell.client("iam")
    iam.create_user(UserName="fruits-runner")
    iam.put_user_policy(UserName="fruits-runner", PolicyName="fruits", PolicyDocument=policy)
    key = iam.create_access_key(UserName="fruits-runner")["AccessKey"]
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


@contextmanager
def iam_enforced(shell):
    """Every call to the emulated AWS checked against IAM: the runner's policy, the nodes' instance profile."""
    set_auth(shell.exports["AWS_ENDPOINT_URL"], 0)
    try:
        yield
    finally:
        set_auth(shell.exports["AWS_ENDPOINT_URL"], float("inf"))


@pytest.fixture(scope="module")
def later_runs(shell, cluster, first_run, photos, runner):
    """The main command again with nothing new, then after one new photo as the README's runner with IAM enforced
    and a prebuilt code zip (`emr_cluster.py package`, FRUITS_EMR_PACKAGE_URI): (output, EMR steps) of each."""
    before = _step_ids(shell, cluster)
    nothing = shell.python("-m", "fruits_assets", FRUITS_DEPLOYMENT="emr")
    nothing_steps = _new_steps(shell, cluster, before)
    new = photos["extra"][3]
    shell.aws("s3", "cp", str(new), f"{IMAGES}/{CLASSES[0]}/{new.name}", "--quiet")
    before = _step_ids(shell, cluster)
    with iam_enforced(shell):
        package = shell.python("bootstrap/emr_cluster.py", "package", **runner).stdout.strip().splitlines()[-1]
        env = {"FRUITS_DEPLOYMENT": "emr", "FRUITS_EMR_PACKAGE_URI": package, **runner}
        one = shell.python("-m", "fruits_assets", check=False, **env)
        s3, emr = (shell.client(name, **runner) for name in ("s3", "emr"))
        with pytest.raises(ClientError, match="AccessDenied"):  # the policy is enforced, and narrow
            s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/images/{CLASSES[0]}/not-mine.jpg", Body=b"x")
        with pytest.raises(ClientError, match="AccessDenied"):
            emr.list_clusters()
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    return {"nothing": (nothing, nothing_steps), "one": (one, _new_steps(shell, cluster, before)), "package": package}


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


BATCH_ASSETS = ["raw_images", "cnn_features", "quarantined_images"]  # a batch's own assets (and their checks)


def _launch_request(shell, monkeypatch, request, assets=None, **settings_env):
    """Run a sensor's run request as the daemon would, with the emr deployment: one batch, then `assets` (default:
    every asset, as the sensor's job)."""
    from fruits_assets.deploy import emr_job as job

    for name, value in (shell.env | settings_env | {"FRUITS_DEPLOYMENT": "emr"}).items():
        monkeypatch.setenv(name, value)
    instance = shell.instance()
    instance.add_dynamic_partitions("ingest_batches", [request.partition_key])
    result = job.launch(instance, request.partition_key, tags=dict(request.tags), with_console=False, assets=assets)
    assert result.success
    return result


SETTLE_S = 30.0  # ImageSource's default: the deployed sensor takes a photo unmodified this long


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
    uploaded, before = time.monotonic(), _step_ids(shell, cluster)
    dagster, env = str(Path(sys.executable).parent / "dagster"), {"FRUITS_DEPLOYMENT": "emr"}
    shell.run(dagster, "sensor", "cursor", "new_images", "--set", cursor, "-w", "workspace.yaml", **env)
    shell.run(dagster, "sensor", "start", "new_images", "-w", "workspace.yaml", **env)  # the UI's toggle
    time.sleep(max(0.0, SETTLE_S + 1 - (time.monotonic() - uploaded)))  # settled before the first tick
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
    (step,) = _new_steps(shell, cluster, before)  # the run worker's Spark steps: one EMR step
    assert step["Status"]["State"] == "COMPLETED" and "raw_images" in step["Name"]


def _sensor_run(instance):
    """The newest run the `new_images` sensor requested, or None."""
    runs = [r for r in instance.get_runs(limit=5) if r.tags.get("dagster/sensor_name") == "new_images"]
    return runs[0] if runs else None


def test_sensor_batches_from_s3_events(shell, first_run, photos, monkeypatch):
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
    run = _launch_request(shell, monkeypatch, request, BATCH_ASSETS, FRUITS_EVENTS_QUEUE=queue)  # the rest: as above
    cnn = [e for e in run.get_asset_materialization_events() if e.asset_key.to_user_string() == "cnn_features"]
    assert cnn[0].materialization.metadata["featurized"].value == 1
    assert sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=0).get("Messages") is None  # acknowledged


def test_classify_with_models_on_s3(shell, first_run, photos):
    photo = photos["extra"][2]
    done = shell.run(
        str(Path(sys.executable).parent / "fruits"), "classify", "--models", f"{OUTPUT}/models", str(photo), "--json"
    )
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["label"] == CLASSES[2], answer


# ---- bad input: clear errors, nothing written half --------------------------------------------------------------


def _main_fails(shell, **env) -> str:
    """The main command with work to do (--full-refresh: every photo again), which must fail; its output."""
    done = shell.python("-m", "fruits_assets", "--full-refresh", check=False, FRUITS_DEPLOYMENT="emr", **env)
    assert done.returncode != 0
    return done.stdout + done.stderr


def test_wrong_endpoint_and_refused_credentials_are_named(shell, first_run):
    assert "cannot reach AWS" in _main_fails(shell, AWS_ENDPOINT_URL="http://127.0.0.1:9")
    from tests.moto_server import set_auth

    set_auth(shell.exports["AWS_ENDPOINT_URL"], 0)
    try:
        out = _main_fails(shell, AWS_ACCESS_KEY_ID="AKIAWRONGWRONGWRONG1", AWS_SECRET_ACCESS_KEY="wrong")
    finally:
        set_auth(shell.exports["AWS_ENDPOINT_URL"], float("inf"))
    assert "AWS refused these credentials (InvalidAccessKeyId)" in out


def test_an_image_root_without_photos_stops_before_any_step(shell, cluster, first_run):
    before = len(shell.client("emr").list_steps(ClusterId=cluster)["Steps"])
    out = _main_fails(shell, FRUITS_IMAGE_ROOT=f"s3://{BUCKET}/{PREFIX}/nothing-here")
    assert "holds no photos" in out
    assert len(shell.client("emr").list_steps(ClusterId=cluster)["Steps"]) == before


def test_package_drift_is_refused_before_any_step_naming_each_package(shell, cluster, first_run):
    import importlib.metadata

    s3, key = shell.client("s3"), f"{PREFIX}/staging/bootstrap/clusters/{cluster}/node.json"
    recorded = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    node = json.loads(recorded)  # what the nodes' bootstrap recorded; as if ./install.sh changed this venv since
    node["packages"] |= {"dagster": "1.12.0", "pyarrow": "20.0.0"}
    s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(node).encode())
    before = _step_ids(shell, cluster)
    try:
        out = _main_fails(shell)
    finally:
        s3.put_object(Bucket=BUCKET, Key=key, Body=recorded)
    here = {name: importlib.metadata.version(name) for name in ("dagster", "pyarrow")}
    assert f"dagster {here['dagster']} here, 1.12.0 on the nodes; pyarrow {here['pyarrow']} here, 20.0.0" in out, out
    assert "run `bootstrap/emr_cluster.py upload`" in out and "start a new cluster (`create`)" in out
    assert "numpy" not in out.split("other package versions")[1].split("):")[0]  # only the packages that differ
    assert _new_steps(shell, cluster, before) == []  # refused before anything was staged or submitted


def test_a_node_missing_a_package_fails_naming_it(shell, cluster, first_run):
    from fruits_assets.deploy.emr import failure

    node = shell.node_python()
    # Pillow: every step imports it with the asset graph (SciPy is imported only by the steps that fit)
    version = shell.run(str(node), "-c", "import PIL; print(PIL.__version__)").stdout.strip()
    shell.run(str(node), "-m", "pip", "uninstall", "-y", "-q", "pillow")
    before = _step_ids(shell, cluster)
    try:
        out = _main_fails(shell)
    finally:
        shell.run(str(node), "-m", "pip", "install", "-q", "--no-deps", f"pillow=={version}")
    # The step's Python dies importing the project: the EMR step fails; its logs reach S3 only minutes later on EMR
    # (seconds here), so the run's error says why from EMR's FailureDetails, then where the logs will be.
    # the batch that began with raw_images (the steps not downstream of it went in a second one)
    step = next(s for s in _new_steps(shell, cluster, before) if s["Name"].split(": ")[1].startswith("raw_images"))
    headline = rf"raw_images: FAILED — .*EMR step {step['Id']} on {cluster} FAILED \(exit 1\): ModuleNotFoundError: "
    assert re.search(headline + "No module named 'PIL'", out), out[-3000:]
    logs = f"s3://{BUCKET}/{PREFIX}/staging/logs/{cluster}/steps/{step['Id']}/"
    error = Path(re.search(r" log: (\S+)", out).group(1)).read_text()  # the run's log file: the whole error
    assert f"EMR's failure details ({logs}stdout.gz):" in error  # where the step's Python printed its traceback
    assert f"its logs are not on S3 yet: EMR copies them to {logs}" in error
    emr, s3 = shell.client("emr"), shell.client("s3")
    # once EMR copied them (LOG_DELAY_S), the same explanation ends with their last lines
    later = wait_for(lambda: (text := failure.explain(emr, s3, cluster, step["Id"])) * ("last lines" in text), 30)
    assert f"last lines of its stderr and stdout ({logs}):" in later
    assert "No module named 'PIL'" in later.split("last lines")[1]


def _start_and_wait_for_a_running_step(shell, cluster):
    """The main command, started; returns (process, the id of the first EMR step it submitted, once RUNNING)."""
    emr = shell.client("emr")
    before = {s["Id"] for s in emr.list_steps(ClusterId=cluster)["Steps"]}
    running = subprocess.Popen(
        [sys.executable, "-m", "fruits_assets", "--full-refresh"],  # work to do, whatever ran before
        cwd=REPO,
        env=shell.env | {"FRUITS_DEPLOYMENT": "emr"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def a_step_runs():
        steps = emr.list_steps(ClusterId=cluster)["Steps"]
        return [s["Id"] for s in steps if s["Id"] not in before and s["Status"]["State"] == "RUNNING"]

    return running, wait_for(a_step_runs, timeout_s=120)[0]


def _watch_until_exit(shell, cluster: str, step: str, running: subprocess.Popen) -> tuple[str, list[tuple]]:
    """(the run's output, (lock held, step state) sampled every 0.2 s until the run exits): the lock is read before
    the state, so a sample without the lock and with a live state proves the lock was released too early."""
    emr, samples = shell.client("emr"), []
    reader = ThreadPoolExecutor(1).submit(running.communicate, timeout=300)
    while running.poll() is None:
        held = bool(shell.output_keys(LOCK_FILE))
        samples.append((held, emr.describe_step(ClusterId=cluster, StepId=step)["Step"]["Status"]["State"]))
        time.sleep(0.2)
    return reader.result()[0], samples


def _assert_unlocked_only_once_cancelled(samples: list[tuple], out: str) -> None:
    assert (True, "CANCEL_PENDING") in samples, samples  # EMR's asynchronous cancel, held for a few polls
    assert not [s for s in samples if not s[0] and s[1] in ("RUNNING", "CANCEL_PENDING")], (samples, out[-3000:])
    assert (False, "CANCELLED") in samples or samples[-1] == (True, "CANCELLED"), samples


def test_a_cancelled_run_cancels_its_emr_step_then_unlocks(shell, cluster, first_run):
    running, step = _start_and_wait_for_a_running_step(shell, cluster)
    running.send_signal(signal.SIGINT)  # Ctrl-C, or the UI's terminate
    out, samples = _watch_until_exit(shell, cluster, step, running)
    assert running.returncode != 0
    _assert_unlocked_only_once_cancelled(samples, out)
    state = shell.client("emr").describe_step(ClusterId=cluster, StepId=step)["Step"]["Status"]["State"]
    assert state == "CANCELLED", out[-3000:]
    assert not shell.output_keys(LOCK_FILE)  # the run lock released


def test_a_step_cancelled_from_the_cli_fails_the_run_clearly_then_unlocks(shell, cluster, first_run):
    running, step = _start_and_wait_for_a_running_step(shell, cluster)
    before = _step_ids(shell, cluster)
    # As the console or `aws emr cancel-steps` does while the run polls the step: CancelSteps, answered at once.
    answer = shell.client("emr").cancel_steps(
        ClusterId=cluster, StepIds=[step], StepCancellationOption="SEND_INTERRUPT"
    )
    assert answer["CancelStepsInfoList"][0]["Status"] == "SUBMITTED"
    out, samples = _watch_until_exit(shell, cluster, step, running)
    assert running.returncode == 1
    _assert_unlocked_only_once_cancelled(samples, out)
    assert f"EMR step {step} on {cluster} CANCELLED" in out and "cancelled outside this run" in out, out[-3000:]
    assert "ValueError" not in out  # dagster-aws's EmrStepState has no CANCEL_PENDING; the launcher never builds one
    assert _new_steps(shell, cluster, before) == []  # the rest of the run is not resubmitted
    assert not shell.output_keys(LOCK_FILE)


def test_terminating_the_cluster_mid_run_names_it(shell, cluster, first_run):
    running, _ = _start_and_wait_for_a_running_step(shell, cluster)
    shell.python("bootstrap/emr_cluster.py", "terminate")
    out, _ = running.communicate(timeout=300)
    assert running.returncode == 1
    assert f"cluster {cluster} is TERMINATED" in out and "start a new one" in out, out[-3000:]
    assert not shell.output_keys(LOCK_FILE)  # the run lock released
