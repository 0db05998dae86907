"""What the UI shows of a featurized batch (the counts that reconcile, the CNN's counters and settings, the
quarantined files with their reasons) and of the training photos featurized."""

from __future__ import annotations

from fruits_assets.io.metadata import quarantine_table
from spark_code.featurize.batch import BatchFeaturization
from spark_code.featurize.training import TrainingFeaturization


def featurize_metadata(
    key: str, batch: BatchFeaturization, featurized: int, quarantined: list, seconds: float, settings: dict
) -> dict[str, dict]:
    """{table: metadata} of `cnn_features` and `quarantined_images` for ingest batch `key`."""
    counts = {"batch": key, "raw": batch.to_featurize(), "removed": batch.to_remove(), "featurized": featurized}
    counts.update({"quarantined": len(quarantined), **batch.run.counters.values(), **batch.run.counters.seconds()})
    counts["seconds"] = round(seconds, 2)
    quarantine = {"batch": key, "quarantined": len(quarantined), "quarantined_files": quarantine_table(quarantined)}
    return {"cnn_features": {**counts, **settings}, "quarantined_images": quarantine}


def training_metadata(root: str, training: TrainingFeaturization, featurized: int, quarantined: list) -> dict:
    """What `training_features` shows: listed, reused, featurized and quarantined photos; unchanged or not."""
    return {
        "unchanged": training.unchanged(featurized),
        "root": root,
        "listed": training.listed,
        "reused": training.reused(),
        "featurized": featurized,
        "cnn_images": training.run.counters.values()["cnn_images"],
        "quarantined": len(quarantined),
        "quarantined_files": quarantine_table(quarantined),
    }
