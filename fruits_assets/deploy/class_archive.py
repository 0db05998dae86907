"""The local Spark JVM's class-data archive (AppCDS): Spark's classes loaded and verified once, at install, then mapped
at every start (start-up ~1 s and the first jobs ~2 s sooner on 2 cores)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_FOLDER = Path.home() / ".cache" / "fruits" / "jvm"


def archive_path(folder: Path = DEFAULT_FOLDER) -> Path:
    """Where the archive of this venv's Spark lives, named for the venv and for the state of its jars and its Java.
    The JVM maps an archive only while every jar has the size and time it had when the archive was made, and silently
    ignores it otherwise: a venv re-installed in place gets a new name, so `build` makes a new archive."""
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    return folder / f"{_venv_prefix(pyspark.__version__, jars)}-{_digest(_class_path_state(jars))}.jsa"


def _venv_prefix(version: str, jars: Path) -> str:
    """The part of an archive's name that names the venv (its pyspark version and jars folder), not its state."""
    return f"spark-{version}-{_digest(f'{version}:{jars.resolve()}')}"


def _class_path_state(jars: Path) -> str:
    """What the JVM checks before it maps an archive: each jar's size and time (pyspark's and Delta Lake's, which
    every local session puts on its class path), and the Java that maps it."""
    from spark_code.storage import ivy, tables

    java_home = os.environ.get("JAVA_HOME")
    java = Path(java_home, "bin", "java") if java_home else Path(shutil.which("java") or "java")
    try:
        extra = tables.jars()
    except ivy.JarsMissingError:
        extra = []
    stats = {f: f.stat() for f in [*extra, *sorted(jars.glob("*.jar")), java.resolve()] if f.exists()}
    return "\n".join(f"{f}:{st.st_size}:{st.st_mtime_ns}" for f, st in stats.items())


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _prune_stale(path: Path) -> None:
    """Remove the archives this venv's jars or Java outgrew (~150 MB each); other venvs' archives stay."""
    prefix = path.name[: path.name.rindex("-")]
    legacy = path.with_name(f"{prefix}.jsa")  # named for the venv alone, before the state was in the name
    for stale in [*path.parent.glob(f"{prefix}-*.jsa"), legacy]:
        if stale != path and stale.is_file():
            stale.unlink()
            logger.info("removed a stale class archive: %s", stale)


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
    _prune_stale(path)
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

    from fruits_assets.deploy.spark_conf import LOCAL_JVM_OPTIONS, local_spark_config, use_this_python

    use_this_python()
    options = {  # the JVM options a run's driver has, the archive's own added
        "spark.driver.extraJavaOptions": f"{LOCAL_JVM_OPTIONS} -XX:ArchiveClassesAtExit={dumped} -Xlog:cds=off",
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
        read.write.format("delta").save(f"{scratch}/table")  # a Delta commit and a read of it
        spark.read.format("delta").load(f"{scratch}/table").count()
    spark.stop()
    gateway.proc.stdin.close()  # the JVM exits when its stdin closes, and writes the archive as it does
    gateway.proc.wait(timeout=300)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if sys.argv[1:2] == ["--dump"]:
        _representative_jobs(sys.argv[2])
    else:
        print(build())
