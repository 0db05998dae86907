"""Ingest batches on their own: what a batch takes, and the current rows over several batches."""

from datetime import datetime, timedelta, timezone

import pytest
from pyspark.sql import functions as F

from spark_code import local_batch, unchanged
from spark_code.ingest import batches, images
from spark_code.storage import quality, versions

T0 = datetime(2026, 11, 25, tzinfo=timezone.utc)


def _rows(files):
    return [(f"file:/r/{path}", path.split("/")[0], size, T0 + timedelta(seconds=mtime)) for path, size, mtime in files]


def _listing(spark, files):
    return spark.createDataFrame(_rows(files), "path string, label string, length long, modification_time timestamp")


def _by_path(df):
    return {row.path.rsplit("/r/", 1)[1]: row for row in df.collect()}


def test_a_batch_takes_new_changed_and_deleted_files_only(spark):
    first = batches.plan(_listing(spark, [("a/1.jpg", 10, 1), ("a/2.jpg", 10, 1), ("b/3.jpg", 10, 1)]), None, "b1", T0)
    assert {row.change for row in first.collect()} == {batches.NEW} and first.count() == 3
    now = _listing(spark, [("a/1.jpg", 10, 1), ("a/2.jpg", 11, 2), ("c/4.jpg", 5, 1)])
    second = batches.plan(now, batches.current_raw(first), "b2", T0 + timedelta(hours=1))
    changes = {path: row.change for path, row in _by_path(second).items()}
    assert changes == {"a/2.jpg": batches.CHANGED, "c/4.jpg": batches.NEW, "b/3.jpg": batches.DELETED}
    assert batches.tally(second) == {batches.NEW: 1, batches.CHANGED: 1, batches.DELETED: 1}


def test_current_rows_are_each_paths_newest_batch(spark):
    first = batches.plan(_listing(spark, [("a/1.jpg", 10, 1), ("a/2.jpg", 10, 1), ("b/3.jpg", 10, 1)]), None, "b1", T0)
    now = _listing(spark, [("a/1.jpg", 10, 1), ("a/2.jpg", 11, 2)])
    second = batches.plan(now, batches.current_raw(first), "b2", T0 + timedelta(hours=1))
    raw = first.unionByName(second)
    current = _by_path(batches.current_raw(raw))
    assert set(current) == {"a/1.jpg", "a/2.jpg"}  # b/3.jpg was deleted in b2
    assert (current["a/1.jpg"].batch, current["a/2.jpg"].batch, current["a/2.jpg"].length) == ("b1", "b2", 11)
    # a feature table: one row per file its batch featurized; the stale a/2.jpg row of b1 is not current
    features = raw.filter("change != 'deleted'").select(*batches.IDENTITY, batches.BATCH)
    kept = _by_path(batches.current_rows(features, raw))
    assert {path: row.batch for path, row in kept.items()} == {"a/1.jpg": "b1", "a/2.jpg": "b2"}


def test_paths_featurized_with_other_settings_count_as_changed(spark):
    first = batches.plan(_listing(spark, [("a/1.jpg", 10, 1), ("a/2.jpg", 10, 1)]), None, "b1", T0)
    listing = _listing(spark, [("a/1.jpg", 10, 1), ("a/2.jpg", 10, 1), ("a/3.jpg", 10, 1)])
    second = batches.plan(listing, first, "b2", T0 + timedelta(hours=1))  # takes a/3.jpg only
    raw = first.unionByName(second)
    features = raw.select(*batches.IDENTITY, batches.BATCH).withColumn(
        batches.MODEL_COLUMN, F.when(F.col(batches.BATCH) == "b1", "old").otherwise("new")
    )
    redo = batches.stale(batches.current_raw(raw), features, "new")
    assert sorted(row.path for row in redo.collect()) == ["file:/r/a/1.jpg", "file:/r/a/2.jpg"]
    assert batches.stale(batches.current_raw(raw), features.filter("batch = 'b2'"), "new") is None
    third = batches.plan(listing, batches.current_raw(raw), "b3", T0 + timedelta(hours=2), redo)
    assert {path: row.change for path, row in _by_path(third).items()} == {
        "a/1.jpg": batches.CHANGED,
        "a/2.jpg": batches.CHANGED,
    }


def test_batches_are_read_back_per_partition(spark, tmp_path):
    base = str(tmp_path)
    first = batches.plan(_listing(spark, [("a/1.jpg", 10, 1), ("a/2.jpg", 10, 1)]), None, "b1", T0)
    versions.write_table(first, base, "raw_images/b1")
    second = batches.plan(_listing(spark, [("a/1.jpg", 10, 1)]), first, "b2", T0 + timedelta(hours=1))
    versions.write_table(second, base, "raw_images/b2")
    assert batches.committed_keys(spark, base) == []  # listings alone: no batch is complete
    assert batches.read_current_rows(spark, base, "cnn_features") is None  # no feature batch written
    for key, batch in (("b1", first), ("b2", second)):
        versions.write_table(batch.filter("change != 'deleted'"), base, f"cnn_features/{key}")
        versions.write_table(batch.limit(0), base, f"quarantined_images/{key}")
    assert batches.committed_keys(spark, base) == ["b1", "b2"]
    assert set(_by_path(batches.read_current_rows(spark, base, "raw_images"))) == {"a/1.jpg"}
    assert set(_by_path(batches.read_current_rows(spark, base, "raw_images", ["b1"]))) == {"a/1.jpg", "a/2.jpg"}
    versions.write_table(first, base, "raw_images/b3")  # a batch killed after its listing: ignored
    assert batches.committed_keys(spark, base) == ["b1", "b2"]
    assert set(_by_path(batches.read_current_rows(spark, base, "cnn_features"))) == {"a/1.jpg"}


@pytest.mark.parametrize("key", ["", "a/b", "../up", "x" * 65, "with space"])
def test_bad_batch_keys_are_named(key):
    with pytest.raises(batches.BatchKeyError, match="ingest batch key"):
        batches.check_key(key)
    assert batches.check_key(batches.new_key()).endswith("Z")


def _write_batch(base: str, key: str, batch, model: str = "new", quarantine: str = "") -> None:
    versions.write_table(batch, base, f"raw_images/{key}")
    taken = batch.filter("change != 'deleted'").withColumn(batches.MODEL_COLUMN, F.lit(model))
    set_aside = F.col("path").endswith(quarantine) if quarantine else F.lit(False)
    versions.write_table(taken.filter(~set_aside), base, f"cnn_features/{key}")
    versions.write_table(taken.filter(set_aside), base, f"quarantined_images/{key}")


def _changes(rows):
    return {(row[0].rsplit("/r/", 1)[1], row[1], row[2], batches.to_millis(row[3]), row[4]) for row in rows}


def test_the_driver_plan_equals_sparks_plan_on_a_written_output(spark, tmp_path):
    base = str(tmp_path)
    first = batches.plan(_listing(spark, [("a/1.jpg", 10, 1), ("a/2.jpg", 10, 1), ("b/3.jpg", 10, 1)]), None, "b1", T0)
    _write_batch(base, "b1", first, model="old")  # featurized with other CNN settings: its files are redone
    second = batches.plan(_listing(spark, [("a/1.jpg", 10, 1), ("c/5.jpg", 7, 1)]), first, "b2", T0)
    _write_batch(base, "b2", second, quarantine="c/5.jpg")
    versions.write_table(first, base, "raw_images/b9")  # a batch killed after its listing: not read
    rows = _rows([("a/1.jpg", 10, 1), ("a/2.jpg", 12, 3), ("c/4.jpg", 5, 1), ("c/5.jpg", 7, 1)])
    listing = _listing(spark, [("a/1.jpg", 10, 1), ("a/2.jpg", 12, 3), ("c/4.jpg", 5, 1), ("c/5.jpg", 7, 1)])
    before = batches.read_current_rows(spark, base, "raw_images")
    redo = batches.stale(before, batches.read_current_rows(spark, base, "cnn_features"), "new")
    by_spark = batches.plan(listing, before, "b3", T0, redo).select(*images.LISTING_COLUMNS, batches.CHANGE)
    by_driver = local_batch.plan(rows, base, "b3", "new")
    assert _changes(by_driver) == _changes(by_spark.collect())
    assert {(path, change) for path, *_, change in _changes(by_driver)} == {
        ("a/1.jpg", batches.CHANGED),  # b1's settings were "old"; its current a/1.jpg row is b1's
        ("a/2.jpg", batches.NEW),  # deleted by b2, back now
        ("c/4.jpg", batches.NEW),
    }
    assert {row[0] for row in local_batch.plan(rows, base, "b3", "new", full_refresh=True)} == {r[0] for r in rows}
    made = batches.from_rows(spark, by_driver, "b3", T0).select(*images.LISTING_COLUMNS, batches.CHANGE).collect()
    assert _changes(made) == _changes(by_driver)
    assert batches.tally_rows(by_driver) == (
        batches.tally(by_spark),
        {"a": 2, "c": 1},
    )
    assert batches.from_rows(spark, [], "b4", T0).count() == 0
    every = [batches.read_current_rows(spark, base, name) for name in batches.BATCH_TABLES]
    assert (
        unchanged.reconcile(base)
        == quality.reconcile(*every)
        == {
            "raw": 2,  # a/1.jpg (b1, unchanged since) and c/5.jpg (b2); a/2.jpg and b/3.jpg were deleted in b2
            "featurized": 1,
            "quarantined": 1,
            "missing": 0,
            "in_both": 0,
        }
    )


def test_identity_differences_are_counted_whatever_the_row_order():
    import pyarrow as pa

    def table(rows):
        paths, lengths, millis = zip(*rows, strict=True)
        return pa.table({"path": list(paths), "length": list(lengths), "modification_time": list(millis)})

    before = table([("a", 1, 5), ("b", 2, 5), ("c", 3, 5)])
    assert unchanged.differences(table([("c", 3, 5), ("a", 1, 5), ("b", 2, 5)]), before) is None
    now = table([("b", 2, 6), ("d", 4, 5), ("a", 1, 5)])  # b touched, c deleted, d new
    assert unchanged.differences(now, before) == {"new": 1, "changed": 1, "deleted": 1}
    assert unchanged.differences(table([("a", 1, 5)]), before) == {"new": 0, "changed": 0, "deleted": 2}


def test_current_raw_rows_take_each_paths_newest_row_whatever_the_parts_order(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def part(key, rows):
        folder = tmp_path / "raw_images" / key / "v-1"
        folder.mkdir(parents=True)
        (folder / versions.COMMITTED).touch()
        paths, changes, hours = zip(*rows, strict=True)
        columns = {
            "path": list(paths),
            "label": ["a"] * len(rows),
            "length": [1] * len(rows),
            "modification_time": [T0] * len(rows),
            batches.CHANGE: list(changes),
            batches.BATCH: [key] * len(rows),
            batches.INGESTED_AT: [T0 + timedelta(hours=h) for h in hours],
        }
        pq.write_table(pa.table(columns), folder / "part-0.parquet")

    part("b1", [("x", batches.NEW, 3), ("y", batches.NEW, 3), ("z", batches.NEW, 3)])  # the newest, whatever its key
    part("b2", [("x", batches.NEW, 1), ("w", batches.NEW, 1)])
    part("b3", [("y", batches.DELETED, 2), ("w", batches.CHANGED, 2)])
    current = unchanged.current_raw_rows(str(tmp_path), ["b1", "b2", "b3"])
    assert sorted(zip(current["path"].to_pylist(), current[batches.BATCH].to_pylist(), strict=True)) == [
        ("w", "b3"),
        ("x", "b1"),
        ("y", "b1"),  # deleted in b3, then taken again by b1 (later)
        ("z", "b1"),
    ]
    part("b4", [("z", batches.DELETED, 4), ("v", batches.NEW, 0)])  # a part of two times: its rows are sorted
    current = unchanged.current_raw_rows(str(tmp_path), ["b1", "b2", "b3", "b4"])
    assert sorted(current["path"].to_pylist()) == ["v", "w", "x", "y"]
