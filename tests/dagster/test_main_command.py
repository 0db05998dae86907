"""The main command as a newcomer runs it: a line per asset, a summary, the detail in a log file, runs remembered."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus
from dagster._core.instance.ref import InstanceRef

from fruits_assets.cli.home import PROJECT_HOME, dagster_home
from tests.conftest import CLASSES, FRUITS, REPO, copy_photos, first_images

pytestmark = pytest.mark.slow  # a browser, a cluster, moto or whole materializations

NOISE = ("DEBUG", "alembic", "WARN", "Setting default log level", "STEP_START", "py4j", "tensorflow")


def _main_command(env: dict, *args: str) -> tuple[subprocess.CompletedProcess, str]:
    process = subprocess.run(
        [sys.executable, "-m", "fruits_assets", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return process, process.stdout + process.stderr


@pytest.fixture(scope="module")
def two_runs(training_root, weights_path, tmp_path_factory):
    """Two main-command runs into one DAGSTER_HOME on 3 classes × 2 photos and a text file named .jpg."""
    tmp = tmp_path_factory.mktemp("main-command")
    root, home = tmp / "images", tmp / "home"
    home.mkdir()
    copy_photos(root, CLASSES, 2)
    (root / CLASSES[1] / "notes.jpg").write_text("not an image\n")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "FRUITS_IMAGE_ROOT": str(root),
        "FRUITS_TRAINING_ROOT": str(training_root),
        "FRUITS_OUTPUT_URI": str(tmp / "out"),
        "FRUITS_WEIGHTS": weights_path,
    }
    first = _main_command(env, "--progress-seconds", "1")
    nothing = _main_command(env)  # nothing new anywhere: no run at all
    shutil.copy(first_images(FRUITS / CLASSES[0], 3)[-1], root / CLASSES[0] / "new.jpg")
    second = _main_command(env)  # one new photo: a real run (growth itself: tests/dagster/test_growth.py)
    return first, second, home, tmp / "out", nothing, root


def test_nothing_new_runs_nothing_and_says_so(two_runs):
    *_, home, _, (process, output), _ = two_runs
    assert process.returncode == 0, output
    assert "nothing new in" in output and "every asset is current" in output, output
    assert "raw_images: started" not in output and "loading the CNN" not in output, output
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        assert len(instance.get_runs()) == 2  # the first run and the one-photo run; none for "nothing new"


def test_a_new_changed_or_deleted_file_is_work_to_do(two_runs, training_root, weights_path):
    from fruits_assets.cli.materialize import _expected
    from fruits_assets.deploy.settings import Settings
    from spark_code import unchanged

    *_, out, _, root = two_runs
    env = {"FRUITS_IMAGE_ROOT": str(root), "FRUITS_TRAINING_ROOT": str(training_root), "FRUITS_WEIGHTS": weights_path}
    expected = _expected(Settings.from_env({**env, "FRUITS_OUTPUT_URI": str(out)}))
    assert unchanged.pending_work(expected) is None  # after the one-photo run, everything is current
    photo = root / CLASSES[0] / "new.jpg"
    stat = photo.stat()
    os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert "0 new, 1 changed, 0 deleted" in unchanged.pending_work(expected)
    os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    photo.rename(root / CLASSES[0] / ".hidden.jpg")  # hidden files are not listed: as good as deleted
    assert "0 new, 0 changed, 1 deleted" in unchanged.pending_work(expected)
    (root / CLASSES[0] / ".hidden.jpg").rename(root / CLASSES[0] / "other.jpg")
    assert "1 new, 0 changed, 1 deleted" in unchanged.pending_work(expected)
    (root / CLASSES[0] / "other.jpg").rename(photo)
    assert unchanged.pending_work(expected) is None
    other = Settings.from_env({**env, "FRUITS_OUTPUT_URI": str(out), "FRUITS_IMAGE_SIZE": "160"})
    assert "other CNN settings" in unchanged.pending_work(_expected(other))


def test_main_command_prints_one_line_per_asset_and_a_summary(two_runs):
    (process, output), _, home, out, *_ = two_runs
    assert process.returncode == 0, output
    for asset in ("raw_images", "cnn_features", "quarantined_images", "pca_features", "fruit_classifier"):
        assert re.search(rf"^\S+ {asset}: done in [\d.]+ s", output, re.M), output
    assert re.search(r"raw_images: done in [\d.]+ s — image_count 7, new 7, changed 0, deleted 0", output), output
    assert "raw_images: started" in output and "cnn_features: 7 images to go through" in output
    assert re.search(r"cnn_features: 7 images in \d+ s \([\d.]+ images/s\)", output), output
    for line in ("images: 7 taken in this batch, 6 featurized", "quarantined: 1 (see them: .venv/bin/python -m"):
        assert line in output
    assert re.search(r"PCA: k = \d+, explained variance 0\.9\d+", output) and "classifier: accuracy 1.0000" in output
    assert "checks: 9/9 passed" in output and f"output: {out}" in output
    assert f"DAGSTER_HOME={home} .venv/bin/dagster dev, then open http://127.0.0.1:3000/runs/" in output


def test_dagster_spark_and_alembic_detail_goes_to_the_log_file(two_runs):
    (_, output), _, home, *_ = two_runs
    for noise in NOISE:
        assert noise not in output, f"{noise!r} on the terminal:\n{output}"
    log_file = Path(re.search(r"^\S+ log: (\S+)$", output, re.M).group(1))
    assert log_file.parent == home / "run-logs"
    detail = log_file.read_text()
    assert "STEP_START" in detail and "alembic" in detail and "ASSET_MATERIALIZATION" in detail


def test_a_second_run_is_recorded_next_to_the_first(two_runs):
    _, (process, output), home, *_ = two_runs
    assert process.returncode == 0, output
    assert re.search(r"raw_images: done in [\d.]+ s — image_count 1, new 1, changed 0, deleted 0", output), output
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:  # what `dagster dev` reads
        runs = instance.get_runs()
        assert [run.status for run in runs] == [DagsterRunStatus.SUCCESS] * 2
        assert len(instance.get_dynamic_partitions("ingest_batches")) == 2
        for asset in ("raw_images", "cnn_features"):  # one partition per batch (unchanged downstream may be reused)
            records = instance.fetch_materializations(AssetKey(asset), limit=5).records
            assert {record.run_id for record in records} == {run.run_id for run in runs}, asset


def test_dagster_home_is_the_project_instance_unless_set(tmp_path):
    assert dagster_home({}) == PROJECT_HOME and (PROJECT_HOME / "dagster.yaml").exists()
    assert dagster_home({"DAGSTER_HOME": str(tmp_path)}) == tmp_path
    with pytest.raises(ValueError, match="DAGSTER_HOME='relative/home' is not an absolute path"):
        dagster_home({"DAGSTER_HOME": "relative/home"})


def test_dagster_dev_finds_the_project_instance_through_env_file(monkeypatch):
    from dagster._core.secrets.env_file import get_env_var_dict

    assert (REPO / ".env").exists(), "no .env in the repository root: run ./install.sh"
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert get_env_var_dict(str(REPO))["DAGSTER_HOME"] == str(PROJECT_HOME)
    monkeypatch.setenv("DAGSTER_HOME", "/somewhere/else")  # an exported DAGSTER_HOME stays in charge
    assert get_env_var_dict(str(REPO))["DAGSTER_HOME"] == "/somewhere/else"


def test_quarantine_command_lists_what_the_summary_counted(two_runs):
    _, _, _, out, *_ = two_runs
    command = [sys.executable, "-m", "fruits_assets.cli.quarantine", "--output", str(out)]
    process = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr
    [line] = process.stdout.splitlines()
    path, reason, _batch = line.split("\t")
    assert path.endswith(f"{CLASSES[1]}/notes.jpg") and "image" in reason, line  # "not an image (…)"
    assert f"1 quarantined image(s) under {out}" in process.stderr


def test_a_second_run_featurizes_only_the_new_photo(two_runs, training_root):
    _, (_, output), home, *_ = two_runs
    training_photos = len(list(training_root.rglob("*.jpg")))
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        second, first = instance.get_runs()  # newest first

        def metadata(asset, run):
            records = instance.fetch_materializations(AssetKey(asset), limit=5).records
            found = [r.asset_materialization.metadata for r in records if r.run_id == run.run_id]
            return {k: v.value for k, v in found[0].items()} if found else None

        assert metadata("training_features", first)["cnn_images"] == training_photos
        unchanged = metadata("training_features", second)  # an unchanged training set: no CNN, nothing rewritten
        assert unchanged["unchanged"] is True and unchanged["cnn_images"] == 0 and unchanged["rewritten"] is False
        assert metadata("cnn_features", second)["cnn_images"] == 1
        for derived in ("scaled_features", "pca_features"):  # only the new batch is scaled and projected
            again = metadata(derived, second)
            assert (again["refit"], again["rows_added"], again["rows_removed"]) == (False, 1, 0), again
        assert metadata("fruit_classifier", first)["retrained"] is True
        reused = metadata("fruit_classifier", second)  # same training rows, scaler and PCA: not trained again
        assert reused["retrained"] is False and reused["batch_rows"] == 1  # only the new photo is scored
        assert reused["test_rows"] == metadata("fruit_classifier", first)["test_rows"] + 1
    assert "training_features: done" not in output or "featurized 0" in output
