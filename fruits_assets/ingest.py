"""One ingest batch end to end: add it as a partition, then materialize every asset and check for it."""

import argparse
import logging
import os
import sys

from dagster import DagsterInstance, materialize

from fruits_assets.partitions import ingest_batches
from spark_code import batches

logger = logging.getLogger(__name__)


def materialize_batch(assets, resources: dict, instance=None, key: str | None = None, **kwargs):
    """Add ingest batch `key` (default: a new time-stamped key) to `instance` and materialize `assets` for it.

    Unpartitioned assets in `assets` run in the same run over every batch. Other keyword arguments go to
    `dagster.materialize` (run_config, raise_on_error, selection).
    """
    instance = instance or DagsterInstance.ephemeral()
    key = batches.check_key(key or batches.new_key())
    instance.add_dynamic_partitions(ingest_batches.name, [key])
    return materialize(assets, resources=resources, instance=instance, partition_key=key, **kwargs)


def _run_config(args: argparse.Namespace) -> dict:
    ops = {}
    if args.full_refresh:
        ops["raw_images"] = {"config": {"full_refresh": True}}
    if args.refit:
        ops.update({name: {"config": {"refit": True}} for name in ("scaled_features", "pca_features")})
    return {"ops": ops}


def main(argv: list[str] | None = None) -> int:
    """`python -m fruits_assets`: featurize what is new in FRUITS_IMAGE_ROOT as one batch, then everything else."""
    parser = argparse.ArgumentParser(prog="python -m fruits_assets", description=main.__doc__)
    parser.add_argument("--batch", help="batch key (default: the UTC time, e.g. 20261125T013000.123Z)")
    parser.add_argument("--full-refresh", action="store_true", help="take every image into this batch again")
    parser.add_argument("--refit", action="store_true", help="refit the scaler and the PCA")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from fruits_assets.definitions import ASSETS, CHECKS, resources_for

    if os.environ.get("DAGSTER_HOME"):
        instance = DagsterInstance.get()  # the batch and the run show in `dagster dev` with the same DAGSTER_HOME
    else:
        logger.info("DAGSTER_HOME is not set: the run is not remembered by Dagster (the tables hold the batches)")
        instance = DagsterInstance.ephemeral()
    result = materialize_batch(
        [*ASSETS, *CHECKS], resources_for(), instance, args.batch, run_config=_run_config(args), raise_on_error=False
    )
    failed = [e.check_name for e in result.get_asset_check_evaluations() if not e.passed]
    logger.info("run %s: %s; failed checks: %s", result.run_id, "success" if result.success else "FAILED", failed)
    return 0 if result.success and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
