"""Scale-out proof: the asset graph on a real standalone cluster (a master and two one-core workers as separate
processes on 127.0.0.1) uses both workers, survives losing one mid-run, and gives the local run's outputs (one run
shows all three: both executors have finished tasks when one worker is killed)."""

import json
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from tests.cluster import standalone_cluster, stop
from tests.conftest import REPO
from tests.helpers import free_port, table

pytestmark = pytest.mark.slow  # a browser, a cluster, moto or whole materializations


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with standalone_cluster(tmp_path_factory.mktemp("cluster"), workers=2) as running:
        yield running


def _launch(cluster, sample_root, output, weights_path) -> tuple[subprocess.Popen, str]:
    port = str(free_port())
    args = [cluster.url, str(sample_root), str(output), weights_path, port]
    cmd = [sys.executable, "-m", "tests.run_on_master", *args]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), port


def _summary(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-4000:]
    return json.loads(out.strip().splitlines()[-1])


def _features(spark, output) -> dict[str, np.ndarray]:
    return {r.path: np.array(r.features) for r in table(spark, output, "cnn_features").collect()}


def _pca(spark, output) -> dict[str, np.ndarray]:
    return {r.path: np.array(r.pca_features) for r in table(spark, output, "pca_features").collect()}


def _assert_same_outputs(spark, output, reference) -> None:
    ours, theirs = _features(spark, output), _features(spark, reference)
    assert ours.keys() == theirs.keys()
    assert max(np.abs(ours[p] - theirs[p]).max() for p in ours) < 1e-4
    pca, local_pca = _pca(spark, output), _pca(spark, reference)
    assert pca.keys() == local_pca.keys()
    # k is the smallest k whose accuracy is within 0.003 of the best: on this tiny sample (a few validation photos
    # per k) one prediction flipped by the features' 1e-5 differences can move it; the components cannot move.
    common = min(len(v) for v in [*pca.values(), *local_pca.values()])
    assert max(np.abs(pca[p][:common] - local_pca[p][:common]).max() for p in pca) < 1e-3
    quarantined = table(spark, output, "quarantined_images").collect()
    reference_quarantined = table(spark, reference, "quarantined_images").collect()
    assert {(r.path, r.reason) for r in quarantined} == {(r.path, r.reason) for r in reference_quarantined}


def _completed_tasks(port: str) -> dict[str, int]:
    """Tasks completed so far by each executor of the run's application (read from its UI's REST API)."""
    base = f"http://127.0.0.1:{port}/api/v1/applications"
    try:
        with urllib.request.urlopen(base, timeout=2) as response:
            app = json.load(response)[0]["id"]
        with urllib.request.urlopen(f"{base}/{app}/executors", timeout=2) as response:
            return {e["id"]: e["completedTasks"] for e in json.load(response) if e["id"] != "driver"}
    except (OSError, IndexError, ValueError):
        return {}


def test_a_cluster_run_uses_both_workers_survives_losing_one_and_equals_the_local_run(
    cluster, spark, sample_root, weights_path, tmp_path, run
):
    process, port = _launch(cluster, sample_root, tmp_path / "out", weights_path)
    deadline = time.monotonic() + 300
    done = {}
    while time.monotonic() < deadline and process.poll() is None:
        done = _completed_tasks(port)
        if len(done) == 2 and min(done.values()) >= 1 and sum(done.values()) >= 3:
            break
        time.sleep(0.2)
    assert process.poll() is None, "the run ended before a worker could be killed"
    assert len(done) == 2 and min(done.values()) >= 1, done  # one executor per worker, both ran tasks
    stop(cluster.workers[1])  # the worker, its executor and that executor's Python workers
    summary = _summary(process)
    assert summary["success"] and all(summary["checks"].values())
    _assert_same_outputs(spark, tmp_path / "out", run[1])
