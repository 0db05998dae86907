"""The fruit classifier: metrics, its checks, the saved pipeline read without Spark, and `fruits classify`."""

import json
import subprocess
import sys

import numpy as np
import pytest
from pyspark.ml import PipelineModel

from bench.common import drawn_non_fruit
from bench.sample_classifier import save_trained
from fruits_assets.app.engine import FruitClassifier, NotAnImageError
from fruits_assets.io.resources import ClassifierSettings
from spark_code.classify import classifier as clf
from spark_code.classify import classifier_fit, openset
from spark_code.classify.serving import SERVING_JSON, load_pipeline
from spark_code.storage.versions import ModelNotFoundError, local_folder
from tests.conftest import CLASSES, REPO, TRAINING, first_images
from tests.helpers import metadata_of
from tests.helpers import table as read_table


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
    meta = metadata_of(result, "fruit_classifier")
    assert meta["classes"] == len(CLASSES)
    assert meta["accuracy"] >= 0.9 and meta["raw_accuracy"] >= 0.9
    assert 0 < meta["macro_f1"] <= 1
    assert meta["unknown_class_rows"] > 0  # the sample's classes absent from training are counted, not scored
    assert {row.data["label"] for row in meta["per_class_accuracy"].records} == set(CLASSES)
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["accuracy_above_floor"] and checks["pca_costs_little_accuracy"]


def test_classifier_metadata_reports_open_set_rejection(run):
    result, _, _ = run
    meta = metadata_of(result, "fruit_classifier")
    assert meta["unknown_score"] == openset.KNN_PROBABILITY and meta["unknown_threshold"] > 0
    assert meta["known_accepted"] >= 0.9  # calibrated to accept 95 % of the corpus's known-class photos
    assert meta["openset_held_out_classes"] == 1  # of the sample's 3 training classes, "Cherry 1" is held out
    for score in openset.SCORES:
        assert 0.0 <= meta[f"openset_auroc_{score}"] <= 1.0 and 0.0 <= meta[f"openset_rejected_{score}"] <= 1.0
    assert "| knn |" in meta["openset_protocol"]


def test_pca_k_chosen_by_accuracy_and_stored_as_float32(run, spark):
    result, output, _ = run
    meta = metadata_of(result, "pca_features")
    assert meta["k_choice"] == "accuracy" and "variance_target" not in meta
    accuracy = {row.data["k"]: row.data["accuracy"] for row in meta["accuracy_by_k"].records}
    assert meta["k"] in accuracy and accuracy[meta["k"]] >= max(accuracy.values()) - 0.003
    assert all(accuracy[k] < max(accuracy.values()) - 0.003 for k in accuracy if k < meta["k"])
    assert meta["bytes_per_photo_vector"] == 4 * meta["k"] and meta["accuracy_plot"].startswith("![")
    for table, column in (("pca_features", "pca_features"), ("scaled_features", "scaled_features")):
        assert read_table(spark, output, table).schema[column].dataType.simpleString() == "array<float>"


def test_accuracy_floor_cannot_be_set_below_090():
    with pytest.raises(Exception, match="accuracy_floor"):
        ClassifierSettings(accuracy_floor=0.5)


@pytest.fixture(scope="module")
def saved(run, spark):
    """The saved classifier: its Spark PipelineModel and the same folder read back without Spark."""
    _, output, _ = run
    folder = local_folder(f"{output}/models", "fruit_classifier")
    return PipelineModel.load(str(folder)), load_pipeline(folder), output


@pytest.fixture(scope="module")
def engine(saved, weights_path):
    """The engine with its saved (default) open-set decision."""
    return FruitClassifier(saved[1], weights_path)


def test_saved_pipeline_holds_scaler_pca_classifier_and_labels(saved):
    model, pipeline, _ = saved
    names = [type(stage).__name__ for stage in model.stages]
    assert names == ["StandardScalerModel", "PCAModel", "LogisticRegressionModel", "IndexToString"]
    assert sorted(pipeline.labels) == sorted(CLASSES) == sorted(clf.class_labels(model))
    assert pipeline.components.shape == (1280, model.stages[1].getK())


def test_the_serving_sidecar_holds_the_arrays_of_the_saved_spark_pipeline(saved):
    _, pipeline, output = saved
    folder = local_folder(f"{output}/models", "fruit_classifier")
    assert (folder / SERVING_JSON).exists()  # read by `fruits classify` and `fruits serve`: no Spark file layout
    spark_files = json.loads(classifier_fit.serving_json(PipelineModel.load(str(folder))))  # Spark ML's own files
    for name in ("mean", "scale", "components", "coefficients", "intercepts"):
        np.testing.assert_array_equal(getattr(pipeline, name), np.asarray(spark_files[name]), err_msg=name)
    assert pipeline.labels == spark_files["labels"]


def test_classify_path_equals_spark_path(saved, engine, spark, sample_root):
    model, _, output = saved
    pca = {r.path: np.array(r.pca_features) for r in read_table(spark, output, "pca_features").collect()}
    features = read_table(spark, output, "cnn_features")
    spark_labels = {r.path: r[clf.PREDICTED] for r in clf.predict(model, features).collect()}
    photos = [p for p in sorted(sample_root.rglob("*.jpg")) if f"file:{p}" in pca][:6]
    assert len(photos) == 6
    for photo in photos:
        prediction = engine.classify(photo)
        assert np.abs(prediction.pca - pca[f"file:{photo}"]).max() < 1e-4
        assert prediction.top[0][0] == spark_labels[f"file:{photo}"]


def test_classify_and_spark_path_agree_on_score_and_decision(saved, engine, spark, sample_root):
    model, pipeline, output = saved
    decision = pipeline.openset.decision
    assert engine.decision == decision and decision.score == openset.KNN_PROBABILITY
    features = read_table(spark, output, "cnn_features")
    rows = {r.path: r for r in clf.score_rows(model, pipeline.openset.scores, features, decision).collect()}
    photos = [p for p in sorted(sample_root.rglob("*.*")) if f"file:{p}" in rows]
    assert len(photos) >= 15
    for photo in photos:
        prediction, row = engine.classify(photo), rows[f"file:{photo}"]
        assert prediction.score == pytest.approx(row[decision.score], rel=1e-3, abs=1e-4)
        assert (prediction.label != "unknown") == row[clf.KNOWN]
        assert prediction.label in ("unknown", row[clf.PREDICTED])
    assert 0 < sum(row[clf.KNOWN] for row in rows.values()) < len(rows)  # some accepted, some rejected


@pytest.fixture(scope="module")
def fruit_app(engine, spark, fruits_dir, weights_path, tmp_path_factory):
    """A classifier built as the asset builds it, on 30 classes: 10 Training photos each; scaler, PCA (95 % of the
    variance) and the calibration on 8 Test photos each. The run's 3-class sample is too small for distances to mean
    much; this is the smallest world in which they do. Returns (engine, held-back Test photos of its classes)."""
    classes = sorted(p.name for p in fruits_dir.iterdir() if p.is_dir())[::4][:30]

    def table(root, first: int, last: int):
        photos = [(c, p) for c in classes for p in first_images(root / c, last)[first:]]
        rows = [(str(p), c, engine.features(p.read_bytes())[0].tolist()) for c, p in photos]
        return spark.createDataFrame(rows, "path string, label string, features array<float>")

    train, corpus = table(TRAINING, 0, 10), table(fruits_dir, 0, 8)
    uri = save_trained(spark, train, corpus, str(tmp_path_factory.mktemp("app_models")))
    held_back = [p for c in classes for p in first_images(fruits_dir / c, 9)[8:]]
    return FruitClassifier(load_pipeline(uri), weights_path), held_back


def test_non_fruit_images_are_unknown(fruit_app):
    app, held_back = fruit_app
    assert app.decision.score == openset.KNN_PROBABILITY  # the default
    for name, data in drawn_non_fruit().items():
        prediction = app.classify_bytes(data, name)
        assert prediction.label == "unknown", (name, prediction.score, app.decision)
    named = [app.classify(photo).label for photo in held_back]  # unseen photos of its classes
    assert np.mean([label != "unknown" for label in named]) >= 0.8


def test_unknown_by_probability_threshold_and_clear_errors(saved, engine, weights_path, training_root, sample_root):
    photo = next((training_root / CLASSES[1]).glob("*.jpg"))  # a training photo: distance 0 to the bank
    assert engine.classify(photo).label == CLASSES[1]
    lenient = FruitClassifier(saved[1], weights_path, threshold=0.0, score=openset.MAX_PROBABILITY)
    assert lenient.classify(photo).label == CLASSES[1]
    strict = FruitClassifier(saved[1], weights_path, threshold=1.0, score=openset.MAX_PROBABILITY)
    assert strict.classify(photo).label == "unknown"
    with pytest.raises(ValueError, match="between 0 and 1"):
        FruitClassifier(saved[1], weights_path, threshold=2.0, score=openset.MAX_PROBABILITY)
    with pytest.raises(NotAnImageError, match="notes.jpg"):
        engine.classify(sample_root / "Broken Fruit" / "notes.jpg")
    with pytest.raises(ModelNotFoundError, match="materialize the fruit_classifier"):
        local_folder(str(sample_root), "fruit_classifier")


def test_fruits_classify_command(saved, weights_path, sample_root, training_root, original_dir, tmp_path):
    _, _, output = saved
    banana = next((training_root / "Banana").glob("*.jpg"))
    large = next((original_dir / "apple_golden_1").glob("*.jpg"))  # a phone-sized photo of an unseen class
    flat = tmp_path / "flat.png"
    flat.write_bytes(drawn_non_fruit()["flat white"])
    cmd = [sys.executable, "-m", "fruits_assets.app.cli", "classify", "--models", f"{output}/models"]
    cmd += [
        "--unknown-score",
        "knn",
        "--threshold",
        "0.05",
        "--weights",
    ]  # a strict given threshold: only training photos
    done = subprocess.run(
        [*cmd, weights_path, str(banana), str(large), str(sample_root / "Broken Fruit" / "notes.jpg"), str(flat)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 1, done.stderr  # one photo could not be read
    assert lines[0].startswith(f"{banana}: Banana") and lines[0].count(",") == 2  # top-3
    assert lines[1].startswith(f"{large}: ")
    assert lines[2].startswith(f"{flat}: unknown")
    assert "cannot classify" in done.stderr and "notes.jpg" in done.stderr and "Traceback" not in done.stderr
    no_model = [sys.executable, "-m", "fruits_assets.app.cli", "classify", "--models", str(sample_root), str(banana)]
    missing = subprocess.run(no_model, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "materialize the fruit_classifier" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_a_classifier_calibrated_on_few_photos_accepts_what_it_is_sure_of(engine, fruits_dir):
    """3 classes, 6 training photos and 4 corpus photos each: the unknown threshold comes from 12 known rows. The
    last 5 Test Bananas (rotated views, far from those few photos) are still Bananas, not `unknown`."""
    bananas = sorted((fruits_dir / "Banana").glob("*.jpg"))[-5:]
    answers = [engine.classify(photo) for photo in bananas]
    assert engine.decision.sure == openset.SURE  # 12 calibration rows: fewer than a 95 %/95 % bound needs (59)
    assert [a.label for a in answers] == ["Banana"] * 5, (answers, engine.decision)
    far = [a for a in answers if a.score > engine.decision.threshold]
    assert all(a.top[0][1] >= openset.SURE for a in far)  # accepted past the threshold: only what it is sure of
