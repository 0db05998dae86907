"""Materialize the asset graph against a given Spark master in this process; print a JSON summary.

Usage: python -m tests.run_on_master MASTER_URL IMAGE_ROOT OUTPUT_URI WEIGHTS UI_PORT
"""

import json
import sys
import urllib.request

from dagster import DagsterInstance
from pyspark.sql import SparkSession

from fruits_assets.deploy.deployments import local_resources
from fruits_assets.deploy.spark_conf import local_spark_config
from tests.helpers import materialize_features


def cluster_config(master: str, ui_port: str) -> dict[str, str]:
    """The project's Spark settings plus one-core, bounded executors and a loopback-only driver."""
    return {
        **local_spark_config(master),
        "spark.driver.memory": "2g",
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.ui.port": ui_port,
        "spark.executor.cores": "1",
        "spark.executor.memory": "1g",
        "spark.cores.max": "2",
        "spark.task.maxFailures": "4",
    }


def executor_tasks() -> dict[str, dict]:
    """Per executor (driver excluded): host:port and task counts, from the driver's REST API."""
    sc = SparkSession.getActiveSession().sparkContext
    url = f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}/allexecutors"
    with urllib.request.urlopen(url, timeout=10) as response:
        executors = json.load(response)
    return {
        e["id"]: {"host": e["hostPort"], "tasks": e["totalTasks"], "failed": e["failedTasks"]}
        for e in executors
        if e["id"] != "driver"
    }


def main() -> None:
    master, root, output, weights, ui_port = sys.argv[1:6]
    resources = local_resources(root, output, weights, spark_config=cluster_config(master, ui_port))
    result = materialize_features(resources, DagsterInstance.ephemeral())
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    print(json.dumps({"success": result.success, "checks": checks, "executors": executor_tasks()}))


if __name__ == "__main__":
    main()
