"""A listed batch planned on the driver against an output's raw table (delta-rs, local or S3): no Spark job."""

from __future__ import annotations

from spark_code import unchanged
from spark_code.ingest import batches


def plan(rows: list[tuple], output: str, model_key: str, full_refresh: bool = False) -> list[tuple]:
    """The rows of a batch (listing columns + `change`) for a root's listing `rows`, against the raw table of
    `output` (a local folder or s3://); files featurized with other CNN settings than `model_key` count as changed.
    `full_refresh`: every listed file is new (the batch replaces the raw table)."""
    current = None if full_refresh else unchanged.current_raw_rows(output)
    if current is None or current.num_rows == 0:
        return batches.plan_rows(rows, None)
    redo = unchanged.stale_paths(output, model_key)
    return batches.plan_rows(rows, unchanged.listing_entries(current), redo)
