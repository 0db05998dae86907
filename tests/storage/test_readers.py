"""The main command's tables read as data people read them: delta-rs (pandas, pyarrow), Polars, DuckDB and Spark,
none of them needing this project's code."""

import duckdb
import polars as pl
from deltalake import DeltaTable

TABLES = ("raw_images", "cnn_features", "quarantined_images", "training_features", "scaled_features", "pca_features")


def test_every_table_reads_the_same_current_rows_in_every_engine(run, spark):
    _, output, _ = run
    for name in TABLES:
        uri = f"{output}/{name}"
        by_pandas = DeltaTable(uri).to_pandas()
        by_polars = pl.scan_delta(uri).collect()
        by_spark = spark.read.format("delta").load(uri)
        paths = sorted(by_pandas["path"])
        assert len(paths) == len(set(paths)), name  # each photo once
        assert sorted(by_polars["path"].to_list()) == paths == sorted(r.path for r in by_spark.select("path").collect())


def test_the_readme_queries_give_the_pipelines_numbers(run):
    result, output, _ = run
    pca = DeltaTable(f"{output}/pca_features").to_pyarrow_table(columns=["path", "label", "pca_features"])
    k = {len(v) for v in pca.column("pca_features").to_pylist()}
    pca_meta = result.asset_materializations_for_node("pca_features")[0].metadata
    assert k == {pca_meta["k"].value} and pca.num_rows == pca_meta["row_count"].value
    db = duckdb.connect()  # DuckDB scans delta-rs' Arrow dataset (its own delta extension downloads at run time)
    db.register("cnn_features", DeltaTable(f"{output}/cnn_features").to_pyarrow_dataset())
    per_class = db.sql("SELECT label, count(*) AS photos FROM cnn_features GROUP BY label ORDER BY label").fetchall()
    by_polars = pl.scan_delta(f"{output}/cnn_features").group_by("label").len().sort("label").collect().rows()
    assert per_class == by_polars and sum(n for _, n in per_class) == len(
        DeltaTable(f"{output}/cnn_features").to_pandas()
    )
    quarantine = pl.read_delta(f"{output}/quarantined_images").select("path", "reason")
    assert quarantine.height > 0 and quarantine["reason"].null_count() == 0
    history = DeltaTable(f"{output}/raw_images").history()  # each batch one commit, naming its batch
    assert "batch" in history[0]["userMetadata"]
