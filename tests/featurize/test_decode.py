"""Decoding by content: every broken or awkward format, phone formats, bombs and 50-megapixel photos."""

import io
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from spark_code.featurize import decode
from tests.conftest import ORIGINAL_CLASSES, first_images


def _decode(path: Path, size: int = 224):
    return decode.try_decode(path.read_bytes(), size)


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
    pixels = decode.decode_image(buffer.getvalue(), 32)
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
    pixels, reason = decode.try_decode(_png_declaring(20_000, 20_000), 224)  # 400 MP declared
    assert pixels is None and reason.startswith("decompression bomb") and "300000000" in reason


MEMORY_SCRIPT = """
import resource, sys
from spark_code.featurize import decode
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
pixels, reason = decode.try_decode(data, 224)
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
