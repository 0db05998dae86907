"""A Parquet IO manager for Spark DataFrames: each materialization is a new version published atomically."""

from dagster import ConfigurableIOManager, InputContext, MetadataValue, OutputContext, ResourceDependency
from dagster_pyspark import PySparkResource
from pydantic import Field
from pyspark.sql import DataFrame

from spark_code import io


class SparkParquetIOManager(ConfigurableIOManager):
    """Stores each asset at `<base_uri>/<asset>/v-<time>-<id>/`; readers see only committed versions."""

    base_uri: str = Field(description="Local folder or s3:// URI holding the tables; env FRUITS_OUTPUT_URI.")
    keep_versions: int = Field(default=2, ge=1, description="Committed versions kept per asset.")
    pyspark: ResourceDependency[PySparkResource]

    @staticmethod
    def _name(context: InputContext | OutputContext) -> str:
        return "/".join(context.asset_key.path)

    def handle_output(self, context: OutputContext, obj: DataFrame) -> None:
        uri = io.write_table(obj, self.base_uri, self._name(context), self.keep_versions)
        rows = obj.sparkSession.read.parquet(uri).count()
        context.add_output_metadata({"uri": MetadataValue.path(uri), "row_count": rows})

    def load_input(self, context: InputContext) -> DataFrame:
        return io.read_table(self.pyspark.spark_session, self.base_uri, self._name(context))
