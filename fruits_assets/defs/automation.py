"""Growth: the asset jobs, a sensor that adds an ingest batch for new, changed or deleted photos, the daily refit."""

from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunConfig,
    RunRequest,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    define_asset_job,
    schedule,
    sensor,
)

from fruits_assets.defs.partitions import CHANGES_TAG, ingest_batches
from fruits_assets.defs.reduction import PcaConfig, ScalerConfig
from fruits_assets.io.resources import ImageSource, OutputLocation
from spark_code import unchanged
from spark_code.ingest import batches, s3_events, snapshot

materialize_all = define_asset_job(
    "materialize_all",
    selection=AssetSelection.all(),
    partitions_def=ingest_batches,
    description="One ingest batch featurized, then scaled features, PCA and the classifier over every batch.",
)

refit_models = define_asset_job(
    "refit_models",
    selection=AssetSelection.assets("scaled_features").downstream(),
    description="Scaled features, PCA and the classifier over every batch; no listing, no CNN.",
)


@schedule(
    job=refit_models,
    cron_schedule="0 3 * * *",
    execution_timezone="Europe/Paris",
    default_status=DefaultScheduleStatus.STOPPED,
    description="Every night: refit the scaler and the PCA on the features of every batch, project all images "
    "again; skipped (no run, no cluster step) when no batch came since the last fit.",
)
def daily_refit(context: ScheduleEvaluationContext, output: OutputLocation) -> RunRequest | SkipReason:
    """A refit run when a batch was committed since the scaler was fitted (read without Spark, local or S3)."""
    reason = unchanged.refit_due(output.base_uri)
    if reason is None:
        return SkipReason(f"nothing new in {output.base_uri} since the scaler and PCA were fitted: no refit")
    context.log.info("refit due: %s", reason)
    return RunRequest(
        run_config=RunConfig(ops={"scaled_features": ScalerConfig(refit=True), "pca_features": PcaConfig(refit=True)})
    )


@sensor(
    job=materialize_all,
    minimum_interval_seconds=300,
    default_status=DefaultSensorStatus.STOPPED,
    description="Lists the image root (names, sizes, mtimes; no contents), or drains its S3 event notifications "
    "from SQS; when photos changed, adds an ingest batch and runs the job for it.",
)
def new_images(context: SensorEvaluationContext, image_source: ImageSource) -> SensorResult:
    """One batch (partition) and run per distinct set of settled photos; files still being written wait."""
    before = snapshot.restore(context.cursor)
    handles: list[str] = []
    if image_source.events_queue:  # S3 event notifications: what changed, without listing the root
        events, handles = s3_events.drain(image_source.events_queue, image_source.root)
        state, changes = s3_events.apply(before, events)
    else:
        state, changes = snapshot.advance(before, snapshot.list_root(image_source.root), image_source.settle_seconds)
    cursor = _cursor(context.cursor, before, state, image_source)
    if handles:
        s3_events.acknowledge(image_source.events_queue, handles)  # only once the state they led to is stored
    counts = changes.counts()
    context.log.info("image root %s: %s", image_source.root, counts)
    if not changes:
        reason = f"no settled change ({counts['deferred']} file(s) still being written)"
        return SensorResult(skip_reason=reason, cursor=cursor)
    key = batches.new_key()
    tags = {f"fruits/{kind}": str(n) for kind, n in counts.items()}
    if image_source.state_uri is not None:  # the run ingests exactly these files: it lists nothing again
        tags[CHANGES_TAG] = snapshot.store_changes(changes, before, image_source.state_uri)
    request = RunRequest(run_key=snapshot.run_key(context.cursor, changes), partition_key=key, tags=tags)
    return SensorResult(
        run_requests=[request],
        dynamic_partitions_requests=[ingest_batches.build_add_request([key])],
        cursor=cursor,
    )


def _cursor(previous: str | None, before: snapshot.State, state: snapshot.State, image_source: ImageSource) -> str:
    """The next cursor: a pointer to the snapshot stored beside the tables (a few bytes, whatever the corpus size),
    written only when the state changed; inline in the cursor when no `state_uri` is set."""
    if image_source.state_uri is None:
        return state.encode()
    if previous and previous.startswith("{") and state == before:
        return previous
    return snapshot.store(state, image_source.state_uri)
