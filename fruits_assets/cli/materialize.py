"""One ingest batch end to end: add it as a partition, then materialize every asset and check for it."""

import argparse
import functools
import logging
import os
import sys
import threading
import time

from dagster import DagsterInstance, DagsterRunStatus, Definitions, define_asset_job, materialize

from fruits_assets.cli.home import dagster_home, instance_at, ui_command
from fruits_assets.defs.partitions import ingest_batches
from fruits_assets.io import console, progress
from spark_code import unchanged
from spark_code.ingest import batches
from spark_code.storage import lake

logger = logging.getLogger(__name__)


JOB_NAME = "__ephemeral_asset_job__"  # the name `dagster.materialize` gives its runs


def materialize_batch(assets, resources: dict, instance=None, key: str | None = None, loggers=None, **kwargs):
    """Add ingest batch `key` (default: a new time-stamped key) to `instance` and materialize `assets` for it.

    Unpartitioned assets in `assets` run in the same run over every batch. `loggers` replaces Dagster's console
    logger (see `console.loggers`). Other keyword arguments go to `dagster.materialize` (run_config,
    raise_on_error, selection).
    """
    instance = instance or DagsterInstance.ephemeral()
    key = batches.check_key(key or batches.new_key())
    instance.add_dynamic_partitions(ingest_batches.name, [key])
    if loggers is None:
        return materialize(assets, resources=resources, instance=instance, partition_key=key, **kwargs)
    job = define_asset_job(JOB_NAME, selection=kwargs.pop("selection", None))
    resolved = Definitions(jobs=[job], assets=assets, resources=resources).resolve_job_def(JOB_NAME)
    run_config = {**(kwargs.pop("run_config", None) or {}), "loggers": {name: {} for name in loggers}}  # use them
    return resolved.with_logger_defs(loggers).execute_in_process(
        run_config=run_config, instance=instance, partition_key=key, **kwargs
    )


def _add_batch(instance, key: str) -> str:
    instance.add_dynamic_partitions(ingest_batches.name, [key])
    return key


def _deployment_ready(settings, cluster: bool) -> bool:
    """Whether the emr deployment's checks pass (the cluster's too when `cluster`); says what to fix when not.
    Always true for a local run."""
    if settings.deployment != "emr":
        return True
    from fruits_assets.deploy import emr_job as job
    from fruits_assets.deploy.emr.settings import DeploymentError

    try:
        job.check(settings, cluster=cluster)
    except DeploymentError as error:
        logger.error("emr: %s", error)
        return False
    return True


def _run_locally(settings, instance, key: str, args: argparse.Namespace):
    """The main command's run on this machine: (execution result, output folder)."""
    from fruits_assets.defs import ASSETS, CHECKS
    from fruits_assets.deploy.deployments import resources_for

    resources = resources_for(settings)
    _start_spark(resources["pyspark"].spark_config, resources["cnn"], resources["io_manager"].base_uri)
    result = materialize_batch(
        [*ASSETS, *CHECKS],
        resources,
        instance,
        key,
        console.loggers(frozenset(a.op.name for a in ASSETS)),
        run_config=_run_config(args),
        raise_on_error=False,
        tags={progress.SECONDS_TAG: str(args.progress_seconds)},
    )
    return result, resources["io_manager"].base_uri


def _start_spark(spark_config: dict, cnn, output: str) -> None:
    """Start the local Spark session in the background, so the JVM starts while Dagster builds the job (about 2 s);
    the pyspark resource then gets this session (`getOrCreate` waits for it under the builder's lock). Then the
    Python workers build the CNN (`model_cache.warm_workers`) and the JVM loads the tables' Delta snapshots
    (`tables.warm`) while the driver lists and plans the batch."""
    from dagster_pyspark.resources import spark_session_from_config

    from spark_code.featurize.model_cache import warm_workers_in_background
    from spark_code.storage import tables

    start = functools.partial(spark_session_from_config, spark_config)
    warm_workers_in_background(start, cnn.cnn_engine(), cnn.weights_path)
    uris = [lake.table_of(output, name) for name in unchanged.SOURCES]  # the tables Spark commits to
    threading.Thread(target=tables.warm_in_background, args=(start, uris), name="delta-warm", daemon=True).start()


def _nothing_new(settings, instance, args: argparse.Namespace) -> str | None:
    """Why this run has work to do; None (after saying so) when neither root has anything new, changed or deleted
    and every table and model is current: then no Spark job runs and no model is loaded."""
    if args.full_refresh or args.refit or args.batch:
        return "asked for by --full-refresh, --refit or --batch"
    records = instance.get_run_records(limit=1)
    if not records or records[0].dagster_run.status != DagsterRunStatus.SUCCESS:
        return "the last run of this instance did not succeed"
    reason = unchanged.pending_work(_expected(settings))
    if reason is None:
        logger.info(
            "nothing new in %s or %s since the last run: every asset is current (no Spark job, no model loaded)",
            settings.image_root,
            settings.training_root,
        )
    return reason


def _emr_selection(settings, args: argparse.Namespace) -> list[str] | None:
    """The assets an EMR run materializes: every one, less `training_features` while the training table is current
    (the classifier then reads the saved one), so the cluster runs only what changed; None: all."""
    from fruits_assets.defs import ASSETS

    expected = _expected(settings)
    if args.full_refresh or unchanged.training_changes(expected.training_root, expected.output, expected.model_key):
        return None
    names = [key.to_user_string() for asset in ASSETS for key in asset.keys]
    logger.debug("training photos unchanged: training_features is not run on the cluster")
    return [name for name in names if name != "training_features"]


def _expected(settings) -> unchanged.Expected:
    """What a local run would compare the saved tables and models with."""
    from fruits_assets.defs.classify import fitted_settings
    from fruits_assets.defs.reduction import PcaConfig
    from fruits_assets.deploy.deployments import resources_for

    resources, pca = resources_for(settings), PcaConfig()
    return unchanged.Expected(
        image_root=resources["image_source"].root,
        training_root=resources["training_source"].root,
        output=resources["io_manager"].base_uri,
        model_key=resources["cnn"].model_key(),
        classifier_settings=fitted_settings(resources["classifier"]),
        pca_settings={"k": pca.k, "variance_target": pca.variance_target, "accuracy_tolerance": pca.accuracy_tolerance},
    )


def _run_config(args: argparse.Namespace) -> dict:
    ops = {}
    if args.full_refresh:
        ops["raw_images"] = {"config": {"full_refresh": True}}
    if args.refit:
        ops.update({name: {"config": {"refit": True}} for name in ("scaled_features", "pca_features")})
    return {"ops": ops}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fruits_assets", description=main.__doc__)
    parser.add_argument("--batch", help="batch key (default: the UTC time, e.g. 20261125T013000.123Z)")
    parser.add_argument("--full-refresh", action="store_true", help="take every image into this batch again")
    parser.add_argument("--refit", action="store_true", help="refit the scaler and the PCA")
    parser.add_argument("--verbose", action="store_true", help="show Dagster, Spark and alembic detail on the terminal")
    parser.add_argument("--progress-seconds", type=float, default=10.0, help="seconds between progress lines (10)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python -m fruits_assets`: featurize what is new in FRUITS_IMAGE_ROOT as one batch, then everything else.

    The run is recorded in the Dagster instance of DAGSTER_HOME, by default the project's `.dagster/`, which
    `dagster dev` shows. The terminal gets one line per asset, progress and a summary; the rest goes to a log file.
    """
    args = _parser().parse_args(argv)
    home = dagster_home()
    os.environ["DAGSTER_HOME"] = str(home)  # the runs, batches and materializations go to this instance
    key = batches.check_key(args.batch or batches.new_key())
    log_path = home / "run-logs" / f"{key}.log"  # not logs/: Dagster rotates that folder (telemetry)
    started = time.monotonic()
    with console.terminal(log_path, args.verbose):
        logger.info("batch %s: every asset, recorded in %s; details in %s", key, home, log_path)
        from fruits_assets.deploy.settings import Settings

        settings = Settings.from_env()
        if not _deployment_ready(settings, cluster=False):
            return 2
        with instance_at(home) as instance:
            if (reason := _nothing_new(settings, instance, args)) is None:
                return 0
            logger.debug("a run is due: %s", reason)
            if settings.deployment == "emr":  # the Spark steps on the cluster: a job it can reconstruct
                from fruits_assets.deploy import emr_job as job

                if not _deployment_ready(settings, cluster=True):
                    return 2
                assets = _emr_selection(settings, args)
                result = job.launch(instance, _add_batch(instance, key), _run_config(args), assets=assets)
                output = settings.output_uri
            else:
                result, output = _run_locally(settings, instance, key, args)
        logger.info("done in %s", progress.duration(time.monotonic() - started))
        for line in console.summary(result, output, log_path, ui_command(home)):
            logger.info(line)
    failed, _ = console.failed_checks(result)  # a failed WARN check (drift) is reported, not a failure
    return 0 if result.success and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
