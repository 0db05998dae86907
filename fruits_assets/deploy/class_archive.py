"""The local Spark JVM's class-data archive (AppCDS): Spark's classes loaded and verified once, at install, then mapped
at every start (start-up ~1 s and the first jobs ~2 s sooner on 2 cores)."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_FOLDER = Path.home() / ".cache" / "fruits" / "jvm"


def archive_path(folder: Path = DEFAULT_FOLDER) -> Path:
    """Where the archive of this venv's Spark lives: one per pyspark version and jars folder (the JVM maps an archive
    only for the class path it was made with, and ignores any other)."""
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    key = hashlib.sha256(f"{pyspark.__version__}:{jars.resolve()}".encode()).hexdigest()[:12]
    return folder / f"spark-{pyspark.__version__}-{key}.jsa"


def java_options(folder: Path = DEFAULT_FOLDER) -> dict[str, str]:
    """The driver JVM's option that maps the archive, when `build` made one ({} otherwise: Spark starts as usual).
    A JVM that cannot map it (another Java, another class path) starts without it, silently."""
    path = archive_path(folder)
    if not path.is_file():
        return {}
    return {"spark.driver.extraJavaOptions": f"-XX:SharedArchiveFile={path} -Xshare:auto -Xlog:cds=off,cds+dynamic=off"}


def build(folder: Path = DEFAULT_FOLDER) -> Path:
    """Make the archive (once; ~20 s): a JVM runs the jobs a run runs (Arrow, Parquet, pandas UDFs, Spark ML) and
    archives the classes it loaded when it exits; then it is moved into place."""
    path = archive_path(folder)
    if path.is_file():
        return path
    import subprocess

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        dumped = Path(scratch) / path.name
        subprocess.run(
            [sys.executable, "-m", "fruits_assets.deploy.class_archive", "--dump", str(dumped)], check=True, timeout=600
        )
        if not dumped.is_file():
            raise RuntimeError(f"the JVM wrote no class archive at {dumped}: is this Java 13 or newer?")
        os.replace(dumped, path)
    logger.info("class archive of the Spark JVM: %s", path)
    return path


def _representative_jobs(dumped: str) -> None:
    """A session with the local settings whose JVM archives its classes at exit, through a run's kinds of job."""
    import numpy as np
    import pandas as pd
    from pyspark import SparkConf, SparkContext
    from pyspark.java_gateway import launch_gateway
    from pyspark.ml.feature import StandardScaler, StandardScalerModel
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from fruits_assets.deploy.spark_conf import local_spark_config, use_this_python

    use_this_python()
    options = {
        "spark.driver.extraJavaOptions": f"-XX:ArchiveClassesAtExit={dumped} -Xlog:cds=off",
        "spark.ui.enabled": "false",
    }
    conf = SparkConf().setAll(list({**local_spark_config("local[2]"), **options}.items()))
    gateway = launch_gateway(conf)  # ours, so that we can wait for its JVM to write the archive as it exits
    spark = SparkSession(SparkContext(conf=conf, gateway=gateway))
    with tempfile.TemporaryDirectory() as scratch:
        frame = pd.DataFrame({"path": [f"p{i}" for i in range(64)], "x": list(np.random.rand(64, 8))})
        rows = spark.createDataFrame(frame)
        rows.write.parquet(f"{scratch}/rows")
        read = spark.read.parquet(f"{scratch}/rows")
        doubled = read.mapInPandas(lambda batches: (b.assign(x=b["x"] * 2) for b in batches), read.schema)
        doubled.join(F.broadcast(read.select("path")), "path").groupBy(F.length("path")).count().collect()
        model = StandardScaler(inputCol="v", outputCol="s").fit(read.withColumn("v", array_to_vector("x")))
        model.write().save(f"{scratch}/model")
        StandardScalerModel.load(f"{scratch}/model").transform(read.withColumn("v", array_to_vector("x"))).count()
    spark.stop()
    gateway.proc.stdin.close()  # the JVM exits when its stdin closes, and writes the archive as it does
    gateway.proc.wait(timeout=300)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if sys.argv[1:2] == ["--dump"]:
        _representative_jobs(sys.argv[2])
    else:
        print(build())
