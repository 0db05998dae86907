"""The asset graph: raw_images → cnn_features (+ quarantined_images) per ingest batch → scaled → pca_features."""

import dataclasses
import functools
import time
from datetime import datetime, timezone
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetOut,
    Config,
    MetadataValue,
    Output,
    ResourceParam,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
    multi_asset,
)
from dagster_pyspark import PySparkResource
from pydantic import Field
from pyspark.ml.feature import PCAModel, StandardScalerModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from fruits_assets import plots
from fruits_assets.metadata import class_table, quarantine_table, variance_markdown
from fruits_assets.partitions import CHANGES_TAG, ingest_batches
from fruits_assets.progress import SparkProgress
from fruits_assets.resources import ClassifierSettings, CnnResource, ImageSource, ModelStore, TableStore
from spark_code import batches, lifecycle, local_batch, reduce, snapshot, storage
from spark_code import classifier as clf
from spark_code.images import LISTING_SCHEMA, listing_counts, listing_rows, require_images, walk_rows
from spark_code.lifecycle import SavedModel
from spark_code.s3a import is_s3
from spark_code.triage import featurize_listing

GROUP = "fruits"


class RawConfig(Config):
    """What a batch takes: by default only files new or changed since the other batches."""

    full_refresh: bool = Field(
        default=False, description="Take every listed image into this batch: all are featurized again."
    )


@asset(group_name=GROUP, kinds={"spark", "parquet"}, partitions_def=ingest_batches)
def raw_images(
    context: AssetExecutionContext,
    config: RawConfig,
    pyspark: PySparkResource,
    image_source: ImageSource,
    cnn: CnnResource,
    tables: TableStore,
    pyspark_step_launcher: ResourceParam[Any],
) -> Output[DataFrame]:
    """One ingest batch: image files new or changed since the other batches (path, label, length,
    modification_time, change), plus a `deleted` row for each file gone from the image root. Images whose
    features were made with other CNN settings count as changed.

    A run the `new_images` sensor requested takes the batch the sensor found (tag `fruits/changes`) and lists
    nothing: its cost follows the batch, not the corpus. Other runs list the root and compare it with the tables.
    """
    key = batches.check_key(context.partition_key)
    now = datetime.now(timezone.utc)
    changes_uri = None if config.full_refresh else context.run.tags.get(CHANGES_TAG)
    sensed = None if changes_uri is None else snapshot.load_changes(changes_uri)
    if sensed is not None:  # the sensor's run: the batch it found, without listing the root again
        planned, listing_counts = _sensed_rows(image_source.root, sensed), {}
    else:
        planned, listing_counts = _listed_batch(pyspark.spark_session, image_source, cnn, tables, config, key, now)
    if isinstance(planned, list):  # rows planned on the driver: the batch is small, its counts known
        batch = batches.from_rows(pyspark.spark_session, planned, key, now)
        changes, per_class = batches.tally_rows(planned)
    else:
        batch = planned.cache()
        changes, per_class = batches.tally(batch), _per_class(batch)
    metadata = {
        "batch": key,
        "image_count": changes[batches.NEW] + changes[batches.CHANGED],
        **changes,
        **listing_counts,  # files_found = listed + skipped (hidden files, OS clutter, links to what is listed)
        "listing": "root" if sensed is None else "sensor",
        "class_count": len([label for label in per_class if label is not None]),
        "root": image_source.root,
        "per_class": class_table(per_class),
    }
    context.log.info("batch %s of %s: %s", key, image_source.root, metadata)
    return Output(batch, metadata=metadata)


def _listed_batch(spark, image_source: ImageSource, cnn: CnnResource, tables: TableStore, config, key, now):
    """(batch, listing counts): the root listed and compared with the current rows of the other batches. For a
    local output the batch is planned on the driver with pyarrow (its rows: no Spark job over the corpus); for an
    S3 output it is a DataFrame planned by Spark."""
    rows, found = walk_rows(spark, image_source.root)
    require_images(len(rows), image_source.root)
    if not is_s3(tables.base_uri):
        return local_batch.plan(rows, tables.base_uri, key, cnn.model_key(), config.full_refresh), listing_counts(found)
    listing = spark.createDataFrame(rows, LISTING_SCHEMA).cache()
    before = None if config.full_refresh else tables.current("raw_images", without=key)
    redo = None if before is None else batches.stale(before, tables.rows("cnn_features", without=key), cnn.model_key())
    batch = batches.plan(listing, before, key, now, redo).cache()
    batch.count()  # made while the listing is cached; then the listing's cache can go
    listing.unpersist()
    return batch, listing_counts(found)


def _per_class(batch: DataFrame) -> dict[str | None, int]:
    taken = batch.filter(F.col(batches.CHANGE) != batches.DELETED)
    return {row["label"]: row["count"] for row in taken.groupBy("label").count().collect()}


def _sensed_rows(root: str, sensed: list[tuple[str, int, int, str]]) -> list[tuple]:
    """The batch the sensor found (new, changed, deleted files with their entries) as raw rows with their change."""
    return [(*row, change) for row, (*_, change) in zip(listing_rows(root, _entries(sensed)), sensed, strict=True)]


def _entries(sensed):
    return [(rel, (size, mtime_ns)) for rel, size, mtime_ns, _ in sensed]


@multi_asset(
    group_name=GROUP,
    partitions_def=ingest_batches,
    outs={
        "cnn_features": AssetOut(kinds={"spark", "tensorflow", "parquet"}, description="1280-d MobileNetV2 features."),
        "quarantined_images": AssetOut(kinds={"parquet"}, description="Images that could not be featurized, with why."),
    },
)
def cnn_features(
    context: AssetExecutionContext,
    raw_images: DataFrame,
    pyspark: PySparkResource,
    image_source: ImageSource,
    cnn: CnnResource,
    pyspark_step_launcher: ResourceParam[Any],
):
    """MobileNetV2 (ImageNet, no top, avg-pooled) on the batch's new or changed images, each decoded and inferred
    once; the CNN settings are recorded per row in `cnn_model`.
    """
    started, key = time.perf_counter(), context.partition_key
    run = featurize_listing(pyspark.spark_session, raw_images, image_source.root, cnn.featurizer())
    run.features = run.features.withColumn(batches.MODEL_COLUMN, F.lit(cnn.model_key())).withColumn(
        batches.BATCH, F.lit(key)
    )
    run.quarantined = run.quarantined.withColumn(batches.BATCH, F.lit(key))
    counts = {"batch": key, "raw": raw_images.count()}
    with SparkProgress(pyspark.spark_session.sparkContext, "cnn_features", counts["raw"], run.counters.decoded):
        counts["featurized"] = run.features.count()  # the CNN pass (persisted for both outputs)
    quarantined = run.quarantined.orderBy("path").collect()
    counts.update({"quarantined": len(quarantined), **run.counters.values(), **run.counters.seconds()})
    counts["seconds"] = round(time.perf_counter() - started, 2)
    context.log.info("featurization: %s", counts)
    yield Output(run.features, "cnn_features", metadata={**counts, **_cnn_settings(cnn)})
    quarantine = {
        "batch": key,
        "quarantined": counts["quarantined"],
        "quarantined_files": quarantine_table(quarantined),
    }
    yield Output(run.quarantined, "quarantined_images", metadata=quarantine)
    run.release()


def _cnn_settings(cnn: CnnResource) -> dict:
    return {"batch_size": cnn.batch_size, "image_size": cnn.image_size, "cnn_model": cnn.model_key()}


def current_features(tables: TableStore) -> tuple[DataFrame, str]:
    """The current feature rows over every batch and their CNN settings; an error if none, or if they mix settings."""
    features = tables.require_current("cnn_features")
    models = [row[0] for row in features.select(batches.MODEL_COLUMN).distinct().collect()]
    if len(models) > 1:
        raise ValueError(
            f"cnn_features mixes CNN settings {sorted(models)}: materialize a new batch with raw_images config "
            "full_refresh: true, so every image is featurized with the current settings"
        )
    return features, models[0] if models else ""


class ScalerConfig(Config):
    """Refit policy of the scaler: reuse the saved one (new images are scaled with it) unless `refit`, or unless it
    was fitted on features of other CNN settings."""

    refit: bool = Field(default=False, description="Fit a new scaler on all current features (the daily schedule).")


@asset(group_name=GROUP, kinds={"spark", "parquet"}, deps=["cnn_features"])
def scaled_features(
    context: AssetExecutionContext,
    config: ScalerConfig,
    models: ModelStore,
    tables: TableStore,
    pyspark_step_launcher: ResourceParam[Any],
) -> Output[batches.DerivedParts]:
    """Features standardised by a Spark ML StandardScaler saved with the asset, stored as float32 (the CNN's
    precision: 5 KB per photo), one part per ingest batch: a run scales only the batches the saved scaler has
    not scaled yet. A refit (config, or features of other CNN settings) scales every batch again."""
    keys = tables.batches()
    saved = models.latest(StandardScalerModel, "scaled_features")
    done = set() if saved is None else models.derived_batches(saved.uri) & set(keys)
    todo = [key for key in keys if key not in done]
    verdict = lifecycle.decide(saved, _scaler_inputs(saved, tables.parts("cnn_features", todo)), refit=config.refit)
    if verdict.refit:
        cnn_features, cnn_model = current_features(tables)
        model = reduce.fit_scaler(cnn_features, "features", "scaled_features")
        saved, done, todo = models.save(model, "scaled_features", {"cnn_model": cnn_model}), set(), keys
    context.log.info("scaler %s (%s): %d batch(es) to scale", saved.uri, verdict.reason, len(todo))
    parts = {key: _scaled_part(saved.model, tables.parts("cnn_features", [key])) for key in todo}
    metadata = {
        "model_uri": MetadataValue.path(saved.uri),
        "refit": verdict.refit,
        "batches_scaled": len(todo),
        "batches": len(keys),
    }
    return Output(batches.DerivedParts(parts, sorted(done), batches.manifest_uri(saved.uri)), metadata=metadata)


def _scaler_inputs(saved: SavedModel | None, new: DataFrame | None) -> dict:
    """What the new rows need of the scaler: features of the CNN settings it was fitted on (new rows of other
    settings cannot be scaled like the old ones)."""
    if saved is None or new is None:
        return {}
    found = sorted(row[0] for row in new.select(batches.MODEL_COLUMN).distinct().collect())
    if not found:  # an empty batch asks nothing of the scaler
        return {}
    return {"cnn_model": found[0] if len(found) == 1 else found}


def _scaled_part(model: StandardScalerModel, features: DataFrame) -> DataFrame:
    return reduce.transform_arrays(model, features).select(*batches.PART_COLUMNS, "scaled_features")


DEFAULT_VARIANCE = 0.95  # the largest k the accuracy curve considers reaches this share of the variance


class PcaConfig(Config):
    """A fixed number of components `k`, or the share of variance to keep, or by default the smallest k whose
    classifier accuracy is within `accuracy_tolerance` of the best k's; and the refit policy."""

    k: int | None = Field(default=None, ge=1, description="Fixed number of components (overrides the others).")
    variance_target: float | None = Field(
        default=None, gt=0.0, le=1.0, description="Keep the smallest k reaching this cumulative explained variance."
    )
    accuracy_tolerance: float = Field(
        default=0.003,
        ge=0.0,
        le=0.1,
        description="Default choice: the smallest k whose validation accuracy is within this of the best k's.",
    )
    refit: bool = Field(default=False, description="Fit a new PCA even if the saved one still fits (daily schedule).")
    max_drift: float = Field(
        default=0.03,
        ge=0.0,
        le=1.0,
        description="Drift bound: the check pca_basis_fits_new_rows warns when the saved basis explains this much "
        "less of the new rows' variance than of the rows it was fitted on.",
    )
    refit_on_drift: bool = Field(
        default=False,
        description="Refit in the same run when the drift bound is passed (a run over every batch); by default the "
        "check warns and the refit_models job (daily_refit) refits.",
    )


def _pca_inputs(config: PcaConfig, scaler_uri: str) -> dict:
    """What a PCA is fitted with and must still match to be reused: k or its target, and the scaler version."""
    return {
        "k": config.k,
        "variance_target": config.variance_target,
        "accuracy_tolerance": config.accuracy_tolerance,
        "scaler": scaler_uri,
    }


MIN_DRIFT_ROWS = 100  # fewer new rows than this say too little about drift: the saved PCA projects them


@asset(group_name=GROUP, kinds={"spark", "parquet"}, deps=["scaled_features", "training_features"])
def pca_features(
    context: AssetExecutionContext,
    config: PcaConfig,
    models: ModelStore,
    tables: TableStore,
    classifier: ClassifierSettings,
    pyspark_step_launcher: ResourceParam[Any],
) -> Output[batches.DerivedParts]:
    """PCA projection (path, label, pca_features as float32, pca_model) from one fit, k fixed, reaching a variance
    target, or by default the smallest k whose logistic-regression accuracy is within the tolerance of the best.

    One part per ingest batch: the saved PCA projects only the batches it has not projected yet. It is refit, and
    every batch projected again, when `refit` is set (the refit_models job), k or the scaler changed, or, with
    `refit_on_drift`, the data drifted: the share of the new rows' variance the saved basis explains is more than
    `max_drift` below its share at fit time. By default drift is measured and reported (`drift`, `refit_due`, and
    the check pca_basis_fits_new_rows warns), so a batch run always costs what the batch costs.
    """
    keys = tables.batches()
    scaler_uri = models.latest_uri("scaled_features")
    saved, wanted = models.latest(PCAModel, "pca_features"), _pca_inputs(config, scaler_uri)
    verdict = lifecycle.decide(saved, wanted, refit=config.refit)
    if verdict.refit:
        saved = None  # asked, or settings or scaler changed: the saved PCA neither projects nor measures drift
    done = set() if saved is None else models.derived_batches(saved.uri) & set(keys)
    todo = [key for key in keys if key not in done]
    drift = None if saved is None else _drift(saved, tables.parts("scaled_features", todo))
    refit_due = drift is not None and drift > config.max_drift
    if not verdict.refit:
        policy = {"max_drift": config.max_drift, "refit_on_drift": config.refit_on_drift}
        verdict = lifecycle.decide(saved, wanted, drift=drift, **policy)
    refit = verdict.refit
    if refit:
        scaled = tables.require_current("scaled_features")
        saved, done, todo = _fit_pca(config, scaled, models, tables, scaler_uri, classifier), set(), keys
    model, model_uri, fitted_with = saved.model, saved.uri, saved.fitted_with
    curve, accuracy = fitted_with["curve"], {int(k): a for k, a in fitted_with.get("accuracy_curve", {}).items()}
    k = model.getK()
    context.log.info(
        "PCA %s: k=%d, %s (drift %s), %d batch(es) to project", model_uri, k, verdict.reason, drift, len(todo)
    )
    scaled_parts = {key: tables.parts("scaled_features", [key]) for key in todo}
    parts = {key: _pca_part(model, model_uri, scaled) for key, scaled in scaled_parts.items()}
    metadata = {
        "k": k,
        "explained_variance": float(curve[k - 1]),
        "variance_target": config.variance_target if config.k is None else None,
        "k_choice": fitted_with.get("k_choice"),
        "accuracy_curve_on": fitted_with.get("accuracy_curve_on"),
        "input_dim": len(curve),
        "bytes_per_photo_vector": 4 * k,
        "refit": refit,
        "drift": drift,
        "max_drift": config.max_drift,
        "refit_due": refit_due and not refit,
        "batches_projected": len(todo),
        "batches": len(keys),
        "cumulative_variance": MetadataValue.md(variance_markdown(curve, k)),
        "variance_plot": MetadataValue.md(plots.variance_plot(curve, k, None if config.k else config.variance_target)),
        **_accuracy_metadata(accuracy, k),
        **_scatter(model, scaled_parts),
        "model_uri": MetadataValue.path(model_uri),
    }
    derived = batches.DerivedParts(parts, sorted(done), batches.manifest_uri(model_uri))
    return Output(derived, metadata={key: value for key, value in metadata.items() if value is not None})


def _drift(saved: SavedModel, new_rows: DataFrame | None) -> float | None:
    """How much less of the new rows' variance the saved PCA explains than of the rows it was fitted on (None
    when there are fewer than MIN_DRIFT_ROWS new rows)."""
    if new_rows is None or new_rows.count() < MIN_DRIFT_ROWS:
        return None
    return round(saved.fitted_with["explained_variance"] - reduce.explained_share(saved.model, new_rows), 4)


def _pca_part(model: PCAModel, model_uri: str, scaled: DataFrame) -> DataFrame:
    projected = reduce.transform_arrays(model, scaled).select(*batches.PART_COLUMNS, "pca_features")
    return projected.withColumn("pca_model", reduce.version_literal(model_uri))


def _scatter(model: PCAModel, scaled_parts: dict[str, DataFrame]) -> dict:
    """The first two components of (a sample of) the rows projected in this run, as a plot; {} if none. The sample
    is drawn from the scaled rows and only it is projected."""
    if not scaled_parts:
        return {}
    rows = functools.reduce(DataFrame.unionByName, scaled_parts.values())
    head = reduce.truncate(model, min(2, model.getK()))
    projected = reduce.first_two(rows, "scaled_features", project=lambda sample: reduce.transform_arrays(head, sample))
    return {"pca_scatter": MetadataValue.md(plots.scatter_plot(*projected))}


def _accuracy_metadata(accuracy: dict[int, float], k: int) -> dict:
    if not accuracy:
        return {}
    records = [{"k": key, "accuracy": round(value, 4)} for key, value in sorted(accuracy.items())]
    return {
        "accuracy_by_k": _table(records, [("k", "int"), ("accuracy", "float")]),
        "accuracy_plot": MetadataValue.md(plots.accuracy_plot(accuracy, k)),
    }


def _table(records: list[dict], columns: list[tuple[str, str]]) -> MetadataValue:
    schema = TableSchema(columns=[TableColumn(name, kind) for name, kind in columns])
    return MetadataValue.table(records=[TableRecord(r) for r in records], schema=schema)


def _curve_rows(scaled_features: DataFrame, models: ModelStore, tables: TableStore) -> tuple[DataFrame, DataFrame, str]:
    """(fit rows, validation rows, where they come from) for the accuracy curve: the classifier's training photos
    scaled like the corpus, validated on the corpus, as the classifier is; without a training table yet, a split
    of the corpus (up to 40 photos per class fit, the others validate)."""
    try:
        training = storage.read_table(tables.pyspark.spark_session, tables.base_uri, "training_features")
    except storage.TableNotFoundError:
        return (*clf.split_per_class(scaled_features), "corpus split")
    scaler = models.load(StandardScalerModel, "scaled_features")
    return (
        reduce.transform_arrays(scaler, training.select("path", "label", "features")),
        scaled_features,
        "training photos",
    )


def _fit_pca(
    config: PcaConfig,
    scaled_features: DataFrame,
    models: ModelStore,
    tables: TableStore,
    scaler_uri: str,
    classifier: ClassifierSettings,
):
    """Fit the PCA once (all components), choose k, save it with what it was fitted with."""
    estimator = reduce.VariancePCA(
        inputCol="scaled_features",
        outputCol="pca_features",
        k=config.k or 0,
        varianceTarget=config.variance_target or DEFAULT_VARIANCE,
    )
    model = estimator.fit(scaled_features)
    curve = reduce.variance_curve(model.fullExplainedVariance)
    accuracy, choice, curve_on = {}, "fixed" if config.k else "variance", None
    if config.k is None and config.variance_target is None:
        ks = reduce.candidate_ks(model.fullExplainedVariance, DEFAULT_VARIANCE)
        fit_rows, valid_rows, curve_on = _curve_rows(scaled_features, models, tables)
        # The curve only compares k values: at most 100 iterations per fit (the classifier itself uses max_iter).
        quick = dataclasses.replace(classifier.logistic(), max_iter=min(100, classifier.max_iter))
        accuracy = clf.accuracy_curve(fit_rows, valid_rows, reduce.truncate(model, max(ks)), ks, quick)
        if accuracy:
            model, choice = (
                reduce.truncate(model, reduce.smallest_accurate_k(accuracy, config.accuracy_tolerance)),
                "accuracy",
            )
    fitted_with = {
        **_pca_inputs(config, scaler_uri),
        "explained_variance": curve[model.getK() - 1],
        "curve": curve,
        "accuracy_curve": {str(k): a for k, a in accuracy.items()},
        "k_choice": choice,
        "accuracy_curve_on": curve_on,
    }
    return models.save(model, "pca_features", fitted_with)
