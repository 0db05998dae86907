"""Open-set scores, calibration and metrics on synthetic features: unknown classes are rejected."""

import numpy as np
import pytest

from spark_code.classify import openset, rejection_metrics


def _clusters(rng, centres: np.ndarray, per_class: int, spread: float) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([c + spread * rng.normal(size=(per_class, centres.shape[1])) for c in centres])
    return x, np.repeat([f"class {i:02d}" for i in range(len(centres))], per_class)


@pytest.fixture(scope="module")
def world():
    """20 classes in 16-d (unit-ish centres, small spread); classes 00-15 known, 16-19 unknown."""
    rng = np.random.default_rng(11)
    centres = rng.normal(size=(20, 16))
    train_x, train_y = _clusters(rng, centres[:16], 40, 0.15)
    test_x, test_y = _clusters(rng, centres, 30, 0.15)
    return train_x, train_y, test_x, test_y, np.isin(test_y, train_y)


def test_auroc_and_rejection_metrics():
    assert rejection_metrics.auroc([0, 1, 2], [3, 4]) == 1.0
    assert rejection_metrics.auroc([3, 4], [0, 1, 2]) == 0.0
    assert rejection_metrics.auroc([1, 1], [1, 1]) == 0.5  # ties count one half
    assert rejection_metrics.auroc([0, 2], [1, 3]) == pytest.approx(0.75)
    known = np.arange(100.0)
    assert rejection_metrics.rejected_at(known, np.array([50.0, 99.5, 200.0]), 0.95) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="both known and unknown"):
        rejection_metrics.auroc([], [1.0])


def test_mahalanobis_equals_the_textbook_formula(world):
    train_x, train_y, test_x, _, _ = world
    score = openset.fit_mahalanobis(train_x, train_y, shrinkage=0.0)
    x = openset.l2_normalise(train_x)
    classes = sorted(set(train_y))
    means = np.stack([x[train_y == c].mean(axis=0) for c in classes])
    centred = x - means[np.searchsorted(classes, train_y)]
    precision = np.linalg.inv(centred.T @ centred / (len(x) - len(classes)))
    z = openset.l2_normalise(test_x[:25])
    expected = np.array([min((r - m) @ precision @ (r - m) for m in means) for r in z])
    assert np.allclose(score.distances(test_x[:25]), expected, rtol=1e-6)


def test_knn_is_the_distance_to_the_nearest_training_photo_by_direction_and_length(world):
    train_x, _, test_x, _, _ = world
    score = openset.fit_knn(train_x)
    x, bank = test_x[:10], train_x
    cosine = openset.l2_normalise(x) @ openset.l2_normalise(bank).T
    logs = np.log(np.linalg.norm(x, axis=1))[:, None] - np.log(np.linalg.norm(bank, axis=1))[None]
    assert np.allclose(score.distances(x), np.sqrt((2 * (1 - cosine) + logs**2).min(axis=1)), atol=1e-3)
    assert np.allclose(score.distances(train_x[:5]), 0, atol=1e-3)
    assert (score.distances(30 * train_x[:5]) > 3).all()  # same direction, 30 times longer: far


def _probabilities(is_known: np.ndarray) -> np.ndarray:
    """A classifier's probabilities that are surer of known rows (0.9) than of unknown ones (0.4)."""
    probabilities = np.full((len(is_known), 4), 0.1)
    probabilities[:, 0] = np.where(is_known, 0.9, 0.4)
    return probabilities / probabilities.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("name", [openset.KNN_PROBABILITY, openset.KNN, openset.MAHALANOBIS])
def test_feature_scores_reject_unknown_classes(world, name):
    train_x, train_y, test_x, _, is_known = world
    scores = openset.fit_feature_scores(train_x, train_y)
    values = scores.values(name, test_x, _probabilities(is_known))
    report = rejection_metrics.report(name, values, is_known, 0.95)
    assert report.auroc >= 0.95 and report.rejected_at_accept >= 0.9
    decision = openset.calibrate(name, values[is_known], 0.95)
    assert 0.95 <= decision.known(values[is_known]).mean() <= 0.98  # a 95 %/95 % tolerance bound: a bit over 95 %
    assert decision.known(values[~is_known]).mean() < 0.1


def test_knn_probability_adds_the_distance_and_the_missing_probability(world):
    train_x, train_y, test_x, _, is_known = world
    scores = openset.fit_feature_scores(train_x, train_y)
    probabilities = _probabilities(is_known)
    expected = scores.knn.distances(test_x) + 1 - probabilities.max(axis=1)
    assert np.allclose(scores.values(openset.KNN_PROBABILITY, test_x, probabilities), expected)
    every = scores.all_values(test_x, probabilities)
    assert list(every) == list(openset.SCORES)
    for name in openset.SCORES:
        assert np.allclose(every[name], scores.values(name, test_x, probabilities))
    with pytest.raises(ValueError, match="needs the class probabilities"):
        scores.values(openset.KNN_PROBABILITY, test_x, np.zeros((len(test_x), 0)))


def test_knn_probability_rejects_far_features_even_when_the_classifier_is_sure(world):
    """A flat colour, noise or text projects far from every training photo (here: 30 times longer); the classifier
    may still be sure of a class (probability 1), which must not buy it back."""
    train_x, train_y, test_x, _, is_known = world
    scores = openset.fit_feature_scores(train_x, train_y)
    known = scores.values(openset.KNN_PROBABILITY, test_x[is_known], _probabilities(is_known[is_known]))
    decision = openset.calibrate(openset.KNN_PROBABILITY, known, 0.95)
    far = 30 * train_x[:5]
    sure = np.zeros((len(far), 4))
    sure[:, 0] = 1.0
    assert not decision.known(scores.values(openset.KNN_PROBABILITY, far, sure)).any()


def test_calibrated_model_round_trips_through_json(world):
    train_x, train_y, test_x, _, is_known = world
    scores = openset.fit_feature_scores(train_x, train_y)
    probabilities = _probabilities(is_known)
    values = {n: scores.values(n, test_x, probabilities)[is_known] for n in openset.SCORES}
    model = openset.calibrated(openset.KNN_PROBABILITY, values, scores, 0.95)
    loaded = openset.OpenSetModel.from_json(model.to_json())
    assert loaded.decision == model.decision and loaded.thresholds == model.thresholds
    assert np.array_equal(loaded.scores.knn.directions, model.scores.knn.directions)
    assert np.array_equal(loaded.scores.knn.log_norms, model.scores.knn.log_norms)
    mahalanobis = scores.mahalanobis.distances(test_x)
    assert np.allclose(loaded.scores.values(openset.MAHALANOBIS, test_x, probabilities), mahalanobis)
    assert loaded.decision_for(openset.MAX_PROBABILITY).known(0.9) and not loaded.decision_for("max_probability").known(
        0.4
    )
    combined = loaded.scores.values(openset.KNN_PROBABILITY, test_x, probabilities)
    assert np.array_equal(loaded.decision.known(combined), model.decision.known(combined))


def test_a_model_saved_before_a_score_existed_says_so():
    scores = openset.fit_feature_scores(np.eye(4), ["a", "a", "b", "b"])
    older = openset.OpenSetModel(openset.KNN, {openset.KNN: 0.5, openset.MAX_PROBABILITY: 0.5}, scores, 0.95)
    loaded = openset.OpenSetModel.from_json(older.to_json())
    assert loaded.decision == openset.Decision(openset.KNN, 0.5)
    with pytest.raises(ValueError, match="saved before that score existed; retrain"):
        loaded.decision_for(openset.KNN_PROBABILITY)
    assert loaded.decision_for(openset.KNN_PROBABILITY, 1.2).known(1.0)  # a threshold given: usable


def test_decisions_validate_their_settings():
    with pytest.raises(ValueError, match="score='cosine'"):
        openset.Decision("cosine", 0.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        openset.Decision(openset.MAX_PROBABILITY, 3.0)
    with pytest.raises(ValueError, match="accept_rate"):
        openset.calibrate(openset.KNN, np.ones(10), 1.0)
    with pytest.raises(ValueError, match="shrinkage"):
        openset.fit_mahalanobis(np.ones((4, 2)), ["a", "a", "b", "b"], shrinkage=2.0)


def test_held_out_classes_are_a_fixed_fifth():
    classes = [f"fruit {i:03d}" for i in range(131)]
    held_out = rejection_metrics.held_out_classes(list(reversed(classes)))
    assert len(held_out) == 26 and held_out[:2] == ["fruit 002", "fruit 007"]
    assert (
        rejection_metrics.best(
            [rejection_metrics.ScoreReport("max_probability", 0.9, 0.5), rejection_metrics.ScoreReport("knn", 0.9, 0.4)]
        ).score
        == "knn"
    )
    aurocs = dict(zip(openset.SCORES, [0.96, 0.95, 0.9, 0.93], strict=True))
    reports = [rejection_metrics.ScoreReport(name, auroc, 0.5) for name, auroc in aurocs.items()]
    assert rejection_metrics.best(reports).score == openset.KNN_PROBABILITY


def test_few_calibration_rows_widen_the_threshold_and_keep_what_the_classifier_is_sure_of():
    rng = np.random.default_rng(7)
    population = rng.normal(0.5, 0.1, 200_000)
    for n in (12, 40, 300, 5000):
        accepted = []
        for _ in range(200):  # 95 %/95 %: at least 95 % of the population accepted in at least ~95 % of samples
            threshold = openset.calibrate(openset.KNN, rng.choice(population, n), 0.95).threshold
            accepted.append((population <= threshold).mean())
        assert np.mean(np.array(accepted) >= 0.95) >= 0.9, (n, np.mean(np.array(accepted) >= 0.95))
        assert np.median(accepted) < (0.999 if n < 59 else 0.985)  # not wider than the uncertainty asks
    assert openset.few_rows(0.95) == 59
    scores = openset.fit_feature_scores(rng.normal(size=(20, 4)), ["a"] * 10 + ["b"] * 10)
    values = {name: rng.uniform(0.1, 0.5, 12) for name in openset.SCORES}
    few = openset.calibrated(openset.KNN_PROBABILITY, values, scores)
    many = openset.calibrated(openset.KNN_PROBABILITY, {k: np.resize(v, 120) for k, v in values.items()}, scores)
    assert few.decision.sure == openset.SURE and many.decision.sure is None
    near, far = 1.4 * few.decision.threshold, 1.6 * few.decision.threshold  # openset.SURE_REACH = 1.5
    assert few.decision.known(near, 0.999) and not few.decision.known(near, 0.9) and not few.decision.known(far, 0.999)
    assert not many.decision.known(1.4 * many.decision.threshold, 0.999)
    assert few.decision_for(openset.KNN_PROBABILITY, 0.2).sure is None  # a given threshold is applied as given
    assert openset.OpenSetModel.from_json(few.to_json()).decision == few.decision
