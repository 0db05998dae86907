"""A Parquet IO manager for Spark DataFrames: every materialization, of a table or of a batch, is a new version."""

import os

from dagster import (
    ConfigurableIOManager,
    InitResourceContext,
    InputContext,
    MetadataValue,
    OutputContext,
    ResourceDependency,
)
from dagster_pyspark import PySparkResource
from pydantic import Field, PrivateAttr
from pyspark.sql import DataFrame

from spark_code.ingest import batches
from spark_code.storage import run_lock, versions

UNCHANGED = None  # an asset's output value meaning "my saved version is still current": recorded, not rewritten


class SparkParquetIOManager(ConfigurableIOManager):
    """Stores each asset at `<base_uri>/<asset>/v-<time>-<id>/`, each batch of a partitioned one at
    `<base_uri>/<asset>/<batch>/v-<time>-<id>/`; readers see only committed versions.

    A table derived batch by batch (`DerivedParts`: scaled, PCA) is stored like the batches, one part per batch,
    and only the parts it names are written. Loading batches or such a table gives the current rows: a path's
    newest batch wins, deleted paths are left out.
    """

    base_uri: str = Field(description="Local folder or s3:// URI holding the tables; env FRUITS_OUTPUT_URI.")
    keep_versions: int = Field(default=2, ge=1, description="Committed versions kept per asset.")
    pyspark: ResourceDependency[PySparkResource]
    _lock: run_lock.RunLock | run_lock.S3RunLock | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        versions.check_writable(self.base_uri)  # a read-only output fails the run before any listing or CNN work
        # One run at a time per output: a second run (the sensor's and a manual one) fails here, before any work.
        self._lock = run_lock.acquire(self.base_uri, context.run_id or f"pid-{os.getpid()}")

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._lock is not None:
            self._lock.release()

    @staticmethod
    def _name(context: InputContext | OutputContext) -> str:
        return "/".join(context.asset_key.path)

    def handle_output(self, context: OutputContext, obj: DataFrame | batches.DerivedParts | None) -> None:
        name = self._name(context)
        if isinstance(obj, batches.DerivedParts):
            self._write_parts(context, name, obj)
            return
        if context.has_asset_partitions:
            name = f"{name}/{batches.check_key(context.asset_partition_key)}"
        if obj is UNCHANGED:  # nothing changed: the newest committed version stands, as it is
            uri = versions.latest_uri(self.pyspark.spark_session, self.base_uri, name)
            context.add_output_metadata({"uri": MetadataValue.path(uri), "rewritten": False})
            return
        uri = versions.write_table(obj, self.base_uri, name, self.keep_versions)
        rows = obj.sparkSession.read.parquet(uri).count()
        context.add_output_metadata({"uri": MetadataValue.path(uri), "row_count": rows})

    def _write_parts(self, context: OutputContext, name: str, obj: batches.DerivedParts) -> None:
        """Write only the parts to (re)make, one version per batch, then the manifest naming every current part."""
        spark, rows = self.pyspark.spark_session, 0
        for key, part in sorted(obj.parts.items()):
            uri = versions.write_table(part, self.base_uri, f"{name}/{batches.check_key(key)}", self.keep_versions)
            rows += spark.read.parquet(uri).count()
        batches.write_manifest(spark, obj)
        uri = f"{versions.qualify(self.base_uri)}/{name}"
        context.add_output_metadata(
            {"uri": MetadataValue.path(uri), "parts_written": len(obj.parts), "rows_written": rows}
        )

    def load_input(self, context: InputContext) -> DataFrame:
        spark, name = self.pyspark.spark_session, self._name(context)
        if not context.has_asset_partitions and not versions.partition_uris(spark, self.base_uri, name):
            return versions.read_table(spark, self.base_uri, name)
        if not context.has_asset_partitions:  # a table derived batch by batch: its current rows
            return batches.read_current_rows(spark, self.base_uri, name)
        rows = batches.read_current_rows(spark, self.base_uri, name, context.asset_partition_keys)
        if rows is None:
            raise versions.TableNotFoundError(f"no committed batch of {name!r} among {context.asset_partition_keys}")
        return rows
