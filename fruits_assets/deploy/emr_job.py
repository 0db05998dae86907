"""The main command on EMR: a reconstructable job that carries the launching side's settings to every remote step."""

from __future__ import annotations

from dagster import (
    DagsterInstance,
    Definitions,
    JobDefinition,
    build_reconstructable_job,
    define_asset_job,
    execute_job,
    in_process_executor,
)

from fruits_assets.deploy.emr.preflight import preflight
from fruits_assets.deploy.emr.settings import EmrSettings
from fruits_assets.deploy.settings import Settings

JOB_NAME = "materialize_batch"  # the main command's job: one ingest batch, then every asset and check
PARTITION_TAG = "dagster/partition"


def step_job(with_console: bool = True, assets: list[str] | None = None) -> JobDefinition:
    """The main command's job bound to the resources of the FRUITS_* settings.

    Dagster calls this in the launching process and again in every step on the cluster (the step launcher pickles
    the reconstructable job); there the settings are the ones the run was launched with, which the launcher stages
    beside each step (`emr_step_main`), not those of the cluster's creation. `assets` selects some assets (and
    their checks); None: all.
    """
    from fruits_assets.defs import ASSETS, CHECKS
    from fruits_assets.deploy.deployments import resources_for
    from fruits_assets.io import console

    settings = Settings.from_env()
    job = define_asset_job(JOB_NAME, selection=assets)
    resolved = Definitions(
        jobs=[job],
        assets=ASSETS,
        asset_checks=CHECKS,
        resources=resources_for(settings),
        executor=in_process_executor,  # one step at a time, as the cluster runs them; no subprocess per step
    )
    job_def = resolved.resolve_job_def(JOB_NAME)
    if with_console:
        job_def = job_def.with_logger_defs(console.loggers(frozenset(a.op.name for a in ASSETS)))
    return job_def


def launch(
    instance: DagsterInstance,
    key: str,
    run_config: dict | None = None,
    tags: dict[str, str] | None = None,
    with_console: bool = True,
    assets: list[str] | None = None,
):
    """Run the main command's job for ingest batch `key` in `instance` (a persistent one: the project's), each Spark
    step through the EMR step launcher; `tags` as a sensor's run request gives them, `assets` a selection (default
    all). Returns the execution result (its run is in `instance`, as a local run's)."""
    run_config = run_config or {}
    kwargs = {"with_console": with_console, "assets": assets}
    recon = build_reconstructable_job(__name__, step_job.__name__, reconstructable_kwargs=kwargs)
    if with_console:
        run_config = {**run_config, "loggers": {"step_lines": {}}}
    return execute_job(recon, instance, run_config=run_config, tags={**(tags or {}), PARTITION_TAG: key})


def check(settings: Settings, cluster: bool = True) -> None:
    """The emr deployment's checks (endpoint, credentials, buckets, photos; the cluster and its Python unless
    `cluster` is False) before the run starts: a DeploymentError names what to fix, and nothing is staged or
    submitted. Without the cluster, a run that finds nothing new needs no live cluster."""
    preflight(EmrSettings.from_settings(settings), cluster=cluster)
