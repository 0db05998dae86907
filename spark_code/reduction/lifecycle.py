"""Model lifecycle: a saved model version with what it was fitted with, the reuse-or-refit decision, PCA drift."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame

from spark_code.reduction import scaler_pca
from spark_code.storage.versions import VERSION_PREFIX, version_name

# The sidecar beside each saved model version that records what it was fitted with (one name per model).
FITTED_WITH = {
    "scaled_features": "scaler.json",
    "pca_features": "pca.json",
    "fruit_classifier": "fitted_with.json",
}


@dataclass(frozen=True)
class SavedModel:
    """A committed model version: the loaded model, its URI and what it was fitted with (its sidecar JSON)."""

    model: Any
    uri: str
    fitted_with: dict[str, Any]

    @property
    def version(self) -> str:
        """The version's folder name (`v-<time>-<id>`), the same wherever the output is copied or moved."""
        return version_name(self.uri)


@dataclass(frozen=True)
class Verdict:
    """Whether to refit, and why (for logs and metadata)."""

    refit: bool
    reason: str


def portable(value: Any) -> Any:
    """`value` with every model/table version URI replaced by its version name, recursively, so that what a
    model was fitted with compares equal after the output folder is copied or moved."""
    if isinstance(value, str) and f"/{VERSION_PREFIX}" in value:
        return version_name(value)
    if isinstance(value, Mapping):
        return {key: portable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [portable(item) for item in value]
    return value


def decide(
    saved: SavedModel | None,
    wanted: Mapping[str, Any],
    *,
    refit: bool = False,
    drift: float | None = None,
    max_drift: float | None = None,
    refit_on_drift: bool = False,
) -> Verdict:
    """Reuse the saved model, or refit: refit when asked, when none is saved, when any `wanted` input differs
    from what it was fitted with (versions compared by name), or, with `refit_on_drift`, when `drift` passes
    `max_drift`. Pure: no Spark, no storage."""
    if refit:
        return Verdict(True, "refit requested")
    if saved is None:
        return Verdict(True, "no saved model")
    changed = sorted(key for key in wanted if portable(saved.fitted_with.get(key)) != portable(wanted[key]))
    if changed:
        return Verdict(True, f"inputs changed: {', '.join(changed)}")
    if refit_on_drift and drift is not None and max_drift is not None and drift > max_drift:
        return Verdict(True, f"drift {drift} > {max_drift}")
    return Verdict(False, "inputs unchanged")


MIN_DRIFT_ROWS = 100  # fewer new rows than this say too little about drift: the saved PCA projects them


def drift(saved: SavedModel, new_rows: DataFrame | None) -> float | None:
    """How much less of the new rows' variance the saved PCA explains than of the rows it was fitted on (None
    when there are fewer than MIN_DRIFT_ROWS new rows)."""
    if new_rows is None or new_rows.count() < MIN_DRIFT_ROWS:
        return None
    return round(saved.fitted_with["explained_variance"] - scaler_pca.explained_share(saved.model, new_rows), 4)


def decide_with_drift(
    saved: SavedModel | None,
    wanted: Mapping[str, Any],
    new_rows: Callable[[SavedModel], DataFrame | None],
    *,
    refit: bool,
    max_drift: float,
    refit_on_drift: bool,
) -> tuple[Verdict, float | None]:
    """`decide` for a PCA, once: drift is measured on `new_rows(saved)` (the rows the saved model has not
    projected) only when the saved model is otherwise still valid; returns (verdict, drift or None)."""
    verdict = decide(saved, wanted, refit=refit)
    if verdict.refit:  # asked, or settings or scaler changed: the saved PCA neither projects nor measures drift
        return verdict, None
    measured = drift(saved, new_rows(saved))
    return decide(saved, wanted, drift=measured, max_drift=max_drift, refit_on_drift=refit_on_drift), measured
