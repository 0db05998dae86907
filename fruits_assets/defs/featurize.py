"""Featurize: `cnn_features` + `quarantined_images` of each ingest batch (one CNN pass, two tables) and
`training_features` (the training photos through the same featurizer), with the checks of the features."""

import time
from typing import Any

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetExecutionContext,
    AssetOut,
    Output,
    ResourceParam,
    asset,
    asset_check,
    multi_asset,
)
from dagster_pyspark import PySparkResource

from fruits_assets.defs.partitions import GROUP, ingest_batches
from fruits_assets.io import progress
from fruits_assets.io.featurize_metadata import featurize_metadata, training_metadata
from fruits_assets.io.io_manager import UNCHANGED
from fruits_assets.io.metadata import latest_metadata, quarantine_table
from fruits_assets.io.progress import SparkProgress
from fruits_assets.io.resources import CnnResource, ImageSource, TableStore
from spark_code import quality, unchanged
from spark_code.featurize.batch import BatchFeaturization
from spark_code.featurize.cnn import FEATURE_DIM
from spark_code.featurize.training import TrainingFeaturization
from spark_code.ingest import batches, ledger

BATCH_TABLES = ("cnn_features", "quarantined_images")


@multi_asset(
    group_name=GROUP,
    partitions_def=ingest_batches,
    deps=["raw_images"],
    outs={
        "cnn_features": AssetOut(kinds={"spark", "tensorflow", "delta"}, description="1280-d MobileNetV2 features."),
        "quarantined_images": AssetOut(kinds={"delta"}, description="Images that could not be featurized, with why."),
    },
)
def cnn_features(
    context: AssetExecutionContext,
    pyspark: PySparkResource,
    image_source: ImageSource,
    cnn: CnnResource,
    tables: TableStore,
    pyspark_step_launcher: ResourceParam[Any],
):
    """MobileNetV2 (ImageNet, no top, avg-pooled) on the images the raw table's changes bring (those since the
    version both tables last took: the batch's, and any a stopped run left), each decoded and inferred once; the
    CNN settings are recorded per row in `cnn_model`. One commit per table: the new rows, and the changed and
    deleted photos' old rows removed.
    """
    started, key = time.perf_counter(), context.partition_key
    taken = {name: tables.consumed(name, batches.LEDGER) for name in BATCH_TABLES}
    after, until = min(taken.values()), tables.version(batches.LEDGER)
    if until is None or until <= after:
        context.log.info("the raw table has no change since version %d: nothing to featurize", after)
        yield Output(UNCHANGED, "cnn_features", metadata={"batch": key, "featurized": 0})
        yield Output(UNCHANGED, "quarantined_images", metadata={"batch": key, "quarantined": 0})
        return
    net = tables.changes(batches.LEDGER, after, until).cache()
    spark = pyspark.spark_session
    batch = BatchFeaturization.start(spark, net, image_source.root, cnn.featurizer(), cnn.model_key(), (after, until))
    interval = progress.every_s(context.run.tags)
    with SparkProgress(spark.sparkContext, "cnn_features", batch.to_featurize(), batch.run.counters.decoded, interval):
        featurized = batch.run.run_pass()  # the CNN pass (cached for both outputs)
    quarantined_rows = batch.quarantined()
    quarantined = quarantined_rows.orderBy("path").collect()
    shown = featurize_metadata(key, batch, featurized, quarantined, time.perf_counter() - started, cnn.settings())
    context.log.info("featurization: %s", shown["cnn_features"])
    features = batch.update(batch.features(), taken["cnn_features"], key)
    yield Output(features, "cnn_features", metadata=shown["cnn_features"])
    quarantine = batch.update(quarantined_rows, taken["quarantined_images"], key)
    yield Output(quarantine, "quarantined_images", metadata=shown["quarantined_images"])
    batch.release()


def listing_counts(context: AssetCheckExecutionContext) -> dict[str, int]:
    """`files_found` and `skipped` of the newest raw_images listing ({} when the instance has none)."""
    metadata = latest_metadata(context.instance, "raw_images")
    return {key: metadata[key] for key in ("files_found", "skipped") if key in metadata}


@asset_check(asset="cnn_features")
def counts_reconcile(
    context: AssetCheckExecutionContext, tables: TableStore, pyspark_step_launcher: ResourceParam[Any]
) -> AssetCheckResult:
    """The newest batch reconciles: each file it took is featurized or quarantined, exactly once (`batch_*`).
    When that batch came from a listing of the root (which costs the corpus anyway), the same holds over every
    batch's current rows, and every file found under the root is featurized, quarantined or skipped by rule
    (files_found = the three together). A sensor's batch (its change list, no listing) is checked on its own rows:
    the check costs what the batch costs."""
    newest = tables.newest_batch()
    batch = unchanged.reconcile(tables.base_uri, newest or "")  # delta-rs on the driver: no Spark job
    counts, passed = {f"batch_{k}": v for k, v in batch.items()}, quality.counts_reconcile(batch)
    listed = listing_counts(context)
    if listed:
        every = {**_every_batch(tables), **listed}
        counts, passed = {**counts, **every}, passed and quality.counts_reconcile(every)
    return AssetCheckResult(passed=passed, metadata={**counts, "batch": newest or ""})


def _every_batch(tables: TableStore) -> dict[str, int]:
    """Reconciliation counts over the tables' current rows (with delta-rs on the driver, local or S3 output)."""
    return unchanged.reconcile(tables.base_uri)


@asset_check(asset="cnn_features")
def features_are_finite_1280(tables: TableStore, pyspark_step_launcher: ResourceParam[Any]) -> AssetCheckResult:
    """Each feature vector of the newest batch holds exactly 1280 finite floats (each batch is checked when it
    is made: the check costs what the batch costs)."""
    newest = tables.newest_batch()
    bad = quality.bad_vectors(tables.batch_rows("cnn_features", newest, ["features"]), "features", FEATURE_DIM)
    return AssetCheckResult(passed=bad == 0, metadata={"bad_vectors": bad, "batch": newest or ""})


@asset_check(asset="cnn_features")
def one_cnn_engine(tables: TableStore, pyspark_step_launcher: ResourceParam[Any]) -> AssetCheckResult:
    """Every current row of `cnn_features` and `training_features` came from one CNN: one input size, engine and
    precision, and weights (`cnn_model`). Features of bf16 and fp32 engines differ by ~10 % (relative L2), so they
    never mix: a change of engine marks every photo changed and the next batch featurizes it anew."""
    found = {name: sorted(ledger.model_keys(tables.base_uri, name)) for name in ("cnn_features", "training_features")}
    every = set(found["cnn_features"]) | set(found["training_features"])
    return AssetCheckResult(
        passed=len(every) <= 1, metadata={f"{name}_cnn_models": ", ".join(keys) for name, keys in found.items()}
    )


@asset(group_name=GROUP, kinds={"spark", "tensorflow", "delta"})
def training_features(
    context: AssetExecutionContext,
    pyspark: PySparkResource,
    training_source: ImageSource,
    cnn: CnnResource,
    tables: TableStore,
    pyspark_step_launcher: ResourceParam[Any],
):
    """CNN features of the labelled training photos (same model and settings as `cnn_features`), made once per
    photo: a run featurizes only training photos that are new, changed or made with other CNN settings, and writes
    nothing when none is (the saved version stays current: the IO manager records it without a rewrite).
    """
    if unchanged.training_changes(training_source.root, tables.base_uri, cnn.model_key()) is None:
        yield _unchanged_training(context, tables, training_source)  # checked without Spark: nothing to featurize
        return
    spark = pyspark.spark_session
    previous = tables.table("training_features")
    training = TrainingFeaturization.start(spark, training_source.root, previous, cnn.featurizer(), cnn.model_key())
    interval = progress.every_s(context.run.tags)
    todo = training.todo.count()
    with SparkProgress(spark.sparkContext, "training_features", todo, training.run.counters.decoded, interval):
        featurized = training.run.run_pass()  # the CNN pass over new or changed training photos only
    quarantined = training.run.quarantined.orderBy("path").collect()
    shown = training_metadata(training_source.root, training, featurized, quarantined)
    context.log.info("training set: %s", {k: v for k, v in shown.items() if k != "quarantined_files"})
    yield Output(UNCHANGED if shown["unchanged"] else training.rows(), metadata=shown)
    training.run.release()


def _unchanged_training(context: AssetExecutionContext, tables: TableStore, training_source: ImageSource) -> Output:
    """The saved training table stays current: every listed photo has its row, made with these CNN settings."""
    rows = unchanged.table_rows(tables.base_uri, "training_features")
    context.log.info("training set unchanged (%d photos, checked without Spark): its saved version stays current", rows)
    metadata = {"unchanged": True, "root": training_source.root, "listed": rows, "reused": rows, "featurized": 0}
    empty = quarantine_table([])
    return Output(UNCHANGED, metadata={**metadata, "cnn_images": 0, "quarantined": 0, "quarantined_files": empty})
