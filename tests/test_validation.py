"""The fruit classifier: metrics, its checks, the saved pipeline read without Spark, and `fruits classify`."""

import subprocess
import sys

import numpy as np
import pytest
from pyspark.ml import PipelineModel

from fruits_assets.resources import ClassifierSettings
from spark_code import batches, io
from spark_code import classifier as clf
from spark_code.serving import FruitClassifier, ModelNotFoundError, NotAnImageError, latest_version, load_pipeline
from tests.conftest import CLASSES, REPO


def _metadata(result, asset):
    return {k: v.value for k, v in result.asset_materializations_for_node(asset)[0].metadata.items()}


def test_evaluate_scores_known_classes_and_counts_unknown_ones():
    pairs = [("a", "a"), ("a", "b"), ("b", "b"), ("b", "b"), ("c", "a"), ("z", "a")]
    scored = clf.evaluate(pairs, known=["a", "b", "c"])
    assert scored.rows == 5 and scored.unknown_class_rows == 1  # "z" was never trained on
    assert scored.accuracy == pytest.approx(3 / 5)
    f1_a, f1_b = 2 * 0.5 * 0.5 / 1.0, 2 * (2 / 3) * 1.0 / (2 / 3 + 1.0)
    assert scored.macro_f1 == pytest.approx((f1_a + f1_b + 0.0) / 3)
    assert scored.per_class["c"]["accuracy"] == 0.0
    assert {(t, p) for t, p, _ in scored.confused} == {("a", "b"), ("c", "a")}
    with pytest.raises(ValueError, match="no test image"):
        clf.evaluate([("z", "a")], known=["a"])


def test_classifier_materialized_with_metrics_and_passing_checks(run):
    result, _, _ = run
    meta = _metadata(result, "fruit_classifier")
    assert meta["classes"] == len(CLASSES)
    assert meta["accuracy"] >= 0.9 and meta["raw_accuracy"] >= 0.9
    assert 0 < meta["macro_f1"] <= 1
    assert meta["unknown_class_rows"] > 0  # the sample's classes absent from training are counted, not scored
    assert {row.data["label"] for row in meta["per_class_accuracy"].records} == set(CLASSES)
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["accuracy_above_floor"] and checks["pca_costs_little_accuracy"]


def test_accuracy_floor_cannot_be_set_below_090():
    with pytest.raises(Exception, match="accuracy_floor"):
        ClassifierSettings(accuracy_floor=0.5)


@pytest.fixture(scope="module")
def saved(run, spark):
    """The saved classifier: its Spark PipelineModel and the same folder read back without Spark."""
    _, output, _ = run
    folder = latest_version(f"{output}/models")
    return PipelineModel.load(str(folder)), load_pipeline(folder), output


@pytest.fixture(scope="module")
def engine(saved, weights_path):
    return FruitClassifier(saved[1], weights_path, threshold=0.0)


def test_saved_pipeline_holds_scaler_pca_classifier_and_labels(saved):
    model, pipeline, _ = saved
    names = [type(stage).__name__ for stage in model.stages]
    assert names == ["StandardScalerModel", "PCAModel", "LogisticRegressionModel", "IndexToString"]
    assert sorted(pipeline.labels) == sorted(CLASSES) == sorted(clf.class_labels(model))
    assert pipeline.components.shape == (1280, model.stages[1].getK())


def test_classify_path_equals_spark_path(saved, engine, spark, sample_root):
    model, _, output = saved
    pca = {r.path: np.array(r.pca_features) for r in io.read_table(spark, output, "pca_features").collect()}
    features = batches.read_current(spark, output, "cnn_features")
    spark_labels = {r.path: r[clf.PREDICTED] for r in clf.predict(model, features).collect()}
    photos = [p for p in sorted(sample_root.rglob("*.jpg")) if f"file:{p}" in pca][:6]
    assert len(photos) == 6
    for photo in photos:
        prediction = engine.classify(photo)
        assert np.abs(prediction.pca - pca[f"file:{photo}"]).max() < 1e-4
        assert prediction.top[0][0] == spark_labels[f"file:{photo}"]


def test_unknown_below_threshold_and_clear_errors(saved, engine, weights_path, sample_root):
    photo = next((sample_root / CLASSES[1]).glob("*.jpg"))
    assert engine.classify(photo).label == CLASSES[1]
    strict = FruitClassifier(saved[1], weights_path, threshold=1.0)
    assert strict.classify(photo).label == "unknown"
    with pytest.raises(NotAnImageError, match="notes.jpg"):
        engine.classify(sample_root / "Broken Fruit" / "notes.jpg")
    with pytest.raises(ModelNotFoundError, match="materialize the fruit_classifier"):
        latest_version(str(sample_root))


def test_fruits_classify_command(saved, weights_path, sample_root, original_dir):
    _, _, output = saved
    banana = next((sample_root / "Banana").glob("*.jpg"))
    large = next((original_dir / "apple_golden_1").glob("*.jpg"))  # a phone-sized photo of an unseen class
    cmd = [sys.executable, "-m", "spark_code.cli", "classify", "--models", f"{output}/models", "--weights"]
    done = subprocess.run(
        [*cmd, weights_path, str(banana), str(large), str(sample_root / "Broken Fruit" / "notes.jpg")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 1, done.stderr  # one photo could not be read
    assert lines[0].startswith(f"{banana}: Banana") and lines[0].count(",") == 2  # top-3
    assert lines[1].startswith(f"{large}: ")
    assert "cannot classify" in done.stderr and "notes.jpg" in done.stderr and "Traceback" not in done.stderr
    no_model = [sys.executable, "-m", "spark_code.cli", "classify", "--models", str(sample_root), str(banana)]
    missing = subprocess.run(no_model, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "materialize the fruit_classifier" in missing.stderr
    assert "Traceback" not in missing.stderr
