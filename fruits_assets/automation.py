"""Growth: the asset job, a sensor that notices new, changed or deleted photos, and the daily refit schedule."""

from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunConfig,
    RunRequest,
    ScheduleDefinition,
    SensorEvaluationContext,
    SensorResult,
    define_asset_job,
    sensor,
)

from fruits_assets.assets import PcaConfig, ScalerConfig
from fruits_assets.resources import ImageSource
from spark_code import snapshot

materialize_all = define_asset_job(
    "materialize_all", selection=AssetSelection.all(), description="Features, PCA and the fruit classifier."
)

daily_refit = ScheduleDefinition(
    name="daily_refit",
    job=materialize_all,
    cron_schedule="0 3 * * *",
    execution_timezone="Europe/Paris",
    run_config=RunConfig(ops={"scaled_features": ScalerConfig(refit=True), "pca_features": PcaConfig(refit=True)}),
    default_status=DefaultScheduleStatus.STOPPED,
    description="Every night: featurize what is new, then refit the scaler and the PCA on all current features.",
)


@sensor(
    job=materialize_all,
    minimum_interval_seconds=300,
    default_status=DefaultSensorStatus.STOPPED,
    description="Lists the image root (names, sizes, mtimes; no contents) and runs the job when photos changed.",
)
def new_images(context: SensorEvaluationContext, image_source: ImageSource) -> SensorResult:
    """One run per distinct set of settled photos; files still being written wait for a later tick."""
    state = snapshot.State.decode(context.cursor)
    state, changes = snapshot.advance(state, snapshot.list_root(image_source.root), image_source.settle_seconds)
    counts = changes.counts()
    context.log.info("image root %s: %s", image_source.root, counts)
    if not changes:
        reason = f"no settled change ({counts['deferred']} file(s) still being written)"
        return SensorResult(skip_reason=reason, cursor=state.encode())
    tags = {f"fruits/{kind}": str(n) for kind, n in counts.items()}
    return SensorResult(run_requests=[RunRequest(run_key=snapshot.digest(state), tags=tags)], cursor=state.encode())
