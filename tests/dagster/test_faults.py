"""Faults that must lose nothing: a run killed during cnn_features, an unwritable output, a write that fails."""

import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest
from pyspark.sql import functions as F

from spark_code import unchanged
from spark_code.storage import lake, tables, versions
from spark_code.storage.tables import Update
from tests.conftest import CLASSES, copy_photos
from tests.helpers import table

pytestmark = pytest.mark.slow  # a browser, a cluster, moto or whole materializations

FEATURE_RUN = """
import sys
from fruits_assets.defs.featurize import cnn_features
from fruits_assets.defs.ingest import raw_images
from fruits_assets.deploy.deployments import local_resources
from fruits_assets.cli.materialize import materialize_batch
root, output, weights = sys.argv[1:4]
materialize_batch([raw_images, cnn_features], local_resources(root, output, weights))
"""


def _dozen(root):
    copy_photos(root, CLASSES, 4)


def _kill_during_cnn(root, output, weights_path, log):
    """Start the batch run in its own process group; SIGKILL the group once cnn_features has started."""
    with open(log, "wb") as sink:
        args = [sys.executable, "-c", FEATURE_RUN, str(root), str(output), weights_path]
        process = subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    while b'Started execution of step "cnn_features"' not in log.read_bytes():
        assert process.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def test_run_killed_during_cnn_features_then_rerun_loses_and_duplicates_nothing(spark, weights_path, tmp_path):
    from fruits_assets.cli.materialize import materialize_batch
    from fruits_assets.defs.featurize import cnn_features
    from fruits_assets.defs.ingest import raw_images
    from fruits_assets.deploy.deployments import local_resources

    root, output = tmp_path / "root", str(tmp_path / "out")
    _dozen(root)
    _kill_during_cnn(root, output, weights_path, tmp_path / "killed.log")
    killed = unchanged.last_commit(output, "raw_images").recorded["batch"]  # its listing only was committed
    assert unchanged.behind(output, "cnn_features") and lake.version(f"{output}/cnn_features") is None
    late = next((root / CLASSES[1]).glob("*.jpg"))
    shutil.copy(late, root / CLASSES[0] / "late.jpg")  # a photo that arrives after the killed batch
    result = materialize_batch([raw_images, cnn_features], local_resources(str(root), output, weights_path))
    assert result.success  # the next batch takes the new photo, and the features take both batches' photos
    key = unchanged.last_commit(output, "raw_images").recorded["batch"]
    raw, features, quarantined = (table(spark, output, n) for n in unchanged.BATCH_TABLES)
    assert raw.count() == 13 == features.count() and quarantined.count() == 0  # each photo exactly once
    assert features.select("path").distinct().count() == 13 and unchanged.behind(output, "cnn_features") is None
    by_batch = {r.batch: r["count"] for r in features.groupBy("batch").count().collect()}
    assert by_batch == {killed: 12, key: 1} and unchanged.reconcile(output)["missing"] == 0


@pytest.mark.parametrize("output", ["/proc/fruits-output", "a-file/output"])
def test_unwritable_output_fails_before_any_work(sample_root, weights_path, tmp_path, output):
    from fruits_assets.cli.materialize import materialize_batch
    from fruits_assets.defs.featurize import cnn_features
    from fruits_assets.defs.ingest import raw_images
    from fruits_assets.deploy.deployments import local_resources

    (tmp_path / "a-file").write_text("a file, not a folder")
    uri = output if output.startswith("/") else str(tmp_path / output)
    with pytest.raises(versions.OutputNotWritableError, match="is not writable.*FRUITS_OUTPUT_URI"):
        versions.check_writable(uri)
    result = materialize_batch(
        [raw_images, cnn_features], local_resources(str(sample_root), uri, weights_path), raise_on_error=False
    )
    assert not result.success
    assert not [e for e in result.all_events if e.event_type_value == "STEP_START"]  # no listing, no CNN
    failure = next(e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE")
    assert "not writable" in str(failure.event_specific_data)


def test_failed_write_keeps_the_previous_version_readable(spark, tmp_path):
    uri = str(tmp_path / "t")
    tables.commit(uri, Update(spark.range(10), replace=True))
    before = sorted(p.name for p in (tmp_path / "t").iterdir())

    @F.udf("long")
    def fail_midway(n):
        if n == 5000:
            raise OSError(28, "No space left on device")  # what a full disk raises, mid-write
        return n

    with pytest.raises(Exception, match="No space left on device"):
        failing = spark.range(10_000).repartition(4).select(fail_midway("id").alias("id"))
        tables.commit(uri, Update(failing, replace=True))
    assert lake.version(uri) == 0 and tables.read(spark, uri).count() == 10
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == before  # what the failed write left is deleted


FULL_DISK_WRITE = """
import sys
from pyspark.sql import functions as F
from fruits_assets.deploy.spark_conf import local_session
from spark_code.storage import tables
spark = local_session("local[1]", {"spark.ui.enabled": "false"})
uri = sys.argv[1] + "/t"
tables.commit(uri, tables.Update(spark.range(10), replace=True))  # small: fits under the file size limit
big = spark.range(200_000).select(F.sha2(F.col("id").cast("string"), 512).alias("hash"))  # ~13 MB of Parquet
try:
    tables.commit(uri, tables.Update(big, replace=True))
except Exception as error:
    print("WRITE FAILED:", "File too large" in str(error) or "EFBIG" in str(error))
spark.stop()
"""


def _file_size_limit():
    resource.setrlimit(resource.RLIMIT_FSIZE, (2 * 2**20, 2 * 2**20))  # no file over 2 MiB: a disk that fills


def test_disk_filling_during_a_write_keeps_the_previous_version(spark, tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", FULL_DISK_WRITE, str(tmp_path)], capture_output=True, preexec_fn=_file_size_limit
    )
    assert b"WRITE FAILED: True" in out.stdout, out.stderr.decode()[-3000:]
    uri = str(tmp_path / "t")
    assert lake.version(uri) == 0 and tables.read(spark, uri).count() == 10
    data = [p for p in (tmp_path / "t").rglob("*.parquet") if "_delta_log" not in p.parts]
    assert len(data) == len(lake.open_table(uri).file_uris())  # the half-written files were deleted
