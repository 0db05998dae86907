"""StandardScaler + variance-target PCA: the one-fit truncation equals a PCA refit with that k."""

import numpy as np
import pytest
from pyspark.ml.feature import PCA, PCAModel, StandardScalerModel
from pyspark.sql import functions as F

from spark_code.classify.classifier import LogisticSettings
from spark_code.reduction import choose_k, scaler_pca
from spark_code.reduction.choose_k import accuracy_curve, split_per_class
from spark_code.storage import tables


@pytest.fixture(scope="module")
def synthetic(spark):
    """200 rows in 12-d with three strong directions and small noise."""
    rng = np.random.default_rng(7)
    strong = rng.normal(size=(200, 3)) * np.array([10.0, 5.0, 3.0])
    data = strong @ rng.normal(size=(3, 12)) + 0.05 * rng.normal(size=(200, 12))
    rows = [(f"img{i}", "Apple" if i % 2 else "Banana", row.tolist()) for i, row in enumerate(data)]
    return spark.createDataFrame(rows, "path string, label string, features array<double>")


def test_smallest_k():
    assert scaler_pca.smallest_k(np.array([0.5, 0.9, 0.96, 1.0]), 0.95) == 3
    assert scaler_pca.smallest_k(np.array([0.5, 0.9, 0.96, 1.0]), 0.9) == 2
    assert scaler_pca.smallest_k(np.array([0.5, 0.7]), 0.99) == 2


def test_scaler_centres_and_scales(synthetic):
    model = scaler_pca.fit_scaler(synthetic, "features", "scaled")
    values = np.array([r.scaled for r in scaler_pca.transform_arrays(model, synthetic, dtype="float64").collect()])
    assert np.allclose(values.mean(axis=0), 0, atol=1e-9)
    assert np.allclose(values.std(axis=0, ddof=1), 1, atol=1e-9)


def test_variance_target_picks_k_from_one_fit(synthetic):
    estimator = scaler_pca.VariancePCA(inputCol="features", outputCol="pca", varianceTarget=0.99)
    model = estimator.fit(synthetic)
    curve = scaler_pca.variance_curve(model.fullExplainedVariance)  # the fit result rides on the model
    assert model.getK() == 3 and curve[2] >= 0.99 > curve[1]
    assert len(curve) == 12 and curve[-1] == pytest.approx(1.0)


def test_fit_projects_like_spark_pca(synthetic):
    model = scaler_pca.VariancePCA(inputCol="features", outputCol="pca", varianceTarget=0.99).fit(synthetic)
    refit = PCA(k=3, inputCol="features", outputCol="pca").fit(scaler_pca.as_vectors(synthetic, "features"))
    ours = np.array([r.pca for r in scaler_pca.transform_arrays(model, synthetic, dtype="float64").collect()])
    theirs = np.array(
        [r.pca.toArray() for r in refit.transform(scaler_pca.as_vectors(synthetic, "features")).collect()]
    )
    signs = np.sign((ours * theirs).sum(axis=0))  # principal axes are defined up to sign
    assert np.allclose(ours, theirs * signs, atol=1e-6)
    assert np.allclose(model.explainedVariance.toArray(), refit.explainedVariance.toArray())


@pytest.mark.parametrize("with_mean", [True, False])
def test_arrays_transform_equals_the_models_own_transform(spark, synthetic, with_mean):
    """The Arrow/NumPy application gives Spark's numbers: a constant column scales to 0, a null row stays null."""
    from pyspark.ml.feature import StandardScaler

    constant = synthetic.withColumn("features", F.concat("features", F.array(F.lit(4.0))))
    vectors = scaler_pca.as_vectors(constant, "features")
    scaler = StandardScaler(inputCol="features", outputCol="scaled", withMean=with_mean, withStd=True).fit(vectors)
    pca = PCA(k=4, inputCol="features", outputCol="pca").fit(vectors)
    for model, column in ((scaler, "scaled"), (pca, "pca")):
        ours = {r.path: r[column] for r in scaler_pca.transform_arrays(model, constant, dtype="float64").collect()}
        theirs = {r.path: r[column].toArray() for r in model.transform(vectors).collect()}
        assert ours.keys() == theirs.keys()
        assert all(np.allclose(ours[p], theirs[p], rtol=1e-12, atol=1e-12) for p in ours)
    assert all(r.scaled[-1] == 0.0 for r in scaler_pca.transform_arrays(scaler, constant).collect())
    with_null = spark.createDataFrame([("a", None), ("b", [1.0] * 13)], "path string, features array<double>")
    rows = {r.path: r.pca for r in scaler_pca.transform_arrays(pca, with_null).collect()}
    assert rows["a"] is None and len(rows["b"]) == 4


def test_arrays_transform_names_a_wrong_width(spark, synthetic):
    pca = scaler_pca.VariancePCA(inputCol="features", outputCol="pca", k=2).fit(synthetic)
    narrow = spark.createDataFrame([("a", [1.0, 2.0])], "path string, features array<double>")
    with pytest.raises(Exception, match="features: 2 values per row, the model expects 12"):
        scaler_pca.transform_arrays(pca, narrow).collect()


def test_fixed_k(synthetic):
    model = scaler_pca.VariancePCA(inputCol="features", outputCol="pca", k=5).fit(synthetic)
    assert model.getK() == 5
    assert len(scaler_pca.transform_arrays(model, synthetic).first().pca) == 5


def test_models_save_and_load(synthetic, tmp_path):
    pca = scaler_pca.VariancePCA(inputCol="features", outputCol="pca", varianceTarget=0.99).fit(synthetic)
    scaler = scaler_pca.fit_scaler(synthetic, "features", "scaled")
    pca.save(str(tmp_path / "pca"))
    scaler.save(str(tmp_path / "scaler"))
    pca2, scaler2 = PCAModel.load(str(tmp_path / "pca")), StandardScalerModel.load(str(tmp_path / "scaler"))
    assert pca2.getK() == 3 and np.allclose(pca2.pc.toArray(), pca.pc.toArray())
    first = scaler_pca.transform_arrays(pca, synthetic).first().pca
    assert np.allclose(scaler_pca.transform_arrays(pca2, synthetic).first().pca, first)
    assert np.allclose(scaler2.mean.toArray(), scaler.mean.toArray())


def test_estimator_params_round_trip(tmp_path):
    estimator = scaler_pca.VariancePCA(inputCol="x", outputCol="y", varianceTarget=0.8)
    estimator.save(str(tmp_path / "est"))
    loaded = scaler_pca.VariancePCA.load(str(tmp_path / "est"))
    assert loaded.getOrDefault("varianceTarget") == pytest.approx(0.8) and loaded.getInputCol() == "x"


def test_identical_rows_are_a_clear_error(spark):
    df = spark.createDataFrame([([1.0, 2.0],)] * 5, "features array<double>")
    with pytest.raises(ValueError, match="zero variance"):
        scaler_pca.VariancePCA(inputCol="features").fit(df)


def test_gram_stats_match_numpy(synthetic):
    x = np.array([r.features for r in synthetic.collect()])
    n, total, gram = scaler_pca.gram_stats(synthetic, "features")
    assert n == len(x) and np.allclose(total, x.sum(axis=0)) and np.allclose(gram, x.T @ x)


def test_tables_hold_float32(synthetic):
    model = scaler_pca.VariancePCA(inputCol="features", outputCol="pca", k=3).fit(synthetic)
    assert scaler_pca.transform_arrays(model, synthetic).schema["pca"].dataType.simpleString() == "array<float>"
    scaler = scaler_pca.fit_scaler(synthetic, "features", "scaled")
    assert scaler_pca.transform_arrays(scaler, synthetic).schema["scaled"].dataType.simpleString() == "array<float>"


def test_float32_round_trip_within_1e_5_of_double_projection(synthetic, spark, tmp_path):
    model = scaler_pca.VariancePCA(inputCol="features", outputCol="pca", k=3).fit(synthetic)
    double = {r.path: np.array(r.pca) for r in scaler_pca.transform_arrays(model, synthetic, dtype="float64").collect()}
    rows = scaler_pca.transform_arrays(model, synthetic).select("path", "pca")
    tables.commit(str(tmp_path / "pca"), tables.Update(rows, replace=True))
    stored = {r.path: np.array(r.pca) for r in tables.read(spark, str(tmp_path / "pca")).collect()}
    assert stored.keys() == double.keys()
    assert max(np.abs(stored[p] - double[p]).max() for p in stored) < 1e-5
    assert max(np.abs(double[p]).max() for p in double) > 1.0  # values large enough for float32 rounding to show


def test_a_model_keeping_fewer_components_is_the_same_basis(synthetic):
    model = scaler_pca.VariancePCA(inputCol="features", outputCol="pca", k=5).fit(synthetic)
    short = scaler_pca.model_keeping(model.fullComponents, model.fullExplainedVariance, 2, "features", "pca")
    assert short.getK() == 2 and np.allclose(short.pc.toArray(), model.pc.toArray()[:, :2])
    assert np.allclose(short.explainedVariance.toArray(), model.explainedVariance.toArray()[:2])
    with pytest.raises(ValueError, match="k=0"):
        scaler_pca.model_keeping(model.fullComponents, model.fullExplainedVariance, 0, "features", "pca")
    shorter = scaler_pca.truncate(model, 2)
    assert shorter.getK() == 2 and np.allclose(shorter.pc.toArray(), short.pc.toArray())
    with pytest.raises(ValueError, match="k=6"):
        scaler_pca.truncate(model, 6)


def test_candidate_ks_and_smallest_accurate_k():
    explained = np.r_[np.full(600, 0.95 / 600), np.full(680, 0.05 / 680)]
    assert choose_k.candidate_ks(explained, 0.95) == [8, 16, 32, 64, 128, 256, 512, 600]
    assert choose_k.candidate_ks(np.r_[np.full(10, 0.1), np.zeros(5)], 0.95) == [8, 10]  # never beyond the rank
    curve = {64: 0.953, 128: 0.965, 256: 0.972, 560: 0.9721}  # the measurements
    assert choose_k.smallest_accurate_k(curve, 0.003) == 256
    assert choose_k.smallest_accurate_k(curve, 0.01) == 128
    with pytest.raises(ValueError, match="empty"):
        choose_k.smallest_accurate_k({}, 0.003)


def test_accuracy_curve_grows_with_the_informative_components(spark):
    """Classes differ only along the 3rd principal direction: k = 2 is near chance, k = 3 separates them."""
    rng = np.random.default_rng(3)
    labels = np.repeat(["a", "b", "c"], 30)
    centre = {"a": -1.0, "b": 0.0, "c": 1.0}
    x = rng.normal(size=(90, 6)) * np.array([8.0, 6.0, 0.1, 0.05, 0.05, 0.05])
    x[:, 2] += [4.0 * centre[label] for label in labels]
    rows = [(f"img{i}", str(label), row.tolist()) for i, (label, row) in enumerate(zip(labels, x, strict=True))]
    df = spark.createDataFrame(rows, "path string, label string, scaled array<double>")
    pca = scaler_pca.VariancePCA(inputCol="scaled", outputCol="pca", k=4).fit(df)
    fit, validate = split_per_class(df, per_class=15)
    assert fit.count() == 45 and validate.count() == 45
    on_driver = sorted(fit.collect())  # the fit rows come to the driver, where the classifier's fits run
    fit_rows = (np.array([row.scaled for row in on_driver]), np.array([row.label for row in on_driver]))
    curve = accuracy_curve(fit_rows, validate, pca, [1, 2, 3], LogisticSettings(max_iter=100).accuracy_by_k)
    assert sorted(curve) == [1, 2, 3]
    assert curve[3] >= 0.95 and curve[1] < 0.7
    assert choose_k.smallest_accurate_k(curve, 0.003) == 3


def test_driver_softmax_regression_matches_spark_ml(spark):
    """The accuracy curve's driver fits minimise Spark ML's multinomial objective: same coefficients, same labels."""
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.linalg import Vectors

    from spark_code.classify.softmax import fit_softmax

    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 300)
    x = rng.normal(size=(300, 4)) + np.eye(3, 4)[y] * 1.5
    ours = fit_softmax(x, y.astype(str), reg_param=1e-2, max_iter=200)
    df = spark.createDataFrame([(Vectors.dense(r), float(c)) for r, c in zip(x, y, strict=True)], ["f", "label"])
    theirs = LogisticRegression(
        featuresCol="f", family="multinomial", regParam=1e-2, maxIter=200, standardization=False, tol=1e-10
    ).fit(df)
    # Softmax weights are defined up to a shift shared by the classes: compare centred weights.
    centred = ours.weights - ours.weights.mean(axis=1, keepdims=True)
    spark_w = theirs.coefficientMatrix.toArray().T
    assert np.abs(centred - (spark_w - spark_w.mean(axis=1, keepdims=True))).max() < 1e-3
    predicted = theirs.transform(df).select("prediction").toPandas()["prediction"].to_numpy().astype(int).astype(str)
    assert (ours.predict(x) == predicted).mean() >= 0.99


def test_a_warm_started_softmax_fit_reaches_the_cold_fits_solution():
    """The classifier's twin fits start from a nearby solution: the objective is strictly convex, so the start
    changes the iterations, not the weights (classes the start lacks start at zero, extra rows are dropped)."""
    from spark_code.classify.softmax import fit_softmax

    rng = np.random.default_rng(7)
    y = rng.integers(0, 4, 400).astype(str)
    x = rng.normal(size=(400, 6)) + np.eye(4, 6)[y.astype(int)] * 2.0
    cold = fit_softmax(x, y, reg_param=1e-2, max_iter=500, tol=1e-12)
    start = fit_softmax(x[y != "3"][:, :4], y[y != "3"], reg_param=1e-2, max_iter=50)  # fewer classes and columns
    warm = fit_softmax(x, y, reg_param=1e-2, max_iter=500, tol=1e-12, start=start)
    assert list(warm.classes) == list(cold.classes)
    assert np.abs(warm.weights - cold.weights).max() < 1e-3
    assert (warm.predict(x) == cold.predict(x)).all()


def test_driver_products_run_on_one_blas_thread_inside_the_block_only():
    import numpy  # noqa: F401  (its OpenBLAS is the one to find)

    from spark_code.reduction import blas

    libraries = blas._loaded_openblas()
    assert libraries, "no OpenBLAS found in this process"
    before = [get() for _, get in libraries]
    with blas.single_thread():
        assert [get() for _, get in libraries] == [1] * len(libraries)
    assert [get() for _, get in libraries] == before
