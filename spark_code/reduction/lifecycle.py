"""Model lifecycle: a saved model version with what it was fitted with, and the pure reuse-or-refit decision."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from spark_code.storage import VERSION_PREFIX, version_name

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
