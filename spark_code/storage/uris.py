"""Where a URI points: S3 (s3://, s3a://) or a local path, and its parts; the one place that tells them apart."""

from __future__ import annotations

import os
from urllib.parse import urlparse

S3_SCHEMES = ("s3", "s3a")


def is_s3(uri: str | None) -> bool:
    """Whether `uri` names S3 (s3:// or s3a://)."""
    return bool(uri) and urlparse(uri).scheme in S3_SCHEMES and bool(urlparse(uri).netloc)


def split(uri: str) -> tuple[str, str]:
    """(bucket, key) of an s3:// or s3a:// URI."""
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


def qualify(uri: str) -> str:
    """A local path becomes an absolute `file:` URI (as Spark writes it in a `path` column); URIs with a scheme are
    kept, without a trailing slash."""
    return uri.rstrip("/") if urlparse(uri).scheme else "file:" + os.path.abspath(uri)


def is_supported(uri: str) -> bool:
    """Whether the project reads and writes `uri`: a local path (`file:` or none) or S3."""
    return "://" not in uri or uri.startswith("file:") or is_s3(uri)


def join(folder: str, name: str) -> str:
    """`name` inside `folder`: an s3:// URI under an S3 folder, a plain path under a local one (`file:` dropped)."""
    if is_s3(folder):
        return f"{folder.rstrip('/')}/{name}"
    return os.path.join(folder.removeprefix("file:"), name)
