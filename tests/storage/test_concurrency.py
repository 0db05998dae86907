"""Two runs on one output: one at a time (a run lock), a clear error for the second, nothing lost or duplicated."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance

from fruits_assets.deploy.deployments import local_resources
from spark_code.storage import run_lock
from tests.conftest import CLASSES, REPO, copy_photos
from tests.helpers import materialize_features, table

pytestmark = pytest.mark.slow  # a browser, a cluster, moto or whole materializations


def _root(tmp_path, n=2):
    return copy_photos(tmp_path / "images", CLASSES[:2], n)


def _materialize(root, output, weights_path):
    resources = local_resources(str(root), str(output), weights_path)
    return materialize_features(resources, DagsterInstance.ephemeral(), raise_on_error=False)


def test_a_held_output_fails_the_second_run_clearly_before_any_work(spark, weights_path, tmp_path):
    root, output = _root(tmp_path), tmp_path / "out"
    held = run_lock.acquire(str(output), "the-other-run")  # a live holder: this very process
    try:
        result = _materialize(root, output, weights_path)
        assert not result.success
        failure = next(e for e in result.all_events if e.is_failure)
        assert "is in use by run the-other-run" in str(failure.event_specific_data.error)
        assert not (output / "raw_images").exists()  # nothing written, no listing, no CNN
    finally:
        held.release()
    assert _materialize(root, output, weights_path).success  # released: the next run goes ahead
    assert not (output / run_lock.LOCK_FILE).exists()  # and released its own lock


def test_a_lock_left_by_a_dead_process_is_taken_over(spark, weights_path, tmp_path):
    root, output = _root(tmp_path), tmp_path / "out"
    output.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = {"owner": "killed-run", "pid": int(dead.stdout), "host": os.uname().nodename, "since": 0}
    (output / run_lock.LOCK_FILE).write_text(json.dumps(record))
    result = _materialize(root, output, weights_path)
    assert result.success
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert {"raw_images", "cnn_features", "quarantined_images", "scaled_features", "pca_features"} <= materialized
    photos = {f"file:{p}" for p in root.rglob("*.jpg")}
    assert {r.path for r in table(spark, output, "pca_features").collect()} == photos
    assert all(c.passed for c in result.get_asset_check_evaluations())  # counts reconcile: nothing lost or twice
    assert not (output / run_lock.LOCK_FILE).exists()  # the run released the lock it took over


def test_the_same_owner_reenters_and_another_run_is_refused(tmp_path):
    lock = run_lock.acquire(str(tmp_path), "run-1")
    again = run_lock.acquire(str(tmp_path), "run-1")
    assert (again.path, again.owner, again.created) == (lock.path, lock.owner, False)
    again.release()  # re-entered: releasing it leaves the run's lock in place
    assert (tmp_path / run_lock.LOCK_FILE).exists()
    with pytest.raises(run_lock.OutputInUseError, match="in use by run run-1"):
        run_lock.acquire(f"file:{tmp_path}", "run-2")
    lock.release()
    assert not (tmp_path / run_lock.LOCK_FILE).exists()
    run_lock.acquire(str(tmp_path), "run-2").release()


_HOLD = """
import sys, time
from spark_code.storage import run_lock
run_lock.acquire(sys.argv[1], sys.argv[2])
print("held", flush=True)
time.sleep(600)
"""


def test_the_kernel_releases_the_lock_of_a_killed_holder_and_a_half_written_record_is_not_stale(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path), "run-1"], cwd=REPO, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"held"
        (tmp_path / run_lock.LOCK_FILE).write_text('{"owner": "run-1", "pi')  # as if caught mid-write
        with pytest.raises(run_lock.OutputInUseError):  # held by a live process: in use, whatever the file says
            run_lock.acquire(str(tmp_path), "run-2")
    finally:
        holder.kill()
        holder.wait()
    lock = run_lock.acquire(str(tmp_path), "run-2")  # killed (no clean-up ran): the kernel dropped its lock
    assert lock.created and json.loads((tmp_path / run_lock.LOCK_FILE).read_text())["owner"] == "run-2"
    lock.release()


def test_an_s3_output_is_locked_with_a_conditional_put(s3_bucket):
    _, client = s3_bucket
    lock = run_lock.acquire("s3://fruits/out", "run-1")
    key = "out/" + run_lock.LOCK_FILE
    assert json.loads(client.get_object(Bucket="fruits", Key=key)["Body"].read())["owner"] == "run-1"
    again = run_lock.acquire("s3://fruits/out/", "run-1")  # a step of the same run (e.g. on the cluster)
    again.release()  # re-entered: releasing it leaves the run's lock in place
    with pytest.raises(run_lock.OutputInUseError, match="in use by run run-1"):
        run_lock.acquire("s3://fruits/out", "run-2")
    lock.release()
    assert "Contents" not in client.list_objects_v2(Bucket="fruits", Prefix=key)
    stale = {"owner": "lost-run", "pid": 1, "host": "gone-host", "since": time.time() - run_lock.S3_STALE_AFTER_S - 60}
    client.put_object(Bucket="fruits", Key=key, Body=json.dumps(stale).encode())
    taken = run_lock.acquire("s3://fruits/out", "run-3")  # a day-old lock of a run on another host is taken over
    assert taken.created and json.loads(client.get_object(Bucket="fruits", Key=key)["Body"].read())["owner"] == "run-3"


def test_two_main_commands_started_together_lose_and_duplicate_nothing(spark, training_root, weights_path, tmp_path):
    root, output = _root(tmp_path, n=3), tmp_path / "out"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path / "home"),
        "FRUITS_IMAGE_ROOT": str(root),
        "FRUITS_TRAINING_ROOT": str(training_root),
        "FRUITS_OUTPUT_URI": str(output),
        "FRUITS_WEIGHTS": weights_path,
        # fp32: on this 6-photo corpus the bf16 features make the accuracy-chosen PCA name 5 of 6 photos, the
        # accuracy check fails and the winning run exits 1; this test is about the run lock, not the engine
        "FRUITS_ENGINE": "onnx",
    }
    (tmp_path / "home").mkdir()
    command = [sys.executable, "-m", "fruits_assets"]
    runs = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
    runs.append(
        subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    )
    outputs = [run.communicate(timeout=900)[0] for run in runs]
    codes = [run.returncode for run in runs]
    assert 0 in codes, outputs
    for code, text in zip(codes, outputs, strict=True):  # a run that lost the race says why, and wrote nothing
        assert code == 0 or "is in use by run" in text + _log(text), text
    current = table(spark, output, "cnn_features").collect()
    paths = [row.path for row in current]
    assert len(paths) == len(set(paths)) == 6  # every photo once, whatever the interleaving
    assert not (output / run_lock.LOCK_FILE).exists()


def _log(terminal: str) -> str:
    """The run's detail log file, whose path the main command prints."""
    for line in terminal.splitlines():
        if " log: " in line:
            path = line.rsplit(" log: ", 1)[1].strip()
            return Path(path).read_text() if os.path.exists(path) else ""
    return ""
