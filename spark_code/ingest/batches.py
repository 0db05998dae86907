"""Ingest batches: each batch is what changed under the image root (new, changed, deleted files), one commit."""

from __future__ import annotations

import logging
import re
from collections import Counter
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from spark_code.ingest.images import EPOCH
from spark_code.storage import tables

IDENTITY = ["path", "length", "modification_time"]  # an image is the same image while these are unchanged
BATCH = "batch"  # the ingest batch (partition key) a row belongs to
INGESTED_AT = "ingested_at"  # when the batch's listing was taken: the newest batch of a path wins
CHANGE = tables.CHANGE
NEW, CHANGED, DELETED = tables.NEW, tables.CHANGED, tables.DELETED
LEDGER = "raw_images"  # the table of the listing: every batch commits its changes to it
MODEL_COLUMN = "cnn_model"  # which CNN settings made a feature row
logger = logging.getLogger(__name__)
KEY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class BatchKeyError(ValueError):
    """A partition key that cannot name a batch folder."""


def new_key(now: datetime | None = None) -> str:
    """A batch key from the UTC time to the millisecond, sortable and readable: e.g. 20261125T013000.123Z."""
    return (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%S.%f")[:-3] + "Z"


def check_key(key: str) -> str:
    """`key` if it can name a batch folder (letters, digits, `.`, `_`, `-`; up to 64); else a BatchKeyError."""
    if not KEY_PATTERN.fullmatch(key or ""):
        raise BatchKeyError(
            f"ingest batch key {key!r} is not usable as a folder name: use letters, digits, '.', '_' or '-' "
            "(up to 64), e.g. 20261125T013000.123Z as the sensor and `python -m fruits_assets` make them"
        )
    return key


def plan_rows(listing: list[tuple], before: dict[str, tuple] | None, redo: set[str] | None = None) -> list[tuple]:
    """`plan` on the driver, for a listing of Python rows (path, label, length, modification_time): the rows of
    the batch with their `change`. `before` is {path: (label, length, modification time in ms)} of the other
    batches' current rows (None: every file is new); paths in `redo` count as changed."""
    if before is None:
        return [(*row, NEW) for row in listing]
    known, redo = dict(before), redo or set()
    rows = []
    for path, label, length, modified in listing:
        was = known.pop(path, None)
        if was is None:
            rows.append((path, label, length, modified, NEW))
        elif was[1:] != (length, to_millis(modified)) or path in redo:
            rows.append((path, label, length, modified, CHANGED))
    gone = [(path, label, length, from_millis(millis), DELETED) for path, (label, length, millis) in known.items()]
    return rows + gone


def to_millis(moment: datetime) -> int:
    """A listing's modification time as milliseconds since the epoch (a naive time is local, as Spark gives it)."""
    return (_utc(moment) - EPOCH) // timedelta(milliseconds=1)


def from_millis(millis: int) -> datetime:
    """Milliseconds since the epoch as the listing's (UTC) modification time."""
    return EPOCH + timedelta(milliseconds=millis)


RAW_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("label", pa.string()),
        ("length", pa.int64()),
        ("modification_time", pa.timestamp("us", tz="UTC")),
        (CHANGE, pa.string()),
        (BATCH, pa.string()),
        (INGESTED_AT, pa.timestamp("us", tz="UTC")),
    ]
)


def from_rows(rows: list[tuple], key: str, ingested_at: datetime) -> pa.Table:
    """The batch `key` from Python rows (listing columns + `change`, e.g. `plan_rows`'), as the raw table's Arrow
    rows: the driver holds them and commits them with delta-rs (no Spark job)."""
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in range(5)]
    times = [_utc(moment) for moment in columns[3]]
    arrays = [*columns[:3], times, columns[4], [key] * len(rows), [_utc(ingested_at)] * len(rows)]
    return pa.Table.from_arrays(
        [pa.array(a, f.type) for a, f in zip(arrays, RAW_SCHEMA, strict=True)], schema=RAW_SCHEMA
    )


def _utc(moment: datetime) -> datetime:
    """A listing's time as an aware UTC time (a naive one is local, as Spark gives it)."""
    return (moment if moment.tzinfo is not None else moment.astimezone()).astimezone(timezone.utc)


def tally_rows(rows: list[tuple]) -> tuple[dict[str, int], dict[str | None, int]]:
    """(`tally`, files taken per class) of a batch's Python rows."""
    changes = Counter(row[-1] for row in rows)
    per_class = Counter(row[1] for row in rows if row[-1] != DELETED)
    return {kind: changes.get(kind, 0) for kind in (NEW, CHANGED, DELETED)}, dict(per_class)


def commit(batch: pa.Table, key: str, tally: dict[str, int], replace: bool = False) -> tables.Update:
    """The raw table's commit for a batch (`tally`: its counts of new, changed, deleted rows): its new and changed
    rows upserted, its changed and deleted paths removed (`replace`: the batch is every listed file, the table's
    rows replaced)."""
    change = batch.column(CHANGE)
    rows = batch.filter(pc.not_equal(change, DELETED))
    removals = not replace and tally[CHANGED] + tally[DELETED] > 0
    removed = batch.filter(pc.not_equal(change, NEW)).column("path").to_pylist() if removals else None
    return tables.Update(rows, removed, replace=replace, recorded={BATCH: key})


def reusable(previous: DataFrame | None, listing: DataFrame, model_key: str) -> tuple[DataFrame | None, DataFrame]:
    """Split a listing against an earlier feature table of the same files (e.g. the training set).

    Returns `(kept, todo)`: the earlier rows whose file is still listed unchanged and whose features were made with
    `model_key`, and the listing rows to featurize (new, changed, or made with other settings). Files gone from the
    listing are in neither.
    """
    if previous is None or MODEL_COLUMN not in previous.columns:
        return None, listing
    valid = previous.filter(F.col(MODEL_COLUMN) == model_key)
    kept = valid.join(F.broadcast(listing.select(*IDENTITY)), IDENTITY, "left_semi")
    todo = listing.join(kept.select(*IDENTITY), IDENTITY, "left_anti")
    return kept, todo


def cnn_models(features: DataFrame) -> list[str]:
    """The CNN settings (`cnn_model`) found among feature rows, sorted."""
    return sorted(row[0] for row in features.select(MODEL_COLUMN).distinct().collect())


def one_cnn_model(features: DataFrame) -> str:
    """The one CNN setting of the feature rows ("" when empty); an error if they mix settings."""
    models = cnn_models(features)
    if len(models) > 1:
        raise ValueError(
            f"cnn_features mixes CNN settings {models}: materialize a new batch with raw_images config "
            "full_refresh: true, so every image is featurized with the current settings"
        )
    return models[0] if models else ""
