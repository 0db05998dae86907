"""Tables and models: a table's readers see only committed versions, a failed write leaves the previous one
readable; models are versioned folders published by a marker, the same rule for every reader."""

import pytest
from pyspark.ml.feature import StandardScaler
from pyspark.ml.linalg import Vectors
from pyspark.sql import functions as F

from spark_code.storage import lake, tables, versions
from spark_code.storage.tables import Update
from spark_code.storage.versions import local_folder


def test_replace_then_read_newest_and_travel_back(spark, tmp_path):
    uri = str(tmp_path / "t")
    tables.commit(uri, Update(spark.range(3), replace=True))
    commit = tables.commit(uri, Update(spark.range(5), replace=True))
    assert (commit.version, commit.rows_added, commit.rows_removed) == (1, 5, 3)
    assert tables.read(spark, uri).count() == 5 and tables.read(spark, uri, version=0).count() == 3
    assert lake.rows(uri) == 5 and lake.read(uri).num_rows == 5  # the same table without Spark


def test_failed_write_keeps_previous_version(spark, tmp_path):
    uri = str(tmp_path / "t")
    tables.commit(uri, Update(spark.range(4), replace=True))

    @F.udf("long")
    def explode(x):
        raise RuntimeError("boom")

    with pytest.raises(Exception, match="boom"):
        tables.commit(uri, Update(spark.range(10).select(explode("id").alias("id")), replace=True))
    assert lake.version(uri) == 0 and tables.read(spark, uri).count() == 4
    assert lake.read(uri).num_rows == 4  # files the failed job left are in no commit: no reader sees them


def test_missing_table_is_a_clear_error(spark, tmp_path):
    with pytest.raises(tables.TableNotFoundError, match="materialize it first"):
        tables.read(spark, str(tmp_path / "nothing"))
    assert lake.read(str(tmp_path / "nothing")) is None and lake.version(str(tmp_path / "nothing")) is None


def _scaler(spark):
    rows = spark.createDataFrame([(Vectors.dense([1.0, 2.0]),), (Vectors.dense([3.0, 6.0]),)], ["features"])
    return StandardScaler(inputCol="features", outputCol="scaled").fit(rows)


def test_models_are_versions_published_by_their_marker(spark, tmp_path):
    base = str(tmp_path / "models")
    uris = [versions.save_model(spark, _scaler(spark), base, "m", keep=2, extras={"x.json": "{}"}) for _ in range(3)]
    committed, pending = versions.list_versions(base, "m")
    assert committed == uris[1:] and pending == []  # the oldest pruned
    half = versions.new_version_uri(base, "m")
    _scaler(spark).write().save(half)  # written but never committed, as if the writer died here
    assert versions.latest_uri(base, "m") == uris[-1] == versions.newest(base, "m")
    assert str(local_folder(base, "m")) == uris[-1].removeprefix("file:")  # what `fruits` commands load
    assert versions.list_versions(base, "m")[1] == [half]
    assert versions.committed_of(["v-2/_COMMITTED", "v-1/x.json", "v-1/_COMMITTED", "w-3/_COMMITTED"]) == ["v-1", "v-2"]
    with pytest.raises(versions.ModelNotFoundError, match="materialize it first"):
        versions.latest_uri(base, "nothing")
