"""The pure measures behind the asset checks fail on bad data, not only pass on good data."""

import pyarrow as pa

from spark_code import quality


def test_reconcile_detects_lost_and_duplicated_rows():
    counts = quality.reconcile(["a", "b", "c"], ["a", "b"], ["b"])
    assert counts == {"raw": 3, "featurized": 2, "quarantined": 1, "missing": 1, "in_both": 1}
    assert not quality.counts_reconcile(counts)
    assert quality.counts_reconcile(quality.reconcile(["a", "b", "c"], ["a", "b"], ["c"]))
    found = {"files_found": 4, "skipped": 0}
    assert not quality.counts_reconcile({**quality.reconcile(["a", "b", "c"], ["a", "b"], ["c"]), **found})


def test_bad_vectors_over_record_batches():
    rows = [[1.0, 2.0], [float("nan"), 1.0], [float("inf"), 0.0], [1.0], None, [3.0, -float("inf")], [0.0, 5.0]]
    table = pa.table({"features": pa.array(rows, pa.list_(pa.float32()))})
    assert quality.bad_vectors(table.to_batches(max_chunksize=3), "features", 2) == 5
    assert quality.bad_vectors([table], "features", 2) == 5
    assert quality.bad_vectors([table.slice(0, 1), table.slice(6)], "features", 2) == 0


def test_empty_labels():
    table = pa.table({"label": ["Apple Braeburn", "", "  ", None, "Banana"]})
    assert quality.empty_labels(table.to_batches(max_chunksize=2)) == 3
