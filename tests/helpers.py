"""Helpers the test modules share: materializing the feature graph, reading its metadata, a free port."""

import socket

from fruits_assets.cli.materialize import materialize_batch
from fruits_assets.defs import FEATURE_ASSETS, FEATURE_CHECKS


def materialize_features(resources: dict, instance=None, **kwargs):
    """One new ingest batch through the four feature assets and their checks (kwargs go to materialize_batch)."""
    return materialize_batch([*FEATURE_ASSETS, *FEATURE_CHECKS], resources, instance, **kwargs)


def metadata_of(result, asset: str) -> dict:
    """The plain metadata values of `asset`'s (first) materialization in an execution result."""
    return {k: v.value for k, v in result.asset_materializations_for_node(asset)[0].metadata.items()}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def table(spark, output: str, name: str):
    """The current rows of table `name` of an output, as Spark reads a Delta table."""
    from spark_code.storage import tables

    return tables.read(spark, f"{output}/{name}")  # output: a folder (str or Path) or a URI
