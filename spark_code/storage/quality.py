"""Data-quality measures behind the asset checks, as plain functions of DataFrames."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def reconcile(raw: DataFrame, features: DataFrame, quarantined: DataFrame) -> dict[str, int]:
    """Counts of raw, featurized, quarantined rows, and raw paths found in neither or in both outputs."""
    out = features.select("path", F.lit(1).alias("f")).join(
        quarantined.select("path", F.lit(1).alias("q")), "path", "full_outer"
    )
    joined = raw.select("path").join(out, "path", "left")
    row = joined.agg(
        F.count("*").alias("raw"),
        F.sum(F.when(F.col("f").isNull() & F.col("q").isNull(), 1).otherwise(0)).alias("missing"),
        F.sum(F.when(F.col("f").isNotNull() & F.col("q").isNotNull(), 1).otherwise(0)).alias("both"),
    ).first()
    return {
        "raw": row["raw"],
        "featurized": features.count(),
        "quarantined": quarantined.count(),
        "missing": row["missing"] or 0,
        "in_both": row["both"] or 0,
    }


def reconcile_paths(raw: list[str], features: list[str], quarantined: list[str]) -> dict[str, int]:
    """`reconcile` for the paths of the three tables' rows, read on the driver."""
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


def bad_vectors(df: DataFrame, column: str, dim: int) -> int:
    """Rows whose vector is null, not `dim` long, or holds a NaN or an infinity."""
    not_finite = F.exists(column, lambda x: F.isnan(x) | (F.abs(x) == float("inf")))
    bad = F.col(column).isNull() | (F.size(column) != dim) | not_finite
    return df.filter(bad).count()


def empty_labels(df: DataFrame) -> int:
    """Rows whose label is null or blank."""
    return df.filter(F.col("label").isNull() | (F.trim("label") == "")).count()
