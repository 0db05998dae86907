"""Metadata: the values the Dagster UI shows (per-class tables, the variance curve) and reading them back."""

from typing import Any

from dagster import AssetKey, DagsterInstance, MetadataValue, TableColumn, TableRecord, TableSchema

CURVE_POINTS = (1, 2, 5, 10, 20, 50, 100, 200, 300, 500, 750, 1000, 1280)


def table(records: list[dict], columns: list[tuple[str, str]]) -> MetadataValue:
    """A UI table of `records` with `columns` as (name, type) pairs."""
    schema = TableSchema(columns=[TableColumn(name, kind) for name, kind in columns])
    return MetadataValue.table(records=[TableRecord(r) for r in records], schema=schema)


def class_table(per_class: dict[str | None, int]) -> MetadataValue:
    """A table of image counts per class label, largest first (null label shown as '(none)')."""
    rows = sorted(per_class.items(), key=lambda item: (-item[1], str(item[0])))
    records = [{"label": label if label is not None else "(none)", "images": n} for label, n in rows]
    return table(records, [("label", "string"), ("images", "int")])


def variance_markdown(curve: list[float], k: int) -> str:
    """Markdown table of cumulative explained variance at a few k, plus the chosen k."""
    points = sorted({p for p in CURVE_POINTS if p <= len(curve)} | {k})
    lines = ["| k | cumulative explained variance |", "|---:|---:|"]
    lines += [f"| {'**' + str(p) + '**' if p == k else p} | {curve[p - 1]:.4f} |" for p in points]
    return "\n".join(lines)


def quarantine_table(rows, limit: int = 100) -> MetadataValue:
    """A table of quarantined files (`path`, `reason`), the first `limit` rows by path."""
    records = [{"path": r["path"], "reason": r["reason"]} for r in rows[:limit]]
    return table(records, [("path", "string"), ("reason", "string")])


def latest_metadata(instance: DagsterInstance, asset: str) -> dict[str, Any]:
    """The plain values of the metadata of `asset`'s latest materialization ({} when it has none)."""
    event = instance.get_latest_materialization_event(AssetKey(asset))
    metadata = event.asset_materialization.metadata if event and event.asset_materialization else {}
    return {key: value.value for key, value in metadata.items()}
