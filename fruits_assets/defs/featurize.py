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
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from fruits_assets.defs.partitions import GROUP, ingest_batches
from fruits_assets.io import progress
from fruits_assets.io.io_manager import UNCHANGED
from fruits_assets.io.metadata import latest_metadata, quarantine_table
from fruits_assets.io.progress import SparkProgress
from fruits_assets.io.resources import CnnResource, ImageSource, TableStore
from spark_code import unchanged
from spark_code.featurize.cnn import FEATURE_DIM
from spark_code.featurize.triage import featurize_listing
from spark_code.ingest import batches, ledger
from spark_code.ingest.images import list_images, require_images
from spark_code.storage import quality
from spark_code.storage.tables import CHANGE, CHANGED, DELETED, NEW, Update, removed_paths, upserts

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
    raw_images, tally = upserts(net), change_counts(net)
    run = featurize_listing(pyspark.spark_session, raw_images, image_source.root, cnn.featurizer())
    counts = {"batch": key, "raw": tally[NEW] + tally[CHANGED], "removed": tally[CHANGED] + tally[DELETED]}
    interval = progress.every_s(context.run.tags)
    with SparkProgress(
        pyspark.spark_session.sparkContext, "cnn_features", counts["raw"], run.counters.decoded, interval
    ):
        counts["featurized"] = run.run_pass()  # the CNN pass (cached for both outputs)
    owner = F.broadcast(raw_images.select("path", batches.BATCH))  # each row keeps its raw row's batch
    features = run.features.withColumn(batches.MODEL_COLUMN, F.lit(cnn.model_key())).join(owner, "path")
    quarantined_rows = run.quarantined.join(owner, "path")
    quarantined = quarantined_rows.orderBy("path").collect()
    counts.update({"quarantined": len(quarantined), **run.counters.values(), **run.counters.seconds()})
    counts["seconds"] = round(time.perf_counter() - started, 2)
    context.log.info("featurization: %s", counts)
    engine = cnn.cnn_engine()
    settings = {"batch_size": cnn.batch_size, "image_size": cnn.image_size, "cnn_model": cnn.model_key()}
    settings |= {"engine": engine.name, "precision": engine.precision}

    def update(name: str, rows) -> Update:
        # A table that already took some of these versions merges every touched path (nothing twice).
        removed = removed_paths(net) if taken[name] == after else net.select("path")
        needs_merge = taken[name] > after or counts["removed"] > 0
        return Update(rows, removed if needs_merge else None, source=(batches.LEDGER, until), recorded={"batch": key})

    yield Output(update("cnn_features", features), "cnn_features", metadata={**counts, **settings})
    quarantine = {
        "batch": key,
        "quarantined": counts["quarantined"],
        "quarantined_files": quarantine_table(quarantined),
    }
    yield Output(update("quarantined_images", quarantined_rows), "quarantined_images", metadata=quarantine)
    run.release()
    net.unpersist()


def change_counts(net: DataFrame) -> dict[str, int]:
    """How many paths of net changes are new, changed and deleted."""
    found = {row[CHANGE]: row["count"] for row in net.groupBy(CHANGE).count().collect()}
    return {kind: found.get(kind, 0) for kind in (NEW, CHANGED, DELETED)}


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
    bad = quality.bad_vectors(tables.batch_rows("cnn_features", newest), "features", FEATURE_DIM)
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
    listing = list_images(spark, training_source.root).cache()
    listed = listing.count()
    require_images(listed, training_source.root)
    previous = tables.table("training_features")
    kept, todo = batches.reusable(previous, listing, cnn.model_key())
    run = featurize_listing(spark, todo, training_source.root, cnn.featurizer())
    interval = progress.every_s(context.run.tags)
    with SparkProgress(spark.sparkContext, "training_features", todo.count(), run.counters.decoded, interval):
        featurized = run.run_pass()  # the CNN pass over new or changed training photos only
    new_rows = run.features.withColumn(batches.MODEL_COLUMN, F.lit(cnn.model_key()))
    quarantined = run.quarantined.orderBy("path").collect()
    reused = 0 if kept is None else kept.count()
    context.log.info(
        "training set: %d listed, %d reused, %d featurized, %d quarantined",
        listed,
        reused,
        featurized,
        len(quarantined),
    )
    all_kept = previous is not None and featurized == 0 and reused == previous.count()
    if all_kept:
        context.log.info("training set unchanged: its saved version stays current")
    rows = new_rows if kept is None else kept.select(*new_rows.columns).unionByName(new_rows)
    yield Output(
        UNCHANGED if all_kept else rows,
        metadata={
            "unchanged": all_kept,
            "root": training_source.root,
            "listed": listed,
            "reused": reused,
            "featurized": featurized,
            "cnn_images": run.counters.values()["cnn_images"],
            "quarantined": len(quarantined),
            "quarantined_files": quarantine_table(quarantined),
        },
    )
    run.release()


def _unchanged_training(context: AssetExecutionContext, tables: TableStore, training_source: ImageSource) -> Output:
    """The saved training table stays current: every listed photo has its row, made with these CNN settings."""
    rows = unchanged.table_rows(tables.base_uri, "training_features")
    context.log.info("training set unchanged (%d photos, checked without Spark): its saved version stays current", rows)
    metadata = {"unchanged": True, "root": training_source.root, "listed": rows, "reused": rows, "featurized": 0}
    empty = quarantine_table([])
    return Output(UNCHANGED, metadata={**metadata, "cnn_images": 0, "quarantined": 0, "quarantined_files": empty})
