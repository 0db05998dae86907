"""Versioned tables: readers see only committed versions; a failed write leaves the previous one readable."""

import pytest
from pyspark.sql import functions as F

from spark_code.storage import versions


def test_write_then_read_newest(spark, tmp_path):
    base = str(tmp_path)
    versions.write_table(spark.range(3), base, "t")
    uri = versions.write_table(spark.range(5), base, "t")
    assert versions.latest_uri(spark, base, "t") == uri
    assert versions.read_table(spark, base, "t").count() == 5


def test_old_versions_pruned(spark, tmp_path):
    base = str(tmp_path)
    uris = [versions.write_table(spark.range(n), base, "t", keep=2) for n in (1, 2, 3)]
    committed, pending = versions.list_versions(spark, base, "t")
    assert committed == uris[1:] and pending == []


def test_failed_write_keeps_previous_version(spark, tmp_path):
    base = str(tmp_path)
    good = versions.write_table(spark.range(4), base, "t")

    @F.udf("long")
    def explode(x):
        raise RuntimeError("boom")

    with pytest.raises(Exception, match="boom"):
        versions.write_table(spark.range(10).select(explode("id").alias("id")), base, "t")
    assert versions.latest_uri(spark, base, "t") == good
    assert versions.read_table(spark, base, "t").count() == 4


def test_uncommitted_version_is_invisible(spark, tmp_path):
    base = str(tmp_path)
    good = versions.write_table(spark.range(2), base, "t")
    half = versions.new_version_uri(base, "t")
    spark.range(7).write.parquet(half)  # written but never committed, as if the writer died here
    assert versions.latest_uri(spark, base, "t") == good


def test_missing_table_is_a_clear_error(spark, tmp_path):
    with pytest.raises(versions.TableNotFoundError, match="materialize it first"):
        versions.read_table(spark, str(tmp_path), "nothing")


def test_a_local_output_is_listed_as_the_hadoop_file_system_lists_it(spark, tmp_path):
    base = str(tmp_path)
    for key in ("b1", "b2"):
        versions.write_table(spark.range(3), base, f"raw_images/{key}")
    (tmp_path / "raw_images" / "b2" / "v-20990101T000000000000Z-unfinished").mkdir()  # not committed
    (tmp_path / "raw_images" / "b3").mkdir()  # a batch folder without any version
    fs, root = versions.hadoop_fs(spark, versions.qualify(base) + "/raw_images")
    by_hadoop = {}
    for status in fs.listStatus(root):
        children = [c.getPath() for c in fs.listStatus(status.getPath())]
        done = sorted(p.toString() for p in children if fs.exists(p.suffix("/" + versions.COMMITTED)))
        if done:
            by_hadoop[status.getPath().getName()] = done[-1]
    assert versions.partition_uris(spark, base, "raw_images") == by_hadoop and set(by_hadoop) == {"b1", "b2"}
    committed, pending = versions.list_versions(spark, base, "raw_images/b2")
    assert committed == [by_hadoop["b2"]] and [p.rsplit("/", 1)[1] for p in pending] == [
        "v-20990101T000000000000Z-unfinished"
    ]
    assert spark.read.parquet(by_hadoop["b1"]).count() == 3
