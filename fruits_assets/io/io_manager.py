"""A Delta Lake IO manager for Spark DataFrames: every materialization is one commit to the asset's table."""

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

from spark_code.storage import lake, run_lock, tables, uris, versions

UNCHANGED = None  # an asset's output value meaning "my table is still current": recorded, not rewritten


class DeltaIOManager(ConfigurableIOManager):
    """Stores each asset as a Delta table at `<base_uri>/<asset>` whose newest version holds its current rows.

    An output is a `tables.Update` (one commit: rows upserted and paths removed, e.g. an ingest batch, or the
    changes a derived table takes from its source) or a DataFrame (the table's rows replaced). Every
    materialization records the table's version and the rows its commit added and removed.
    """

    base_uri: str = Field(description="Local folder or s3:// URI holding the tables; env FRUITS_OUTPUT_URI.")
    pyspark: ResourceDependency[PySparkResource]
    _lock: run_lock.RunLock | run_lock.S3RunLock | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        versions.check_writable(self.base_uri)  # a read-only output fails the run before any listing or CNN work
        lake.refuse_old_layout(self.base_uri)  # tables written before Delta Lake: refused, naming what to run
        # One run at a time per output: a second run (the sensor's and a manual one) fails here, before any work.
        # It is also what makes Delta's commits safe on S3 (one writer at a time, as its S3 log store requires).
        self._lock = run_lock.acquire(self.base_uri, context.run_id or f"pid-{os.getpid()}")

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._lock is not None:
            self._lock.release()

    def uri(self, context: InputContext | OutputContext) -> str:
        """The asset's table."""
        return f"{uris.qualify(self.base_uri)}/{'/'.join(context.asset_key.path)}"

    def handle_output(self, context: OutputContext, obj: DataFrame | tables.Update | None) -> None:
        uri = self.uri(context)
        if obj is UNCHANGED:  # nothing changed: the table's newest version stands, as it is
            version = lake.version(uri)
            context.add_output_metadata({"uri": MetadataValue.path(uri), "table_version": version, "rewritten": False})
            return
        update = obj if isinstance(obj, tables.Update) else tables.Update(obj, replace=True)
        commit = tables.commit(uri, update, lambda: self.pyspark.spark_session)  # Spark for a large merge
        context.add_output_metadata(
            {
                "uri": MetadataValue.path(uri),
                "table_version": commit.version,
                "rows_added": commit.rows_added,
                "rows_removed": commit.rows_removed,
                "row_count": lake.rows(uri),
            }
        )

    def load_input(self, context: InputContext) -> DataFrame:
        return tables.read(self.pyspark.spark_session, self.uri(context))
