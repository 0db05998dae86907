"""Listing and decoding: labels with spaces, 0-byte files, every broken or awkward format."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spark_code import images
from tests.conftest import CLASSES, ORIGINAL_CLASSES, first_images


def _decode(path: Path, size: int = 224):
    return images.try_decode(path.read_bytes(), size)


def test_fruits360_photo_decodes_to_model_input(fruits_dir):
    pixels, reason = _decode(first_images(fruits_dir / "Banana", 1)[0])
    assert reason is None and pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8
    assert 50 < pixels.mean() < 250  # a real photo on a white background, not a blank array


def test_original_size_photo_is_resized(original_dir):
    photo = first_images(original_dir / ORIGINAL_CLASSES[0], 1)[0]
    assert Image.open(photo).size != (100, 100)
    pixels, reason = _decode(photo, 160)
    assert reason is None and pixels.shape == (160, 160, 3)


@pytest.mark.parametrize("name", ["truncated.jpg", "corrupt.jpg", "empty.jpg", "notes.jpg"])
def test_broken_files_get_a_reason(sample_root, name):
    pixels, reason = _decode(sample_root / "Broken Fruit" / name)
    assert pixels is None
    assert reason.startswith("empty file") if name == "empty.jpg" else reason.startswith("undecodable image")


@pytest.mark.parametrize("name", ["alpha.png", "gray.jpg", "cmyk.jpg"])
def test_awkward_modes_become_rgb(sample_root, name):
    pixels, reason = _decode(sample_root / "Broken Fruit" / name)
    assert reason is None and pixels.shape == (224, 224, 3)


def test_transparent_pixels_are_composited_on_white():
    clear = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    buffer = io.BytesIO()
    clear.save(buffer, format="PNG")
    pixels = images.decode_image(buffer.getvalue(), 32)
    assert (pixels == 255).all()


def test_spark_path_matches_binaryfile_form():
    assert images.spark_path("file:///a/Apple%20Braeburn/x%25.jpg") == "file:/a/Apple Braeburn/x%.jpg"
    assert images.spark_path("s3://bucket/Test/Apple%20Braeburn/1.jpg") == "s3://bucket/Test/Apple Braeburn/1.jpg"


def test_listing_labels_and_sizes(spark, sample_root, expected_outcomes):
    rows = {r.path: r for r in images.list_images(spark, str(sample_root)).collect()}
    by_rel = {p.split(str(sample_root) + "/", 1)[1]: r for p, r in rows.items()}
    assert set(by_rel) == set(expected_outcomes)
    assert by_rel["at_root.jpg"].label is None
    assert by_rel["Broken Fruit/empty.jpg"].length == 0  # Spark's scan skips it: the listing must not
    assert by_rel["Broken Fruit/empty.jpg"].modification_time is not None
    assert {r.label for r in rows.values()} >= set(CLASSES) | set(ORIGINAL_CLASSES)
    assert all(r.length == (sample_root / rel).stat().st_size for rel, r in by_rel.items())


def test_missing_root_fails_naming_the_path(spark, tmp_path):
    missing = tmp_path / "no such folder"
    with pytest.raises(images.ImageRootError, match="no such folder.*FRUITS_IMAGE_ROOT"):
        images.list_images(spark, str(missing))


def test_empty_root_is_a_clear_error(spark, tmp_path):
    listing = images.list_images(spark, str(tmp_path))
    assert listing.count() == 0
    with pytest.raises(images.ImageRootError, match="holds no image file"):
        images.require_images(listing.count(), str(tmp_path))
