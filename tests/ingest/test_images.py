"""Listing and decoding: labels with spaces, 0-byte files, every broken or awkward format."""

import io
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from spark_code.ingest import images
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
    expected = {"empty.jpg": "empty file", "notes.jpg": "not an image ("}.get(name, "undecodable image")
    assert reason.startswith(expected)


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


@pytest.mark.parametrize("name", ["photo.heic", "photo.avif", "z.jfif", "y.Jpg"])
def test_phone_formats_decode_by_content(sample_root, name):
    pixels, reason = _decode(sample_root / "Broken Fruit" / name)
    assert reason is None and pixels.shape == (224, 224, 3) and 50 < pixels.mean() < 250


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares `width`×`height` (a decompression bomb's shape)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def test_real_bombs_are_quarantined_with_their_reason():
    pixels, reason = images.try_decode(_png_declaring(20_000, 20_000), 224)  # 400 MP declared
    assert pixels is None and reason.startswith("decompression bomb") and "300000000" in reason


MEMORY_SCRIPT = """
import resource, sys
from spark_code.ingest import images
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
pixels, reason = images.try_decode(data, 224)
assert reason is None and pixels.shape == (224, 224, 3), reason
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_50_megapixel_photo_decodes_small(tmp_path):
    big = Image.new("RGB", (8660, 5774), (200, 180, 40))  # 50 MP: 150 MB once decoded in full
    ImageDraw.Draw(big).ellipse((1000, 1000, 7000, 5000), fill=(250, 220, 30))
    big.save(tmp_path / "big.jpg", quality=60)
    del big
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path / "big.jpg")], capture_output=True)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert int(out.stdout) < 60  # MiB of peak growth: the JPEG decoder works at 1/8 size (draft mode)


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
