"""Every file under a root, local folder or S3 prefix, by one rule set (hidden files and OS clutter skipped, links
followed once): the Spark listing and the sensor walk through it, so they cannot disagree."""

from __future__ import annotations

import logging
import os
import stat
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlparse

from spark_code.storage.uris import is_s3

logger = logging.getLogger(__name__)

Entry = tuple[int, int]  # (size in bytes, modification time in ns)

# Files and folders that operating systems, cameras' PCs and archivers leave behind; compared case-insensitively.
OS_CLUTTER = frozenset(
    {"thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r", "__macosx", "$recycle.bin", "system volume information"}
)
HIDDEN = "hidden"  # a name starting with '.': .DS_Store, ._IMG_0001.JPG (AppleDouble), .thumbnails/, .Trashes/
CLUTTER = "os_clutter"
NOT_REGULAR = "not_a_regular_file"  # FIFO, socket, device: reading one could block forever
BROKEN_LINK = "broken_link"
LINK_TO_SEEN_FOLDER = "link_to_walked_folder"  # a loop back up, or a second way into a folder already walked
LINK_TO_SEEN_FILE = "link_to_listed_file"  # the same real file reached a second time through a link
UNREADABLE_FOLDER = "unreadable_folder"
RULES = (HIDDEN, CLUTTER, NOT_REGULAR, BROKEN_LINK, LINK_TO_SEEN_FOLDER, LINK_TO_SEEN_FILE, UNREADABLE_FOLDER)


@dataclass
class RootListing:
    """What a walk of the root found: files by path relative to the root, and skipped entries counted by rule."""

    files: dict[str, Entry] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    linked_folders: int = 0  # symbolic links to folders met anywhere in the tree (followed or not)

    def found(self) -> int:
        """Entries met: listed files plus skipped ones (a skipped folder counts once)."""
        return len(self.files) + sum(self.skipped.values())


def skip_rule(name: str) -> str | None:
    """The rule that skips a file or folder name, or None when it is listed (or walked)."""
    if name.startswith("."):
        return HIDDEN
    if name.lower() in OS_CLUTTER:
        return CLUTTER
    return None


def local_path(path: str) -> str:
    """A local path or `file:` URI as a plain path (`file:/a/b#1.jpg` → `/a/b#1.jpg`: no URL parsing, no escapes)."""
    if not path.startswith("file:"):
        return path
    rest = path[len("file:") :]
    return rest[rest.index("/", 2) :] if rest.startswith("//") else rest


def _scandir(folder: str, listing: RootListing) -> Iterator[os.DirEntry] | None:
    """`os.scandir(folder)`, or None when the folder cannot be read (counted, logged)."""
    try:
        return os.scandir(folder)
    except OSError as error:
        logger.warning("cannot read folder %s (%s): its files are not listed", folder, error.strerror)
        listing.skipped[UNREADABLE_FOLDER] += 1
        return None


class _Walker:
    """Walks real folders first, then follows deferred symbolic links once each, never twice into one folder.

    In the real walk a file's real path is the root's real path joined with its listed path, so it is known to be
    listed without being remembered; only files reached through links are remembered by real path (`linked_files`).
    """

    def __init__(self, base: str):
        self.base, self.listing = base, RootListing()
        self.real_base = os.path.realpath(base)
        self.seen_folders, self.linked_files = {self.real_base}, set()
        self.links: deque[tuple[str, str]] = deque()  # (path, path relative to the root), met during the walks
        self.real_folders: dict[str, str] = {}  # folder → its real path: a link tree resolves a folder once

    def walk(self, folder: str, rel: str, real: str, linked: bool = False) -> None:
        """List `folder` (real path `real`) and its real sub-folders; defer the links met. `linked`: the folder was
        reached through a link, so its files may be listed already under their real paths (and its entries are
        taken in name order, for the links met there)."""
        entries = _scandir(folder, self.listing)
        if entries is None:
            return
        with entries:  # consumed as read: a folder's entries are not held (1 s in 1 M files)
            self._walk_entries(sorted(entries, key=lambda e: e.name) if linked else entries, rel, real, linked)

    def _walk_entries(self, entries: Iterator[os.DirEntry], rel: str, real: str, linked: bool) -> None:
        """The hot loop of a large root: one `lstat` per file, no call of our own per file in the real walk."""
        files, skipped = self.listing.files, self.listing.skipped
        for entry in entries:
            name = entry.name
            if name[0] == "." or name.lower() in OS_CLUTTER:
                skipped[skip_rule(name)] += 1
            elif entry.is_file(follow_symlinks=False):
                if linked:
                    self._add(f"{rel}{name}", f"{real}/{name}", entry.stat(follow_symlinks=False))
                else:  # in the real walk: the real path is the root's joined with `rel`, listed nowhere else
                    info = entry.stat(follow_symlinks=False)
                    files[f"{rel}{name}"] = (info.st_size, info.st_mtime_ns)
            elif entry.is_dir(follow_symlinks=False):
                self._enter(entry.path, f"{rel}{name}", f"{real}/{name}", linked)
            elif entry.is_symlink():
                self.links.append((entry.path, f"{rel}{name}"))
            else:
                skipped[NOT_REGULAR] += 1

    def _enter(self, folder: str, rel: str, real: str, linked: bool) -> None:
        if real in self.seen_folders:
            self.listing.skipped[LINK_TO_SEEN_FOLDER] += 1
            return
        self.seen_folders.add(real)
        self.walk(folder, rel + "/", real, linked)

    def _listed(self, real: str) -> bool:
        """Whether the file at real path `real` is listed already (by the real walk, or through a link)."""
        if real in self.linked_files:
            return True
        inside = real.startswith(f"{self.real_base}/")
        return inside and real[len(self.real_base) + 1 :] in self.listing.files

    def _add(self, rel: str, real: str, info: os.stat_result) -> None:
        if self._listed(real):
            self.listing.skipped[LINK_TO_SEEN_FILE] += 1
            return
        self.linked_files.add(real)
        self.listing.files[rel] = (info.st_size, info.st_mtime_ns)

    def _real_folder(self, folder: str) -> str:
        real = self.real_folders.get(folder)
        if real is None:
            real = self.real_folders[folder] = os.path.realpath(folder)
        return real

    def _resolve(self, link: str) -> tuple[str, os.stat_result]:
        """(`os.path.realpath(link)`, the stat of what it names): the folders of the link and of its target
        resolved once each (a tree of links to photos costs one readlink and one lstat per photo)."""
        folder, name = os.path.split(link)
        target = os.path.join(self._real_folder(folder), os.readlink(os.path.join(folder, name)))
        target_folder, target_name = os.path.split(target)
        real = os.path.join(self._real_folder(target_folder), target_name)
        info = os.lstat(real)
        if stat.S_ISLNK(info.st_mode):  # a chain of links: the general rule
            real = os.path.realpath(link)
            info = os.stat(real)
        return real, info

    def follow_links(self) -> None:
        """Follow each deferred link once (links met inside linked folders are deferred in turn)."""
        while self.links:
            path, rel = self.links.popleft()
            try:
                real, info = self._resolve(path)
            except OSError:
                self.listing.skipped[BROKEN_LINK] += 1
                continue
            if stat.S_ISDIR(info.st_mode):
                self.listing.linked_folders += 1
                self._enter(path, rel, real, linked=True)
            elif stat.S_ISREG(info.st_mode):
                self._add(rel, real, info)
            else:
                self.listing.skipped[NOT_REGULAR] += 1


def walk_local(root: str) -> RootListing:
    """Every regular file under a local root, recursively, by path relative to the root (stat only, no contents).

    Names matching `skip_rule` are skipped (a skipped folder is not walked). Symbolic links are followed once,
    after every real folder: a link to a folder already walked (a loop back up, or a second way in) and a link to a
    file already listed are skipped, so each real file is listed once, under its real path when it has one.
    """
    walker = _Walker(local_path(root))
    walker.walk(walker.base, "", walker.real_base)
    walker.links = deque(sorted(walker.links, key=lambda link: link[1]))
    walker.follow_links()
    return walker.listing


def keep_key(rel: str) -> str | None:
    """The skip rule of an object key relative to the root (every folder of the key counts), or None to list it."""
    for part in rel.split("/"):
        rule = skip_rule(part)
        if rule:
            return rule
    return None


def listing_of_keys(objects: Iterable[tuple[str, int, int]]) -> RootListing:
    """A RootListing of (relative key, size, mtime ns) objects (S3 has no links; each skipped object counts once)."""
    listing = RootListing()
    for rel, size, mtime_ns in objects:
        if not rel or rel.endswith("/"):
            continue  # a "folder" marker object, not a file
        rule = keep_key(rel)
        if rule:
            listing.skipped[rule] += 1
        else:
            listing.files[rel] = (size, mtime_ns)
    return listing


def walk_s3(root: str, client=None) -> RootListing:
    """Every object under an s3:// (or s3a://) prefix, by key relative to the prefix (ListObjectsV2, no GETs)."""
    import boto3

    parsed = urlparse(root)
    prefix = parsed.path.lstrip("/").rstrip("/") + "/"
    client = client or boto3.client("s3")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=parsed.netloc, Prefix=prefix)
    objects = (
        (item["Key"][len(prefix) :], item["Size"], int(item["LastModified"].timestamp() * 1e9))
        for page in pages
        for item in page.get("Contents", [])
    )
    return listing_of_keys(objects)


def walk(root: str, client=None) -> RootListing:
    """The listing of a local folder or an s3:// prefix."""
    return walk_s3(root, client) if is_s3(root) else walk_local(root)


def scan_is_safe(root: str) -> bool:
    """Whether a whole-root Spark scan cannot loop or read a file twice: S3 has no links; a local root only when no
    linked folder is met in its walk."""
    return is_s3(root) or walk_local(root).linked_folders == 0
