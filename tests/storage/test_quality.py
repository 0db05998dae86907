"""The pure measures behind the asset checks fail on bad data, not only pass on good data."""

from spark_code.storage import quality


def _df(spark, rows, schema):
    return spark.createDataFrame(rows, schema)


def test_reconcile_detects_lost_and_duplicated_rows(spark):
    raw = _df(spark, [("a",), ("b",), ("c",)], "path string")
    feats = _df(spark, [("a",), ("b",)], "path string")
    quarantined = _df(spark, [("b",)], "path string")
    counts = quality.reconcile(raw, feats, quarantined)
    assert counts == {"raw": 3, "featurized": 2, "quarantined": 1, "missing": 1, "in_both": 1}
    assert not quality.counts_reconcile(counts)
    ok = quality.reconcile(raw, feats, _df(spark, [("c",)], "path string"))
    assert quality.counts_reconcile(ok)


def test_bad_vectors(spark):
    rows = [([1.0, 2.0],), ([float("nan"), 1.0],), ([float("inf"), 0.0],), ([1.0],), (None,)]
    df = _df(spark, rows, "features array<float>")
    assert quality.bad_vectors(df, "features", 2) == 4


def test_empty_labels(spark):
    df = _df(spark, [("Apple Braeburn",), ("",), ("  ",), (None,)], "label string")
    assert quality.empty_labels(df) == 3
