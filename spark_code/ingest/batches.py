"""Ingest batches: each batch holds only what changed; a table's current rows are every path's newest batch."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from spark_code.ingest.images import EPOCH, LISTING_COLUMNS, LISTING_SCHEMA
from spark_code.storage import versions

IDENTITY = ["path", "length", "modification_time"]  # an image is the same image while these are unchanged
BATCH = "batch"  # the ingest batch (partition key) a row belongs to
INGESTED_AT = "ingested_at"  # when the batch's listing was taken: the newest batch of a path wins
CHANGE = "change"
NEW, CHANGED, DELETED = "new", "changed", "deleted"
LEDGER = "raw_images"  # the table whose batches say which paths each batch owns (incl. deletions)
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


def plan(
    listing: DataFrame, before: DataFrame | None, key: str, ingested_at: datetime, redo: DataFrame | None = None
) -> DataFrame:
    """The batch `key`: listed files new or changed since `before` (the current rows of the other batches), plus a
    `deleted` row for each current path no longer listed. Unchanged files are not in it, unless their path is in
    `redo` (e.g. features made with other CNN settings): those count as changed.
    """
    now = listing.select(*LISTING_COLUMNS)
    if before is None:
        rows = now.withColumn(CHANGE, F.lit(NEW))
    else:
        known = before.select(*LISTING_COLUMNS).toDF(*[f"_{c}" for c in LISTING_COLUMNS])
        if redo is not None:
            known = known.join(redo.select(F.col("path").alias("_path"), F.lit(True).alias("_redo")), "_path", "left")
        else:
            known = known.withColumn("_redo", F.lit(None).cast("boolean"))
        joined = now.join(known, now.path == known._path, "full_outer")
        same = (F.col("length") == F.col("_length")) & (F.col("modification_time") == F.col("_modification_time"))
        changed = ~same | F.col("_redo").isNotNull()
        change = F.when(F.col("path").isNull(), DELETED).when(F.col("_path").isNull(), NEW).when(changed, CHANGED)
        listed_or_known = [F.coalesce(F.col(c), F.col(f"_{c}")).alias(c) for c in LISTING_COLUMNS]
        rows = joined.select(*listed_or_known, change.alias(CHANGE)).filter(F.col(CHANGE).isNotNull())
    return rows.withColumn(BATCH, F.lit(key)).withColumn(INGESTED_AT, F.lit(ingested_at).cast("timestamp"))


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
    aware = moment if moment.tzinfo is not None else moment.astimezone()
    return (aware - EPOCH) // timedelta(milliseconds=1)


def from_millis(millis: int) -> datetime:
    """Milliseconds since the epoch as the listing's (UTC) modification time."""
    return EPOCH + timedelta(milliseconds=millis)


def from_changes(listed: DataFrame, key: str, ingested_at: datetime) -> DataFrame:
    """The batch `key` from a change list already made (the sensor's): listing rows plus their `change` column."""
    columns = [*LISTING_COLUMNS, CHANGE]
    return (
        listed.select(*columns)
        .withColumn(BATCH, F.lit(key))
        .withColumn(INGESTED_AT, F.lit(ingested_at).cast("timestamp"))
    )


def from_rows(spark: SparkSession, rows: list[tuple], key: str, ingested_at: datetime) -> DataFrame:
    """The batch `key` from Python rows (listing columns + `change`, e.g. `plan_rows`'), held by the JVM: made
    through Arrow, so no Python worker starts and no job runs."""
    table = pd.DataFrame(rows, columns=[*LISTING_COLUMNS, CHANGE])
    table["modification_time"] = pd.to_datetime(table["modification_time"], utc=True)
    table["length"] = table["length"].astype("int64")
    return from_changes(spark.createDataFrame(table, f"{LISTING_SCHEMA}, {CHANGE} string"), key, ingested_at)


def tally_rows(rows: list[tuple]) -> tuple[dict[str, int], dict[str | None, int]]:
    """(`tally`, files taken per class) of a batch's Python rows."""
    changes = Counter(row[-1] for row in rows)
    per_class = Counter(row[1] for row in rows if row[-1] != DELETED)
    return {kind: changes.get(kind, 0) for kind in (NEW, CHANGED, DELETED)}, dict(per_class)


def owners(raw: DataFrame) -> DataFrame:
    """For each path, the raw row of its newest batch (deleted paths included, as `deleted` rows)."""
    newest = Window.partitionBy("path").orderBy(F.col(INGESTED_AT).desc(), F.col(BATCH).desc())
    return raw.withColumn("_rank", F.row_number().over(newest)).filter(F.col("_rank") == 1).drop("_rank")


def current_raw(raw: DataFrame) -> DataFrame:
    """The listing as the batches say it is now: every path's newest raw row, deleted paths left out."""
    return owners(raw).filter(F.col(CHANGE) != DELETED)


def current_rows(table: DataFrame, raw: DataFrame) -> DataFrame:
    """Rows of a batch table (features, quarantine) that belong to their path's newest batch, for the same file."""
    live = current_raw(raw).select(*IDENTITY, BATCH)
    return table.join(F.broadcast(live), [*IDENTITY, BATCH], "left_semi").select(*table.columns)


def stale(current_raw_rows: DataFrame, features: DataFrame | None, model_key: str) -> DataFrame | None:
    """Current paths whose batch featurized them with other CNN settings than `model_key` (None if there are none).

    `features` are the feature rows of the batches as written (not only current ones): a batch runs one CNN
    setting, so only its two columns are read.
    """
    if features is None:
        return None
    other = features.filter(F.col(MODEL_COLUMN) != model_key).select(BATCH).distinct().collect()
    if not other:
        return None
    return current_raw_rows.filter(F.col(BATCH).isin([row[BATCH] for row in other])).select("path")


def tally(batch: DataFrame) -> dict[str, int]:
    """How many new, changed and deleted rows a batch holds."""
    counts = {row[CHANGE]: row["count"] for row in batch.groupBy(CHANGE).count().collect()}
    return {kind: counts.get(kind, 0) for kind in (NEW, CHANGED, DELETED)}


def read_current_rows(
    spark: SparkSession, base_uri: str, name: str, keys=None, ledger: str = LEDGER
) -> DataFrame | None:
    """Current rows of the batch table `name` over the committed batches `keys` (default: all); None if none."""
    keys = committed_keys(spark, base_uri, ledger) if keys is None else keys
    raw = versions.read_partitions(spark, base_uri, ledger, keys) if keys else None
    if raw is None:
        return None
    if name == ledger:
        return current_raw(raw)
    table = versions.read_partitions(spark, base_uri, name, keys)
    return None if table is None else current_rows(table, raw)


BATCH_TABLES = (LEDGER, "cnn_features", "quarantined_images")  # a batch counts once all three are committed


def committed_keys(spark: SparkSession, base_uri: str, ledger: str = LEDGER) -> list[str]:
    """Keys of every complete batch: its listing, features and quarantine all committed.

    A batch whose run died after its listing (killed during cnn_features) is not a batch: it is ignored, so its
    files are new again for the next batch and nothing of it is read.
    """
    keys = list(versions.partition_uris(spark, base_uri, ledger))
    if ledger != LEDGER:
        return keys
    done = [set(versions.partition_uris(spark, base_uri, name, keys)) for name in BATCH_TABLES[1:]]
    complete = [key for key in keys if all(key in tables for tables in done)]
    if len(complete) < len(keys):
        incomplete = sorted(set(keys) - set(complete))
        logger.warning("incomplete batches ignored (their files are taken again): %s", incomplete)
    return complete


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


PARTS_JSON = "parts.json"  # beside a model version: the batches whose derived part that model made
PART_COLUMNS = [*IDENTITY, "label", BATCH]  # what a derived part keeps of its batch: enough to find current rows


@dataclass
class DerivedParts:
    """A table derived batch by batch with one saved model (scaled, PCA): `parts` ({batch: rows}) are to be
    written; the parts of the `kept` batches stand. `manifest` (beside the model) then lists both."""

    parts: dict[str, DataFrame]
    kept: list[str]
    manifest: str

    def batches(self) -> list[str]:
        """Every batch whose part is current once `parts` are written."""
        return sorted({*self.kept, *self.parts})


def manifest_uri(model_uri: str) -> str:
    """Where the list of batches a model version has derived is kept."""
    return f"{model_uri}/{PARTS_JSON}"


def derived_batches(spark: SparkSession, model_uri: str) -> set[str]:
    """The batches whose part `model_uri` has made (empty for a new model)."""
    text = versions.read_text(spark, manifest_uri(model_uri))
    try:
        return set(json.loads(text)["batches"]) if text else set()
    except (ValueError, KeyError, TypeError):  # a torn write: derive every part again
        logger.warning("unreadable %s: every batch's part is derived again", manifest_uri(model_uri))
        return set()


def write_manifest(spark: SparkSession, parts: DerivedParts) -> None:
    """Record which batches' parts are current; written after the parts, so a crash only means redoing some."""
    versions.write_text(spark, parts.manifest, json.dumps({"batches": parts.batches()}))


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
