"""S3 for a Spark outside EMR: hadoop-aws at pyspark's own Hadoop version, fetched once, served as s3:// and s3a://."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from urllib.parse import urlparse

from spark_code.storage import ivy
from spark_code.storage.ivy import DEFAULT_CACHE

logger = logging.getLogger(__name__)

HADOOP_AWS = "org.apache.hadoop:hadoop-aws"
# What hadoop-aws 3.3.4 was built with (resolved beside it by Ivy).
AWS_DEPENDENCIES = ("com.amazonaws_aws-java-sdk-bundle-", "org.wildfly.openssl_wildfly-openssl-")
# S3A's credential chain plus the shared profile files (SSO/profile users), as the AWS CLI and boto3 read them.
CREDENTIAL_PROVIDERS = ",".join(
    [
        "org.apache.hadoop.fs.s3a.TemporaryAWSCredentialsProvider",
        "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider",
        "com.amazonaws.auth.EnvironmentVariableCredentialsProvider",
        "com.amazonaws.auth.profile.ProfileCredentialsProvider",
        "org.apache.hadoop.fs.s3a.auth.IAMInstanceCredentialsProvider",
    ]
)


class S3ASetupError(ivy.JarsMissingError):
    """Spark cannot speak S3 here yet; the message says what to install."""


def hadoop_version() -> str:
    """The Hadoop version pyspark bundles (from its hadoop-client-api jar): hadoop-aws must be exactly this one."""
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    for jar in jars.glob("hadoop-client-api-*.jar"):
        match = re.fullmatch(r"hadoop-client-api-(.+)\.jar", jar.name)
        if match:
            return match.group(1)
    raise S3ASetupError(f"no hadoop-client-api jar in {jars}: is pyspark installed whole?")


def jars(cache: Path = DEFAULT_CACHE) -> list[Path]:
    """The cached hadoop-aws jar of pyspark's Hadoop version and its dependencies (the AWS SDK bundle)."""
    try:
        (aws,) = ivy.cached([f"{HADOOP_AWS}:{hadoop_version()}"], cache, fix=__name__)
    except ivy.JarsMissingError as error:
        raise S3ASetupError(f"to read or write s3://, {error}") from None
    return [aws, *sorted(p for p in (cache / "jars").glob("*.jar") if p.name.startswith(AWS_DEPENDENCIES))]


def fetch(cache: Path = DEFAULT_CACHE) -> list[Path]:
    """Resolve hadoop-aws (and exactly the SDK it was built with) with Spark's own Ivy into `cache`, once."""
    try:
        return jars(cache)
    except S3ASetupError:
        ivy.fetch(f"{HADOOP_AWS}:{hadoop_version()}", cache)
    return jars(cache)


def spark_conf(
    endpoint_url: str | None = None, region: str | None = None, cache: Path = DEFAULT_CACHE
) -> dict[str, str]:
    """Spark settings that serve s3:// and s3a:// through S3A (as EMRFS serves s3:// on EMR), in `region`;
    `endpoint_url` (e.g. AWS_ENDPOINT_URL) points S3A at another S3 API, path-style."""
    classpath = os.pathsep.join(str(p) for p in jars(cache))
    conf = {
        "spark.driver.extraClassPath": classpath,  # in the JVM from its start: spark-submit fetches s3:// files too
        "spark.executor.extraClassPath": classpath,
        "spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "spark.hadoop.fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "spark.hadoop.fs.s3a.aws.credentials.provider": CREDENTIAL_PROVIDERS,
        # Tasks commit their files in one S3 copy, not two (as EMRFS's S3-optimized committer writes without
        # renames): safe here, a Delta table's files are read only once its commit names them; a model version only
        # once its _COMMITTED marker is written after the job (storage.versions).
        "spark.hadoop.mapreduce.fileoutputcommitter.algorithm.version": "2",
    }
    if region:
        conf["spark.hadoop.fs.s3a.endpoint.region"] = region
    if endpoint_url:
        parsed = urlparse(endpoint_url)
        conf |= {
            "spark.hadoop.fs.s3a.endpoint": endpoint_url,
            "spark.hadoop.fs.s3a.path.style.access": "true",
            "spark.hadoop.fs.s3a.connection.ssl.enabled": str(parsed.scheme == "https").lower(),
            "spark.hadoop.fs.s3a.change.detection.mode": "none",  # an emulated S3 may not return version ids
        }
    return conf


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print("\n".join(str(p) for p in fetch()))
