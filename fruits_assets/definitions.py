"""The project's Definitions: the assets, checks, jobs, sensor and schedule, bound to the deployment's resources."""

from dagster import Definitions, definitions, in_process_executor

from fruits_assets.assets import cnn_features, pca_features, raw_images, scaled_features
from fruits_assets.automation import daily_refit, materialize_all, new_images, refit_models
from fruits_assets.checks import ALL_CHECKS
from fruits_assets.classifier_assets import VALIDATION_ASSETS, VALIDATION_CHECKS

FEATURE_ASSETS = [raw_images, cnn_features, scaled_features, pca_features]
ASSETS = [*FEATURE_ASSETS, *VALIDATION_ASSETS]
CHECKS = [*ALL_CHECKS, *VALIDATION_CHECKS]


def build_defs(resources: dict | None = None) -> Definitions:
    """The project's Definitions; one Spark driver per run (in-process executor). Default resources: those of the
    deployment the settings name (fruits_assets.deployments.resources_for)."""
    if resources is None:
        from fruits_assets.deployments import resources_for

        resources = resources_for()
    return Definitions(
        assets=ASSETS,
        asset_checks=CHECKS,
        jobs=[materialize_all, refit_models],
        schedules=[daily_refit],
        sensors=[new_images],
        resources=resources,
        executor=in_process_executor,
    )


@definitions
def defs() -> Definitions:
    """The code location (workspace.yaml): built when Dagster loads it, not when this module is imported."""
    return build_defs()
