"""StandardScaler + PCA whose k reaches a target share of the variance, chosen from one fit."""

from __future__ import annotations

import logging

import numpy as np
from pyspark import keyword_only
from pyspark.ml import Estimator
from pyspark.ml.common import _py2java
from pyspark.ml.feature import PCA, PCAModel, StandardScaler, StandardScalerModel
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.linalg import DenseMatrix, DenseVector, VectorUDT
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import DataFrame

logger = logging.getLogger(__name__)


def as_vectors(df: DataFrame, column: str) -> DataFrame:
    """Replace an array<float|double> column by an ML vector column of the same name."""
    return df.withColumn(column, array_to_vector(column))


def as_arrays(df: DataFrame, column: str) -> DataFrame:
    """Replace an ML vector column by an array<double> column (plain Parquet, readable anywhere)."""
    return df.withColumn(column, vector_to_array(column))


def fit_scaler(df: DataFrame, input_col: str, output_col: str) -> StandardScalerModel:
    """Fit a mean-centering, unit-variance StandardScaler on an array or vector column."""
    scaler = StandardScaler(inputCol=input_col, outputCol=output_col, withMean=True, withStd=True)
    return scaler.fit(as_vectors(df, input_col))


def scale(model: StandardScalerModel, df: DataFrame) -> DataFrame:
    """Apply a fitted scaler to an array column; the output column is an array too."""
    out = model.getOutputCol()
    return as_arrays(model.transform(as_vectors(df, model.getInputCol())), out).drop(model.getInputCol())


def smallest_k(cumulative: np.ndarray, target: float) -> int:
    """The smallest k whose cumulative explained variance reaches `target` (all components if none does)."""
    reached = np.nonzero(cumulative >= target - 1e-12)[0]
    return int(reached[0]) + 1 if reached.size else len(cumulative)


def truncate(model: PCAModel, k: int) -> PCAModel:
    """A PCAModel keeping the first k components of `model` (no refit)."""
    pc = model.pc.toArray()[:, :k]
    variance = model.explainedVariance.toArray()[:k]
    sc = _active_context()
    jpc = _py2java(sc, DenseMatrix(pc.shape[0], k, pc.flatten(order="F").tolist()))
    jvar = _py2java(sc, DenseVector(variance))
    java_model = sc._jvm.org.apache.spark.ml.feature.PCAModel(model.uid, jpc, jvar)
    truncated = PCAModel(java_model)
    truncated._set(k=k, inputCol=model.getInputCol(), outputCol=model.getOutputCol())
    truncated._transfer_params_to_java()
    return truncated


def _active_context():
    from pyspark import SparkContext

    return SparkContext._active_spark_context


class VariancePCA(Estimator, HasInputCol, HasOutputCol, DefaultParamsReadable, DefaultParamsWritable):
    """PCA with a fixed `k`, or the smallest k reaching `varianceTarget`; `fit` returns a Spark `PCAModel`.

    The target mode fits all components once and keeps the first k: no refitting loop.
    `fullExplainedVariance` holds, after `fit`, the variance share of every component (for the curve).
    """

    k = Param(Params._dummy(), "k", "number of components (0: choose from varianceTarget)", TypeConverters.toInt)
    varianceTarget = Param(
        Params._dummy(), "varianceTarget", "cumulative explained variance to reach", TypeConverters.toFloat
    )

    @keyword_only
    def __init__(
        self,
        *,
        inputCol: str = "features",
        outputCol: str = "pca_features",
        k: int = 0,
        varianceTarget: float = 0.95,
    ):
        super().__init__()
        self._setDefault(inputCol="features", outputCol="pca_features", k=0, varianceTarget=0.95)
        self._set(**self._input_kwargs)
        self.fullExplainedVariance: np.ndarray | None = None

    def _fit(self, dataset: DataFrame) -> PCAModel:
        input_col = self.getInputCol()
        data = dataset if _is_vector(dataset, input_col) else as_vectors(dataset, input_col)
        dim = len(data.select(input_col).first()[0])
        fixed_k = self.getOrDefault(self.k)
        full = PCA(k=fixed_k or dim, inputCol=input_col, outputCol=self.getOutputCol()).fit(data)
        self.fullExplainedVariance = full.explainedVariance.toArray()
        if fixed_k:
            return full
        cumulative = np.cumsum(self.fullExplainedVariance)
        chosen = smallest_k(cumulative, self.getOrDefault(self.varianceTarget))
        logger.info("PCA keeps k=%d of %d components (%.4f of the variance)", chosen, dim, cumulative[chosen - 1])
        return truncate(full, chosen)


def _is_vector(df: DataFrame, column: str) -> bool:
    return isinstance(df.schema[column].dataType, VectorUDT)


def project(model: PCAModel, df: DataFrame) -> DataFrame:
    """Project an array column with a fitted PCAModel; the output column is an array<double>."""
    out = model.getOutputCol()
    return as_arrays(model.transform(as_vectors(df, model.getInputCol())), out).drop(model.getInputCol())


def variance_curve(explained: np.ndarray) -> list[float]:
    """Cumulative explained variance for k = 1..len(explained)."""
    return [float(v) for v in np.cumsum(explained)]
