"""The batch ledger (the raw table) read without Spark, with delta-rs: its rows, their identities, the paths to
featurize again, and a listed batch planned against it on the driver (its few rows then go to Spark through Arrow)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from spark_code.ingest import batches
from spark_code.storage import lake


def identities(table: pa.Table) -> pa.Table:
    """`path`, `length` and `modification_time` (ms since the epoch, int64) of a table's rows."""
    millis = table.column("modification_time").cast(pa.timestamp("ms"), safe=False).cast(pa.int64())
    return pa.table({"path": table.column("path"), "length": table.column("length"), "modification_time": millis})


def current_rows(out: str) -> pa.Table:
    """The raw table's rows (listing columns and `batch`): the listing as the batches left it."""
    columns = ["path", "label", "length", "modification_time", batches.BATCH]
    rows = lake.read(lake.table_of(out, batches.LEDGER), columns)
    return pa.table({c: pa.array([], pa.string()) for c in columns}) if rows is None else rows


def entries(current: pa.Table) -> dict[str, tuple[str | None, int, int]]:
    """{path: (label, length, modification time in ms)} of raw rows, as `batches.plan_rows` compares them."""
    identity = identities(current)
    values = zip(
        current.column("label").to_pylist(),
        identity.column("length").to_pylist(),
        identity.column("modification_time").to_pylist(),
        strict=True,
    )
    return dict(zip(current.column("path").to_pylist(), values, strict=True))


def stale_paths(out: str, model_key: str) -> set[str]:
    """Paths whose features were made with other CNN settings than `model_key` (their model column read first:
    one dictionary of a few values)."""
    uri = lake.table_of(out, "cnn_features")
    if not (_model_keys(uri) - {model_key}):
        return set()
    rows = lake.read(uri, ["path", batches.MODEL_COLUMN])
    other = pc.not_equal(rows.column(batches.MODEL_COLUMN), model_key)
    return set(rows.filter(other).column("path").to_pylist())


def model_keys(out: str, name: str) -> set[str]:
    """The CNN settings (`cnn_model`: size, engine and precision, weights) among the current rows of table `name`."""
    return _model_keys(lake.table_of(out, name))


def _model_keys(uri: str) -> set[str]:
    rows = lake.read(uri, [batches.MODEL_COLUMN])
    return set() if rows is None else set(rows.column(0).unique().to_pylist())


def plan(rows: list[tuple], output: str, model_key: str, full_refresh: bool = False) -> list[tuple]:
    """The rows of a batch (listing columns + `change`) for a root's listing `rows`, against the raw table of
    `output` (a local folder or s3://); files featurized with other CNN settings than `model_key` count as changed.
    `full_refresh`: every listed file is new (the batch replaces the raw table)."""
    current = None if full_refresh else current_rows(output)
    if current is None or current.num_rows == 0:
        return batches.plan_rows(rows, None)
    return batches.plan_rows(rows, entries(current), stale_paths(output, model_key))
