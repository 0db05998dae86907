"""Photo bytes to model-ready pixels (Pillow + pillow-heif, by content): the one decode of the Spark UDF and the app."""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

BOMB_PIXELS = 300_000_000  # a larger declared size is a decompression bomb, whatever the format
Image.MAX_IMAGE_PIXELS = BOMB_PIXELS // 2  # Pillow raises DecompressionBombError above twice this (warns above it)
REDUCE_ABOVE = 2  # non-JPEG images wider than this many model inputs are box-reduced before the resize
# Errors Pillow raises for bytes that are not a readable image (clip-retrieval catches the same family).
DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; transparent pixels are composited on white."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


@functools.cache
def register_formats() -> None:
    """Teach Pillow HEIC/HEIF (pillow-heif), once per process: each Spark Python worker, `fruits classify`.

    AVIF is native in Pillow 13.
    """
    from pillow_heif import register_heif_opener

    register_heif_opener()


def _reduced(image: Image.Image, size: int) -> Image.Image:
    """A big image shrunk cheaply towards `size` before the exact resize (a 50-megapixel photo stays small)."""
    factor = min(image.size) // (REDUCE_ABOVE * size)
    return image.reduce(factor) if factor >= 2 else image


def decode_image(data: bytes, size: int) -> np.ndarray:
    """Decode image bytes (any format Pillow or pillow-heif reads, recognised by content) to a `size`×`size`×3
    uint8 RGB array (EXIF-rotated, bilinear resize).

    JPEGs are decoded at reduced size by the decoder itself (draft mode); other big images are box-reduced first.
    Raises one of `DECODE_ERRORS` when the bytes are not a readable image, or declare more than BOMB_PIXELS.
    """
    register_formats()
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (size, size))  # JPEG: let the decoder downscale big photos cheaply
        rgb = _reduced(_to_rgb(ImageOps.exif_transpose(image)), size)
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8)


def try_decode(data: bytes | None, size: int) -> tuple[np.ndarray | None, str | None]:
    """Decode, returning `(pixels, None)` or `(None, reason)` for an unreadable image."""
    if not data:
        return None, "empty file (0 bytes)"
    try:
        return decode_image(data, size), None
    except UnidentifiedImageError:
        return None, f"not an image (no image format recognised in its content; it starts with {bytes(data[:8])!r})"
    except Image.DecompressionBombError as error:
        return None, f"decompression bomb: {error}"
    except DECODE_ERRORS as error:
        return None, f"undecodable image: {type(error).__name__}: {error}"
