"""Phone-sent files end to end: HEIC/AVIF featurized and classified; found = featurized + quarantined + skipped."""

from fruits_assets.app.engine import FruitClassifier
from spark_code.classify.serving import load_pipeline
from spark_code.storage.versions import local_folder
from tests.conftest import SKIPPED_IN_SAMPLE
from tests.helpers import table

PHONE = ("Broken Fruit/photo.heic", "Broken Fruit/photo.avif", "Broken Fruit/z.jfif", "Broken Fruit/y.Jpg")


def test_heic_and_avif_are_featurized_and_classified(run, spark, sample_root, weights_path):
    _, output, _ = run
    featurized = {r.path for r in table(spark, output, "cnn_features").select("path").collect()}
    assert {f"file:{sample_root / name}" for name in PHONE} <= featurized
    engine = FruitClassifier(load_pipeline(local_folder(f"{output}/models", "fruit_classifier")), weights_path)
    jpeg = engine.classify(sample_root / "Broken Fruit" / "y.Jpg")
    for name in PHONE[:2]:
        prediction = engine.classify(sample_root / name)
        assert prediction.top and prediction.top[0][0] == jpeg.top[0][0]  # the same photo, re-encoded


def test_every_file_found_is_featurized_quarantined_or_skipped(run, expected_outcomes):
    result, _, _ = run
    (check,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "counts_reconcile"]
    counts = {key: value.value for key, value in check.metadata.items()}
    assert check.passed and counts["skipped"] == SKIPPED_IN_SAMPLE  # .DS_Store, Thumbs.db, the loop
    assert counts["files_found"] == len(expected_outcomes) + SKIPPED_IN_SAMPLE
    assert counts["files_found"] == counts["featurized"] + counts["quarantined"] + counts["skipped"]
    raw = next(e for e in result.get_asset_materialization_events() if e.asset_key.path == ["raw_images"])
    by_rule = raw.materialization.metadata["skipped_by_rule"].value
    assert by_rule == {"hidden": 1, "os_clutter": 1, "link_to_walked_folder": 1}
