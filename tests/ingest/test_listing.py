"""The listing: every file under the root, skip rules, links followed once, labels, and the sensor agreeing."""

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest

from spark_code.ingest import images, snapshot
from spark_code.storage import tree
from tests.conftest import FRUITS, copy_photo_as, first_images


def _tree(root):
    """A root with tricky names, a nested folder, clutter, a loop, a second way in and a broken link."""
    photo = first_images(FRUITS / "Banana", 1)[0]
    kiwi = root / "Kiwi"
    names = ["a.jpg", "p%20x.jpg", "h#.jpg", "q?.jpg", "b[1].jpg", "c{a,b}.jpg", "é.jpg", "🍋.jpg", "-dash.jpg"]
    names += ["y.Jpg", "z.jfif", "_DSC0001.JPG", "col:on.jpg", "new\nline.jpg", "2024-05/nested.jpg", "notes.txt"]
    copy_photo_as(photo, kiwi, names)
    (kiwi / ".DS_Store").write_bytes(b"x")
    (kiwi / "Thumbs.db").write_bytes(b"x")
    (root / ".thumbnails").mkdir()
    (root / ".thumbnails" / "t.jpg").write_bytes(b"x")  # inside a hidden folder: not walked
    lemon = root / "Lemon"
    lemon.mkdir()
    (lemon / "loop").symlink_to(root, target_is_directory=True)
    (lemon / "kiwis").symlink_to(kiwi, target_is_directory=True)
    (lemon / "same.jpg").symlink_to(kiwi / "a.jpg")
    (lemon / "broken.jpg").symlink_to(root / "nowhere.jpg")
    os.mkfifo(lemon / "pipe")
    outside = root.parent / f"{root.name}-outside"
    outside.mkdir()
    shutil.copy(photo, outside / "far.jpg")
    (root / "Cherry").symlink_to(outside, target_is_directory=True)  # a class folder kept elsewhere
    return {f"Kiwi/{name}" for name in names} | {"Cherry/far.jpg"}


def test_every_regular_file_once_links_followed_once(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    expected = _tree(root)
    found = tree.walk_local(str(root))
    assert set(found.files) == expected  # no loop multiplied anything, nothing listed twice
    assert dict(found.skipped) == {
        tree.HIDDEN: 2,  # .DS_Store, .thumbnails/
        tree.CLUTTER: 1,  # Thumbs.db
        tree.LINK_TO_SEEN_FOLDER: 2,  # Lemon/loop (back up to the root), Lemon/kiwis (Kiwi again)
        tree.LINK_TO_SEEN_FILE: 1,  # Lemon/same.jpg
        tree.BROKEN_LINK: 1,
        tree.NOT_REGULAR: 1,  # the FIFO: reading it would block
    }
    assert found.found() == len(expected) + 8 and found.linked_folders == 3


def test_relative_links_and_chains_resolve_as_realpath_does(tmp_path):
    """A link tree as a bench or a user makes it: relative targets, `..`, a chain of links, a linked folder whose
    files are relative links; each photo listed once, under the class folder the walk met it in."""
    photo = first_images(FRUITS / "Banana", 1)[0]
    store = tmp_path / "store" / "photos"
    copy_photo_as(photo, store, ["a.jpg", "b.jpg", "c.jpg"])
    root = tmp_path / "root"
    (root / "Apple").mkdir(parents=True)
    (root / "Apple" / "a.jpg").symlink_to(Path("..") / ".." / "store" / "photos" / "a.jpg")  # relative, with ..
    (tmp_path / "store" / "hop.jpg").symlink_to(store / "b.jpg")
    (root / "Apple" / "b.jpg").symlink_to(tmp_path / "store" / "hop.jpg")  # a chain: link → link → file
    (root / "Apple" / "b-again.jpg").symlink_to("b.jpg")  # the same file as b.jpg, by a relative link
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "c.jpg").symlink_to(Path("..") / "store" / "photos" / "c.jpg")
    (root / "Pear").symlink_to(Path("..") / "linked", target_is_directory=True)
    found = tree.walk_local(str(root))
    assert set(found.files) == {"Apple/a.jpg", "Apple/b-again.jpg", "Pear/c.jpg"}  # b-again sorts before b
    assert dict(found.skipped) == {tree.LINK_TO_SEEN_FILE: 1}
    assert found.files["Pear/c.jpg"] == (os.stat(store / "c.jpg").st_size, os.stat(store / "c.jpg").st_mtime_ns)


def test_spark_listing_and_sensor_agree_and_labels_are_class_folders(spark, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    expected = _tree(root)
    listed = images.list_frame(spark, str(root))
    rows = {r.path[len(f"file:{root}/") :]: r for r in listed.frame.collect()}
    assert set(rows) == expected == set(snapshot.list_root(str(root)))
    assert rows["Kiwi/2024-05/nested.jpg"].label == "Kiwi" and rows["Cherry/far.jpg"].label == "Cherry"
    stat = os.stat(root / "Kiwi" / "h#.jpg")
    assert rows["Kiwi/h#.jpg"].length == stat.st_size
    mtime = datetime.fromtimestamp(stat.st_mtime_ns // 10**6 / 1000, tz=timezone.utc).replace(tzinfo=None)
    assert rows["Kiwi/h#.jpg"].modification_time == mtime  # milliseconds, as Hadoop's file status
    assert listed.counts()["files_found"] == len(expected) + 8


def test_every_listed_file_gets_its_bytes_whatever_its_name(spark, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    _tree(root)
    listed = images.list_images(spark, str(root))
    content = {r.path: bytes(r.content) for r in images.attach_content(spark, listed, str(root)).collect()}
    assert len(content) == listed.count()  # `_` names (hidden by Spark), `:`, `#`, `?`, newline included
    for path, data in content.items():
        with open(tree.local_path(path), "rb") as file:
            assert data == file.read()


def test_scanning_the_root_gives_the_same_bytes_when_it_is_safe(spark, tmp_path):
    root = tmp_path / "root"
    for name in ("Kiwi", "Lemon"):
        (root / name).mkdir(parents=True)
        for image in first_images(FRUITS / "Banana", 3):
            shutil.copy(image, root / name / f"{name}-{image.name}")
    (root / "Kiwi" / "Thumbs.db").write_bytes(b"x")  # scanned by Spark, not listed: must not appear
    listed = images.list_images(spark, str(root))
    scanned = images.attach_content(spark, listed, str(root), explicit_below=1)
    named = images.attach_content(spark, listed, str(root))
    assert scanned.count() == 6 and sorted(scanned.collect()) == sorted(named.collect())
    (root / "Kiwi" / "_DSC0001.JPG").write_bytes(b"y")  # a scan would miss it: named paths and the driver instead
    listed = images.list_images(spark, str(root))
    assert images.attach_content(spark, listed, str(root), explicit_below=1).count() == 7


def test_s3_keys_follow_the_same_rules():
    objects = [("Kiwi/a.JPG", 1, 1), ("Kiwi/.DS_Store", 1, 1), ("Kiwi/", 0, 1), ("__MACOSX/Kiwi/._a.JPG", 1, 1)]
    found = tree.listing_of_keys([*objects, ("Kiwi/2024/b.heic", 2, 2), ("at_root.jpg", 3, 3)])
    assert set(found.files) == {"Kiwi/a.JPG", "Kiwi/2024/b.heic", "at_root.jpg"}
    assert dict(found.skipped) == {tree.HIDDEN: 1, tree.CLUTTER: 1}
    assert tree.scan_is_safe("s3://fruits/img")  # S3 has no links: a whole-prefix scan cannot loop


@pytest.mark.slow  # a moto server
def test_s3_listing_and_sensor_agree_over_a_real_s3_api(s3_bucket):
    _, client = s3_bucket
    keys = ["img/Kiwi/a.JPG", "img/Kiwi/2024/b.heic", "img/Kiwi/.DS_Store", "img/.git/x", "img/z.jfif"]
    for key in [*keys, "img/Kiwi/"]:
        client.put_object(Bucket="fruits", Key=key, Body=b"x")
    client.put_object(Bucket="fruits", Key="other/c.jpg", Body=b"x")
    found = tree.walk_s3("s3://fruits/img", client)
    assert (
        set(found.files)
        == {"Kiwi/a.JPG", "Kiwi/2024/b.heic", "z.jfif"}
        == set(snapshot.list_root("s3://fruits/img/", client))
    )
    assert dict(found.skipped) == {tree.HIDDEN: 2} and found.files["z.jfif"][0] == 1


def test_a_file_reached_twice_through_links_is_listed_once(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "Kiwi").mkdir(parents=True)
    outside.mkdir()
    (root / "Kiwi" / "a.jpg").write_bytes(b"a")
    (outside / "far.jpg").write_bytes(b"far")
    (outside / "again.jpg").symlink_to(outside / "far.jpg")  # met inside a linked folder: the same file
    (outside / "kiwi.jpg").symlink_to(root / "Kiwi" / "a.jpg")  # back into the real walk: listed already
    (root / "Cherry").symlink_to(outside, target_is_directory=True)
    (root / "Kiwi" / "b.jpg").symlink_to(outside / "far.jpg")  # the linked folder's file, by another way
    found = tree.walk_local(str(root))
    assert set(found.files) == {"Kiwi/a.jpg", "Cherry/far.jpg"}
    assert dict(found.skipped) == {tree.LINK_TO_SEEN_FILE: 3} and found.linked_folders == 1
    assert not tree.scan_is_safe(str(root)) and tree.scan_is_safe(str(root / "Kiwi"))  # a linked folder: no scan
