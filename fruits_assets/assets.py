"""The asset graph: raw_images → cnn_features (+ quarantined_images) → scaled_features → pca_features."""

import time

from dagster import AssetExecutionContext, AssetOut, Config, MetadataValue, Output, asset, multi_asset
from dagster_pyspark import PySparkResource
from pydantic import Field
from pyspark.sql import DataFrame

from fruits_assets import plots
from fruits_assets.metadata import class_table, variance_markdown
from fruits_assets.resources import CnnResource, ImageSource, ModelStore
from spark_code import reduce
from spark_code.featurize import featurize_listing
from spark_code.images import list_images, require_images

GROUP = "fruits"


@asset(group_name=GROUP, kinds={"spark", "parquet"})
def raw_images(pyspark: PySparkResource, image_source: ImageSource) -> Output[DataFrame]:
    """Every image file under the image root: path, label (class folder), length, modification_time."""
    listing = list_images(pyspark.spark_session, image_source.root).cache()
    per_class = {row["label"]: row["count"] for row in listing.groupBy("label").count().collect()}
    require_images(sum(per_class.values()), image_source.root)
    metadata = {
        "image_count": sum(per_class.values()),
        "class_count": len([label for label in per_class if label is not None]),
        "root": image_source.root,
        "per_class": class_table(per_class),
    }
    return Output(listing, metadata=metadata)


@multi_asset(
    group_name=GROUP,
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
):
    """MobileNetV2 (ImageNet, no top, avg-pooled) on every image, decoded and inferred exactly once."""
    started = time.perf_counter()
    run = featurize_listing(pyspark.spark_session, raw_images, image_source.root, cnn.featurizer())
    featurized, quarantined = run.features.count(), run.quarantined.count()
    counts = {
        "raw": raw_images.count(),
        "featurized": featurized,
        "quarantined": quarantined,
        **run.counters.values(),
        **run.counters.seconds(),
    }
    counts["seconds"] = round(time.perf_counter() - started, 2)
    context.log.info("featurization: %s", counts)
    yield Output(
        run.features,
        "cnn_features",
        metadata={**counts, "batch_size": cnn.batch_size, "image_size": cnn.image_size},
    )
    yield Output(run.quarantined, "quarantined_images", metadata={"quarantined": quarantined})
    run.release()


@asset(group_name=GROUP, kinds={"spark", "parquet"})
def scaled_features(cnn_features: DataFrame, models: ModelStore) -> Output[DataFrame]:
    """Features standardised (zero mean, unit variance) by a Spark ML StandardScaler saved with the asset."""
    model = reduce.fit_scaler(cnn_features, "features", "scaled_features")
    model_uri = models.save(model, "scaled_features")
    return Output(reduce.scale(model, cnn_features), metadata={"model_uri": MetadataValue.path(model_uri)})


class PcaConfig(Config):
    """Either a fixed number of components `k`, or the share of variance to keep."""

    k: int | None = Field(default=None, ge=1, description="Fixed number of components (overrides the target).")
    variance_target: float = Field(default=0.95, gt=0.0, le=1.0, description="Cumulative explained variance.")


@asset(group_name=GROUP, kinds={"spark", "parquet"})
def pca_features(config: PcaConfig, scaled_features: DataFrame, models: ModelStore) -> Output[DataFrame]:
    """PCA projection (path, label, pca_features) with k fixed or chosen from one fit to reach the target."""
    estimator = reduce.VariancePCA(
        inputCol="scaled_features",
        outputCol="pca_features",
        k=config.k or 0,
        varianceTarget=config.variance_target,
    )
    model = estimator.fit(scaled_features)
    curve = reduce.variance_curve(estimator.fullExplainedVariance)
    k = model.getK()
    metadata = {
        "k": k,
        "explained_variance": float(curve[k - 1]),
        "variance_target": config.variance_target if config.k is None else None,
        "input_dim": len(scaled_features.first()["scaled_features"]),
        "cumulative_variance": MetadataValue.md(variance_markdown(curve, k)),
        "variance_plot": MetadataValue.md(plots.variance_plot(curve, k, None if config.k else config.variance_target)),
        "model_uri": MetadataValue.path(models.save(model, "pca_features")),
    }
    projected = reduce.project(model, scaled_features).select("path", "label", "pca_features")
    metadata["pca_scatter"] = MetadataValue.md(plots.scatter_plot(*reduce.first_two(projected, "pca_features")))
    return Output(projected, metadata={key: value for key, value in metadata.items() if value is not None})
