"""The CNN featurizer: same numbers as Keras itself, one model per worker, clear weights errors."""

from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F

from spark_code.featurize import cnn, decode, model_cache, triage
from spark_code.featurize.cnn import CnnSpec, WeightsError
from spark_code.featurize.udf import CnnFeaturizer
from spark_code.ingest import images
from tests.conftest import copy_photos


@pytest.fixture(scope="module")
def featurized(spark, sample_root, weights_path):
    """The featurizer run twice in a row over the labelled sample (Arrow batches of 4 rows, model batches of 3).

    Returns the first run's rows and both runs' counters.
    """
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "4")
    try:
        listing = images.list_images(spark, str(sample_root)).filter("label is not null and length > 0")
        counts = []
        for _ in range(2):
            featurizer = CnnFeaturizer(weightsPath=weights_path, batchSize=3, threads=1)
            rows = featurizer.transform(images.attach_content(spark, listing, str(sample_root))).collect()
            counts.append(featurizer.counters.values())
    finally:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "256")
    return rows, counts


def test_features_equal_direct_keras_predict(featurized, weights_path):
    rows, _ = featurized
    good = [r for r in rows if r.error is None]
    spec = CnnSpec()
    model = spec.build(weights_path)
    pixels = np.stack([decode.decode_image(Path(r.path.removeprefix("file:")).read_bytes(), 224) for r in good])
    expected = model.predict(spec.preprocess(pixels), batch_size=8, verbose=0)
    actual = np.array([r.features for r in good], dtype=np.float32)
    assert actual.shape == (len(good), 1280)
    if CnnFeaturizer().cnn_engine().precision == "bf16":  # the default engine on a CPU with native bf16
        assert (np.linalg.norm(actual - expected, axis=1) / np.linalg.norm(expected, axis=1)).max() < 0.2
    else:
        assert np.abs(actual - expected).max() < 1e-4
    assert (actual == 0).mean() > 0.1 and actual.std() > 0.1  # real ReLU6-pooled features, not zeros


def test_undecodable_rows_carry_a_reason(featurized):
    rows, _ = featurized
    errors = {r.path.rsplit("/", 1)[1]: r.error for r in rows if r.error is not None}
    assert set(errors) == {"truncated.jpg", "corrupt.jpg", "notes.jpg", "notes.txt"}
    assert all(errors[name].startswith("not an image (") for name in ("notes.jpg", "notes.txt"))
    assert all(errors[name].startswith("undecodable image") for name in ("truncated.jpg", "corrupt.jpg"))
    assert all(r.features is None for r in rows if r.error is not None)


def test_each_image_decoded_and_inferred_once_model_built_once_per_worker(featurized):
    rows, (first, second) = featurized
    for counts in (first, second):
        assert counts["images_decoded"] == len(rows)
        assert counts["cnn_images"] == sum(r.error is None for r in rows)
    # local[2] keeps at most two Python workers alive, reused across tasks and jobs: over two jobs of 6 Arrow
    # batches each, at most one model is built per worker, never one per batch, task or job.
    assert len(rows) / 4 >= 5
    assert first["models_built"] + second["models_built"] <= 2


def test_featurizer_save_load_round_trip(tmp_path, weights_path):
    featurizer = CnnFeaturizer(weightsPath=weights_path, batchSize=16, imageSize=160, outputCol="cnn")
    featurizer.save(str(tmp_path / "featurizer"))
    loaded = CnnFeaturizer.load(str(tmp_path / "featurizer"))
    assert loaded.weights_path() == weights_path
    assert loaded.getOrDefault("batchSize") == 16 and loaded.spec() == CnnSpec(input_size=160)
    assert loaded.getOutputCol() == "cnn"


def test_missing_weights_file_names_the_path(tmp_path):
    missing = str(tmp_path / "nope.weights.h5")
    with pytest.raises(WeightsError, match="nope.weights.h5.*FRUITS_WEIGHTS"):
        cnn.load_weights(CnnSpec(), missing)


def test_wrong_weights_file_is_rejected(tmp_path):
    bogus = tmp_path / "bogus.weights.h5"
    bogus.write_text("not hdf5")
    with pytest.raises(WeightsError, match="bogus.weights.h5.*not a Keras MobileNetV2"):
        cnn.load_weights(CnnSpec(), str(bogus))


def test_weights_of_another_model_are_rejected(tmp_path):
    import tensorflow as tf

    other = tmp_path / "other.weights.h5"
    tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(2)]).save_weights(str(other))
    with pytest.raises(WeightsError, match="other.weights.h5"):
        cnn.load_weights(CnnSpec(), str(other))


def test_target_partitions_keep_cores_busy():
    assert triage.target_partitions(10, 2) == 2
    assert triage.target_partitions(22688, 2) == 60
    assert triage.target_partitions(0, 4) == 4


def test_featurize_listing_quarantines_every_bad_row(spark, sample_root, weights_path, expected_outcomes):
    listing = images.list_images(spark, str(sample_root))
    run = triage.featurize_listing(spark, listing, str(sample_root), CnnFeaturizer(weightsPath=weights_path))
    try:
        quarantined = {r.path.split(str(sample_root) + "/", 1)[1]: r.reason for r in run.quarantined.collect()}
        featurized = {r.path.split(str(sample_root) + "/", 1)[1] for r in run.features.select("path").collect()}
    finally:
        run.release()
    assert quarantined["at_root.jpg"] == images.NO_CLASS_FOLDER
    assert quarantined["Broken Fruit/empty.jpg"].startswith("empty file")
    assert {k for k, v in expected_outcomes.items() if v == "quarantined"} == set(quarantined)
    assert {k for k, v in expected_outcomes.items() if v == "featurized"} == featurized
    assert run.features.filter(F.size("features") != 1280).count() == 0


def test_the_pass_counts_and_quarantines_a_file_that_vanished(spark, tmp_path, weights_path):
    root = copy_photos(tmp_path / "root", ["Banana"], 3)
    listing = images.list_images(spark, str(root)).cache()
    assert listing.count() == 3
    gone = sorted((root / "Banana").iterdir())[0]
    gone.unlink()  # listed, then gone before the read
    run = triage.featurize_listing(spark, listing, str(root), CnnFeaturizer(weightsPath=weights_path))
    try:
        assert run.run_pass() == 2
        reasons = {r.path.rsplit("/", 1)[1]: r.reason for r in run.quarantined.collect()}
        assert reasons == {gone.name: images.VANISHED}
        assert run.features.count() == 2
    finally:
        run.release()
        listing.unpersist()


def test_after_the_pass_a_clean_batch_quarantines_nothing(spark, tmp_path, weights_path):
    root = copy_photos(tmp_path / "root", ["Banana", "Kiwi"], 2)
    listing = images.list_images(spark, str(root))
    run = triage.featurize_listing(spark, listing, str(root), CnnFeaturizer(weightsPath=weights_path))
    try:
        assert run.run_pass() == 4
        assert run.quarantined.count() == 0 and run.features.count() == 4
    finally:
        run.release()


def test_warmed_workers_featurize_without_building_the_cnn(spark, tmp_path, weights_path):
    root = copy_photos(tmp_path / "root", ["Banana"], 2)
    listing = images.list_images(spark, str(root))

    def models_built(featurizer, warm: bool) -> int:
        if warm:
            model_cache.warm_workers(spark, featurizer.cnn_engine(), weights_path)
        run = triage.featurize_listing(spark, listing, str(root), featurizer)
        try:
            assert run.run_pass() == 2
            return featurizer.counters.values()["models_built"]
        finally:
            run.release()

    # engines of their own (threads: part of a worker model's key), so no earlier test built them
    assert models_built(CnnFeaturizer(weightsPath=weights_path, threads=3), warm=False) >= 1
    assert models_built(CnnFeaturizer(weightsPath=weights_path, threads=5), warm=True) == 0
