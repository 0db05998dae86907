"""The measures behind the asset checks, on rows read without Spark (Arrow): counts that reconcile, vectors that
are whole and finite, labels that are not blank."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def reconcile(raw: list[str], features: list[str], quarantined: list[str]) -> dict[str, int]:
    """Counts of the raw, featurized and quarantined rows (their paths), and the raw paths found in neither output
    or in both."""
    featurized, set_aside = set(features), set(quarantined)
    return {
        "raw": len(raw),
        "featurized": len(features),
        "quarantined": len(quarantined),
        "missing": sum(1 for path in raw if path not in featurized and path not in set_aside),
        "in_both": sum(1 for path in raw if path in featurized and path in set_aside),
    }


def counts_reconcile(counts: dict[str, int]) -> bool:
    """raw = featurized + quarantined, with every raw image in exactly one output; and, when the listing's counts
    are known, files found = featurized + quarantined + skipped (by rule)."""
    tables_agree = (
        counts["raw"] == counts["featurized"] + counts["quarantined"]
        and counts["missing"] == 0
        and counts["in_both"] == 0
    )
    if "files_found" not in counts:
        return tables_agree
    return tables_agree and counts["files_found"] == counts["featurized"] + counts["quarantined"] + counts["skipped"]


def bad_vectors(parts: Iterable[pa.RecordBatch | pa.Table], column: str, dim: int) -> int:
    """Rows whose vector is null, not `dim` long, or holds a NaN or an infinity (over record batches, so a big
    table is never whole in memory)."""
    return sum(_bad_in(_array(part.column(column)), dim) for part in parts)


def _array(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _bad_in(vectors: pa.Array, dim: int) -> int:
    bad = pc.fill_null(pc.not_equal(pc.list_value_length(vectors), dim), True).to_numpy(zero_copy_only=False).copy()
    values, owners = pc.list_flatten(vectors), pc.list_parent_indices(vectors)
    not_finite = pc.fill_null(pc.invert(pc.is_finite(values)), False).to_numpy(zero_copy_only=False)
    bad[owners.to_numpy(zero_copy_only=False)[not_finite]] = True
    return int(np.count_nonzero(bad))


def empty_labels(parts: Iterable[pa.RecordBatch | pa.Table]) -> int:
    """Rows whose label is null or blank."""
    total = 0
    for part in parts:
        labels = _array(part.column("label"))
        blank = pc.equal(pc.utf8_trim_whitespace(labels), "")
        total += int(pc.sum(pc.fill_null(blank, True)).as_py() or 0)
    return total
