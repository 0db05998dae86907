"""What the UI shows of `fruit_classifier`: accuracy per class, the most confused pairs, the open-set decision and
the held-out-classes protocol."""

from __future__ import annotations

import numpy as np
from dagster import MetadataValue

from fruits_assets.io.metadata import table
from spark_code.classify import classifier as clf
from spark_code.classify import openset, rejection_metrics


def evaluation_metadata(evaluation: clf.Evaluation) -> dict:
    """Accuracy, macro-F1, accuracy and F1 per class (worst first) and the most confused pairs."""
    per_class = [
        {"label": label, "images": v["images"], "accuracy": round(v["accuracy"], 4), "f1": round(v["f1"], 4)}
        for label, v in sorted(evaluation.per_class.items(), key=lambda item: item[1]["accuracy"])
    ]
    confused = [{"true": t, "predicted": p, "images": n} for t, p, n in evaluation.confused]
    return {
        **evaluation.summary(),
        "per_class_accuracy": table(
            per_class, [("label", "string"), ("images", "int"), ("accuracy", "float"), ("f1", "float")]
        ),
        "most_confused": table(confused, [("true", "string"), ("predicted", "string"), ("images", "int")]),
    }


def openset_metadata(
    rejection: openset.OpenSetModel, protocol: clf.OpenSetProtocol | None, scored: clf.ScoredRows, known: list[str]
) -> dict:
    """The unknown-photo decision (score, threshold, known photos accepted, unknown-class photos rejected) and the
    held-out-classes protocol's figures."""
    decision = rejection.decision
    accepted = decision.known(scored.values(decision.score), scored.values(openset.MAX_PROBABILITY))
    is_known = np.isin(scored.labels, known)
    metadata = {
        "unknown_score": decision.score,
        "unknown_threshold": round(decision.threshold, 6),
        "known_accepted": round(float(accepted[is_known].mean()), 4),
    }
    if decision.sure is not None:  # calibrated on few photos: what the classifier is this sure of is known
        metadata["unknown_sure_probability"] = decision.sure
    if (~is_known).any():
        metadata["unknown_class_rows_rejected"] = round(float(1 - accepted[~is_known].mean()), 4)
    if protocol is not None:
        metadata.update(protocol.summary())
        metadata["openset_protocol"] = MetadataValue.md(_protocol_markdown(protocol, rejection.accept_rate))
    return metadata


def _protocol_markdown(protocol: clf.OpenSetProtocol, accept_rate: float) -> str:
    lines = [
        f"Held out {len(protocol.held_out)} of {len(protocol.held_out) + len(protocol.known_classes)} training classes "
        f"(sorted positions {rejection_metrics.HELD_OUT_OFFSET} mod {rejection_metrics.HELD_OUT_EVERY}); knowns: "
        f"{protocol.known_rows} test photos, unknowns: {protocol.unknown_rows}.",
        "",
        f"| score | AUROC | unknowns rejected at {accept_rate:.0%} knowns accepted |",
        "|---|---:|---:|",
    ]
    lines += [f"| {r.score} | {r.auroc:.4f} | {r.rejected_at_accept:.4f} |" for r in protocol.reports]
    return "\n".join(lines)
