"""EMR step entry point: the run's FRUITS_* settings, staged beside the step, into the environment, then dagster-aws's.

spark-submit runs this file on the primary node (the launcher uploads it as the step's main file). Whatever rebuilds
the job there (the main command's job, or the code location `dagster dev` launched from) then reads the settings the
run was launched with, not those of the cluster's creation.
"""

import json
import os
import sys

SETTINGS_FILE = "fruits_settings.json"


def load_settings(s3_client, bucket: str, step_run_ref_key: str) -> dict[str, str]:
    """The launching side's FRUITS_* variables, staged beside the step's pickled run ref, put into os.environ."""
    key = f"{step_run_ref_key.rsplit('/', 1)[0]}/{SETTINGS_FILE}"
    env = json.loads(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())
    os.environ.update(env)
    return env


def start_spark() -> None:
    """Create the step's SparkSession (spark-submit's JVM is already up) while Dagster is imported and the steps are
    unpickled: the first Spark step then finds it made (`getOrCreate` waits for it under the builder's lock)."""
    from pyspark.sql import SparkSession

    SparkSession.builder.getOrCreate()


def main(bucket: str, step_run_ref_key: str) -> None:
    """Set the run's settings, then run the staged steps: a batch of several (`fruits_assets.deploy.emr.batch`),
    or one as dagster-aws's own main does."""
    import pickle
    import threading

    import boto3

    if os.environ.get("PYSPARK_GATEWAY_PORT"):  # under spark-submit (its JVM is the gateway), as on EMR
        threading.Thread(target=start_spark, name="spark-start", daemon=True).start()
    s3 = boto3.client("s3")
    load_settings(s3, bucket, step_run_ref_key)
    staged = pickle.loads(s3.get_object(Bucket=bucket, Key=step_run_ref_key)["Body"].read())
    if isinstance(staged, list):
        from fruits_assets.deploy.emr import batch

        batch.run_steps(s3, bucket, step_run_ref_key, staged)
        return
    from dagster_aws.emr import emr_step_main

    emr_step_main.main(bucket, step_run_ref_key)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
