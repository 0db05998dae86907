"""Phone photos end to end: HEIC and AVIF files of the sample are featurized by Spark and classified by the app."""

from spark_code import batches
from spark_code.serving import FruitClassifier, latest_version, load_pipeline

PHONE = ("Broken Fruit/photo.heic", "Broken Fruit/photo.avif", "Broken Fruit/z.jfif", "Broken Fruit/y.Jpg")


def test_heic_and_avif_are_featurized_and_classified(run, spark, sample_root, weights_path):
    _, output, _ = run
    featurized = {r.path for r in batches.read_current(spark, output, "cnn_features").select("path").collect()}
    assert {f"file:{sample_root / name}" for name in PHONE} <= featurized
    engine = FruitClassifier(load_pipeline(latest_version(f"{output}/models")), weights_path)
    jpeg = engine.classify(sample_root / "Broken Fruit" / "y.Jpg")
    for name in PHONE[:2]:
        prediction = engine.classify(sample_root / name)
        assert prediction.top and prediction.top[0][0] == jpeg.top[0][0]  # the same photo, re-encoded
