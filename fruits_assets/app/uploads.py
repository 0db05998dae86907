"""A photo out of an HTTP request: a multipart field or the raw body, bounded in size, checked before decoding."""

from __future__ import annotations

import contextlib
import io

from fastapi import HTTPException, Request
from PIL import Image
from starlette.datastructures import UploadFile

from fruits_assets.app.engine import FruitClassifier, NotAnImageError
from spark_code.featurize.decode import DECODE_ERRORS, register_formats

FIELD = "photo"
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the photo
DRAIN_FACTOR = 4  # an oversized body is read (and dropped) up to this many limits, so the client sees the 413
RAW_TYPES = ("image/", "application/octet-stream")
MAX_PIXELS = 50_000_000  # non-JPEG images above this are refused (phones' photos are 12 to 48 MP)
BODY = {  # the request body in the OpenAPI docs: the photo as a multipart field, or raw
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {FIELD: {"type": "string", "format": "binary"}},
                    "required": [FIELD],
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def decode(classifier: FruitClassifier, data: bytes, name: str):
    """The classifier's decode, after a look at the header: a non-JPEG image over MAX_PIXELS is refused (JPEGs are
    decoded at reduced size whatever their size; others are decoded whole, so their pixels bound the memory)."""
    register_formats()
    pixels, jpeg = 0, True
    with contextlib.suppress(*DECODE_ERRORS), Image.open(io.BytesIO(data)) as image:  # unreadable: decode says why
        pixels, jpeg = image.size[0] * image.size[1], image.format == "JPEG"
    if not jpeg and pixels > MAX_PIXELS:
        raise NotAnImageError(f"{name}: {pixels} pixels > {MAX_PIXELS} (a decompression bomb?)")
    return classifier.decode(data, name)


async def _read_body(request: Request, allowed: int, slack: int = 0) -> bytes:
    """The request body, refused with 413 past `allowed` (+ `slack`) bytes (dropped unread beyond, up to a bound)."""
    limit, declared = allowed + slack, request.headers.get("content-length", "")
    too_large = HTTPException(413, f"upload larger than the limit of {allowed} bytes (FRUITS_SERVE_MAX_UPLOAD_MB)")
    if declared.isdigit() and int(declared) > limit:
        await _drain(request, DRAIN_FACTOR * limit)
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            await _drain(request, DRAIN_FACTOR * limit - size)
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _drain(request: Request, budget: int) -> None:
    """Read and drop the rest of the body, up to `budget` bytes, so the client can read our answer."""
    with contextlib.suppress(Exception):  # the client may have gone: nothing to answer then
        async for chunk in request.stream():
            budget -= len(chunk)
            if budget <= 0:
                return


async def photo(request: Request, limit: int) -> tuple[bytes, str]:
    """The uploaded photo and its name: multipart field `photo`, or the raw body with an image content type."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        body = await _read_body(request, limit, MULTIPART_SLACK)

        async def replay() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        async with Request(request.scope, replay).form(max_files=4, max_fields=16) as form:
            upload = form.get(FIELD)
            if not isinstance(upload, UploadFile):
                found = ", ".join(repr(key) for key in form) or "none"
                raise HTTPException(400, f"no file in multipart field {FIELD!r} (fields sent: {found})")
            data, name = await upload.read(), upload.filename or FIELD
    elif kind.startswith(RAW_TYPES):
        data, name = await _read_body(request, limit), FIELD
    else:
        raise HTTPException(
            415, f"content type {kind or 'none'!r}: send multipart/form-data with field {FIELD!r}, or the raw image"
        )
    if len(data) > limit:
        raise HTTPException(413, f"photo of {len(data)} bytes > the limit of {limit} (FRUITS_SERVE_MAX_UPLOAD_MB)")
    if not data:
        raise HTTPException(400, f"{name}: empty upload (0 bytes)")
    return data, name
