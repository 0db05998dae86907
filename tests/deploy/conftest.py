"""What the emr tests share: a moto server on loopback (S3/EMR/IAM APIs, reached by boto3 over HTTP), settings
and a cluster made by the bootstrap recipe; and the emulated EMR of test_emr_emulated*.py (one emulator, one cluster,
its first runs, for the session)."""

import sys
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from fruits_assets.deploy.emr.settings import EmrSettings
from tests import emr_session as emu
from tests.conftest import TRAINING, copy_photos, first_images
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


# ---- the emulated EMR (tests/emr_emulator), shared by test_emr_emulated*.py: one emulator, one cluster ---------------


@pytest.fixture(scope="session")
def photos(tmp_path_factory, fruits_dir) -> dict[str, Path]:
    """A handful of Test photos (4 per class), Training photos (6 per class) and five more for later batches."""
    root = tmp_path_factory.mktemp("emr-photos")
    copy_photos(root / "images", emu.CLASSES, 4, fruits_dir)
    copy_photos(root / "training", emu.CLASSES, 6, TRAINING)
    extra = [first_images(fruits_dir / cls, 6)[-1] for cls in emu.CLASSES]
    extra.append(first_images(fruits_dir / emu.CLASSES[0], 7)[-1])
    extra.append(first_images(fruits_dir / emu.CLASSES[1], 7)[-1])
    return {"images": root / "images", "training": root / "training", "extra": extra}


@pytest.fixture(scope="session")
def shell(tmp_path_factory):
    """The emulated EMR, started as `python -m tests.emr_emulator` (one for the session's emulated tests)."""
    session = emu.EmrShell.start(tmp_path_factory.mktemp("emr"))
    try:
        yield session
    finally:
        session.stop()


@pytest.fixture(scope="session")
def cluster(shell, photos, weights_path) -> str:
    """The README's set-up: bucket, photos, bootstrap upload, `create --wait` (the bootstrap runs on the node)."""
    shell.aws("s3", "mb", f"s3://{emu.BUCKET}", "--region", "eu-west-3")
    shell.aws("s3", "sync", str(photos["images"]), f"{emu.IMAGES}/", "--quiet")
    shell.aws("s3", "sync", str(photos["training"]), f"s3://{emu.BUCKET}/{emu.PREFIX}/training/", "--quiet")
    shell.python("bootstrap/emr_cluster.py", "roles")  # EMR_DefaultRole_V2, the nodes' scoped instance profile
    shell.python("bootstrap/emr_cluster.py", "upload", "--weights", weights_path)
    cluster_id = shell.python("bootstrap/emr_cluster.py", "create", "--wait").stdout.strip().splitlines()[-1]
    shell.env["FRUITS_EMR_CLUSTER_ID"] = cluster_id
    return cluster_id


@pytest.fixture(scope="session")
def first_run(shell, cluster):
    """`FRUITS_DEPLOYMENT=emr .venv/bin/python -m fruits_assets`: the first batch, every asset."""
    return shell.python("-m", "fruits_assets", FRUITS_DEPLOYMENT="emr")


@pytest.fixture(scope="session")
def runner(shell, cluster) -> dict[str, str]:
    """Keys of an IAM user holding exactly the policy `emr_cluster.py policy` prints: whoever runs Dagster."""
    account = shell.client("sts").get_caller_identity()["Account"]
    policy = shell.python("bootstrap/emr_cluster.py", "policy", "--account-id", account).stdout
    iam = shell.client("iam")
    iam.create_user(UserName="fruits-runner")
    iam.put_user_policy(UserName="fruits-runner", PolicyName="fruits", PolicyDocument=policy)
    key = iam.create_access_key(UserName="fruits-runner")["AccessKey"]
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


@pytest.fixture(scope="session")
def later_runs(shell, cluster, first_run, photos, runner):
    """The main command again with nothing new, then after one new photo as the README's runner with IAM enforced
    and a prebuilt code zip (`emr_cluster.py package`, FRUITS_EMR_PACKAGE_URI): (output, EMR steps) of each."""
    before = emu.step_ids(shell, cluster)
    nothing = shell.python("-m", "fruits_assets", FRUITS_DEPLOYMENT="emr")
    nothing_steps = emu.new_steps(shell, cluster, before)
    new = photos["extra"][3]
    shell.aws("s3", "cp", str(new), f"{emu.IMAGES}/{emu.CLASSES[0]}/{new.name}", "--quiet")
    before = emu.step_ids(shell, cluster)
    with emu.iam_enforced(shell):
        package = shell.python("bootstrap/emr_cluster.py", "package", **runner).stdout.strip().splitlines()[-1]
        env = {"FRUITS_DEPLOYMENT": "emr", "FRUITS_EMR_PACKAGE_URI": package, **runner}
        one = shell.python("-m", "fruits_assets", check=False, **env)
        s3, emr = (shell.client(name, **runner) for name in ("s3", "emr"))
        with pytest.raises(ClientError, match="AccessDenied"):  # the policy is enforced, and narrow
            s3.put_object(Bucket=emu.BUCKET, Key=f"{emu.PREFIX}/images/{emu.CLASSES[0]}/not-mine.jpg", Body=b"x")
        with pytest.raises(ClientError, match="AccessDenied"):
            emr.list_clusters()
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    one_steps = emu.new_steps(shell, cluster, before)
    return {"nothing": (nothing, nothing_steps), "one": (one, one_steps), "package": package}
