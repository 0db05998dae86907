"""Whether a run would find nothing to do: both roots' listings against the tables and models, no Spark."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from spark_code import quality
from spark_code.ingest import batches, ledger, snapshot
from spark_code.reduction import lifecycle
from spark_code.storage import files, lake, uris, versions
from spark_code.storage.lake import Commit
from spark_code.storage.tree import walk

logger = logging.getLogger(__name__)

BATCH_TABLES = (batches.LEDGER, "cnn_features", "quarantined_images")
# Each derived table and the table whose changes it takes.
SOURCES = {
    "cnn_features": batches.LEDGER,
    "quarantined_images": batches.LEDGER,
    "scaled_features": "cnn_features",
    "pca_features": "scaled_features",
}


@dataclass(frozen=True)
class Expected:
    """What the run would use: its roots, output, CNN settings and the models' wanted inputs."""

    image_root: str
    training_root: str
    output: str
    model_key: str
    classifier_settings: dict = field(default_factory=dict)  # as `fruit_classifier` records them
    pca_settings: dict = field(default_factory=dict)  # k, variance_target, accuracy_tolerance of the run's config


def pending_work(expected: Expected) -> str | None:
    """Why a run has work to do (the first reason found), or None when nothing is new, changed or deleted in either
    root and every table and model has taken every change: the run would featurize, scale, project and score
    nothing. Reads listings (os.scandir, or ListObjectsV2 on S3), Delta logs, Parquet columns and JSON sidecars
    only (delta-rs and pyarrow), local or on S3 alike."""
    out = expected.output
    lake.refuse_old_layout(out)
    if lake.version(lake.table_of(out, batches.LEDGER)) is None:
        return "no committed batch yet"
    for check in (_image_root, _training_root, _derived, _models):
        reason = check(expected, out)
        if reason:
            return reason
    return None


def listed_table(root: str) -> pa.Table:
    """The identities (`path`, `length`, `modification_time` in ms) of a root's listing, as the Spark listing makes
    its rows: the walk's entries as the sensor tabulates them (`snapshot.entries_table`), then qualified paths."""
    entries = snapshot.entries_table(walk(root).files)
    paths = pc.binary_join_element_wise(f"{uris.qualify(root)}/", entries.column("path"), "")
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


def reconcile(output: str, batch: str | None = None) -> dict[str, int]:
    """`quality.reconcile` over the current paths of an output's three batch tables (only those of `batch` if
    given), read with delta-rs."""
    paths = [_paths(lake.table_of(output, name), batch) for name in BATCH_TABLES]
    return quality.reconcile(*paths)


def _paths(uri: str, batch: str | None = None) -> list[str]:
    rows = lake.read(uri, ["path"], None if batch is None else pc.field(batches.BATCH) == batch)
    return [] if rows is None else rows.column("path").to_pylist()


def behind(out: str, name: str) -> str | None:
    """Why the derived table `name` has not taken every change of its source (None: it has)."""
    source = SOURCES[name]
    wanted = lake.data_version(lake.table_of(out, source))
    if wanted is not None and lake.consumed(lake.table_of(out, name), source) < wanted:
        return f"{name} has not taken version {wanted} of {source}"
    return None


def _image_root(expected: Expected, out: str) -> str | None:
    now, before = listed_table(expected.image_root), ledger.identities(ledger.current_rows(out))
    counts = differences(now, before)
    if counts:
        return f"{expected.image_root}: {counts['new']} new, {counts['changed']} changed, {counts['deleted']} deleted"
    if ledger.model_keys(out, "cnn_features") - {expected.model_key}:
        return "features were made with other CNN settings"
    return None


def _training_root(expected: Expected, out: str) -> str | None:
    return training_changes(expected.training_root, out, expected.model_key)


def _derived(expected: Expected, out: str) -> str | None:
    return next(filter(None, (behind(out, name) for name in SOURCES)), None)


def training_changes(root: str, output: str, model_key: str) -> str | None:
    """Why the training table is not current for `root` (new, changed or deleted photos, other CNN settings, no
    table yet), or None when every listed photo has its row, made with `model_key` (local or s3://)."""
    table = lake.read(lake.table_of(output, "training_features"), [*batches.IDENTITY, batches.MODEL_COLUMN])
    if table is None:
        return "no training features yet"
    if differences(listed_table(root), ledger.identities(table)):
        return f"{root}: new, changed or deleted photos"
    if set(table.column(batches.MODEL_COLUMN).unique().to_pylist()) - {model_key}:
        return "training features made with other CNN settings"
    return None


def refit_due(output: str) -> str | None:
    """Why a refit of the scaler and the PCA has work (features changed since the scaler was fitted, or no scaler
    yet), or None when no batch came since: refitting would fit the same rows again."""
    features = lake.data_version(lake.table_of(output, "cnn_features"))
    if features is None:
        return None
    scaler = versions.newest(f"{uris.qualify(output)}/models", "scaled_features")
    if scaler is None:
        return "no scaler fitted yet"
    fitted = _sidecar(scaler, lifecycle.FITTED_WITH["scaled_features"]).get("cnn_features_version", -1)
    return f"cnn_features changed since the scaler was fitted (version {fitted})" if features > fitted else None


def table_rows(output: str, name: str) -> int:
    """Rows of table `name` now (from its log's file statistics)."""
    return lake.rows(lake.table_of(output, name))


def last_commit(output: str, name: str) -> Commit | None:
    """The newest commit of table `name` that changed rows."""
    return lake.last_commit(lake.table_of(output, name))


def _sidecar(version: str, name: str) -> dict:
    data = files.read_bytes(f"{version}/{name}")
    return {} if data is None else json.loads(data.decode("utf-8") or "{}")


def training_input(output: str) -> str:
    """The training table's version as a classifier records it among its inputs (`training_features@v3`)."""
    return f"training_features@v{lake.version(lake.table_of(output, 'training_features'))}"


def derived_with(output: str, name: str) -> str | None:
    """The model version (its folder name) that derived the current rows of table `name` (None: no table)."""
    commit = lake.last_commit(lake.table_of(output, name))
    return None if commit is None else commit.recorded.get("model")


def _models(expected: Expected, out: str) -> str | None:
    folder = f"{uris.qualify(out)}/models"
    scaler, pca, classifier = (versions.newest(folder, n) for n in lifecycle.FITTED_WITH)
    if scaler is None or pca is None or classifier is None:
        return "a model is missing"
    for name, version in (("scaled_features", scaler), ("pca_features", pca)):
        if derived_with(out, name) != versions.version_name(version):
            return f"{name} was not derived with {version}"
    if _sidecar(scaler, lifecycle.FITTED_WITH["scaled_features"]).get("cnn_model") != expected.model_key:
        return "the scaler was fitted on other CNN settings"
    wanted_pca = {**expected.pca_settings, "scaler": scaler}
    fitted_pca = _sidecar(pca, lifecycle.FITTED_WITH["pca_features"])
    if any(lifecycle.portable(fitted_pca.get(k)) != lifecycle.portable(v) for k, v in wanted_pca.items()):
        return "the PCA was fitted with other inputs"
    return _classifier(expected, out, (scaler, pca, classifier))


def _classifier(expected: Expected, out: str, models: tuple[str, str, str]) -> str | None:
    scaler, pca, classifier = models
    inputs = {
        "training_features": training_input(out),
        "scaler": scaler,
        "pca": pca,
        "cnn_model": expected.model_key,
        "settings": expected.classifier_settings,
    }
    fitted = _sidecar(classifier, lifecycle.FITTED_WITH["fruit_classifier"])
    if lifecycle.portable(fitted.get("inputs")) != lifecycle.portable(inputs):
        return "the classifier was fitted with other inputs"
    running = _sidecar(classifier, "running.json") or fitted
    if running.get("evaluated_version", -1) < (lake.data_version(lake.table_of(out, "cnn_features")) or 0):
        return "the classifier has not scored every feature row yet"
    return None
