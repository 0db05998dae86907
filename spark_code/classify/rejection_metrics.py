"""The held-out-classes protocol of open-set rejection: which classes are held out, and how well each score tells
them from the known ones (AUROC, unknowns rejected at a known-class acceptance rate)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spark_code.classify.openset import MAX_PROBABILITY

HELD_OUT_EVERY, HELD_OUT_OFFSET = 5, 2  # the protocol holds out the classes at sorted positions 2, 7, 12, … (~20 %)


def unknownness(score: str, values: np.ndarray) -> np.ndarray:
    """Values turned so that larger always means "more likely unknown" (for the metrics)."""
    values = np.asarray(values, dtype=np.float64)
    return -values if score == MAX_PROBABILITY else values


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """Area under the ROC curve of "unknown vs known" for unknownness values (ties count one half)."""
    known, unknown = np.asarray(known, dtype=np.float64), np.asarray(unknown, dtype=np.float64)
    if not known.size or not unknown.size:
        raise ValueError("AUROC needs both known and unknown rows")
    from scipy.stats import rankdata  # imported here: scipy.stats costs ~0.5 s at every start of the main command

    ranks = rankdata(np.concatenate([known, unknown]))  # ties: the average of their ranks
    unknown_ranks = ranks[known.size :].sum()
    return float((unknown_ranks - unknown.size * (unknown.size + 1) / 2) / (known.size * unknown.size))


def rejected_at(known: np.ndarray, unknown: np.ndarray, accept_rate: float = 0.95) -> float:
    """Share of unknowns rejected by the threshold that accepts `accept_rate` of the knowns (unknownness values)."""
    threshold = np.quantile(np.asarray(known, dtype=np.float64), accept_rate)
    return float(np.mean(np.asarray(unknown) > threshold))


def held_out_classes(classes: list[str], every: int = HELD_OUT_EVERY, offset: int = HELD_OUT_OFFSET) -> list[str]:
    """The protocol's unknown classes: every `every`-th class of the sorted list, from position `offset`."""
    return sorted(classes)[offset::every]


@dataclass(frozen=True)
class ScoreReport:
    """How well one score separates known from unknown photos."""

    score: str
    auroc: float
    rejected_at_accept: float  # share of unknowns rejected when `accept_rate` of knowns are accepted

    def summary(self, prefix: str = "openset") -> dict[str, float]:
        """Flat figures for metadata and JSON."""
        return {
            f"{prefix}_auroc_{self.score}": round(self.auroc, 4),
            f"{prefix}_rejected_{self.score}": round(self.rejected_at_accept, 4),
        }


def report(score: str, values: np.ndarray, is_known: np.ndarray, accept_rate: float = 0.95) -> ScoreReport:
    """AUROC and rejection of one score's values over rows flagged known / unknown."""
    turned, is_known = unknownness(score, values), np.asarray(is_known, dtype=bool)
    known, unknown = turned[is_known], turned[~is_known]
    return ScoreReport(score, auroc(known, unknown), rejected_at(known, unknown, accept_rate))


def best(reports: list[ScoreReport]) -> ScoreReport:
    """The report with the highest AUROC (a feature-space score wins a tie with the probability)."""
    return max(reports, key=lambda r: (r.auroc, r.score != MAX_PROBABILITY))
