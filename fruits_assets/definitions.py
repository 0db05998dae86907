"""The project's Definitions: the assets, checks, jobs, sensor and schedule, bound to the deployment's resources."""

from dagster import Definitions, definitions, in_process_executor

from fruits_assets.defs import ASSETS, CHECKS
from fruits_assets.defs.automation import daily_refit, materialize_all, new_images, refit_models
from fruits_assets.deploy.deployments import resources_for


def build_defs(resources: dict | None = None) -> Definitions:
    """The project's Definitions; one Spark driver per run (in-process executor). Default resources: those of the
    deployment the settings name (fruits_assets.deploy.deployments.resources_for)."""
    return Definitions(
        assets=ASSETS,
        asset_checks=CHECKS,
        jobs=[materialize_all, refit_models],
        schedules=[daily_refit],
        sensors=[new_images],
        resources=resources_for() if resources is None else resources,
        executor=in_process_executor,
    )


@definitions
def defs() -> Definitions:
    """The code location (workspace.yaml): built when Dagster loads it, not when this module is imported."""
    return build_defs()
