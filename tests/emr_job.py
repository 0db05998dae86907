"""A job of two steps through the EMR step launcher and one local step; reconstructed by the simulated primary node."""

import os
import socket

from dagster import In, Nothing, Output, in_process_executor, job, op

from fruits_assets.deploy.emr.launcher import STEP_LAUNCHER_KEY, EmrStepLauncher
from fruits_assets.deploy.emr.settings import EmrSettings


@op(required_resource_keys={STEP_LAUNCHER_KEY})
def where_am_i(context) -> Output:
    """Runs remotely: reports the process that ran it and whether the code came from the job package."""
    import fruits_assets

    context.log.info("remote step running in pid %s", os.getpid())
    facts = {"pid": os.getpid(), "host": socket.gethostname(), "package": fruits_assets.__file__}
    return Output(facts, metadata=facts)  # the metadata travels back in the step's events


@op(required_resource_keys={STEP_LAUNCHER_KEY}, ins={"start": In(Nothing)})
def and_then(context) -> Output:
    """Runs remotely after `where_am_i`, in the same EMR step (one batch): reports its process too."""
    return Output(os.getpid(), metadata={"pid": os.getpid()})


@op(ins={"start": In(Nothing)})
def after(context) -> None:
    """A local step after the remote one (no launcher)."""


def launcher() -> EmrStepLauncher:
    """The project's launcher resource, configured from the env vars the test sets (as on a real cluster)."""
    emr = EmrSettings(
        cluster_id=os.environ["FRUITS_EMR_CLUSTER_ID"],
        region=os.environ["FRUITS_EMR_REGION"],
        staging_bucket=os.environ["FRUITS_EMR_STAGING_BUCKET"],
        staging_prefix=os.environ["FRUITS_EMR_STAGING_PREFIX"],
        output_uri=os.environ["FRUITS_OUTPUT_URI"],
        image_root=os.environ["FRUITS_IMAGE_ROOT"],
        poll_seconds=0.1,
    )
    return EmrStepLauncher(emr=emr, step_env={"FRUITS_OUTPUT_URI": os.environ["FRUITS_OUTPUT_URI"]})


@job(resource_defs={STEP_LAUNCHER_KEY: launcher()}, executor_def=in_process_executor)
def emr_probe():
    """where_am_i then and_then on the 'cluster' (one EMR step), then `after` locally."""
    after(and_then(where_am_i()))
