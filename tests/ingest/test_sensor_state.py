"""The sensor's cursor stays small whatever the corpus size: the snapshot lives as Parquet beside the tables."""

import json

import boto3
import pytest
from dagster import build_sensor_context

from fruits_assets.defs.automation import new_images
from fruits_assets.io.resources import ImageSource
from spark_code.ingest import s3_events, snapshot


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
        assert snapshot.restore(cursor).accepted == snapshot.list_root(str(root))  # the whole snapshot, stored
        sizes[n] = len(cursor)
        inline = snapshot.State(snapshot.list_root(str(root)))
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


def test_a_deferred_change_keeps_the_accepted_entry_until_it_settles():
    before = snapshot.State({"a.jpg": (1, 0), "b.jpg": (1, 0)})
    now = {"a.jpg": (2, 10**12), "b.jpg": (1, 0), "c.jpg": (3, 10**12)}  # a edited, c new: both just now
    state, changes = snapshot.advance(before, now, settle_s=60, now_ns=10**12)
    assert changes.deferred == ["a.jpg", "c.jpg"] and not changes
    assert state.accepted == before.accepted and state.pending == {"a.jpg": (2, 10**12), "c.jpg": (3, 10**12)}
    assert state != before  # the pending files are remembered: a new cursor
    state, changes = snapshot.advance(state, now, settle_s=60, now_ns=10**12 + 1)  # the same entries: settled
    assert (changes.new, changes.changed) == (["c.jpg"], ["a.jpg"]) and state.accepted == now and not state.pending
    assert state.table.num_rows == 3  # each path once: the changed file's old entry was replaced
    state, changes = snapshot.advance(state, {"c.jpg": (3, 10**12)}, settle_s=60)
    assert changes.deleted == ["a.jpg", "b.jpg"] and state.accepted == {"c.jpg": (3, 10**12)}


def test_s3_events_change_only_the_keys_they_touch_the_last_event_winning():
    event = s3_events.ObjectEvent
    before = snapshot.State({"a.jpg": (1, 1), "b.jpg": (1, 1), "z.jpg": (9, 1)})
    events = [event("a.jpg", True, 2, 5), event("c.jpg", True, 3, 5), event("c.jpg", False, 0, 6)]
    events += [event("b.jpg", False, 0, 6), event("d.jpg", True, 4, 7), event("z.jpg", True, 9, 1)]  # z: as it was
    state, changes = s3_events.apply(before, events)
    assert (changes.new, changes.changed, changes.deleted) == (["d.jpg"], ["a.jpg"], ["b.jpg"])
    assert state.accepted == {"a.jpg": (2, 5), "d.jpg": (4, 7), "z.jpg": (9, 1)} and state.table.num_rows == 3


@pytest.mark.slow  # a moto server
def test_snapshot_store_and_restore_over_a_real_s3_api(s3_bucket):
    _, client = s3_bucket
    state = snapshot.State({"a/b.jpg": (3, 10), "c/d é.jpg": (4, 11)}, {"c/new.jpg": (1, 12)})
    cursors = [snapshot.store(state, "s3://fruits/out/_sensor/new_images") for _ in range(5)]
    assert snapshot.restore(cursors[-1]) == state
    listed = client.list_objects_v2(Bucket="fruits", Prefix="out/_sensor/new_images/snapshot-")["Contents"]
    assert len(listed) == snapshot.KEEP_SNAPSHOTS  # (pyarrow.fs keeps an empty folder marker beside them)
    assert snapshot.restore(cursors[0]) == snapshot.State()  # pruned: an empty start, not a crash


@pytest.mark.slow  # a moto server
def test_sensor_drains_s3_event_notifications_from_sqs_instead_of_listing(s3_bucket):
    _, s3 = s3_bucket
    sqs = boto3.client("sqs", region_name="eu-west-3")
    queue = sqs.create_queue(QueueName="fruits-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events = ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]
    only_images = {"Key": {"FilterRules": [{"Name": "prefix", "Value": "img/"}]}}  # not the sensor's own files
    config = {"QueueConfigurations": [{"QueueArn": arn, "Events": events, "Filter": only_images}]}
    s3.put_bucket_notification_configuration(Bucket="fruits", NotificationConfiguration=config)
    source = ImageSource(root="s3://fruits/img", state_uri="s3://fruits/out/_sensor/new_images", events_queue=queue)

    def tick(cursor):
        context = build_sensor_context(cursor=cursor, resources={"image_source": source})
        result = new_images(context)
        return result, context.cursor if result.cursor is None else result.cursor

    for key in ("img/Kiwi/a b.jpg", "img/Kiwi/c+d.JPG", "img/Kiwi/.DS_Store", "other/x.jpg"):
        s3.put_object(Bucket="fruits", Key=key, Body=b"xyz")
    first, cursor = tick(None)
    assert {k: first.run_requests[0].tags[f"fruits/{k}"] for k in ("new", "changed", "deleted")} == {
        "new": "2",
        "changed": "0",
        "deleted": "0",
    }
    quiet, cursor = tick(cursor)
    assert not quiet.run_requests
    s3.put_object(Bucket="fruits", Key="img/Kiwi/a b.jpg", Body=b"longer")
    s3.delete_object(Bucket="fruits", Key="img/Kiwi/c+d.JPG")
    s3.put_object(Bucket="fruits", Key="img/Lemon/e.heic", Body=b"x")
    third, cursor = tick(cursor)
    tags = third.run_requests[0].tags
    assert (tags["fruits/new"], tags["fruits/changed"], tags["fruits/deleted"]) == ("1", "1", "1")
    assert (
        set(snapshot.restore(cursor).accepted)
        == set(snapshot.list_root("s3://fruits/img"))
        == {
            "Kiwi/a b.jpg",
            "Lemon/e.heic",
        }
    )  # the events path and the listing path agree
    assert "Messages" not in sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)  # every message deleted


def test_events_queue_needs_an_s3_root():
    with pytest.raises(ValueError, match="FRUITS_EVENTS_QUEUE"):
        ImageSource(root="/photos", state_uri="/out/_sensor", events_queue="https://sqs/queue")
