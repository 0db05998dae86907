"""A listed batch planned on the driver against an output's committed raw rows (pyarrow, local or S3): no Spark job."""

from __future__ import annotations

from spark_code import unchanged
from spark_code.ingest import batches


def plan(rows: list[tuple], output: str, key: str, model_key: str, full_refresh: bool = False) -> list[tuple]:
    """The rows of batch `key` (listing columns + `change`) for a root's listing `rows`, against the current rows of
    the other complete batches in `output` (a local folder or s3://), as `batches.plan` makes them with Spark; files
    featurized with other CNN settings than `model_key` count as changed. `full_refresh`: every listed file is new."""
    out = output
    keys = [k for k in unchanged.complete_batches(out) if k != key]
    if full_refresh or not keys:
        return batches.plan_rows(rows, None)
    current = unchanged.current_raw_rows(out, keys)
    redo = unchanged.stale_paths(out, keys, current, model_key)
    return batches.plan_rows(rows, unchanged.listing_entries(current), redo)
