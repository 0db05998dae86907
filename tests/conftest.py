"""Shared fixtures: one local Spark session, the real weights, small real image samples plus broken files."""

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from spark_code.featurize.cnn import WEIGHTS_FILE

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FRUITS_SHARED", REPO.parent / "shared"))
FRUITS = SHARED / "fruits-360" / "Test"
TRAINING = SHARED / "fruits-360" / "Training"
ORIGINAL = SHARED / "fruits-360-original" / "Test"
WEIGHTS = SHARED / "weights" / WEIGHTS_FILE
CLASSES = ("Apple Braeburn", "Banana", "Cherry 1")
ORIGINAL_CLASSES = ("Cherry 3", "apple_golden_1")


def _require_shared() -> None:
    missing = [str(p) for p in (FRUITS, ORIGINAL, WEIGHTS) if not p.exists()]
    if missing:
        pytest.fail(
            f"test data missing: {missing}. The tests need ../shared next to the checkout (fruits-360, "
            "fruits-360-original, weights); set FRUITS_SHARED to its location.",
            pytrace=False,
        )


def first_images(folder: Path, n: int) -> list[Path]:
    """The first n image files of a class folder, in name order."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".jpg")[:n]


def copy_photos(root: Path, classes, n: int, source: Path = FRUITS) -> Path:
    """The first n photos of each class of `source` copied into `root/<class>/`; returns `root`."""
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for image in first_images(source / name, n):
            shutil.copy(image, root / name / image.name)
    return root


def copy_photo_as(photo: Path, folder: Path, names) -> list[Path]:
    """`photo` copied to `folder/<name>` for each of `names` (a name may hold sub-folders: they are made); returns the
    copies."""
    copies = []
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        copies.append(Path(shutil.copy(photo, folder / name)))
    return copies


@pytest.fixture(scope="session")
def fruits_dir() -> Path:
    """../shared/fruits-360/Test (131 classes of 100×100 photos)."""
    _require_shared()
    return FRUITS


@pytest.fixture(scope="session")
def original_dir() -> Path:
    """../shared/fruits-360-original/Test (original-size photos)."""
    _require_shared()
    return ORIGINAL


@pytest.fixture(scope="session")
def weights_path() -> str:
    _require_shared()
    return str(WEIGHTS)


@pytest.fixture(scope="session")
def spark():
    """One local[2] session for the whole run, with the project's own local settings."""
    from fruits_assets.deploy.spark_conf import local_session

    session = local_session("local[2]", {"spark.driver.memory": "2g"})
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()


PHONE_OUTCOMES = {  # what phones and desktops leave in a folder, and what becomes of it
    "Broken Fruit/photo.heic": "featurized",
    "Broken Fruit/photo.avif": "featurized",
    "Broken Fruit/z.jfif": "featurized",
    "Broken Fruit/y.Jpg": "featurized",
    "Broken Fruit/_DSC0001.JPG": "featurized",
    "Broken Fruit/IMG 12:30 #1 [a] {b} é 🍋 ?.jpg": "featurized",
    "Broken Fruit/2024-05/nested.jpg": "featurized",
    "Broken Fruit/notes.txt": "quarantined",
}


def write_phone_files(cls: Path, image: Image.Image) -> None:
    """HEIC (pillow-heif), AVIF (Pillow), odd names and extensions, a nested folder, OS clutter, a symlink loop."""
    from pillow_heif import register_heif_opener

    register_heif_opener()
    image.save(cls / "photo.heic", format="HEIF")
    image.save(cls / "photo.avif", format="AVIF")
    for name in ("z.jfif", "y.Jpg", "_DSC0001.JPG", "IMG 12:30 #1 [a] {b} é 🍋 ?.jpg", "2024-05/nested.jpg"):
        (cls / name).parent.mkdir(exist_ok=True)
        image.save(cls / name, format="JPEG")
    (cls / "notes.txt").write_text("not a photo\n")
    (cls / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # skipped by rule: hidden
    (cls / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")  # skipped by rule: OS clutter
    (cls / "loop").symlink_to(cls.parent, target_is_directory=True)  # skipped: a link back up, never walked


SKIPPED_IN_SAMPLE = 3  # .DS_Store, Thumbs.db, the loop


def make_broken_files(root: Path, good_jpeg: Path) -> dict[str, str]:
    """Write the bad and awkward inputs into `root`; return {relative path: expected outcome}."""
    cls = root / "Broken Fruit"
    cls.mkdir(parents=True, exist_ok=True)
    data = good_jpeg.read_bytes()
    (cls / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (cls / "corrupt.jpg").write_bytes(data[:200] + bytes(len(data) - 200))
    (cls / "empty.jpg").write_bytes(b"")
    (cls / "notes.jpg").write_text("this is not an image\n")
    image = Image.open(good_jpeg).convert("RGB")
    rgba = image.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(image.size))
    rgba.save(cls / "alpha.png")
    image.convert("L").save(cls / "gray.jpg")
    image.convert("CMYK").save(cls / "cmyk.jpg")
    shutil.copy(good_jpeg, root / "at_root.jpg")
    write_phone_files(cls, image)
    return {
        **PHONE_OUTCOMES,
        "Broken Fruit/truncated.jpg": "quarantined",
        "Broken Fruit/corrupt.jpg": "quarantined",
        "Broken Fruit/empty.jpg": "quarantined",
        "Broken Fruit/notes.jpg": "quarantined",
        "Broken Fruit/alpha.png": "featurized",
        "Broken Fruit/gray.jpg": "featurized",
        "Broken Fruit/cmyk.jpg": "featurized",
        "at_root.jpg": "quarantined",
    }


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory) -> Path:
    """3 Fruits-360 classes × 4 photos (100×100), 2 original-size classes × 2 photos, and the broken files."""
    _require_shared()
    root = tmp_path_factory.mktemp("images")
    copy_photos(root, CLASSES, 4)
    copy_photos(root, ORIGINAL_CLASSES, 2, ORIGINAL)
    expected = make_broken_files(root, first_images(FRUITS / CLASSES[0], 1)[0])
    expected_file(root).write_text("\n".join(f"{k}\t{v}" for k, v in expected.items()))
    return root


def expected_file(root: Path) -> Path:
    """Where the sample's expected outcomes are written: beside the root, not in it (every file in it is listed)."""
    return root.with_name(root.name + "-expected.txt")


@pytest.fixture(scope="session")
def training_root(tmp_path_factory) -> Path:
    """A labelled training sample: the sample's 3 Fruits-360 classes × 6 photos from ../shared/fruits-360/Training."""
    _require_shared()
    return copy_photos(tmp_path_factory.mktemp("training"), CLASSES, 6, TRAINING)


@pytest.fixture(scope="session")
def expected_outcomes(sample_root) -> dict[str, str]:
    """{path relative to sample_root: 'featurized' | 'quarantined'} for every file listed in the sample."""
    outcomes = dict(line.split("\t") for line in expected_file(sample_root).read_text().splitlines())
    for path in sample_root.glob("*/*.jpg"):
        outcomes.setdefault(str(path.relative_to(sample_root)), "featurized")
    return outcomes


@pytest.fixture(scope="session")
def run(spark, sample_root, training_root, weights_path, tmp_path_factory):
    """One full local materialization of the sample (classifier included, trained on `training_root`).

    Returns (result, output base, process counter deltas).
    """
    from dagster import DagsterInstance

    from fruits_assets.cli.materialize import materialize_batch
    from fruits_assets.defs import ASSETS, CHECKS
    from fruits_assets.deploy.deployments import local_resources
    from spark_code.featurize import udf

    output = str(tmp_path_factory.mktemp("warehouse"))
    before = udf.process_totals()
    result = materialize_batch(
        [*ASSETS, *CHECKS],
        local_resources(str(sample_root), output, weights_path, training_root=str(training_root)),
        DagsterInstance.ephemeral(),
    )
    after = udf.process_totals()
    return result, output, {key: after[key] - before[key] for key in after}


@pytest.fixture
def s3_bucket(monkeypatch):
    """A moto server on loopback with bucket `fruits` (eu-west-3); boto3 reaches it through AWS_* variables.

    Yields (server URL, S3 client).
    """
    import boto3

    from tests.moto_server import moto_server

    with moto_server() as url:
        settings = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "eu-west-3"}
        for name, value in {**settings, "AWS_ENDPOINT_URL": url}.items():
            monkeypatch.setenv(name, value)
        client = boto3.client("s3", endpoint_url=url, region_name="eu-west-3")
        client.create_bucket(Bucket="fruits", CreateBucketConfiguration={"LocationConstraint": "eu-west-3"})
        yield url, client


# The edit loop's subsets: `pytest -m "not slow"` leaves out the browser, the cluster, the moto server and whole
# materializations; `-m "not slow and not cnn"` also leaves out every test that builds the CNN (the fast subset, for
# changes outside the model). The full suite (what CI runs) is plain `pytest`. A slow module says so itself
# (`pytestmark = pytest.mark.slow`); a test elsewhere that takes a whole materialization's fixture is slow too.
SLOW_FIXTURES = {"run", "grown", "saved", "materialized"}


def pytest_collection_modifyitems(config, items):
    """Mark the tests that take a whole materialization's fixture as `slow`, and those that build the CNN (they
    need the weights) as `cnn`."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if SLOW_FIXTURES & fixtures:
            item.add_marker(pytest.mark.slow)
        if "weights_path" in fixtures:
            item.add_marker(pytest.mark.cnn)
