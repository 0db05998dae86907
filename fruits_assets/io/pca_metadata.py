"""What the UI shows of `pca_features`: k, the variance curve and its plots, drift, a scatter of the projected rows."""

from __future__ import annotations

from dagster import MetadataValue
from pyspark.ml.feature import PCAModel
from pyspark.sql import DataFrame

from fruits_assets.io import plots
from fruits_assets.io.metadata import table, variance_markdown
from spark_code.reduction import scaler_pca
from spark_code.reduction.lifecycle import SavedModel


def pca_metadata(
    saved: SavedModel,
    variance_target: float | None,
    drift: tuple[float | None, float],
    refit: bool,
    projected: DataFrame | None,
) -> dict:
    """What the UI shows of a PCA run: k, the variance curve and its plots (against `variance_target`, None when k
    is fixed), the drift measured and its bound, the rows projected."""
    model, fitted_with = saved.model, saved.fitted_with
    measured, max_drift = drift
    refit_due = measured is not None and measured > max_drift
    curve, accuracy = fitted_with["curve"], {int(k): a for k, a in fitted_with.get("accuracy_curve", {}).items()}
    k = model.getK()
    metadata = {
        "k": k,
        "explained_variance": float(curve[k - 1]),
        "variance_target": variance_target,
        "k_choice": fitted_with.get("k_choice"),
        "accuracy_curve_on": fitted_with.get("accuracy_curve_on"),
        "input_dim": len(curve),
        "bytes_per_photo_vector": 4 * k,
        "refit": refit,
        "drift": measured,
        "max_drift": max_drift,
        "refit_due": refit_due and not refit,
        "cumulative_variance": MetadataValue.md(variance_markdown(curve, k)),
        "variance_plot": MetadataValue.md(plots.variance_plot(curve, k, variance_target)),
        **accuracy_metadata(accuracy, k),
        **scatter(model, projected),
        "model_uri": MetadataValue.path(saved.uri),
    }
    return {key: value for key, value in metadata.items() if value is not None}


def scatter(model: PCAModel, rows: DataFrame | None) -> dict:
    """The first two components of (a sample of) the rows projected in this run, as a plot; {} if none. The sample
    is drawn from the scaled rows and only it is projected."""
    if rows is None:
        return {}
    head = scaler_pca.Projection.first(model, min(2, model.getK()))
    projected = scaler_pca.first_two(
        rows, "scaled_features", project=lambda rows: scaler_pca.transform_arrays(head, rows)
    )
    return {"pca_scatter": MetadataValue.md(plots.scatter_plot(*projected))}


def accuracy_metadata(accuracy: dict[int, float], k: int) -> dict:
    if not accuracy:
        return {}
    records = [{"k": key, "accuracy": round(value, 4)} for key, value in sorted(accuracy.items())]
    return {
        "accuracy_by_k": table(records, [("k", "int"), ("accuracy", "float")]),
        "accuracy_plot": MetadataValue.md(plots.accuracy_plot(accuracy, k)),
    }
