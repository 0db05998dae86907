"""The sensor's cursor stays small whatever the corpus size: the snapshot lives as Parquet beside the tables."""

import json

import boto3
import pytest
from dagster import build_sensor_context

from fruits_assets.automation import new_images
from fruits_assets.resources import ImageSource
from spark_code import snapshot


def _files(root, n, start=0):
    for i in range(start, start + n):
        folder = root / f"Class {i % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"photo {i}.jpg").write_bytes(b"x" * (i % 50 + 1))


def _tick(root, state_uri, cursor=None):
    source = ImageSource(root=str(root), settle_seconds=0.0, state_uri=state_uri)
    context = build_sensor_context(cursor=cursor, resources={"image_source": source})
    result = new_images(context)
    return result, context.cursor if result.cursor is None else result.cursor


def test_cursor_size_does_not_grow_with_the_corpus(tmp_path):
    sizes = {}
    for n in (50, 5000):
        root, state = tmp_path / f"root{n}", str(tmp_path / f"state{n}")
        _files(root, n)
        result, cursor = _tick(root, state)
        assert result.run_requests[0].tags["fruits/new"] == str(n)
        assert snapshot.restore(cursor).accepted == snapshot.list_local(str(root))  # the whole snapshot, stored
        sizes[n] = len(cursor)
        inline = snapshot.State.decode(None)
        inline.accepted = snapshot.list_local(str(root))
        assert len(inline.encode()) > 20 * len(cursor) or n == 50
    assert sizes[5000] <= sizes[50] + 8 and sizes[5000] < 300  # a pointer, not the snapshot


def test_pointer_cursor_sees_only_changes_and_keeps_few_snapshot_files(tmp_path):
    root, state = tmp_path / "root", tmp_path / "state"
    _files(root, 30)
    _, cursor = _tick(root, str(state))
    quiet, same = _tick(root, str(state), cursor)
    assert not quiet.run_requests and same == cursor  # nothing changed: no new snapshot written
    for round_ in range(5):
        _files(root, 2, start=100 + 2 * round_)
        result, cursor = _tick(root, str(state), cursor)
        assert result.run_requests[0].tags["fruits/new"] == "2"
    assert len(list(state.glob("snapshot-*.parquet"))) == snapshot.KEEP_SNAPSHOTS
    (state / json.loads(cursor)["snapshot"].rsplit("/", 1)[1]).unlink()  # removed by hand: start again, no crash
    result, _ = _tick(root, str(state), cursor)
    assert result.run_requests[0].tags["fruits/new"] == "40"


@pytest.mark.slow  # a moto server
def test_snapshot_store_and_restore_over_a_real_s3_api(monkeypatch):
    from tests.moto_server import moto_server

    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test")):
        monkeypatch.setenv(name, value)
    with moto_server() as url:
        client = boto3.client("s3", endpoint_url=url, region_name="eu-west-3")
        client.create_bucket(Bucket="fruits", CreateBucketConfiguration={"LocationConstraint": "eu-west-3"})
        state = snapshot.State({"a/b.jpg": (3, 10), "c/d é.jpg": (4, 11)}, {"c/new.jpg": (1, 12)})
        cursors = [snapshot.store(state, "s3://fruits/out/_sensor/new_images", client) for _ in range(5)]
        assert snapshot.restore(cursors[-1], client) == state
        listed = client.list_objects_v2(Bucket="fruits", Prefix="out/_sensor/new_images/")["Contents"]
        assert len(listed) == snapshot.KEEP_SNAPSHOTS
        assert snapshot.restore(cursors[0], client) == snapshot.State()  # pruned: an empty start, not a crash
