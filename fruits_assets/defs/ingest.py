"""Ingest: `raw_images`, one ingest batch of the image root (new, changed and deleted files), from a listing or
from the sensor's change list."""

from datetime import datetime, timezone
from typing import Any

from dagster import AssetExecutionContext, Config, Output, ResourceParam, asset
from pydantic import Field

from fruits_assets.defs.partitions import CHANGES_TAG, GROUP, ingest_batches
from fruits_assets.io.metadata import class_table
from fruits_assets.io.resources import CnnResource, ImageSource, TableStore
from spark_code.ingest import batches, ledger, snapshot
from spark_code.ingest.images import listing_counts, listing_rows, require_images, walk_rows
from spark_code.storage.tables import Update


class RawConfig(Config):
    """What a batch takes: by default only files new or changed since the other batches."""

    full_refresh: bool = Field(
        default=False, description="Take every listed image into this batch: all are featurized again."
    )


@asset(group_name=GROUP, kinds={"delta"}, partitions_def=ingest_batches)
def raw_images(
    context: AssetExecutionContext,
    config: RawConfig,
    image_source: ImageSource,
    cnn: CnnResource,
    tables: TableStore,
    pyspark_step_launcher: ResourceParam[Any],
) -> Output[Update]:
    """One ingest batch, one commit to the raw table: image files new or changed since the other batches (path,
    label, length, modification_time, change) upserted, and each file gone from the image root removed. Images
    whose features were made with other CNN settings count as changed.

    A run the `new_images` sensor requested takes the batch the sensor found (tag `fruits/changes`) and lists
    nothing: its cost follows the batch, not the corpus. Other runs list the root and compare it with the tables.
    """
    key = batches.check_key(context.partition_key)
    now = datetime.now(timezone.utc)
    changes_uri = None if config.full_refresh else context.run.tags.get(CHANGES_TAG)
    sensed = None if changes_uri is None else snapshot.load_changes(changes_uri)
    if sensed is not None:  # the sensor's run: the batch it found, without listing the root again
        planned, listing_counts = _sensed_rows(image_source.root, sensed), {}
    else:
        planned, listing_counts = _listed_batch(image_source, cnn, tables, config)
    batch = batches.from_rows(planned, key, now)  # rows planned and committed on the driver: no Spark job
    changes, per_class = batches.tally_rows(planned)
    replace = sensed is None and config.full_refresh
    metadata = {
        "batch": key,
        "image_count": changes[batches.NEW] + changes[batches.CHANGED],
        **changes,
        **listing_counts,  # files_found = listed + skipped (hidden files, OS clutter, links to what is listed)
        "listing": "root" if sensed is None else "sensor",
        "class_count": len([label for label in per_class if label is not None]),
        "root": image_source.root,
        "per_class": class_table(per_class),
    }
    context.log.info("batch %s of %s: %s", key, image_source.root, metadata)
    return Output(batches.commit(batch, key, changes, replace), metadata=metadata)


def _listed_batch(image_source: ImageSource, cnn: CnnResource, tables: TableStore, config):
    """(batch rows, listing counts): the root listed and compared with the current rows of the other batches, planned
    on the driver with pyarrow (local or S3 output alike: its rows, no Spark job over the corpus)."""
    rows, found = walk_rows(image_source.root)
    require_images(len(rows), image_source.root)
    planned = ledger.plan(rows, tables.base_uri, cnn.model_key(), config.full_refresh)
    return planned, listing_counts(found)


def _sensed_rows(root: str, sensed: list[tuple[str, int, int, str]]) -> list[tuple]:
    """The batch the sensor found (new, changed, deleted files with their entries) as raw rows with their change."""
    entries = [(rel, (size, mtime_ns)) for rel, size, mtime_ns, _ in sensed]
    return [(*row, change) for row, (*_, change) in zip(listing_rows(root, entries), sensed, strict=True)]
