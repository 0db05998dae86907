"""Open-set rejection: is a photo one of the known classes? The scores and their calibration (the protocol that
measures them: `spark_code.classify.rejection_metrics`)."""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

MAHALANOBIS = "mahalanobis"
MAX_PROBABILITY = "max_probability"
KNN = "knn"
KNN_PROBABILITY = "knn_probability"
SCORES = (KNN_PROBABILITY, KNN, MAHALANOBIS, MAX_PROBABILITY)
FEATURE_SCORES = (KNN_PROBABILITY, KNN, MAHALANOBIS)  # computed from the reduced features (and the probabilities)
OPENSET_JSON = "openset.json"  # saved beside the classifier pipeline
CONFIDENCE = 0.95  # how sure a calibrated threshold is to accept its share of known photos
SURE = 0.99  # with few calibration photos, a best class probability this high is known up to SURE_REACH × threshold
SURE_REACH = 1.5


def l2_normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero)."""
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.where(norms > 0, norms, 1.0)


@dataclass(frozen=True)
class MahalanobisScore:
    """Class means and a shared covariance of L2-normalised PCA features, kept as a whitening matrix.

    `distances` is the squared Mahalanobis distance to the nearest class mean: larger means less like any known class.
    """

    whitening: np.ndarray  # (k, k): x @ whitening has identity covariance
    means: np.ndarray  # (classes, k) whitened class means

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Squared distance of each row of (PCA) features to the nearest class mean."""
        white = l2_normalise(np.atleast_2d(np.asarray(features, dtype=np.float64))) @ self.whitening
        squared = (white**2).sum(axis=1, keepdims=True) - 2 * white @ self.means.T + (self.means**2).sum(axis=1)
        return np.maximum(squared.min(axis=1), 0.0)

    def to_dict(self) -> dict:
        """Plain lists, for JSON."""
        return {"whitening": self.whitening.tolist(), "means": self.means.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> MahalanobisScore:
        """The inverse of `to_dict`."""
        return cls(np.asarray(data["whitening"], dtype=np.float64), np.asarray(data["means"], dtype=np.float64))


def fit_mahalanobis(features: np.ndarray, labels: list[str] | np.ndarray, shrinkage: float = 0.1) -> MahalanobisScore:
    """Class means and the pooled within-class covariance of L2-normalised features, shrunk towards a scaled identity.

    `shrinkage` (0…1) keeps the covariance invertible when there are few rows per dimension.
    """
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage={shrinkage} must lie between 0 and 1")
    x, labels = l2_normalise(np.asarray(features, dtype=np.float64)), np.asarray(labels)
    classes = sorted(set(labels.tolist()))
    means = np.stack([x[labels == c].mean(axis=0) for c in classes])
    centred = x - means[np.searchsorted(classes, labels)]
    covariance = centred.T @ centred / max(len(x) - len(classes), 1)
    dim = covariance.shape[0]
    covariance = (1 - shrinkage) * covariance + shrinkage * np.trace(covariance) / dim * np.eye(dim)
    values, vectors = np.linalg.eigh(covariance)
    whitening = vectors / np.sqrt(np.maximum(values, 1e-12 * values.max()))
    return MahalanobisScore(whitening, means @ whitening)


@dataclass(frozen=True)
class NearestNeighbourScore:
    """Distance of PCA features to the nearest training photo (any class), by direction and by length.

    d² = 2 (1 − cos) + (log |x| − log |b|)²: the cosine distance of L2-normalised features, plus how far the vector's
    length is from the neighbour's. The length matters: a flat colour, noise or text projects to a vector tens of
    times longer than any fruit photo's, which normalising alone would hide.
    """

    directions: np.ndarray  # (training photos, k) float32, unit rows
    log_norms: np.ndarray  # (training photos,) float32

    def distances(self, features: np.ndarray, chunk: int = 2048) -> np.ndarray:
        """Distance of each row to its nearest training photo (0 for a training photo itself)."""
        x = np.atleast_2d(np.asarray(features, dtype=np.float64))
        units, logs = l2_normalise(x).astype(np.float32), _log_norms(x).astype(np.float32)
        best = []
        for i in range(0, len(x), chunk):
            squared = 2 * (1 - units[i : i + chunk] @ self.directions.T)
            squared += (logs[i : i + chunk, np.newaxis] - self.log_norms[np.newaxis]) ** 2
            best.append(squared.min(axis=1))
        return np.sqrt(np.maximum(np.concatenate(best).astype(np.float64), 0.0)) if best else np.zeros(0)

    def to_dict(self) -> dict:
        """The bank as base64 float32 bytes (compact JSON)."""
        return {
            "shape": list(self.directions.shape),
            "directions": base64.b64encode(self.directions.tobytes()).decode(),
            "log_norms": base64.b64encode(self.log_norms.tobytes()).decode(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> NearestNeighbourScore:
        """The inverse of `to_dict`."""
        directions = np.frombuffer(base64.b64decode(data["directions"]), dtype=np.float32).reshape(data["shape"])
        return cls(directions, np.frombuffer(base64.b64decode(data["log_norms"]), dtype=np.float32))


def _log_norms(x: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(np.linalg.norm(x, axis=1), 1e-12))


def fit_knn(features: np.ndarray) -> NearestNeighbourScore:
    """The bank of training features: their directions and log lengths."""
    x = np.asarray(features, dtype=np.float64)
    return NearestNeighbourScore(l2_normalise(x).astype(np.float32), _log_norms(x).astype(np.float32))


@dataclass(frozen=True)
class FeatureScores:
    """The feature-space scores fitted on the training photos' reduced features; larger = less like a known class."""

    mahalanobis: MahalanobisScore
    knn: NearestNeighbourScore

    def values(self, score: str, pca: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        """The named score of each row, in its own units (a probability, or a distance).

        `knn_probability` = the `knn` distance + (1 − the best class probability): the two scores' evidence added
        with weight one each, no other setting. It needs the classifier's probabilities of the same rows.
        """
        if score == MAX_PROBABILITY:
            return np.asarray(probabilities, dtype=np.float64).max(axis=1)
        if score == KNN_PROBABILITY:
            return self.knn.distances(pca) + 1.0 - _max_probability(probabilities, len(np.atleast_2d(pca)))
        if score == KNN:
            return self.knn.distances(pca)
        if score == MAHALANOBIS:
            return self.mahalanobis.distances(pca)
        raise ValueError(f"score={score!r} must be one of {SCORES}")

    def all_values(self, pca: np.ndarray, probabilities: np.ndarray) -> dict[str, np.ndarray]:
        """Every score of `SCORES` for each row, the nearest-neighbour search done once."""
        knn = self.knn.distances(pca)
        best = _max_probability(probabilities, len(knn))
        return {
            KNN_PROBABILITY: knn + 1.0 - best,
            KNN: knn,
            MAHALANOBIS: self.mahalanobis.distances(pca),
            MAX_PROBABILITY: best,
        }

    def to_dict(self) -> dict:
        """Plain values, for JSON."""
        return {MAHALANOBIS: self.mahalanobis.to_dict(), KNN: self.knn.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> FeatureScores:
        """The inverse of `to_dict`."""
        return cls(MahalanobisScore.from_dict(data[MAHALANOBIS]), NearestNeighbourScore.from_dict(data[KNN]))


def _max_probability(probabilities: np.ndarray, rows: int) -> np.ndarray:
    """The best class probability of each row; the probabilities must be given, one row per feature row."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != rows or p.shape[1] == 0:
        raise ValueError(f"{KNN_PROBABILITY} needs the class probabilities of the {rows} rows, got shape {p.shape}")
    return p.max(axis=1)


def fit_feature_scores(features: np.ndarray, labels, shrinkage: float = 0.1) -> FeatureScores:
    """Both feature-space scores on the same training rows."""
    return FeatureScores(fit_mahalanobis(features, labels, shrinkage), fit_knn(features))


@dataclass(frozen=True)
class Decision:
    """Which score decides `unknown` and where: known when max_probability ≥ threshold, or distance ≤ threshold;
    with `sure` set (a threshold calibrated on few photos), also known where the best class probability ≥ sure and
    the distance ≤ `SURE_REACH` × threshold (a logistic regression is sure of flat colours too, far beyond that)."""

    score: str
    threshold: float
    sure: float | None = None

    def __post_init__(self):
        if self.score not in SCORES:
            raise ValueError(f"score={self.score!r} must be one of {SCORES}")
        if self.score == MAX_PROBABILITY and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold={self.threshold} must lie between 0 and 1 for score {MAX_PROBABILITY!r}")

    def known(self, value: float | np.ndarray, best_probability: float | np.ndarray | None = None):
        """True where the score's value says "a known class" (or, with `sure`, the classifier is sure of it)."""
        within = value >= self.threshold if self.score == MAX_PROBABILITY else value <= self.threshold
        if self.sure is None or best_probability is None:
            return within
        reach = np.asarray(value) <= SURE_REACH * self.threshold
        return within | ((np.asarray(best_probability) >= self.sure) & reach)


@dataclass(frozen=True)
class OpenSetModel:
    """What the classifier saves to reject unknowns: the default decision (calibrated) and the feature scores."""

    score: str  # the default score
    thresholds: dict[str, float]  # every score's threshold, calibrated to accept `accept_rate` of known photos
    scores: FeatureScores
    accept_rate: float
    sure: float | None = None  # calibrated on few photos: what the classifier is this sure of is known

    @property
    def decision(self) -> Decision:
        """The default decision."""
        return self.decision_for(self.score)

    def decision_for(self, score: str, threshold: float | None = None) -> Decision:
        """The decision by `score`, at its calibrated threshold unless `threshold` is given (a given threshold is
        applied as given: no `sure` rule)."""
        if threshold is None and score in SCORES and score not in self.thresholds:
            raise ValueError(f"score={score!r}: this classifier was saved before that score existed; retrain it")
        if threshold is not None:
            return Decision(score, threshold)
        return Decision(score, self.thresholds[score], None if score == MAX_PROBABILITY else self.sure)

    def to_json(self) -> str:
        """Saved as `openset.json` beside the pipeline."""
        head = {"score": self.score, "thresholds": self.thresholds, "accept_rate": self.accept_rate, "sure": self.sure}
        return json.dumps({**head, **self.scores.to_dict()})

    @classmethod
    def from_json(cls, text: str) -> OpenSetModel:
        """The inverse of `to_json`."""
        data = json.loads(text)
        thresholds = {name: float(value) for name, value in data["thresholds"].items()}
        sure = data.get("sure")  # absent: saved before the few-photos rule
        accept = float(data["accept_rate"])
        return cls(
            data["score"], thresholds, FeatureScores.from_dict(data), accept, None if sure is None else float(sure)
        )


def calibrated(
    score: str, values: dict[str, np.ndarray], scores: FeatureScores, accept_rate: float = 0.95
) -> OpenSetModel:
    """An open-set model whose every score accepts `accept_rate` of the given known-class values (with 95 %
    confidence, see `calibrate`). From fewer rows than a distribution-free bound needs (`few_rows`), a photo the
    classifier is `SURE` of is also known: a handful of calibration photos cannot say how far unseen views of a
    known fruit (rotated, another light) lie, and rejecting what the classifier is sure of is the costlier error."""
    thresholds = {name: calibrate(name, values[name], accept_rate).threshold for name in SCORES}
    rows = len(values[MAX_PROBABILITY])
    return OpenSetModel(score, thresholds, scores, accept_rate, SURE if rows < few_rows(accept_rate) else None)


def few_rows(accept_rate: float, confidence: float = CONFIDENCE) -> int:
    """The fewest calibration rows whose largest value bounds the `accept_rate` quantile with `confidence` (59 for
    95 %/95 %); fewer rows are "few"."""
    return int(np.ceil(np.log(1 - confidence) / np.log(accept_rate)))


def calibrate(
    score: str, known_values: np.ndarray, accept_rate: float = 0.95, confidence: float = CONFIDENCE
) -> Decision:
    """The threshold that accepts `accept_rate` of known-class photos with `confidence`, from a sample of them.

    The sample's `accept_rate` quantile is itself uncertain, most of all on few rows (a classifier of 3 classes
    calibrated on 12 photos rejected rotated views it was sure of). So the threshold is a one-sided tolerance bound:
    the order statistic that bounds the quantile with `confidence` where the sample is large enough for one
    (distribution-free: the count of values under the quantile is binomial); on fewer rows (59 at 95 %/95 %), the
    normal tolerance bound mean + k·sd, never inside the sample's extreme value. Larger samples converge to the plain
    quantile (22,688 rows: the 95.2 % quantile for 95 %).
    """
    if not 0.5 <= accept_rate < 1.0:
        raise ValueError(f"accept_rate={accept_rate} must lie in [0.5, 1)")
    values = np.asarray(known_values, dtype=np.float64)
    if not values.size:
        raise ValueError("cannot calibrate the unknown threshold: no photo of a known class")
    sign = -1.0 if score == MAX_PROBABILITY else 1.0  # distances: small is known; probabilities: large is known
    bound = sign * _upper_tolerance_bound(sign * values, accept_rate, confidence)
    return Decision(score, float(np.clip(bound, 0.0, 1.0)) if score == MAX_PROBABILITY else float(bound))


def _upper_tolerance_bound(values: np.ndarray, proportion: float, confidence: float) -> float:
    """A value that `proportion` of the population lies under, with `confidence`, from the sample `values`."""
    from scipy import stats

    n = len(values)
    rank = int(stats.binom.ppf(confidence, n, proportion)) + 1  # 1-based: P(X_(rank) >= the quantile) >= confidence
    if rank <= n:
        return float(np.sort(values)[rank - 1])
    if n < 2:
        return float(values.max())
    factor = stats.nct.ppf(confidence, n - 1, stats.norm.ppf(proportion) * np.sqrt(n)) / np.sqrt(n)
    return float(max(values.mean() + factor * values.std(ddof=1), values.max()))
