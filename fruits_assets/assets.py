"""The asset graph: raw_images → cnn_features (+ quarantined_images) per ingest batch → scaled → pca_features."""

import json
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
from fruits_assets.partitions import ingest_batches
from fruits_assets.progress import SparkProgress
from fruits_assets.resources import CnnResource, ImageSource, ModelStore, TableStore
from spark_code import batches, reduce
from spark_code.featurize import featurize_listing
from spark_code.images import list_root, require_images

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
    """
    key = batches.check_key(context.partition_key)
    found = list_root(pyspark.spark_session, image_source.root)
    listing = found.frame.cache()
    listed = listing.count()
    require_images(listed, image_source.root)
    before = None if config.full_refresh else tables.current("raw_images", without=key)
    redo = None if before is None else batches.stale(before, tables.rows("cnn_features", without=key), cnn.model_key())
    batch = batches.plan(listing, before, key, datetime.now(timezone.utc), redo).cache()
    changes = batches.tally(batch)
    taken = batch.filter(F.col(batches.CHANGE) != batches.DELETED)
    per_class = {row["label"]: row["count"] for row in taken.groupBy("label").count().collect()}
    metadata = {
        "batch": key,
        "image_count": changes[batches.NEW] + changes[batches.CHANGED],
        **changes,
        **found.counts(),  # files_found = listed + skipped (hidden files, OS clutter, links to what is listed)
        "class_count": len([label for label in per_class if label is not None]),
        "root": image_source.root,
        "per_class": class_table(per_class),
    }
    context.log.info("batch %s of %s: %s", key, image_source.root, metadata)
    listing.unpersist()
    return Output(batch, metadata=metadata)


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


SCALER_JSON = "scaler.json"  # what the saved scaler was fitted on


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
) -> Output[DataFrame]:
    """Features of every batch (current rows) standardised by a Spark ML StandardScaler saved with the asset."""
    cnn_features, cnn_model = current_features(tables)
    saved = None if config.refit else models.latest(StandardScalerModel, "scaled_features", SCALER_JSON)
    if saved is not None and json.loads(saved[2] or "{}").get("cnn_model") != cnn_model:
        saved = None  # fitted on features of other CNN settings
    if saved is None:
        model = reduce.fit_scaler(cnn_features, "features", "scaled_features")
        model_uri = models.save(model, "scaled_features", extras={SCALER_JSON: json.dumps({"cnn_model": cnn_model})})
    else:
        model, model_uri, _ = saved
    context.log.info("scaler %s (%s)", model_uri, "refit" if saved is None else "reused")
    scaled = reduce.scale(model, cnn_features).select("path", "label", "scaled_features")
    metadata = {"model_uri": MetadataValue.path(model_uri), "refit": saved is None}
    return Output(scaled, metadata=metadata)


class PcaConfig(Config):
    """Either a fixed number of components `k`, or the share of variance to keep; and the refit policy."""

    k: int | None = Field(default=None, ge=1, description="Fixed number of components (overrides the target).")
    variance_target: float = Field(default=0.95, gt=0.0, le=1.0, description="Cumulative explained variance.")
    refit: bool = Field(default=False, description="Fit a new PCA even if the saved one still fits (daily schedule).")
    max_drift: float = Field(
        default=0.03, ge=0.0, le=1.0, description="Refit when the saved basis explains this much less variance now."
    )


def _saved_pca(config: PcaConfig, models: ModelStore, scaler_uri: str):
    """The saved PCA, if it was fitted with the same k/target after the current scaler; else None."""
    saved = None if config.refit else models.latest(PCAModel, "pca_features", "pca.json")
    if saved is None:
        return None
    model, uri, extra = saved
    fitted_with = json.loads(extra or "{}")
    wanted = {"k": config.k, "variance_target": config.variance_target, "scaler": scaler_uri}
    return (model, uri, fitted_with) if {key: fitted_with.get(key) for key in wanted} == wanted else None


@asset(group_name=GROUP, kinds={"spark", "parquet"})
def pca_features(
    context: AssetExecutionContext,
    config: PcaConfig,
    scaled_features: DataFrame,
    models: ModelStore,
    pyspark_step_launcher: ResourceParam[Any],
) -> Output[DataFrame]:
    """PCA projection (path, label, pca_features, pca_model) with k fixed or chosen from one fit to reach the target.

    The saved PCA projects new images unless `refit` is set, the scaler changed, or the data drifted: the share of
    variance the saved basis explains fell by more than `max_drift` since it was fitted.
    """
    scaler_uri = models.latest_uri("scaled_features")
    saved = _saved_pca(config, models, scaler_uri)
    drift = None
    if saved is not None:
        drift = round(saved[2]["explained_variance"] - reduce.explained_share(saved[0], scaled_features), 4)
    refit = saved is None or drift > config.max_drift
    if refit:
        model, curve, model_uri = _fit_pca(config, scaled_features, models, scaler_uri)
    else:
        model, model_uri, curve = saved[0], saved[1], saved[2]["curve"]
    k = model.getK()
    context.log.info("PCA %s: k=%d, %s (drift %s)", model_uri, k, "refit" if refit else "reused", drift)
    projected = reduce.project(model, scaled_features).select("path", "label", "pca_features")
    projected = projected.withColumn("pca_model", reduce.version_literal(model_uri))
    metadata = {
        "k": k,
        "explained_variance": float(curve[k - 1]),
        "variance_target": config.variance_target if config.k is None else None,
        "input_dim": len(curve),
        "refit": refit,
        "drift": drift,
        "cumulative_variance": MetadataValue.md(variance_markdown(curve, k)),
        "variance_plot": MetadataValue.md(plots.variance_plot(curve, k, None if config.k else config.variance_target)),
        "pca_scatter": MetadataValue.md(plots.scatter_plot(*reduce.first_two(projected, "pca_features"))),
        "model_uri": MetadataValue.path(model_uri),
    }
    return Output(projected, metadata={key: value for key, value in metadata.items() if value is not None})


def _fit_pca(config: PcaConfig, scaled_features: DataFrame, models: ModelStore, scaler_uri: str):
    """Fit the PCA once (all components), keep k, save it with what it was fitted with; (model, curve, uri)."""
    estimator = reduce.VariancePCA(
        inputCol="scaled_features",
        outputCol="pca_features",
        k=config.k or 0,
        varianceTarget=config.variance_target,
    )
    model = estimator.fit(scaled_features)
    curve = reduce.variance_curve(estimator.fullExplainedVariance)
    fitted_with = {
        "k": config.k,
        "variance_target": config.variance_target,
        "scaler": scaler_uri,
        "explained_variance": curve[model.getK() - 1],
        "curve": curve,
    }
    uri = models.save(model, "pca_features", extras={"pca.json": json.dumps(fitted_with)})
    return model, curve, uri
