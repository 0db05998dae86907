"""The training photos featurized once each: a listing of the training root split against the saved training
table (rows still valid are kept, new, changed or other-CNN photos featurized), one CNN pass."""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_code.featurize.triage import Featurized, featurize_listing
from spark_code.featurize.udf import CnnFeaturizer
from spark_code.ingest import batches
from spark_code.ingest.images import list_images, require_images


@dataclass
class TrainingFeaturization:
    """The training root listed (`listed` files), the saved rows kept (`kept`, None without a saved table) and the
    CNN pass over the rest (`run.run_pass`)."""

    listed: int
    kept: DataFrame | None
    todo: DataFrame
    previous_rows: int | None
    run: Featurized
    model_key: str

    @classmethod
    def start(
        cls, spark: SparkSession, root: str, previous: DataFrame | None, featurizer: CnnFeaturizer, model_key: str
    ) -> TrainingFeaturization:
        """List `root` (an error names it when it holds no photo) and split it against the `previous` table."""
        listing = list_images(spark, root).cache()
        listed = listing.count()
        require_images(listed, root)
        kept, todo = batches.reusable(previous, listing, model_key)
        run = featurize_listing(spark, todo, root, featurizer)
        return cls(listed, kept, todo, None if previous is None else previous.count(), run, model_key)

    def reused(self) -> int:
        """Saved rows kept as they are."""
        return 0 if self.kept is None else self.kept.count()

    def unchanged(self, featurized: int) -> bool:
        """Whether the saved table already holds every row: nothing featurized, every saved row kept."""
        return self.previous_rows is not None and featurized == 0 and self.reused() == self.previous_rows

    def rows(self) -> DataFrame:
        """The table's rows: the kept ones and the new features, each with its CNN settings (`cnn_model`)."""
        new_rows = self.run.features.withColumn(batches.MODEL_COLUMN, F.lit(self.model_key))
        return new_rows if self.kept is None else self.kept.select(*new_rows.columns).unionByName(new_rows)
