"""Delta Lake tables through Spark: each table's newest version holds its current rows; a batch is one commit
(rows upserted by path, changed and deleted paths removed); a derived table takes its source's changes since the
source version it last took (the change data feed), recorded in the same commit."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from spark_code.storage import files, ivy, lake
from spark_code.storage.ivy import DEFAULT_CACHE

logger = logging.getLogger(__name__)

DELTA_VERSION = "3.3.2"  # delta-spark for Spark 3.5 (pyspark 3.5.x); EMR 7 brings its own
DELTA_JARS = [f"io.delta:delta-spark_2.12:{DELTA_VERSION}", f"io.delta:delta-storage:{DELTA_VERSION}"]
KEY = lake.KEY  # the column that names a row: a photo
CHANGE = "change"
NEW, CHANGED, DELETED = "new", "changed", "deleted"
TABLE_PROPERTIES = lake.TABLE_PROPERTIES
USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"
JOB_GROUP = "spark.jobGroup.id"  # SparkContext.setJobGroup's local property
TXN_APP, TXN_VERSION = "spark.databricks.delta.write.txnAppId", "spark.databricks.delta.write.txnVersion"


class TableNotFoundError(LookupError):
    """A table has no commit yet."""


def jars(cache: Path = DEFAULT_CACHE) -> list[Path]:
    """The cached Delta Lake jars (delta-spark and delta-storage; antlr4 ships with pyspark)."""
    return ivy.cached(DELTA_JARS, cache, fix=__name__)


def fetch(cache: Path = DEFAULT_CACHE) -> list[Path]:
    """Resolve delta-spark with Spark's own Ivy into `cache`, once."""
    try:
        return jars(cache)
    except ivy.JarsMissingError:
        ivy.fetch(DELTA_JARS[0], cache)
    return jars(cache)


def session_conf() -> dict[str, str]:
    """Delta Lake in a Spark session whose classpath has its jars (EMR's `delta-defaults` puts them there)."""
    return {
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        # The log is replayed into 2 partitions, not 50: a few hundred commits' actions, read at every write.
        "spark.databricks.delta.snapshotPartitions": "2",
    }


def spark_conf(cache: Path = DEFAULT_CACHE) -> dict[str, str]:
    """Delta Lake for a Spark outside EMR: its cached jars on the driver's and executors' classpath, and
    `session_conf`."""
    classpath = os.pathsep.join(str(p) for p in jars(cache))
    return {"spark.driver.extraClassPath": classpath, "spark.executor.extraClassPath": classpath, **session_conf()}


@dataclass
class Update:
    """One commit to a table: `rows` upserted by path and the `removed` paths deleted (a merge), or, with
    `replace`, the table's rows replaced by `rows`. `source`: the source table's name and the version whose
    changes this update takes; `recorded`: what the commit records (the batch, the model)."""

    rows: DataFrame | pa.Table  # a Spark DataFrame, or an Arrow table the driver holds (written with delta-rs)
    removed: DataFrame | list[str] | None = None  # one column, path (a list of paths with Arrow rows)
    replace: bool = False
    source: tuple[str, int] | None = None
    recorded: dict = field(default_factory=dict)


def exists(uri: str) -> bool:
    """Whether a Delta table is at `uri`."""
    return lake.open_table(uri) is not None


def read(spark: SparkSession, uri: str, version: int | None = None) -> DataFrame:
    """The current rows of the table at `uri` (or those of `version`: time travel); a TableNotFoundError naming
    the table when it has none."""
    if not exists(uri):
        raise TableNotFoundError(f"no table at {uri!r}: materialize it first")
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(uri)


def warm(spark: SparkSession, uris: list[str]) -> None:
    """Build each existing table's newest snapshot and its transaction identifiers in this session's Delta log
    cache ahead of the run's first read or commit of it (three small jobs a table, ~0.7 s, which a small batch
    would otherwise wait for). A head start only: a failure (another Delta's internals) is logged, not raised."""
    jvm = spark._jvm
    for uri in uris:
        if not exists(uri):
            continue
        try:
            log = jvm.org.apache.spark.sql.delta.DeltaLog.forTable(spark._jsparkSession, uri)
            log.update(False, jvm.scala.Option.empty(), jvm.scala.Option.empty()).setTransactions()
        except Exception as error:  # py4j's errors, and the Delta of a cluster that has other internals
            logger.debug("could not warm the Delta snapshot of %s: %s", uri, error)
            return


def warm_in_background(get_spark, uris: list[str]) -> None:
    """`warm` with the session `get_spark` gives (it may wait for one being started), for a background thread."""
    try:
        warm(get_spark(), uris)
    except Exception as error:  # the session failed to start: the run says so, not this thread
        logger.debug("no Delta warm-up: %s", error)


@contextmanager
def _commit_settings(spark: SparkSession, update: Update):
    """The session settings a commit carries: what it records, and the source version it takes (Delta's
    transaction identifier: a commit taking a version the table has already taken is skipped, not repeated)."""
    settings = {USER_METADATA: json.dumps(update.recorded, sort_keys=True)}
    if update.source is not None:
        settings |= {TXN_APP: update.source[0], TXN_VERSION: str(update.source[1])}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key in settings:
            spark.conf.unset(key)


def commit(uri: str, update: Update, spark: Callable[[], SparkSession] | None = None) -> lake.Commit:
    """Write `update` to the table at `uri` (created on first write) as one commit; return that commit. Arrow
    rows (the raw table's batch, listed on the driver) are written by delta-rs, no Spark job, unless they touch
    more paths than a delta-rs commit can name (`lake.MAX_NAMED_PATHS`): then they are merged by the session
    `spark` gives (called only then), as a derived table's changes are."""
    if isinstance(update.rows, pa.Table):
        if update.source is not None:
            raise ValueError("an Arrow update takes no source: derived tables are written by Spark")
        if spark is None or not _too_many_to_name(update):
            return lake.write(uri, update.rows, update.removed, update.replace, update.recorded)
        update = _on_spark(spark(), update)
    spark = update.rows.sparkSession
    before = lake.version(uri)
    replaced = lake.rows(uri) if update.replace else 0
    taken = update.source is not None and lake.consumed(uri, update.source[0]) >= update.source[1]
    if taken and not update.replace:  # a retry of what the table has taken: nothing twice
        logger.info("%s has taken version %d of %s already: nothing to write", uri, update.source[1], update.source[0])
        return lake.Commit(before or 0, "NONE")
    if taken:  # a refit at the same source version: recorded as taken already, or Delta would skip the replace
        update = dataclasses.replace(update, source=None)
    with _commit_settings(spark, update), _cleaned_on_failure(spark, uri):
        if before is None or update.replace:
            _write(update.rows, uri, "overwrite", update)
        elif update.removed is None or update.removed.isEmpty():
            _write(update.rows, uri, "append", update)
        else:
            _merge(spark, uri, update)
    taken = update.source is not None and lake.consumed(uri, update.source[0]) >= update.source[1]
    if update.source is not None and not taken:  # a merge that changed nothing commits nothing: record the take
        with _commit_settings(spark, update):
            _write(update.rows.limit(0), uri, "append", update)
    newest = lake.history(uri, 1)
    if not newest or newest[0].version == before:
        return lake.Commit(before or 0, "NONE")
    # An overwrite's metrics count the files it removed, not their rows: those are the rows the table had.
    return dataclasses.replace(newest[0], rows_removed=replaced) if update.replace else newest[0]


def _too_many_to_name(update: Update) -> bool:
    """Whether an Arrow update's merge touches more paths than a delta-rs commit names."""
    if update.replace or not update.removed:
        return False
    return len(lake.touched_paths(update.rows, update.removed)) > lake.MAX_NAMED_PATHS


def _on_spark(spark: SparkSession, update: Update) -> Update:
    """The same Arrow update as Spark DataFrames (rows, removed paths), for a Spark merge."""
    removed = pa.table({KEY: pa.array(update.removed, pa.string())})
    logger.info("%d rows upserted, %d paths removed: merged by Spark", update.rows.num_rows, removed.num_rows)
    return dataclasses.replace(update, rows=_frame(spark, update.rows), removed=_frame(spark, removed))


@contextmanager
def _cleaned_on_failure(spark: SparkSession, uri: str):
    """Run a write; when it fails, delete the data files it left (no commit names them: no reader ever sees them,
    but a full disk gets its space back), once its tasks have stopped."""
    group = spark.sparkContext.getLocalProperty(JOB_GROUP)
    spark.sparkContext.setLocalProperty(JOB_GROUP, f"fruits-commit-{uuid.uuid4().hex[:8]}")
    existing = set(_data_files(uri))
    try:
        yield
    except Exception:
        _wait_for_tasks(spark, spark.sparkContext.getLocalProperty(JOB_GROUP))
        left = sorted(set(_data_files(uri)) - existing)
        logger.error("a write to %s failed: nothing was committed; deleting the %d file(s) it left", uri, len(left))
        for path in left:
            try:
                files.delete(path)
            except OSError as error:  # the write's own error is the one to raise
                logger.warning("could not delete %s: %s", path, error)
        raise
    finally:
        spark.sparkContext.setLocalProperty(JOB_GROUP, group)


def _data_files(uri: str) -> list[str]:
    """The data files under a table's folder (its log left out)."""
    return [f"{uri.rstrip('/')}/{p}" for p in files.list_tree(uri) if not p.startswith("_delta_log/")]


def _wait_for_tasks(spark: SparkSession, group: str, timeout_s: float = 60.0) -> None:
    """Wait until the tasks of a failed write have stopped: Spark fails the job at the first task error while
    the other tasks are still being killed, and one of them could write a file after the cleanup."""
    tracker, deadline = spark.sparkContext.statusTracker(), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        jobs = [tracker.getJobInfo(job) for job in tracker.getJobIdsForGroup(group)]
        stages = [tracker.getStageInfo(s) for job in jobs if job is not None for s in job.stageIds]
        if not any(stage is not None and stage.numActiveTasks > 0 for stage in stages):
            return
        time.sleep(0.2)
    logger.warning("tasks of the failed write %s still running after %.0f s", group, timeout_s)


def _write(rows: DataFrame, uri: str, mode: str, update: Update) -> None:
    writer = rows.write.format("delta").mode(mode)
    if mode == "overwrite":
        writer = writer.option("overwriteSchema", "true")
        for key, value in TABLE_PROPERTIES.items():
            writer = writer.option(key, value)
    if update.source is not None:  # what _commit_settings sets for a merge, as the writer's own options
        writer = writer.option("txnAppId", update.source[0]).option("txnVersion", update.source[1])
    writer.save(uri)


def _merge(spark: SparkSession, uri: str, update: Update) -> None:
    """Removed paths deleted, rows updated or inserted by path: one MERGE (paths in both are updated)."""
    from delta.tables import DeltaTable

    rows = update.rows.withColumn("_upsert", F.lit(True))
    gone = update.removed.select(KEY).distinct().join(rows.select(KEY), KEY, "left_anti")
    source = rows.unionByName(gone.withColumn("_upsert", F.lit(False)), allowMissingColumns=True)
    columns = {c: f"s.`{c}`" for c in update.rows.columns}
    (
        DeltaTable.forPath(spark, uri)
        .alias("t")
        .merge(source.alias("s"), f"t.{KEY} = s.{KEY}")
        .whenMatchedDelete(condition="NOT s._upsert")
        .whenMatchedUpdate(set=columns)
        .whenNotMatchedInsert(condition="s._upsert", values=columns)
        .execute()
    )


def changes(spark: SparkSession, uri: str, after: int, until: int, on_driver: bool = False) -> DataFrame:
    """The net change of each path in versions `after`+1 … `until` of the table at `uri`: its newest row with
    `change` new (inserted), changed (updated, or removed and inserted again) or deleted (removed, the row it had).
    Read from the change data feed: what those commits wrote, not the whole table; `on_driver`, by delta-rs into
    the driver (a table of small rows, as the raw listing's: no Spark snapshot of the table is built)."""
    feed = _driver_feed(spark, uri, after, until) if on_driver else _feed(spark, uri, after, until)
    feed = feed.filter(F.col("_change_type") != "update_preimage")
    inserted = F.col("_change_type") != "delete"
    columns = [c for c in feed.columns if not c.startswith("_") and c != CHANGE]
    kind = {"insert": NEW, "update_postimage": CHANGED, "delete": DELETED}
    once = feed.select(
        *columns, F.coalesce(*[F.when(F.col("_change_type") == k, v) for k, v in kind.items()]).alias(CHANGE)
    )
    one = lake.commit_at(uri, until) if until == after + 1 else None
    if one is not None and not one.overwrite:  # one merge or append: each path once (a batch), no shuffle
        return once
    if feed.groupBy(KEY).count().filter(F.col("count") > 1).isEmpty():  # appends only: each path once here too
        return once
    newest = Window.partitionBy(KEY).orderBy(F.col("_commit_version").desc(), inserted.desc())
    touched = F.count(F.lit(1)).over(Window.partitionBy(KEY))
    change = (
        F.when(~inserted, DELETED)
        .when((F.col("_change_type") == "insert") & (F.col("_touched") == 1), NEW)
        .otherwise(CHANGED)
    )
    ranked = feed.withColumn("_rank", F.row_number().over(newest)).withColumn("_touched", touched)
    return ranked.filter(F.col("_rank") == 1).select(*columns, change.alias(CHANGE))


def _feed(spark: SparkSession, uri: str, after: int, until: int) -> DataFrame:
    reader = spark.read.format("delta").option("readChangeFeed", "true")
    return reader.option("startingVersion", after + 1).option("endingVersion", until).load(uri)


def _driver_feed(spark: SparkSession, uri: str, after: int, until: int) -> DataFrame:
    return _frame(spark, lake.change_feed(uri, after, until))


def _frame(spark: SparkSession, table: pa.Table) -> DataFrame:
    """An Arrow table the driver holds as a Spark DataFrame of the same schema."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return spark.createDataFrame(table.to_pandas(), from_arrow_schema(table.schema))


def removed_paths(net: DataFrame) -> DataFrame:
    """The paths of net changes (`changes`) whose old row goes: changed and deleted ones."""
    return net.filter(F.col(CHANGE) != NEW).select(KEY)


def upserts(net: DataFrame) -> DataFrame:
    """The net changes (`changes`) that leave a row: new and changed paths, without the `change` column."""
    return net.filter(F.col(CHANGE) != DELETED).drop(CHANGE)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print("\n".join(str(p) for p in fetch()))
