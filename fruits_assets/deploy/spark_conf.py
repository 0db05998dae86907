"""Spark settings of the job: what every deployment shares, plus the local machine's and the EMR nodes' own."""

from __future__ import annotations

import os
import sys

from dagster import InitResourceContext
from dagster_pyspark import PySparkResource

from fruits_assets.deploy import class_archive
from fruits_assets.deploy.settings import Settings
from spark_code.storage import s3a, tables, uris

# The job's own needs, wherever it runs: Arrow UDFs, Python worker reuse (one CNN per worker), small image files
# packed ~2,000 per scan task instead of Spark's 32 (4 MB "open cost" each), UTC timestamps, quiet TensorFlow.
JOB_SPARK_CONF = {
    "spark.python.worker.reuse": "true",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.execution.arrow.maxRecordsPerBatch": "256",
    "spark.sql.files.openCostInBytes": "65536",
    "spark.sql.session.timeZone": "UTC",
    "spark.executorEnv.TF_CPP_MIN_LOG_LEVEL": "2",
}

# spark-submit settings on m7i.xlarge or m5.xlarge nodes (4 vCPU, 16 GiB, 12 GiB for YARN; the launcher names each
# step's app): two executors of 2 cores per node; the CNN lives in the Python workers, outside the JVM heap, so the
# overhead is large. Shuffles are of listing-sized rows (paths, counts): 16 partitions (two per core of the recipe's
# 2 core nodes), which adaptive execution coalesces further, cached plans included; Spark's 200 cost a batch of one
# photo ~10 s of empty tasks.
EMR_SPARK_CONF = {
    **JOB_SPARK_CONF,
    "spark.executor.cores": "2",
    "spark.executor.memory": "3g",
    "spark.executor.memoryOverhead": "2g",
    "spark.driver.memory": "4g",
    "spark.sql.shuffle.partitions": "16",
    "spark.sql.optimizer.canChangeCachedPlanOutputPartitioning": "true",
    # The cluster's own Delta Lake (its jars come with EMR's `delta-defaults` classification: delta.enabled).
    **tables.session_conf(),
}


def s3_spark_config(settings: Settings) -> dict[str, str]:
    """S3A for a local Spark whose image root, training root or output is on S3 (s3:// or s3a://); {} otherwise.
    Fails before any work, naming what to install, when the hadoop-aws jars are not cached yet."""
    roots = (settings.image_root, settings.training_root, settings.output_uri)
    if not any(uris.is_s3(uri) for uri in roots):
        return {}
    region = settings.emr_region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return s3a.spark_conf(os.environ.get("AWS_ENDPOINT_URL"), region)


def with_jars(*confs: dict[str, str]) -> dict[str, str]:
    """Spark settings merged, the classpaths they add joined (Delta's jars and S3A's both on it)."""
    merged: dict[str, str] = {}
    for conf in confs:
        for key, value in conf.items():
            if key.endswith(".extraClassPath") and merged.get(key):
                value = os.pathsep.join([merged[key], value])
            merged[key] = value
    return merged


DRIVER_JAVA_OPTIONS = "spark.driver.extraJavaOptions"
# The local driver JVM compiles with C1 only and collects garbage on one thread. Its work in a run is planning,
# Delta's log, Parquet and Arrow transfers, while the CNN runs in Python workers: C2's compiler threads cost a
# one-photo batch about 22 of the JVM's 48 CPU-seconds (on 2 cores: 34 s to 26 s of wall) and slowed a first run.
LOCAL_JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


def local_spark_config(master: str | None = None, settings: Settings | None = None) -> dict[str, str]:
    """Spark settings for one machine: the job's, the venv's Python on workers, small shuffles, no console bar, and
    the driver JVM's class archive when install.sh made one (`class_archive`).

    Reads no environment and writes none: `use_this_python` points PySpark's workers at this interpreter when a
    session starts (`local_session`, `LocalPySparkResource`).
    """
    settings = settings or Settings.from_env()
    archive = class_archive.java_options().get(DRIVER_JAVA_OPTIONS, "")
    return {
        DRIVER_JAVA_OPTIONS: f"{LOCAL_JVM_OPTIONS} {archive}".strip(),
        **with_jars(tables.spark_conf(), s3_spark_config(settings)),
        **JOB_SPARK_CONF,
        "spark.app.name": "fruits-features",
        "spark.master": master or settings.spark_master,
        "spark.driver.memory": settings.driver_memory,
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.sql.shuffle.partitions": "8",
        # Splits of ~450 photos of 100×100 px (64 KiB open cost each) rather than ~1,800: the CNN pass's tasks
        # (`triage.target_partitions`) finish every few seconds, so progress moves and the last wave is short.
        "spark.sql.files.maxPartitionBytes": "32m",
        # List a local folder on the driver (about 1 s for 22,688 files) rather than with a Spark job.
        "spark.sql.sources.parallelPartitionDiscovery.threshold": "100000",
        "spark.ui.showConsoleProgress": "false",
    }


def use_this_python() -> None:
    """Point PySpark's Python workers at this interpreter, unless PYSPARK_PYTHON says otherwise. PySpark started
    from Python reads the workers' interpreter from PYSPARK_PYTHON when its context starts (default `python3` on
    PATH, not the venv's when the venv is not activated; `spark.pyspark.python` reaches only spark-submit), so this
    runs just before a local session starts, never when settings are read."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


def local_session(master: str | None = None, extra: dict[str, str] | None = None, settings: Settings | None = None):
    """A Spark session with the local deployment's settings plus `extra`: the one builder outside Dagster's
    resource (the quarantine listing, the tests, the benchmarks)."""
    from pyspark.sql import SparkSession

    use_this_python()
    builder = SparkSession.builder
    for key, value in {**local_spark_config(master, settings), **(extra or {})}.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


class LocalPySparkResource(PySparkResource):
    """Dagster's PySparkResource for the local deployment: the workers run this interpreter (`use_this_python`)."""

    def setup_for_execution(self, context: InitResourceContext) -> None:
        use_this_python()
        super().setup_for_execution(context)
