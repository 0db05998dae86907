"""The bad cases on the emulated EMR: an unreachable endpoint, refused credentials, no photos, drifted packages, a
node missing one, a run stopped or a step cancelled from outside (EMR's asynchronous CANCEL_PENDING), a step over its
YARN container, the cluster terminated mid-run: each a clear error, and the run lock released only once its EMR step
ended. The emulator and its cluster: tests/deploy/conftest.py (shared with test_emr_emulated.py, which runs first)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from spark_code.storage.run_lock import LOCK_FILE
from tests.emr_session import BATCH_ASSETS, BUCKET, CLASSES, IMAGES, PREFIX, REPO, new_steps, step_ids, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.cnn]


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
    before = step_ids(shell, cluster)
    try:
        out = _main_fails(shell)
    finally:
        s3.put_object(Bucket=BUCKET, Key=key, Body=recorded)
    here = {name: importlib.metadata.version(name) for name in ("dagster", "pyarrow")}
    assert f"dagster {here['dagster']} here, 1.12.0 on the nodes; pyarrow {here['pyarrow']} here, 20.0.0" in out, out
    assert "run `bootstrap/emr_cluster.py upload`" in out and "start a new cluster (`create`)" in out
    assert "numpy" not in out.split("other package versions")[1].split("):")[0]  # only the packages that differ
    assert new_steps(shell, cluster, before) == []  # refused before anything was staged or submitted


def test_a_node_missing_a_package_fails_naming_it(shell, cluster, first_run):
    from fruits_assets.deploy.emr import failure

    node = shell.node_python()
    # Pillow: every step imports it with the asset graph (SciPy is imported only by the steps that fit)
    version = shell.run(str(node), "-c", "import PIL; print(PIL.__version__)").stdout.strip()
    shell.run(str(node), "-m", "pip", "uninstall", "-y", "-q", "pillow")
    before = step_ids(shell, cluster)
    try:
        out = _main_fails(shell)
    finally:
        shell.run(str(node), "-m", "pip", "install", "-q", "--no-deps", f"pillow=={version}")
    # The step's Python dies importing the project: the EMR step fails; its logs reach S3 only minutes later on EMR
    # (seconds here), so the run's error says why from EMR's FailureDetails, then where the logs will be.
    # the batch that began with raw_images (the steps not downstream of it went in a second one)
    step = next(s for s in new_steps(shell, cluster, before) if s["Name"].split(": ")[1].startswith("raw_images"))
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
    before = step_ids(shell, cluster)
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
    assert new_steps(shell, cluster, before) == []  # the rest of the run is not resubmitted
    assert not shell.output_keys(LOCK_FILE)


def test_a_step_over_its_yarn_container_fails_naming_the_kill_and_the_setting(
    shell, cluster, first_run, photos, monkeypatch
):
    """The recipe's executor settings made too small for what a Python worker holds (the CNN runs outside the JVM
    heap): YARN's NodeManager kills the container, and the run's error says so and which setting to raise."""
    from fruits_assets.deploy import emr_job as job
    from fruits_assets.deploy.emr.settings import EmrSettings
    from fruits_assets.deploy.settings import Settings
    from fruits_assets.deploy.spark_conf import EMR_SPARK_CONF
    from spark_code.ingest import batches

    new = photos["extra"][4]
    shell.aws("s3", "cp", str(new), f"{IMAGES}/{CLASSES[1]}/{new.name}", "--quiet")
    for name, value in (shell.env | {"FRUITS_DEPLOYMENT": "emr"}).items():
        monkeypatch.setenv(name, value)
    # 1g + 128m on m5.xlarge: 512m + 64m on the emulator's NodeManagers (half), far below an executor's needs
    small = {"spark.executor.memory": "1g", "spark.executor.memoryOverhead": "128m", "spark.task.maxFailures": "1"}
    settings = Settings.from_env()  # the launcher's config as the job binds it, but for its Spark settings
    emr = EmrSettings.from_settings(settings).model_dump(exclude_none=True)
    launcher = {"config": {"emr": emr, "step_env": settings.to_env(), "spark_config": {**EMR_SPARK_CONF, **small}}}
    instance, key, before = shell.instance(), batches.new_key(), step_ids(shell, cluster)
    instance.add_dynamic_partitions("ingest_batches", [key])
    config = {"resources": {"pyspark_step_launcher": launcher}}
    result = job.launch(instance, key, run_config=config, with_console=False, assets=BATCH_ASSETS)
    assert not result.success
    errors = [str(e.step_failure_data.error) for e in result.all_events if e.is_step_failure]
    killed = [e for e in errors if "Container killed by YARN for exceeding physical memory limits" in e]
    assert killed and "spark.executor.memoryOverhead" in killed[0], errors
    (step,) = new_steps(shell, cluster, before)
    assert step["Status"]["State"] == "COMPLETED"  # the Dagster step failed, its EMR step ended normally
    assert shell.step_containers(step["Id"])["containers"] >= 2  # the application master and its executors


def test_terminating_the_cluster_mid_run_names_it(shell, cluster, first_run):
    running, _ = _start_and_wait_for_a_running_step(shell, cluster)
    shell.python("bootstrap/emr_cluster.py", "terminate")
    out, _ = running.communicate(timeout=300)
    assert running.returncode == 1
    assert f"cluster {cluster} is TERMINATED" in out and "start a new one" in out, out[-3000:]
    assert not shell.output_keys(LOCK_FILE)  # the run lock released
