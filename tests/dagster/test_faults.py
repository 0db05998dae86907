"""Faults that must lose nothing: a run killed during cnn_features, an unwritable output, a write that fails."""

import os
import resource
import signal
import subprocess
import sys
import time

import pytest
from pyspark.sql import functions as F

from spark_code.ingest import batches
from spark_code.storage import versions
from tests.conftest import CLASSES, copy_photos

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
    killed = list(versions.partition_uris(spark, output, "raw_images"))
    assert len(killed) == 1 and batches.committed_keys(spark, output) == []  # its listing only: not a batch
    result = materialize_batch([raw_images, cnn_features], local_resources(str(root), output, weights_path))
    assert result.success
    (key,) = batches.committed_keys(spark, output)
    raw, features, quarantined = (batches.read_current_rows(spark, output, n) for n in batches.BATCH_TABLES)
    assert raw.count() == 12 == features.count() and quarantined.count() == 0  # the killed batch's photos, again
    assert features.select("path").distinct().count() == 12 and {r.batch for r in features.collect()} == {key}
    assert raw.filter(F.col("batch") == killed[0]).count() == 0


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
    base = str(tmp_path)
    versions.write_table(spark.range(10), base, "t")

    @F.udf("long")
    def fail_midway(n):
        if n == 5000:
            raise OSError(28, "No space left on device")  # what a full disk raises, mid-write
        return n

    with pytest.raises(Exception, match="No space left on device"):
        versions.write_table(spark.range(10_000).repartition(4).select(fail_midway("id").alias("id")), base, "t")
    committed, pending = versions.list_versions(spark, base, "t")
    assert len(committed) == 1 and pending == []  # the failed version is gone, its space given back
    assert versions.read_table(spark, base, "t").count() == 10


FULL_DISK_WRITE = """
import sys
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from spark_code.storage import versions
spark = SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false").getOrCreate()
versions.write_table(spark.range(10), sys.argv[1], "t")  # small: fits under the file size limit
big = spark.range(200_000).select(F.sha2(F.col("id").cast("string"), 512).alias("hash"))  # ~13 MB of Parquet
try:
    versions.write_table(big, sys.argv[1], "t")
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
    committed, pending = versions.list_versions(spark, str(tmp_path), "t")
    assert len(committed) == 1 and pending == []  # the half-written version was deleted
    assert versions.read_table(spark, str(tmp_path), "t").count() == 10
