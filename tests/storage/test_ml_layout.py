"""Spark ML models from Python values through their save layout: Spark's own files, loaded by the public `load`."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from pyspark.ml.classification import LogisticRegression, LogisticRegressionModel
from pyspark.ml.feature import PCA, PCAModel
from pyspark.ml.linalg import DenseMatrix, DenseVector, Vectors

from spark_code.storage import ml_layout


def _frame(spark, x, column="x", labels=None):
    """Rows of `x` as a vector column, with `labels` (default: zeros) as `label`."""
    labels = np.zeros(len(x)) if labels is None else labels
    rows = [(Vectors.dense(r.tolist()), float(c)) for r, c in zip(x, labels, strict=True)]
    return spark.createDataFrame(rows, [column, "label"])


def test_a_pca_model_from_numpy_values(spark):
    rng = np.random.default_rng(11)
    pc, shares = rng.normal(size=(6, 3)), np.array([0.5, 0.3, 0.2])
    params = {"k": 3, "inputCol": "x", "outputCol": "projected"}
    data = {"pc": DenseMatrix(6, 3, pc.flatten(order="F").tolist()), "explainedVariance": DenseVector(shares)}
    model = ml_layout.build_model(spark, PCAModel, "PCA", params, data)
    assert isinstance(model, PCAModel) and model.uid.startswith("PCA_")
    assert np.array_equal(model.pc.toArray(), pc) and np.array_equal(model.explainedVariance.toArray(), shares)
    assert (model.getK(), model.getInputCol(), model.getOutputCol()) == (3, "x", "projected")
    x = rng.normal(size=(5, 6))
    projected = np.array([row.projected.toArray() for row in model.transform(_frame(spark, x)).collect()])
    assert np.allclose(projected, x @ pc, rtol=0, atol=1e-12)
    assert not list(Path(ml_layout.SCRATCH).glob(f"{model.uid}-*"))  # the scratch folder is gone (local Spark)


def _spark_files(folder):
    metadata = json.loads((folder / "metadata" / "part-00000").read_text())
    return metadata, pq.ParquetFile(next((folder / "data").glob("*.parquet")))


@pytest.mark.parametrize("kind", ["pca", "logistic"])
def test_the_layout_is_the_one_spark_writes(spark, tmp_path, kind):
    """Fit a tiny model, save it with Spark, write its values with `write_layout`: same metadata keys and params,
    same Parquet schema, Spark schema and row."""
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, 30)
    df = _frame(spark, rng.normal(size=(30, 4)) + np.eye(3, 4)[labels], "f", labels)
    if kind == "pca":
        fitted = PCA(k=2, inputCol="f", outputCol="p").fit(df)
        data = {"pc": fitted.pc, "explainedVariance": fitted.explainedVariance}
    else:
        fitted = LogisticRegression(featuresCol="f", family="multinomial", maxIter=5).fit(df)
        data = {
            "numClasses": fitted.numClasses,
            "numFeatures": fitted.numFeatures,
            "interceptVector": fitted.interceptVector,
            "coefficientMatrix": fitted.coefficientMatrix,
            "isMultinomial": True,
        }
    fitted.write().save(str(tmp_path / "spark"))
    theirs, their_data = _spark_files(tmp_path / "spark")
    ml_layout.write_layout(spark, str(tmp_path / "ours"), type(fitted), fitted.uid, theirs["paramMap"], data)
    ours, our_data = _spark_files(tmp_path / "ours")
    assert set(ours) == set(theirs) and ours["class"] == theirs["class"] and ours["paramMap"] == theirs["paramMap"]
    assert our_data.schema_arrow.equals(their_data.schema_arrow, check_metadata=False)
    key = ml_layout.SPARK_SCHEMA_KEY.encode()
    assert json.loads(our_data.metadata.metadata[key]) == json.loads(their_data.metadata.metadata[key])
    assert our_data.read().to_pylist() == their_data.read().to_pylist()
    loaded = type(fitted).load(str(tmp_path / "ours"))
    assert loaded.transform(df).select("prediction" if kind == "logistic" else "p").collect() == (
        fitted.transform(df).select("prediction" if kind == "logistic" else "p").collect()
    )


def test_a_value_spark_ml_does_not_store_is_named():
    with pytest.raises(TypeError, match="'weights'.*list"):
        ml_layout.spark_field("weights", [1.0, 2.0])
    assert ml_layout.java_class(LogisticRegressionModel) == "org.apache.spark.ml.classification.LogisticRegressionModel"
