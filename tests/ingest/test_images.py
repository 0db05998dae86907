"""Listing and reading: labels with spaces, 0-byte files, files set aside, roots that are missing or empty."""

import pytest

from spark_code.ingest import images
from tests.conftest import CLASSES, ORIGINAL_CLASSES


def test_listing_labels_and_sizes(spark, sample_root, expected_outcomes):
    """Every file except hidden ones and clutter, whatever its name or extension; label = the class folder."""
    rows = {r.path: r for r in images.list_images(spark, str(sample_root)).collect()}
    by_rel = {p.split(str(sample_root) + "/", 1)[1]: r for p, r in rows.items()}
    assert set(by_rel) == set(expected_outcomes)
    assert by_rel["at_root.jpg"].label is None
    assert by_rel["Broken Fruit/empty.jpg"].length == 0  # Spark's scan skips it: the listing must not
    assert by_rel["Broken Fruit/empty.jpg"].modification_time is not None
    assert {r.label for r in rows.values()} == set(CLASSES) | set(ORIGINAL_CLASSES) | {"Broken Fruit", None}
    assert by_rel["Broken Fruit/2024-05/nested.jpg"].label == "Broken Fruit"
    assert all(r.length == (sample_root / rel).stat().st_size for rel, r in by_rel.items())


def test_missing_root_fails_naming_the_path(spark, tmp_path):
    missing = tmp_path / "no such folder"
    with pytest.raises(images.ImageRootError, match="no such folder.*FRUITS_IMAGE_ROOT"):
        images.list_images(spark, str(missing))


def test_empty_root_is_a_clear_error(spark, tmp_path):
    listing = images.list_images(spark, str(tmp_path))
    assert listing.count() == 0
    with pytest.raises(images.ImageRootError, match="holds no file"):
        images.require_images(listing.count(), str(tmp_path))
