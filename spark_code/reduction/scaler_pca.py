"""StandardScaler + PCA whose k reaches a target share of the variance, chosen from one fit; save/load as Spark ML."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark import keyword_only
from pyspark.ml import Estimator
from pyspark.ml.feature import PCAModel, StandardScaler, StandardScalerModel
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.linalg import DenseMatrix, DenseVector, VectorUDT
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DoubleType, FloatType, StructField, StructType

from spark_code.reduction import blas
from spark_code.storage import ml_layout, versions

logger = logging.getLogger(__name__)

STORED_DTYPE = "float32"  # feature tables hold float32: the CNN's own precision, half the bytes of doubles


def as_vectors(df: DataFrame, column: str) -> DataFrame:
    """Replace an array<float|double> column by an ML vector column of the same name."""
    return df.withColumn(column, array_to_vector(column))


def as_arrays(df: DataFrame, column: str, dtype: str = "float64") -> DataFrame:
    """Replace an ML vector column by an array<double> (or array<float> for `float32`) column: plain Parquet."""
    return df.withColumn(column, vector_to_array(column, dtype))


def fit_scaler(df: DataFrame, input_col: str, output_col: str) -> StandardScalerModel:
    """Fit a mean-centering, unit-variance StandardScaler on an array or vector column."""
    scaler = StandardScaler(inputCol=input_col, outputCol=output_col, withMean=True, withStd=True)
    return scaler.fit(as_vectors(df, input_col))


def transform_arrays(model: StandardScalerModel | PCAModel, df: DataFrame, dtype: str = STORED_DTYPE) -> DataFrame:
    """Apply a fitted scaler or PCA (in doubles) to an array column; its input column is replaced by the output
    column, an array (float32 by default: 4 bytes a value).

    The same arithmetic as the model's own `transform`, on whole Arrow batches with NumPy (`mapInArrow`): one
    matrix product per batch, the vectors read and written as flat Arrow buffers, no Python object per row (a
    pandas UDF spent twice the time of the product on them).
    """
    shift, scale, matrix = affine(model)
    column, output = model.getInputCol(), model.getOutputCol()  # the closure must not hold the model
    others = [name for name in df.columns if name != column]
    element = FloatType() if dtype == "float32" else DoubleType()
    schema = StructType([df.schema[name] for name in others] + [StructField(output, ArrayType(element))])
    arrow_type = pa.list_(pa.float32() if dtype == "float32" else pa.float64())

    def apply(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            x, present = arrow_matrix(batch.column(column), column, len(scale) if matrix is None else matrix.shape[0])
            out = _lists(apply_affine((shift, scale, matrix), x).astype(dtype), present, arrow_type)
            yield pa.RecordBatch.from_arrays([batch.column(name) for name in others] + [out], names=[*others, output])

    return df.mapInArrow(apply, schema)


def apply_affine(parts: tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None], x: np.ndarray) -> np.ndarray:
    """((x − shift) · scale) @ matrix for the (shift, scale, matrix) of `affine` (None: identity), in doubles."""
    shift, scale, matrix = parts
    y = x if shift is None else x - shift
    y = y if scale is None else y * scale
    return y if matrix is None else y @ matrix


def arrow_matrix(values: pa.ListArray, column: str, dimension: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(the non-null rows of an Arrow list column as a float64 matrix, which rows are non-null); a ValueError
    naming the column when a row has another length than `dimension` (None: the first row's)."""
    present = values.is_valid().to_numpy(zero_copy_only=False)
    lengths = pc.list_value_length(values).to_numpy(zero_copy_only=False)[present]
    if not lengths.size:
        return np.zeros((0, dimension or 0)), present
    dimension = int(lengths[0]) if dimension is None else dimension
    if lengths.min() != dimension or lengths.max() != dimension:
        wrong = int(lengths[lengths != dimension][0])
        raise ValueError(f"{column}: {wrong} values per row, the model expects {dimension}")
    flat = pc.list_flatten(values).to_numpy(zero_copy_only=False)
    return flat.astype(np.float64, copy=False).reshape(-1, dimension), present


def _lists(rows: np.ndarray, present: np.ndarray, arrow_type: pa.DataType) -> pa.ListArray:
    """An Arrow list column: the matrix's rows where `present`, null elsewhere."""
    offsets = np.zeros(len(present) + 1, np.int32)
    offsets[1:] = np.cumsum(present * rows.shape[1])
    values = pa.array(rows.ravel(), arrow_type.value_type)
    return pa.ListArray.from_arrays(pa.array(offsets), values, type=arrow_type, mask=pa.array(~present))


def affine(model: StandardScalerModel | PCAModel) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """(shift, scale, matrix) with model.transform(x) = ((x − shift) · scale) @ matrix, None meaning identity:
    Spark's StandardScalerModel (a zero std scales to 0; always a scale) and PCAModel (no centering) arithmetic."""
    if isinstance(model, PCAModel | Projection):
        return None, None, components(model)
    if isinstance(model, StandardScalerModel):
        std = model.std.toArray()
        shift = model.mean.toArray() if model.getWithMean() else None
        scale = np.divide(1.0, std, out=np.zeros_like(std), where=std != 0) if model.getWithStd() else np.ones_like(std)
        return shift, scale, None
    raise TypeError(f"transform_arrays applies a StandardScalerModel or a PCAModel, not {type(model).__name__}")


def smallest_k(cumulative: np.ndarray, target: float) -> int:
    """The smallest k whose cumulative explained variance reaches `target` (all components if none does)."""
    reached = np.nonzero(cumulative >= target - 1e-12)[0]
    return int(reached[0]) + 1 if reached.size else len(cumulative)


def gram_stats(df: DataFrame, column: str) -> tuple[int, np.ndarray, np.ndarray]:
    """Row count, column sums and XᵀX of an array column: NumPy (BLAS) per partition, summed on the driver.

    One pass over the data, one small result per task slot (d×d doubles each).
    """
    slots = df.sparkSession.sparkContext.defaultParallelism

    def partial(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        n, total, gram, dimension = 0, 0.0, 0.0, None
        for batch in batches:
            x = arrow_matrix(batch.column(0), column, dimension)[0]
            if len(x):
                dimension = x.shape[1]
            n, total, gram = n + len(x), total + x.sum(axis=0), gram + x.T @ x
        if n:
            yield pa.RecordBatch.from_pydict({"n": [n], "total": [total.tobytes()], "gram": [gram.tobytes()]})

    parts = df.select(column).coalesce(slots).mapInArrow(partial, "n long, total binary, gram binary").collect()
    if not parts:
        raise ValueError(f"cannot fit PCA on column {column!r}: the table has no rows")
    if len({len(p.total) for p in parts}) > 1:
        raise ValueError(f"{column}: rows of different lengths, one PCA cannot fit them")
    n = sum(p.n for p in parts)
    total = sum(np.frombuffer(p.total) for p in parts)
    gram = sum(np.frombuffer(p.gram) for p in parts)
    return n, total, gram.reshape(len(total), len(total))


def principal_components(n: int, total: np.ndarray, gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(components as columns, explained-variance shares), largest first, from the sums of `gram_stats`."""
    mean = total / n
    covariance = (gram - n * np.outer(mean, mean)) / max(n - 1, 1)
    with blas.single_thread():  # 2.4 s on one thread, 12.7 s with OpenBLAS's pool on the busy 2-core machine
        variances, vectors = np.linalg.eigh(covariance)
    order = np.argsort(variances)[::-1]
    variances, vectors = np.clip(variances[order], 0.0, None), vectors[:, order]
    if variances.sum() <= 0:
        raise ValueError("cannot fit PCA: every row is identical (zero variance)")
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])])
    return vectors * signs, variances / variances.sum()


def pca_model(pc: np.ndarray, explained: np.ndarray, input_col: str, output_col: str) -> PCAModel:
    """A standard Spark `PCAModel` (saves, loads and transforms like one fitted by `PCA`) from NumPy arrays, through
    public API only: Spark ML's save layout of a PCAModel written from the driver, then `PCAModel.load`
    (`spark_code.storage.ml_layout`). It keeps its components as NumPy (`numpy_components`)."""
    d, k = pc.shape
    model = ml_layout.build_model(
        SparkSession.getActiveSession(),
        PCAModel,
        "PCA",
        {"k": int(k), "inputCol": input_col, "outputCol": output_col},
        {"pc": DenseMatrix(d, k, pc.flatten(order="F")), "explainedVariance": DenseVector(explained)},
    )
    model.numpy_components = pc
    return model


class VariancePCA(Estimator, HasInputCol, HasOutputCol, DefaultParamsReadable, DefaultParamsWritable):
    """PCA with a fixed `k`, or the smallest k reaching `varianceTarget`; `fit` returns a Spark `PCAModel`.

    One pass computes the covariance (NumPy per partition), one eigendecomposition gives every component; k is
    read off the cumulative curve, no refitting. The fitted model carries its fit result, as pyspark.ml models
    carry their summary (in memory; not saved): `fullExplainedVariance`, every component's share of the variance
    (for the curve), and `fullComponents`, every component (to keep another k).
    """

    k = Param(Params._dummy(), "k", "number of components (0: choose from varianceTarget)", TypeConverters.toInt)
    varianceTarget = Param(
        Params._dummy(), "varianceTarget", "cumulative explained variance to reach", TypeConverters.toFloat
    )

    @keyword_only
    def __init__(
        self, *, inputCol: str = "features", outputCol: str = "pca_features", k: int = 0, varianceTarget: float = 0.95
    ):
        super().__init__()
        self._setDefault(inputCol="features", outputCol="pca_features", k=0, varianceTarget=0.95)
        self._set(**self._input_kwargs)

    def _fit(self, dataset: DataFrame) -> PCAModel:
        pc, explained = fit_components(dataset, self.getInputCol())
        k = self.getOrDefault(self.k) or smallest_k(np.cumsum(explained), self.getOrDefault(self.varianceTarget))
        return model_keeping(pc, explained, k, self.getInputCol(), self.getOutputCol())


def fit_components(dataset: DataFrame, input_col: str) -> tuple[np.ndarray, np.ndarray]:
    """Every principal component of an array or vector column (as columns) and its share of the variance, largest
    first: one data pass (`gram_stats`), one eigendecomposition."""
    data = as_arrays(dataset, input_col) if _is_vector(dataset, input_col) else dataset
    return principal_components(*gram_stats(data, input_col))


def model_keeping(pc: np.ndarray, explained: np.ndarray, k: int, input_col: str, output_col: str) -> PCAModel:
    """The `PCAModel` keeping the first k of these components (built once), carrying them all as its fit result
    (`fullExplainedVariance`, `fullComponents`)."""
    if not 1 <= k <= len(explained):
        raise ValueError(f"k={k} must lie between 1 and the input dimension {len(explained)}")
    logger.info("PCA keeps k=%d of %d components (%.4f of the variance)", k, len(explained), explained[:k].sum())
    model = pca_model(pc[:, :k], explained[:k], input_col, output_col)
    model.fullExplainedVariance, model.fullComponents = explained, pc
    return model


def _is_vector(df: DataFrame, column: str) -> bool:
    return isinstance(df.schema[column].dataType, VectorUDT)


def truncate(model: PCAModel, k: int) -> PCAModel:
    """The same PCA keeping only its first k components (the benchmarks compare several k of one fit)."""
    if not 1 <= k <= model.getK():
        raise ValueError(f"k={k} must lie between 1 and the model's {model.getK()} components")
    pc, explained = components(model)[:, :k], model.explainedVariance.toArray()[:k]
    return pca_model(pc, explained, model.getInputCol(), model.getOutputCol())


@dataclass(frozen=True)
class Projection:
    """A PCA's first components as NumPy, applied like the model by `transform_arrays` (no Spark model is built);
    it answers the model's `getInputCol`/`getOutputCol`, so either can be passed."""

    numpy_components: np.ndarray
    input_col: str
    output_col: str

    @classmethod
    def first(cls, model: PCAModel, k: int) -> Projection:
        """The model's first k components (to project a sample, or the accuracy curve's rows)."""
        return cls(components(model)[:, :k], model.getInputCol(), model.getOutputCol())

    def getInputCol(self) -> str:
        return self.input_col

    def getOutputCol(self) -> str:
        return self.output_col


def components(model: PCAModel | Projection) -> np.ndarray:
    """The model's components (input dimension × k) as NumPy: read from the JVM once per model object (Py4J
    decodes a 1280 × 256 matrix in about a second); a model built by `pca_model` has them from the start."""
    cached = getattr(model, "numpy_components", None)
    if cached is None:
        cached = model.numpy_components = model.pc.toArray()
    return cached


def variance_curve(explained: np.ndarray) -> list[float]:
    """Cumulative explained variance for k = 1..len(explained)."""
    return [float(v) for v in np.cumsum(explained)]


def first_two(df: DataFrame, column: str, sample: int = 3000, project=None) -> tuple[np.ndarray, list[str]]:
    """The first two components and the label of about `sample` rows (for a scatter plot), reproducibly chosen.

    With `project` (a function of a DataFrame), the rows are sampled first and only the sample is projected; its
    output column is then read instead of `column`."""
    total = df.count()
    picked = df if total <= sample else df.sample(fraction=sample / total, seed=7)
    if project is not None:
        picked = project(picked)
        column = next(c for c in picked.columns if c not in df.columns)
    rows = picked.select("label", F.col(column)[0].alias("x"), F.col(column)[1].alias("y")).collect()
    return np.array([(r.x, r.y if r.y is not None else 0.0) for r in rows]), [r.label for r in rows]


def explained_share(model: PCAModel, df: DataFrame) -> float:
    """Share of the total variance of `df`'s input column that the model's components explain (one data pass)."""
    input_col = model.getInputCol()
    data = as_arrays(df, input_col) if _is_vector(df, input_col) else df
    n, total, gram = gram_stats(data, input_col)
    covariance = (gram - np.outer(total, total) / n) / max(1, n - 1)
    pc = components(model)
    return float(np.sum((covariance @ pc) * pc) / np.trace(covariance))


def version_literal(uri: str):
    """A column holding a model version's folder name (`v-<time>-<id>`), to record which model made each row."""
    return F.lit(versions.version_name(uri))


def scaled_part(model: StandardScalerModel, features: DataFrame, keep: list[str]) -> DataFrame:
    """One batch's part of `scaled_features`: its feature rows scaled by `model` (float32), with the columns `keep`."""
    return transform_arrays(model, features).select(*keep, "scaled_features")


def pca_part(model: PCAModel, model_uri: str, scaled: DataFrame, keep: list[str]) -> DataFrame:
    """One batch's part of `pca_features`: its scaled rows projected, with the columns `keep` and the model version
    that made them."""
    projected = transform_arrays(model, scaled).select(*keep, "pca_features")
    return projected.withColumn("pca_model", version_literal(model_uri))
