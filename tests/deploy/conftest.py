"""What the emr tests share: a moto server on loopback (S3/EMR/IAM APIs, reached by boto3 over HTTP), settings
and a cluster made by the bootstrap recipe."""

import sys
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from fruits_assets.deploy.emr.settings import EmrSettings
from tests.moto_server import moto_server

REPO = Path(__file__).resolve().parents[2]
REGION = "eu-west-3"
BUCKET = "fruits-data"


def load_recipe():
    spec = spec_from_file_location("emr_cluster", REPO / "bootstrap" / "emr_cluster.py")
    module = module_from_spec(spec)
    sys.modules["emr_cluster"] = module
    spec.loader.exec_module(module)
    return module


recipe = load_recipe()


@pytest.fixture(scope="module")
def moto_url():
    with moto_server() as url:
        yield url


@pytest.fixture
def aws(moto_url, monkeypatch):
    """boto3 pointed at the moto server (AWS_ENDPOINT_URL); fake keys live only in this test process."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    session = boto3.session.Session(region_name=REGION)
    s3 = session.client("s3")
    try:
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    except ClientError as error:
        if error.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
            raise
    return session


def emr_settings(**overrides) -> EmrSettings:
    values = {
        "staging_bucket": BUCKET,
        "staging_prefix": "fruits/staging",
        "output_uri": f"s3://{BUCKET}/fruits/output",
        "image_root": f"s3://{BUCKET}/fruits/images",
        "region": REGION,
    }
    return EmrSettings(**(values | overrides))


def make_cluster(aws, settings: EmrSettings) -> str:
    return recipe.create_cluster(aws.client("emr"), recipe.job_flow_request(settings))
