"""Small files beside the tables (sensor snapshots and change lists, the ONNX cache) on a local disk or S3, through
`pyarrow.fs`: written whole or not at all, read, listed by prefix and pruned."""

from __future__ import annotations

import os
import tempfile

from pyarrow import fs as pafs

from spark_code.storage.uris import is_s3, split


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(file system, path inside it) of a local path (`file:` or none) or an s3:// / s3a:// URI."""
    if is_s3(uri):
        bucket, key = split(uri)
        return pafs.FileSystem.from_uri(f"s3://{bucket}/{key}")
    return pafs.LocalFileSystem(), os.path.abspath(uri.removeprefix("file:"))


def write_whole(uri: str, data: bytes) -> None:
    """Write `data` so a reader sees either nothing or all of it: on a local disk a temporary file renamed over the
    target, on S3 one PUT (an object appears only when complete)."""
    files, path = filesystem(uri)
    if not isinstance(files, pafs.LocalFileSystem):  # no folder to make on S3 (a marker object would be listed)
        with files.open_output_stream(path) as out:
            out.write(data)
        return
    folder, name = path.rsplit("/", 1)
    files.create_dir(folder, recursive=True)
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


def open_input(uri: str):
    """A readable file of `uri` (FileNotFoundError if there is none)."""
    files, path = filesystem(uri)
    return files.open_input_file(path)


def prune(folder: str, prefix: str, suffix: str, keep: int) -> None:
    """Delete all but the `keep` last (by name) files of `folder` whose names start with `prefix`, end with `suffix`."""
    files, path = filesystem(folder)
    found = files.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    names = sorted(
        info.path
        for info in found
        if info.type == pafs.FileType.File and info.base_name.startswith(prefix) and info.base_name.endswith(suffix)
    )
    for old in names[: max(len(names) - keep, 0)]:
        files.delete_file(old)


def list_names(folder: str) -> list[str]:
    """Names of the files and folders directly under `folder` (on S3: the keys' next path parts); [] if none."""
    files, path = filesystem(folder)
    try:
        found = files.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except NotADirectoryError:
        return []
    return [info.base_name for info in found]


def list_tree(folder: str) -> list[str]:
    """Paths of every file under `folder`, relative to it ([] if none)."""
    files, path = filesystem(folder)
    try:
        found = files.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=True))
    except NotADirectoryError:
        return []
    root = path.rstrip("/") + "/"
    return [info.path[len(root) :] for info in found if info.type == pafs.FileType.File]


def delete(uri: str) -> None:
    """Delete the file at `uri`."""
    files, path = filesystem(uri)
    files.delete_file(path)


def exists(uri: str) -> bool:
    """Whether a file (or folder) exists at `uri`."""
    files, path = filesystem(uri)
    return files.get_file_info(path).type != pafs.FileType.NotFound


def size(uri: str) -> int | str:
    """The size in bytes of the file at `uri`, or "?" when there is none."""
    files, path = filesystem(uri)
    info = files.get_file_info(path)
    return info.size if info.type == pafs.FileType.File else "?"


def read_bytes(uri: str) -> bytes | None:
    """The whole content of the file at `uri`, or None when there is none."""
    try:
        with open_input(uri) as handle:
            return handle.read()
    except FileNotFoundError:
        return None
