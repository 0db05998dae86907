"""S3 event notifications drained from an SQS queue: what changed under the image root, without listing it."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import unquote_plus, urlparse

from spark_code.ingest import snapshot
from spark_code.storage import tree

logger = logging.getLogger(__name__)

MAX_MESSAGES = 10_000  # per sensor tick; what is left stays in the queue for the next tick


@dataclass(frozen=True)
class ObjectEvent:
    """One object created or removed under the root (key relative to the root)."""

    key: str
    created: bool
    size: int
    time_ns: int


def parse(body: str, root: str) -> list[ObjectEvent]:
    """The events of one SQS message body that concern files under `root` (s3://bucket/prefix).

    S3's test event, other buckets and prefixes, folder markers and files skipped by the listing rules are left out.
    """
    parsed = urlparse(root)
    prefix = parsed.path.strip("/") + "/" if parsed.path.strip("/") else ""
    events = []
    for record in json.loads(body).get("Records", []):
        s3 = record.get("s3", {})
        key = unquote_plus(s3.get("object", {}).get("key", ""))
        if s3.get("bucket", {}).get("name") != parsed.netloc or not key.startswith(prefix):
            continue
        rel = key[len(prefix) :]
        if not rel or rel.endswith("/") or tree.keep_key(rel):
            continue
        when = datetime.fromisoformat(record["eventTime"].replace("Z", "+00:00"))
        created = record.get("eventName", "").startswith("ObjectCreated")
        events.append(ObjectEvent(rel, created, int(s3["object"].get("size", 0)), int(when.timestamp() * 1e9)))
    return events


def drain(queue_url: str, root: str, client=None, limit: int = MAX_MESSAGES) -> tuple[list[ObjectEvent], list[str]]:
    """Receive up to `limit` messages; return their events in time order and the receipt handles to delete later."""
    import boto3

    client = client or boto3.client("sqs")
    events, handles = [], []
    while len(handles) < limit:
        batch = client.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        messages = batch.get("Messages", [])
        if not messages:
            break
        for message in messages:
            events.extend(parse(message["Body"], root))
            handles.append(message["ReceiptHandle"])
    events.sort(key=lambda event: event.time_ns)
    return events, handles


def acknowledge(queue_url: str, handles: list[str], client=None) -> None:
    """Delete the received messages (after the state they led to is stored: at-least-once delivery)."""
    import boto3

    client = client or boto3.client("sqs")
    for start in range(0, len(handles), 10):
        entries = [{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(handles[start : start + 10])]
        failed = client.delete_message_batch(QueueUrl=queue_url, Entries=entries).get("Failed", [])
        if failed:
            logger.warning("%d SQS message(s) not deleted; they will be seen again: %s", len(failed), failed)


def apply(state: snapshot.State, events: list[ObjectEvent]) -> tuple[snapshot.State, snapshot.Changes]:
    """The state after the events, and the changes against the state before (S3 writes are atomic: none deferred).
    Only what the events touched is looked at: no pass over the whole corpus."""
    final: dict[str, snapshot.Entry | None] = {}
    for event in events:  # in time order: the last event of a key wins
        final[event.key] = (event.size, event.time_ns) if event.created else None
    before, changes = state.lookup(list(final)), snapshot.Changes()
    for key, after in sorted(final.items()):
        if after is None and key in before:
            changes.deleted.append(key)
        elif after is not None and after != before.get(key):
            (changes.new if key not in before else changes.changed).append(key)
    changes.accepted = {key: final[key] for key in (*changes.new, *changes.changed)}
    return state.replaced([*changes.deleted, *changes.changed], changes.accepted, state.pending), changes
