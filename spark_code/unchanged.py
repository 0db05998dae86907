"""Whether a run would find nothing to do: both roots' listings against the committed tables and models, no Spark."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from spark_code.ingest import batches, snapshot
from spark_code.ingest.images import LISTING_COLUMNS
from spark_code.ingest.listing import walk
from spark_code.reduction import lifecycle
from spark_code.storage import files, quality, versions

logger = logging.getLogger(__name__)

IDENTITY_COLUMNS = ["path", "length", "modification_time"]


@dataclass(frozen=True)
class Expected:
    """What the run would use: its roots, local output folder, CNN settings and the models' wanted inputs."""

    image_root: str
    training_root: str
    output: str
    model_key: str
    classifier_settings: dict = field(default_factory=dict)  # as `fruit_classifier` records them
    pca_settings: dict = field(default_factory=dict)  # k, variance_target, accuracy_tolerance of the run's config


def pending_work(expected: Expected) -> str | None:
    """Why a run has work to do (the first reason found), or None when nothing is new, changed or deleted in either
    root and every table and model is current for every committed batch: the run would featurize, scale, project
    and score nothing. Reads listings (os.scandir, or ListObjectsV2 on S3), Parquet columns and JSON sidecars only,
    local or on S3 alike (`storage.files`)."""
    out = expected.output
    keys = complete_batches(out)
    if not keys:
        return "no committed batch yet"
    for check in (_image_root, _training_root, _models):
        reason = check(expected, out, keys)
        if reason:
            return reason
    return None


def _join(*parts: str) -> str:
    return "/".join(part.rstrip("/") for part in parts)


def committed_versions(folder: str) -> list[str]:
    """Names of the committed versions in a table's or model's folder (local or s3://), oldest first ([] if none)."""
    marked = [n for n in files.list_names(folder) if n.startswith(versions.VERSION_PREFIX)]
    return sorted(n for n in marked if files.exists(_join(folder, n, versions.COMMITTED)))


def _newest(folder: str) -> str | None:
    versions = committed_versions(folder)
    return _join(folder, versions[-1]) if versions else None


def complete_batches(out: str) -> list[str]:
    """Keys of the batches whose listing, features and quarantine are all committed (as `batches.committed_keys`)."""
    keys = sorted(files.list_names(_join(out, batches.LEDGER)))
    return [k for k in keys if all(_newest(_join(out, t, k)) for t in batches.BATCH_TABLES)]


def _read(version: str, columns: list[str]) -> pa.Table:
    """Columns of a committed version (a folder of Parquet files, local or on S3)."""
    filesystem, path = files.filesystem(version)
    return pq.read_table(path, columns=columns, filesystem=filesystem)


def _identities(table: pa.Table) -> dict[str, tuple[int, int]]:
    """{path: (length, modification time in ms)} of a table's rows."""
    millis = _identity_table(table).column("modification_time").to_pylist()
    entries = zip(table.column("length").to_pylist(), millis, strict=True)
    return dict(zip(table.column("path").to_pylist(), entries, strict=True))


def _identity_table(table: pa.Table) -> pa.Table:
    """`path`, `length` and `modification_time` (ms since the epoch, int64) of a table's rows."""
    millis = table.column("modification_time").cast(pa.timestamp("ms"), safe=False).cast(pa.int64())
    return pa.table({"path": table.column("path"), "length": table.column("length"), "modification_time": millis})


def listed_table(root: str) -> pa.Table:
    """The identities (`path`, `length`, `modification_time` in ms) of a root's listing, as the Spark listing makes
    its rows: the walk's entries as the sensor tabulates them (`snapshot.entries_table`), then qualified paths."""
    entries = snapshot.entries_table(walk(root).files)
    paths = pc.binary_join_element_wise(f"{versions.qualify(root)}/", entries.column("path"), "")
    millis = pc.divide(entries.column("mtime_ns"), 1_000_000)  # integer division, as the listing's milliseconds
    return pa.table({"path": paths, "length": entries.column("size"), "modification_time": millis})


def differences(now: pa.Table, before: pa.Table) -> dict[str, int] | None:
    """How many paths of identity table `now` are new or changed against `before`, and how many of `before`'s are
    gone; None when the two hold the same identities (paths are unique in each: hash joins, no per-row Python)."""
    before = before.select(now.column_names)
    same = now.join(before, now.column_names, join_type="left semi").num_rows
    if same == now.num_rows == before.num_rows:
        return None
    new = now.join(before, "path", join_type="left anti").num_rows
    gone = before.join(now, "path", join_type="left anti").num_rows
    return {"new": new, "changed": now.num_rows - new - same, "deleted": gone}


def current_raw_rows(out: str, keys: list[str]) -> pa.Table:
    """The committed batches `keys`' current raw rows (listing columns, `batch`): each path's newest raw row,
    deleted paths left out (as `batches.current_raw`, read with pyarrow from a local output)."""
    columns = [*LISTING_COLUMNS, batches.CHANGE, batches.BATCH, batches.INGESTED_AT]
    parts = [_nullable(_read(_newest(_join(out, batches.LEDGER, k)), columns)) for k in keys]
    rows = _oldest_first(parts, keys)
    counts = pc.value_counts(rows.column("path"))
    again = counts.field("values").filter(pc.greater(counts.field("counts"), 1))  # paths taken by several batches
    if len(again):  # each such path's last row wins; every other row is its path's only one
        repeated = pc.is_in(rows.column("path"), value_set=again)
        index = pa.table({"path": rows.column("path"), "row": pa.array(range(rows.num_rows), pa.int64())})
        newest = index.filter(repeated).group_by("path", use_threads=False).aggregate([("row", "max")])
        rows = pa.concat_tables([rows.filter(pc.invert(repeated)), rows.take(newest.column("row_max"))])
    return rows.filter(pc.not_equal(rows.column(batches.CHANGE), batches.DELETED))


def _oldest_first(parts: list[pa.Table], keys: list[str]) -> pa.Table:
    """The batches' rows in the order they were ingested (time, then key): whole parts put in order when each
    batch has one ingestion time (as a run writes them), else the rows sorted."""
    order = [(batches.INGESTED_AT, "ascending"), (batches.BATCH, "ascending")]
    times = [pc.min_max(part.column(batches.INGESTED_AT)) for part in parts]
    if any(t["min"] != t["max"] for t in times):
        return pa.concat_tables(parts).sort_by(order)
    by_time = sorted(
        range(len(parts)), key=lambda i: (times[i]["min"].as_py() is None, times[i]["min"].as_py(), keys[i])
    )
    return pa.concat_tables([parts[i] for i in by_time])


def listing_entries(current: pa.Table) -> dict[str, tuple[str | None, int, int]]:
    """{path: (label, length, modification time in ms)} of raw rows (see `batches.plan_rows`)."""
    labels = current.column("label").to_pylist()
    return {path: (labels[i], *entry) for i, (path, entry) in enumerate(_identities(current).items())}


def current_paths(out: str, keys: list[str], name: str, current: pa.Table) -> list[str]:
    """Paths of the batch table `name`'s current rows over `keys`: the rows of each path's current raw row (its
    identity and batch, as `batches.current`)."""
    columns = [*IDENTITY_COLUMNS, batches.BATCH]
    parts = [_nullable(_read(_newest(_join(out, name, k)), columns)) for k in keys]
    rows = pa.concat_tables(parts)
    return rows.join(current.select(columns), columns, join_type="left semi").column("path").to_pylist()


def reconcile(output: str) -> dict[str, int]:
    """`quality.reconcile` over every complete batch's current rows of an output, read with pyarrow."""
    out = output
    keys = complete_batches(out)
    current = current_raw_rows(out, keys)
    tables = (current_paths(out, keys, name, current) for name in batches.BATCH_TABLES[1:])
    return quality.reconcile_paths(current.column("path").to_pylist(), *tables)


def stale_paths(out: str, keys: list[str], current: pa.Table, model_key: str) -> set[str]:
    """Current paths (of `current_raw_rows`) whose batch featurized them with other CNN settings than `model_key`
    (as `batches.stale`): a batch runs one CNN setting, so only its features' model column is read."""
    other = [key for key in keys if _model_keys(_newest(_join(out, "cnn_features", key))) - {model_key}]
    if not other:
        return set()
    return set(current.filter(pc.is_in(current.column(batches.BATCH), pa.array(other))).column("path").to_pylist())


def _nullable(table: pa.Table) -> pa.Table:
    """The same table with every column nullable: batches written by different plans differ only in that."""
    return table.cast(pa.schema([column.with_nullable(True) for column in table.schema]))


def _model_keys(folder: str) -> set[str]:
    return set(_read(folder, [batches.MODEL_COLUMN]).column(0).unique().to_pylist())


def _image_root(expected: Expected, out: str, keys: list[str]) -> str | None:
    now, before = listed_table(expected.image_root), _identity_table(current_raw_rows(out, keys))
    counts = differences(now, before)
    if counts:
        return f"{expected.image_root}: {counts['new']} new, {counts['changed']} changed, {counts['deleted']} deleted"
    for key in keys:
        if _model_keys(_newest(_join(out, "cnn_features", key))) - {expected.model_key}:
            return f"batch {key} was featurized with other CNN settings"
    return None


def _training_root(expected: Expected, out: str, keys: list[str]) -> str | None:
    return training_changes(expected.training_root, out, expected.model_key)


def training_changes(root: str, output: str, model_key: str) -> str | None:
    """Why the training table is not current for `root` (new, changed or deleted photos, other CNN settings, no
    table yet), or None when every listed photo has its row, made with `model_key` (local or s3://)."""
    version = _newest(_join(output, "training_features"))
    if version is None:
        return "no training features yet"
    table = _read(version, [*IDENTITY_COLUMNS, batches.MODEL_COLUMN])
    if differences(listed_table(root), _identity_table(table)):
        return f"{root}: new, changed or deleted photos"
    if set(table.column(batches.MODEL_COLUMN).unique().to_pylist()) - {model_key}:
        return "training features made with other CNN settings"
    return None


def refit_due(output: str) -> str | None:
    """Why a refit of the scaler and the PCA has work (a batch committed after the scaler was last fitted, or no
    scaler yet), or None when no batch came since: refitting would fit the same rows again. Version names start
    with their write time, so names compare as times."""
    keys = complete_batches(output)
    if not keys:
        return None
    scaler = _newest(_join(output, "models", "scaled_features"))
    if scaler is None:
        return "no scaler fitted yet"
    fitted = versions.version_name(scaler)
    newer = [k for k in keys if versions.version_name(_newest(_join(output, batches.LEDGER, k))) > fitted]
    return f"{len(newer)} batch(es) since the scaler was fitted" if newer else None


def table_rows(output: str, name: str) -> int:
    """Rows of the newest committed version of an unpartitioned table (from the Parquet footers)."""
    version = _newest(_join(output, name))
    return 0 if version is None else _read(version, []).num_rows


def _sidecar(version: str, name: str) -> dict:
    data = files.read_bytes(_join(version, name))
    return {} if data is None else json.loads(data.decode("utf-8") or "{}")


def _models(expected: Expected, out: str, keys: list[str]) -> str | None:
    folder = _join(out, "models")
    scaler, pca, classifier = (_newest(_join(folder, n)) for n in lifecycle.FITTED_WITH)
    if scaler is None or pca is None or classifier is None:
        return "a model is missing"
    for version in (scaler, pca):
        if not set(keys) <= set(_sidecar(version, batches.PARTS_JSON).get("batches", [])):
            return f"{version}: a batch is not derived yet"
    if _sidecar(scaler, lifecycle.FITTED_WITH["scaled_features"]).get("cnn_model") != expected.model_key:
        return "the scaler was fitted on other CNN settings"
    wanted_pca = {**expected.pca_settings, "scaler": scaler}
    fitted_pca = _sidecar(pca, lifecycle.FITTED_WITH["pca_features"])
    if any(lifecycle.portable(fitted_pca.get(k)) != lifecycle.portable(v) for k, v in wanted_pca.items()):
        return "the PCA was fitted with other inputs"
    return _classifier(expected, out, keys, (scaler, pca, classifier))


def _classifier(expected: Expected, out: str, keys: list[str], versions: tuple[str, str, str]) -> str | None:
    scaler, pca, classifier = versions
    inputs = {
        "training_features": _newest(_join(out, "training_features")),
        "scaler": scaler,
        "pca": pca,
        "cnn_model": expected.model_key,
        "settings": expected.classifier_settings,
    }
    fitted = _sidecar(classifier, lifecycle.FITTED_WITH["fruit_classifier"])
    if lifecycle.portable(fitted.get("inputs")) != lifecycle.portable(inputs):
        return "the classifier was fitted with other inputs"
    running = _sidecar(classifier, "running.json") or fitted
    if not set(keys) <= set(running.get("evaluated_batches", [])):
        return "a batch is not scored by the classifier yet"
    return None
