"""One ingest batch featurized: the raw table's net changes in; each batch table's rows, and the old rows they
replace, out as one commit per table."""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_code.featurize.triage import Featurized, featurize_listing
from spark_code.featurize.udf import CnnFeaturizer
from spark_code.ingest import batches
from spark_code.storage.tables import CHANGE, CHANGED, DELETED, NEW, Update, removed_paths, upserts


def change_counts(net: DataFrame) -> dict[str, int]:
    """How many paths of net changes are new, changed and deleted."""
    found = {row[CHANGE]: row["count"] for row in net.groupBy(CHANGE).count().collect()}
    return {kind: found.get(kind, 0) for kind in (NEW, CHANGED, DELETED)}


@dataclass
class BatchFeaturization:
    """The raw table's changes between two versions (`after`, `until`], featurized in one CNN pass (`run_pass`):
    the feature and quarantine rows, each keeping its raw row's batch, and the commits that bring a batch table
    from the version it took to `until`."""

    net: DataFrame
    owner: DataFrame  # path → batch of the rows the changes bring, broadcast to both tables' rows
    run: Featurized
    tally: dict[str, int]
    model_key: str
    versions: tuple[int, int]  # (after, until) of the raw table

    @classmethod
    def start(
        cls,
        spark: SparkSession,
        net: DataFrame,
        root: str,
        featurizer: CnnFeaturizer,
        model_key: str,
        versions: tuple[int, int],
    ) -> BatchFeaturization:
        """The featurization of the net changes `net` (cached by the caller) of the raw table's `versions`."""
        raw = upserts(net)
        run = featurize_listing(spark, raw, root, featurizer)
        owner = F.broadcast(raw.select("path", batches.BATCH))  # each row keeps its raw row's batch
        return cls(net, owner, run, change_counts(net), model_key, versions)

    def to_featurize(self) -> int:
        """Paths whose new rows are made: new and changed photos."""
        return self.tally[NEW] + self.tally[CHANGED]

    def to_remove(self) -> int:
        """Paths whose old rows go: changed and deleted photos."""
        return self.tally[CHANGED] + self.tally[DELETED]

    def _owned(self, rows: DataFrame) -> DataFrame:
        return rows.join(self.owner, "path")

    def features(self) -> DataFrame:
        """The feature rows, each with its CNN settings (`cnn_model`) and its batch."""
        return self._owned(self.run.features.withColumn(batches.MODEL_COLUMN, F.lit(self.model_key)))

    def quarantined(self) -> DataFrame:
        """The quarantine rows (after `run_pass`: only the sources that can hold rows), each with its batch."""
        return self._owned(self.run.quarantined)

    def update(self, rows: DataFrame, taken: int, key: str) -> Update:
        """The commit of `rows` to a batch table that took raw version `taken`: a plain append when it adds only
        photos, else a merge that removes the changed and deleted paths' rows (every touched path when the table
        already took some of these versions: nothing twice)."""
        after, until = self.versions
        removed = removed_paths(self.net) if taken == after else self.net.select("path")
        needs_merge = taken > after or self.to_remove() > 0
        return Update(rows, removed if needs_merge else None, source=(batches.LEDGER, until), recorded={"batch": key})

    def release(self) -> None:
        """Drop the cached CNN output and changes once both tables are written."""
        self.run.release()
        self.net.unpersist()
