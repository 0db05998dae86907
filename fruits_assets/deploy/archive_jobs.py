"""The jobs whose classes the local Spark JVM's class archive holds (`class_archive.build` runs this module):
a session with a run's settings goes through a run's kinds of job, then its JVM archives the classes it loaded."""

from __future__ import annotations

import logging
import sys
import tempfile

import numpy as np
import pandas as pd
from pyspark import SparkConf, SparkContext
from pyspark.java_gateway import launch_gateway
from pyspark.ml.feature import StandardScaler, StandardScalerModel
from pyspark.ml.functions import array_to_vector
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from fruits_assets.deploy.spark_conf import LOCAL_JVM_OPTIONS, local_spark_config, use_this_python


def representative_jobs(dumped: str) -> None:
    """A session with the local settings whose JVM archives its classes at exit, through a run's kinds of job."""
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
    representative_jobs(sys.argv[1])
