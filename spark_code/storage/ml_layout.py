"""A Spark ML model from Python values, through public API only: Spark ML's own save layout written directly, then
`<model class>.load`.

Spark ML saves a model `folder` as
  - `folder/metadata/part-00000`: one JSON line, `{"class", "timestamp", "sparkVersion", "uid", "paramMap",
    "defaultParamMap"}`;
  - `folder/data/part-*.parquet`: one row of the model's values (e.g. a `LogisticRegressionModel`'s `numClasses`,
    `numFeatures`, `interceptVector`, `coefficientMatrix`, `isMultinomial`; a `PCAModel`'s `pc`, `explainedVariance`),
    whose footer carries Spark's schema (`org.apache.spark.sql.parquet.row.metadata`, the StructType as JSON), so
    that vectors and matrices are read back as `VectorUDT` / `MatrixUDT` columns.
`build_model` writes both files from the driver (the row with pyarrow, no Spark job and no Python worker) through the
Hadoop FileSystem of Spark's default file system (local, or the cluster's HDFS: where `load`'s small JVM jobs read
them) into a scratch folder, loads the model with the class's public `load` and deletes the folder. The model is then
the one `load` gives for a saved model: it transforms, saves and loads like one `fit` returned.

    model = build_model(spark, PCAModel, "PCA", {"k": 3, "inputCol": "x", "outputCol": "y"},
                        {"pc": DenseMatrix(6, 3, pc.flatten(order="F")), "explainedVariance": DenseVector(shares)})
"""

from __future__ import annotations

import json
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.ml.linalg import Matrix, MatrixUDT, Vector, VectorUDT
from pyspark.sql import SparkSession
from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    ByteType,
    DataType,
    DoubleType,
    IntegerType,
    StringType,
    StructField,
    StructType,
    UserDefinedType,
)

from spark_code.storage import versions

SCRATCH = "/tmp/fruits-scratch"  # on Spark's default file system (local, or the cluster's HDFS): every task sees it
SPARK_SCHEMA_KEY = "org.apache.spark.sql.parquet.row.metadata"  # where Spark keeps a Parquet file's Spark schema
ARROW_TYPES = {
    ByteType: pa.int8(),
    IntegerType: pa.int32(),
    DoubleType: pa.float64(),
    BooleanType: pa.bool_(),
    StringType: pa.string(),
}


def java_class(model_class: type) -> str:
    """The Scala class a pyspark.ml model class wraps (`pyspark.ml.feature.PCAModel` → `org.apache.spark.ml.feature.
    PCAModel`): what the metadata's `class` must name for that class's `load`."""
    return f"{model_class.__module__.replace('pyspark', 'org.apache.spark', 1)}.{model_class.__name__}"


def spark_field(name: str, value) -> StructField:
    """The column Spark ML writes for a value of its model data: a vector or matrix (a UDT column, nullable), a bool,
    an int (Scala `Int`), a float (`Double`) or a str (not nullable, as the case class fields of primitives)."""
    if isinstance(value, Vector):
        return StructField(name, VectorUDT(), True)
    if isinstance(value, Matrix):
        return StructField(name, MatrixUDT(), True)
    if isinstance(value, (bool, np.bool_)):
        return StructField(name, BooleanType(), False)
    if isinstance(value, (int, np.integer)):
        return StructField(name, IntegerType(), False)
    if isinstance(value, (float, np.floating)):
        return StructField(name, DoubleType(), False)
    if isinstance(value, str):
        return StructField(name, StringType(), True)
    raise TypeError(f"model data {name!r}: no Spark ML column for a {type(value).__name__}")


def arrow_type(spark_type: DataType) -> pa.DataType:
    """The Parquet (Arrow) type Spark writes for `spark_type`; a UDT is stored as its `sqlType`."""
    if isinstance(spark_type, UserDefinedType):
        return arrow_type(spark_type.sqlType())
    if isinstance(spark_type, StructType):
        return pa.struct([pa.field(f.name, arrow_type(f.dataType), f.nullable) for f in spark_type.fields])
    if isinstance(spark_type, ArrayType):
        return pa.list_(pa.field("element", arrow_type(spark_type.elementType), spark_type.containsNull))
    return ARROW_TYPES[type(spark_type)]


def _arrow_value(spark_type: DataType, value):
    if isinstance(spark_type, UserDefinedType):
        stored = spark_type.serialize(value)  # the UDT's own tuple, in its sqlType's field order
        return {f.name: item for f, item in zip(spark_type.sqlType().fields, stored, strict=True)}
    return value.item() if isinstance(value, np.generic) else value


def data_parquet(spark_version: str, data: dict) -> bytes:
    """One Parquet file holding `data` ({column: value}, in Spark ML's column order) as one row, with Spark's schema
    in its footer, as Spark ML writes a model's `data/`."""
    schema = StructType([spark_field(name, value) for name, value in data.items()])
    arrow_schema = pa.schema(
        [pa.field(f.name, arrow_type(f.dataType), f.nullable) for f in schema.fields],
        metadata={SPARK_SCHEMA_KEY: schema.json(), "org.apache.spark.version": spark_version},
    )
    row = {f.name: [_arrow_value(f.dataType, data[f.name])] for f in schema.fields}
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(row, schema=arrow_schema), sink, compression="snappy")
    return sink.getvalue().to_pybytes()


def write_layout(
    spark: SparkSession,
    folder: str,
    model_class: type,
    uid: str,
    params: dict,
    data: dict,
    default_params: dict | None = None,
) -> None:
    """Write Spark ML's save layout of a `model_class` model into `folder` (Spark's default file system unless the
    URI names another): `params` as its paramMap (JSON values: a float param needs a float, e.g. 1.0 not 1), the
    `default_params` as its defaultParamMap (default: none, so the model keeps its class's own defaults), `data` as
    its one row (see `spark_field` for the value types)."""
    metadata = {
        "class": java_class(model_class),
        "timestamp": int(time.time() * 1000),
        "sparkVersion": spark.version,
        "uid": uid,
        "paramMap": params,
        "defaultParamMap": default_params or {},
    }
    versions.write_bytes(spark, f"{folder}/metadata/part-00000", (json.dumps(metadata) + "\n").encode())
    versions.write_bytes(spark, f"{folder}/data/part-00000.parquet", data_parquet(spark.version, data))


def build_model(spark: SparkSession, model_class: type, uid_prefix: str, params: dict, data: dict):
    """A `model_class` model (e.g. `PCAModel`, `LogisticRegressionModel`) with these params and data: its save layout
    (`write_layout`) written to a scratch folder, loaded with `model_class.load`, the folder deleted. Its uid is
    `<uid_prefix>_<12 hex digits>`, as Spark's `Identifiable.randomUID`."""
    uid = f"{uid_prefix}_{uuid.uuid4().hex[-12:]}"
    folder = f"{SCRATCH}/{uid}-{uuid.uuid4().hex}"
    try:
        write_layout(spark, folder, model_class, uid, params, data)
        return model_class.load(folder)
    finally:
        files, path = versions.hadoop_fs(spark, folder)
        files.delete(path, True)
