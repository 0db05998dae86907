"""The driver's softmax fit as a Spark ML LogisticRegressionModel: same predictions and probabilities as NumPy."""

import numpy as np
from pyspark.ml.classification import LogisticRegressionModel
from pyspark.ml.linalg import Vectors

from spark_code.classify.softmax import fit_softmax, spark_model


def _probabilities(model, x):
    logits = x @ model.weights + model.intercept
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def test_spark_model_predicts_as_the_numpy_model_and_round_trips(spark, tmp_path):
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 120)
    x = rng.normal(size=(120, 5)) + np.eye(3, 5)[y] * 2.0
    fit = fit_softmax(x, np.array(["apple", "banana", "cherry"])[y], reg_param=1e-2, max_iter=100)
    model = spark_model(fit, "f")
    assert isinstance(model, LogisticRegressionModel) and model.uid.startswith("logreg_")
    assert (model.getFeaturesCol(), model.getFamily(), model.getStandardization()) == ("f", "multinomial", False)
    assert (model.numClasses, model.numFeatures) == (3, 5)
    assert np.allclose(model.coefficientMatrix.toArray(), fit.weights.T, rtol=0, atol=1e-15)
    intercept = model.interceptVector.toArray()
    assert np.allclose(intercept, fit.intercept - fit.intercept.mean(), rtol=0, atol=1e-15)  # centred, as Spark's

    rows = x[:12]
    frame = spark.createDataFrame([(Vectors.dense(r.tolist()),) for r in rows], ["f"])
    out = model.transform(frame).select("prediction", "probability").collect()
    predicted = np.array([int(r.prediction) for r in out])
    assert (fit.classes[predicted] == fit.predict(rows)).all()
    probabilities = np.array([r.probability.toArray() for r in out])
    assert np.allclose(probabilities, _probabilities(fit, rows), rtol=0, atol=1e-12)

    model.write().save(str(tmp_path / "logreg"))
    loaded = LogisticRegressionModel.load(str(tmp_path / "logreg"))
    assert loaded.getFeaturesCol() == "f" and loaded.getFamily() == "multinomial" and not loaded.getStandardization()
    assert np.array_equal(loaded.coefficientMatrix.toArray(), model.coefficientMatrix.toArray())
    assert np.array_equal(loaded.interceptVector.toArray(), intercept)
    assert loaded.transform(frame).select("prediction", "probability").collect() == out
