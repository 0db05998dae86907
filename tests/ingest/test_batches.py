"""Ingest batches on their own: what a batch takes, its one commit to the raw table, and the changes a derived
table takes from it."""

from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from pyspark.sql import functions as F

from spark_code import quality, unchanged
from spark_code.ingest import batches, images, ledger
from spark_code.storage import lake, tables
from spark_code.storage.tables import Update

T0 = datetime(2026, 11, 25, tzinfo=timezone.utc)


def _rows(files):
    return [(f"file:/r/{path}", path.split("/")[0], size, T0 + timedelta(seconds=mtime)) for path, size, mtime in files]


def _planned(files, before=None, redo=None):
    entries = None if before is None else ledger.entries(before)
    return batches.plan_rows(_rows(files), entries, redo)


def _commit(spark, uri, planned, key, replace=False):
    batch = batches.from_rows(planned, key, T0)
    return tables.commit(uri, batches.commit(batch, key, batches.tally_rows(planned)[0], replace))


def _by_path(rows):
    return {row["path"].rsplit("/r/", 1)[1]: row for row in rows}


def test_a_batch_takes_new_changed_and_deleted_files_only(spark, tmp_path):
    raw = f"{tmp_path}/raw_images"
    first = _planned([("a/1.jpg", 10, 1), ("a/2.jpg", 10, 1), ("b/3.jpg", 10, 1)])
    assert {row[-1] for row in first} == {batches.NEW}
    assert _commit(spark, raw, first, "b1").rows_added == 3
    second = _planned([("a/1.jpg", 10, 1), ("a/2.jpg", 11, 2), ("c/4.jpg", 5, 1)], ledger.current_rows(str(tmp_path)))
    assert {path.rsplit("/r/", 1)[1]: change for path, *_, change in second} == {
        "a/2.jpg": batches.CHANGED,
        "c/4.jpg": batches.NEW,
        "b/3.jpg": batches.DELETED,
    }
    assert batches.tally_rows(second)[0] == {batches.NEW: 1, batches.CHANGED: 1, batches.DELETED: 1}
    commit = _commit(spark, raw, second, "b2")  # one commit: a/2.jpg replaced, c/4.jpg added, b/3.jpg removed
    # the driver's commit (delta-rs): the rows of the batch's paths replaced (replaceWhere), the others kept
    assert (commit.version, commit.operation, commit.overwrite, commit.recorded) == (1, "WRITE", True, {"batch": "b2"})
    assert (commit.rows_added, commit.rows_removed) == (2, 2)
    current = _by_path(tables.read(spark, raw).collect())  # each photo once: the newest state of the root
    assert set(current) == {"a/1.jpg", "a/2.jpg", "c/4.jpg"}
    assert (current["a/1.jpg"].batch, current["a/2.jpg"].batch, current["a/2.jpg"].length) == ("b1", "b2", 11)
    old = _by_path(tables.read(spark, raw, version=0).collect())  # time travel: the first batch's table
    assert set(old) == {"a/1.jpg", "a/2.jpg", "b/3.jpg"} and old["a/2.jpg"].length == 10


def test_the_driver_commit_takes_any_file_name(spark, tmp_path):
    """The raw table's delta-rs commit names the batch's paths in a predicate: quotes, backslashes, newlines, SQL
    words and emoji are paths like any other; Spark reads the change feed it wrote."""
    raw = f"{tmp_path}/raw_images"
    odd = ["a/it's.jpg", "a/back\\slash.jpg", "a/new\nline.jpg", "a/x' OR '1'='1.jpg", "a/🍋 é.jpg", "a/plain.jpg"]
    _commit(spark, raw, _planned([(name, 10, 1) for name in odd]), "b1")
    second = _planned(
        [(name, 11, 2) for name in odd[:3]] + [("a/plain.jpg", 10, 1)], ledger.current_rows(str(tmp_path))
    )
    commit = _commit(spark, raw, second, "b2")  # three changed, two deleted, one kept
    assert (commit.rows_added, commit.rows_removed) == (3, 5)
    assert {path: row["length"] for path, row in _by_path(tables.read(spark, raw).collect()).items()} == {
        **{name: 11 for name in odd[:3]},
        "a/plain.jpg": 10,
    }
    net = {row["path"].rsplit("/r/", 1)[1]: row[tables.CHANGE] for row in tables.changes(spark, raw, 0, 1).collect()}
    assert net == {**{name: tables.CHANGED for name in odd[:3]}, **{name: tables.DELETED for name in odd[3:5]}}


def test_a_batch_touching_more_paths_than_delta_rs_names_is_merged_by_spark(spark, tmp_path):
    """A whole root copied again (or new CNN settings) changes every photo: more paths than a delta-rs commit can
    name (it crashed the process near 15,000). Spark merges that batch; the change feed says the same as ever."""
    raw, n = f"{tmp_path}/raw_images", lake.MAX_NAMED_PATHS + 300
    files = [(f"c{i % 7}/{i}.jpg", 10, 1) for i in range(n)]
    _commit(spark, raw, _planned(files), "b1")
    kept, deleted = files[:100], files[100:300]  # the rest changed, with 3 new photos
    again = kept + [(name, 11, 2) for name, *_ in files[300:]] + [(f"new/{i}.jpg", 1, 1) for i in range(3)]
    planned = _planned(again, ledger.current_rows(str(tmp_path)))
    update = batches.commit(batches.from_rows(planned, "b2", T0), "b2", batches.tally_rows(planned)[0])
    with pytest.raises(ValueError, match=f"at most {lake.MAX_NAMED_PATHS} paths"):
        tables.commit(raw, update)  # without a session: refused, nothing written
    assert lake.version(raw) == 0
    commit = tables.commit(raw, update, lambda: spark)
    assert (commit.version, commit.operation, commit.recorded) == (1, "MERGE", {"batch": "b2"})
    assert (commit.rows_added, commit.rows_removed) == (n - 300 + 3, n - 100)
    current = _by_path(tables.read(spark, raw).collect())
    assert len(current) == n - 200 + 3 and current["c0/0.jpg"].batch == "b1" and current["c6/300.jpg"].length == 11
    net = {p: row.change for p, row in _by_path(tables.changes(spark, raw, 0, 1, on_driver=True).collect()).items()}
    assert Counter(net.values()) == {tables.CHANGED: n - 300, tables.DELETED: 200, tables.NEW: 3}
    assert {name for name, *_ in kept}.isdisjoint(net)
    assert {path for path, change in net.items() if change == tables.DELETED} == {name for name, *_ in deleted}


def test_changes_are_each_paths_net_change_since_a_version(spark, tmp_path):
    raw = f"{tmp_path}/raw_images"
    _commit(spark, raw, _planned([("a/1.jpg", 10, 1), ("a/2.jpg", 10, 1), ("b/3.jpg", 10, 1)]), "b1")
    _commit(spark, raw, _planned([("a/1.jpg", 10, 1), ("a/2.jpg", 11, 2)], ledger.current_rows(str(tmp_path))), "b2")
    now = [("a/1.jpg", 10, 1), ("a/2.jpg", 11, 2), ("d/5.jpg", 1, 1), ("b/3.jpg", 9, 9)]
    _commit(spark, raw, _planned(now, ledger.current_rows(str(tmp_path))), "b3")
    assert lake.version(raw) == 2
    net = {p: (row.change, row.batch) for p, row in _by_path(tables.changes(spark, raw, 0, 2).collect()).items()}
    assert net == {
        "a/2.jpg": (tables.CHANGED, "b2"),
        "b/3.jpg": (tables.CHANGED, "b3"),  # deleted in b2, back in b3: its old row goes, the new one comes
        "d/5.jpg": (tables.NEW, "b3"),
    }
    assert {p: row.change for p, row in _by_path(tables.changes(spark, raw, 0, 1).collect()).items()} == {
        "a/2.jpg": tables.CHANGED,
        "b/3.jpg": tables.DELETED,
    }
    everything = _by_path(tables.changes(spark, raw, -1, 2).collect())  # from the start: what the table holds
    assert {p for p, row in everything.items() if row.change != tables.DELETED} == set(
        _by_path(tables.read(spark, raw).collect())
    )
    for after, until in [(0, 2), (0, 1), (1, 2), (-1, 2), (-1, 0)]:  # the driver's read (delta-rs) agrees with Spark's
        by_spark = sorted(map(tuple, tables.changes(spark, raw, after, until).collect()))
        assert sorted(map(tuple, tables.changes(spark, raw, after, until, on_driver=True).collect())) == by_spark


def test_a_derived_table_records_the_source_version_it_took_and_takes_it_once(spark, tmp_path):
    raw, derived = f"{tmp_path}/raw_images", f"{tmp_path}/cnn_features"
    _commit(spark, raw, _planned([("a/1.jpg", 10, 1), ("a/2.jpg", 10, 1)]), "b1")
    net = tables.changes(spark, raw, -1, 0)
    commit = tables.commit(derived, Update(tables.upserts(net), source=("raw_images", 0)))
    assert lake.consumed(derived, "raw_images") == 0 and commit.rows_added == 2
    # The same version again (a retried step): nothing twice
    tables.commit(derived, Update(tables.upserts(net), source=("raw_images", 0)))
    assert tables.read(spark, derived).count() == 2
    # Two raw versions the derived table has not taken (a run stopped after its listing): both taken at once
    _commit(
        spark,
        raw,
        _planned([("a/1.jpg", 10, 1), ("a/2.jpg", 10, 1), ("c/3.jpg", 1, 1)], ledger.current_rows(str(tmp_path))),
        "b2",
    )
    _commit(spark, raw, _planned([("a/1.jpg", 10, 1), ("c/3.jpg", 1, 1)], ledger.current_rows(str(tmp_path))), "b3")
    assert unchanged.behind(str(tmp_path), "cnn_features") == "cnn_features has not taken version 2 of raw_images"
    net = tables.changes(spark, raw, 0, 2)
    tables.commit(derived, Update(tables.upserts(net), tables.removed_paths(net), source=("raw_images", 2)))
    assert set(_by_path(tables.read(spark, derived).collect())) == {"a/1.jpg", "c/3.jpg"}
    assert unchanged.behind(str(tmp_path), "cnn_features") is None
    # Nothing to write still records the take (an empty commit), so the table is current
    _commit(spark, raw, _planned([("a/1.jpg", 10, 1)], ledger.current_rows(str(tmp_path))), "b4")
    net = tables.changes(spark, raw, 2, 3)
    empty = tables.upserts(net).limit(0)
    tables.commit(derived, Update(empty, tables.removed_paths(net).limit(0), source=("raw_images", 3)))
    assert lake.consumed(derived, "raw_images") == 3 and tables.read(spark, derived).count() == 2


@pytest.mark.parametrize("key", ["", "a/b", "../up", "x" * 65, "with space"])
def test_bad_batch_keys_are_named(key):
    with pytest.raises(batches.BatchKeyError, match="ingest batch key"):
        batches.check_key(key)
    assert batches.check_key(batches.new_key()).endswith("Z")


def _write_features(spark, base, planned, model, quarantine=""):
    """What cnn_features commits for the raw table's newest version: every raw row featurized with `model`, but
    `quarantine` set aside."""
    raw, version = f"{base}/raw_images", lake.version(f"{base}/raw_images")
    net = tables.changes(spark, raw, lake.consumed(f"{base}/cnn_features", "raw_images"), version)
    rows = tables.upserts(net).drop(batches.CHANGE, batches.INGESTED_AT)
    set_aside = F.col("path").endswith(quarantine) if quarantine else F.lit(False)
    removed = tables.removed_paths(net)
    features = rows.filter(~set_aside).withColumn(batches.MODEL_COLUMN, F.lit(model))
    tables.commit(f"{base}/cnn_features", Update(features, removed, source=("raw_images", version)))
    reasons = rows.filter(set_aside).withColumn("reason", F.lit("not an image"))
    tables.commit(f"{base}/quarantined_images", Update(reasons, removed, source=("raw_images", version)))


def _changes(rows):
    return {(row[0].rsplit("/r/", 1)[1], row[1], row[2], batches.to_millis(row[3]), row[4]) for row in rows}


def test_the_driver_plan_against_a_written_output(spark, tmp_path):
    base = str(tmp_path)
    first = _planned([("a/1.jpg", 10, 1), ("a/2.jpg", 10, 1), ("b/3.jpg", 10, 1)])
    _commit(spark, f"{base}/raw_images", first, "b1")
    _write_features(spark, base, first, model="old")  # featurized with other CNN settings: its files are redone
    second = _planned([("a/1.jpg", 10, 1), ("c/5.jpg", 7, 1)], ledger.current_rows(base))
    _commit(spark, f"{base}/raw_images", second, "b2")
    _write_features(spark, base, second, model="new", quarantine="c/5.jpg")
    rows = _rows([("a/1.jpg", 10, 1), ("a/2.jpg", 12, 3), ("c/4.jpg", 5, 1), ("c/5.jpg", 7, 1)])
    by_driver = ledger.plan(rows, base, "new")
    assert {(path, change) for path, *_, change in _changes(by_driver)} == {
        ("a/1.jpg", batches.CHANGED),  # its features were made with the "old" settings
        ("a/2.jpg", batches.NEW),  # deleted by b2, back now
        ("c/4.jpg", batches.NEW),
    }
    assert {row[0] for row in ledger.plan(rows, base, "new", full_refresh=True)} == {r[0] for r in rows}
    made = [
        tuple(r.values())
        for r in batches.from_rows(by_driver, "b3", T0).select([*images.LISTING_COLUMNS, batches.CHANGE]).to_pylist()
    ]
    assert _changes(made) == _changes(by_driver)
    assert batches.tally_rows(by_driver) == ({batches.NEW: 2, batches.CHANGED: 1, batches.DELETED: 0}, {"a": 2, "c": 1})
    assert batches.from_rows([], "b4", T0).num_rows == 0
    every = [[r.path for r in tables.read(spark, f"{base}/{name}").collect()] for name in unchanged.BATCH_TABLES]
    assert (
        unchanged.reconcile(base)  # delta-rs
        == quality.reconcile(*every)  # the paths Spark reads
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


def test_an_output_in_the_layout_before_delta_is_refused_naming_what_to_run(tmp_path):
    old = tmp_path / "data" / "raw_images" / "20261125T000000.000Z" / "v-20261125T000000000000Z-0a1b2c3d"
    old.mkdir(parents=True)
    (old / "_COMMITTED").touch()
    with pytest.raises(lake.OldLayoutError, match=r"before Delta Lake.*mv .*data .*data.pre-delta.*python -m fruits"):
        lake.refuse_old_layout(str(tmp_path / "data"))
    with pytest.raises(lake.OldLayoutError):
        unchanged.pending_work(unchanged.Expected(str(tmp_path), str(tmp_path), str(tmp_path / "data"), "m"))
    lake.refuse_old_layout(str(tmp_path / "new"))  # no output yet: nothing to refuse
