"""Growth: incremental featurization batch by batch, and the refit policy of the scaler and the PCA (the sensor:
test_sensor.py)."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from dagster import AssetCheckSeverity, AssetKey, DagsterInstance, build_schedule_context
from PIL import Image
from pyspark.ml.feature import PCAModel, StandardScalerModel

from fruits_assets.definitions import build_defs
from fruits_assets.defs.automation import daily_refit
from fruits_assets.defs.partitions import ingest_batches
from fruits_assets.deploy.deployments import local_resources
from fruits_assets.io.resources import CnnResource, OutputLocation
from spark_code.reduction import lifecycle, scaler_pca
from spark_code.storage import lake, versions
from tests.conftest import CLASSES, FRUITS, copy_photos, first_images
from tests.helpers import materialize_features, metadata_of, table

DERIVED = ("raw_images", "cnn_features", "quarantined_images", "scaled_features", "pca_features")

pytestmark = pytest.mark.slow  # a browser, a cluster, moto or whole materializations


# ---- incremental materializations --------------------------------------------------------------------------


def _materialize(root, output, weights, run_config=None, instance=None):
    from spark_code.featurize import udf

    before = udf.process_totals()
    resources = local_resources(str(root), str(output), weights)
    result = materialize_features(resources, instance or DagsterInstance.ephemeral(), run_config=run_config)
    after = udf.process_totals()
    return result, {key: after[key] - before[key] for key in after}


@pytest.fixture(scope="module")
def grown(spark, weights_path, tmp_path_factory):
    """A root materialized, then grown (2 new photos, 1 changed, 1 deleted) and materialized again."""
    root, output = tmp_path_factory.mktemp("growing"), tmp_path_factory.mktemp("grown-out")
    copy_photos(root, CLASSES[:2], 3)
    (root / "Broken Fruit").mkdir()
    (root / "Broken Fruit" / "notes.jpg").write_text("not an image")
    instance = DagsterInstance.ephemeral()
    first, first_counts = _materialize(root, output, weights_path, instance=instance)
    first_versions = {name: lake.version(f"{output}/{name}") for name in DERIVED}
    first_pca = {r.path: r for r in table(spark, output, "pca_features").collect()}
    new = first_images(FRUITS / CLASSES[2], 2)
    (root / CLASSES[2]).mkdir()
    for image in new:
        shutil.copy(image, root / CLASSES[2] / image.name)
    changed = sorted((root / CLASSES[0]).glob("*.jpg"))[0]
    shutil.copy(first_images(FRUITS / CLASSES[0], 4)[3], changed)  # other photo, same name
    deleted = sorted((root / CLASSES[1]).glob("*.jpg"))[0]
    deleted.unlink()
    keep_pca = {"ops": {"pca_features": {"config": {"max_drift": 1.0}}}}  # tiny sample: project, do not refit
    second, second_counts = _materialize(root, output, weights_path, keep_pca, instance)
    return {
        "instance": instance,
        "first_versions": first_versions,
        "root": root,
        "output": output,
        "first": (first, first_counts, first_pca),
        "second": (second, second_counts),
        "changed": changed,
        "deleted": deleted,
    }


def test_second_run_featurizes_only_new_and_changed_photos(grown):
    _, first_counts, _ = grown["first"]
    second, second_counts = grown["second"]
    assert first_counts["cnn_images"] == 6 and first_counts["images_decoded"] == 7  # + the text file, once
    assert second_counts["cnn_images"] == 3 and second_counts["images_decoded"] == 3  # 2 new + 1 changed only
    raw = metadata_of(second, "raw_images")
    assert (raw["new"], raw["changed"], raw["deleted"], raw["listed"]) == (2, 1, 1, 8)
    meta = metadata_of(second, "cnn_features")
    assert (meta["raw"], meta["featurized"], meta["quarantined"]) == (3, 3, 0)
    assert metadata_of(grown["first"][0], "cnn_features")["quarantined"] == 1


def test_each_batch_is_a_partition_and_one_commit_per_table(grown, spark):
    output = str(grown["output"])
    keys = grown["instance"].get_dynamic_partitions(ingest_batches.name)
    assert len(keys) == 2 and keys == sorted(keys)
    for name, first in grown["first_versions"].items():  # the second batch: one more commit to each table
        assert lake.version(f"{output}/{name}") == first + 1, name
    raw = lake.last_commit(f"{output}/raw_images")
    assert (raw.operation, raw.recorded, raw.rows_added, raw.rows_removed) == ("WRITE", {"batch": keys[1]}, 3, 2)
    by_batch = {r.batch: r["count"] for r in table(spark, output, "raw_images").groupBy("batch").count().collect()}
    assert by_batch == {keys[0]: 5, keys[1]: 3}  # 6 photos + the text file, less 1 deleted and 1 changed; 2 + 1
    checks = {e.check_name: e.passed for e in grown["second"][0].get_asset_check_evaluations()}
    assert checks["counts_reconcile"] and all(checks.values())


def test_incremental_outputs_equal_a_full_recompute(grown, spark, weights_path, tmp_path):
    root, output = grown["root"], grown["output"]
    features = {r.path: np.array(r.features) for r in table(spark, output, "cnn_features").collect()}
    assert f"file:{grown['deleted']}" not in features
    assert set(features) == {f"file:{p}" for p in root.rglob("*.jpg") if p.parent.name != "Broken Fruit"}
    _materialize(root, tmp_path / "full", weights_path)
    recomputed = {r.path: np.array(r.features) for r in table(spark, tmp_path / "full", "cnn_features").collect()}
    assert recomputed.keys() == features.keys()
    assert max(np.abs(recomputed[p] - features[p]).max() for p in features) < 1e-5
    quarantined = table(spark, output, "quarantined_images").collect()
    assert [r.path.rsplit("/", 1)[-1] for r in quarantined] == ["notes.jpg"]


def test_new_rows_projected_with_the_saved_model_version(grown, spark):
    output = str(grown["output"])
    _, _, first_pca = grown["first"]
    pca = {r.path: r for r in table(spark, output, "pca_features").collect()}
    assert {r.pca_model for r in pca.values()} == {next(iter(first_pca.values())).pca_model}
    assert metadata_of(grown["second"][0], "pca_features")["refit"] is False
    unchanged = [p for p in pca if p in first_pca and p != f"file:{grown['changed']}"]
    assert unchanged and all(np.allclose(pca[p].pca_features, first_pca[p].pca_features, atol=1e-9) for p in unchanged)
    # the same projection a full recompute gives: the saved scaler + PCA applied to the features again
    scaler = versions.load_model(spark, StandardScalerModel, f"{output}/models", "scaled_features")
    model = versions.load_model(spark, PCAModel, f"{output}/models", "pca_features")
    features = table(spark, output, "cnn_features")
    again = scaler_pca.transform_arrays(model, scaler_pca.transform_arrays(scaler, features)).collect()
    assert max(np.abs(np.array(r.pca_features) - np.array(pca[r.path].pca_features)).max() for r in again) < 1e-6


def test_a_batch_scales_and_projects_only_its_own_rows(grown, spark):
    first, second = (
        metadata_of(grown["first"][0], "scaled_features"),
        metadata_of(grown["second"][0], "scaled_features"),
    )
    assert (first["rows_added"], first["row_count"]) == (6, 6)  # the first batch: every featurized photo
    # 2 new + 1 changed rows added, the changed and the deleted photos' rows removed: one merge
    assert (second["refit"], second["rederived"], second["rows_added"], second["rows_removed"]) == (False, False, 3, 2)
    projected = metadata_of(grown["second"][0], "pca_features")
    assert (projected["rederived"], projected["rows_added"], projected["rows_removed"], projected["row_count"]) == (
        False,
        3,
        2,
        7,
    )
    assert "versions 1..1" in projected["derived"]  # the changes of the scaled table's one new version


def test_drift_is_measured_and_warned_but_the_batch_is_only_projected(spark, weights_path, tmp_path, monkeypatch):
    from fruits_assets.io import console

    root, output = tmp_path / "root", tmp_path / "out"
    copy_photos(root, CLASSES[:2], 3)
    _materialize(root, output, weights_path)
    noise = np.random.default_rng(7).integers(0, 256, size=(2, 100, 100, 3), dtype=np.uint8)
    for i, pixels in enumerate(noise):  # nothing like a fruit: the saved basis explains little of these rows
        Image.fromarray(pixels).save(root / CLASSES[0] / f"noise-{i}.png")
    monkeypatch.setattr(lifecycle, "MIN_DRIFT_ROWS", 2)  # two rows are enough to measure on this tiny sample
    before = versions.latest_uri(f"{output}/models", "pca_features")
    strict = {"ops": {"pca_features": {"config": {"max_drift": 0.03}}}}
    result, counts = _materialize(root, output, weights_path, strict)
    pca = metadata_of(result, "pca_features")
    assert result.success and counts["cnn_images"] == 2
    assert pca["drift"] > 0.03 and pca["refit_due"] is True and pca["refit"] is False
    assert (pca["rows_added"], versions.latest_uri(f"{output}/models", "pca_features")) == (2, before)
    check = next(e for e in result.get_asset_check_evaluations() if e.check_name == "pca_basis_fits_new_rows")
    assert not check.passed and check.severity == AssetCheckSeverity.WARN  # a warning: the run still succeeds
    assert console.failed_checks(result) == ([], ["pca_basis_fits_new_rows"])  # the main command exits 0
    lines = console.summary(result, str(output), tmp_path / "log", "dagster dev")
    assert lines[0].endswith(": success") and "warnings: ['pca_basis_fits_new_rows']" in " ".join(lines)


def test_daily_refit_job_fits_new_models_without_cnn_work(grown, spark, weights_path):
    from spark_code.featurize import udf

    output = str(grown["output"])
    before = versions.latest_uri(f"{output}/models", "pca_features")
    defs = build_defs(local_resources(str(grown["root"]), output, weights_path))
    context = build_schedule_context(resources={"output": OutputLocation(base_uri=output)})
    request = daily_refit.evaluate_tick(context).run_requests[0]  # batches came after the scaler was fitted
    ops = request.run_config["ops"]
    assert ops["scaled_features"]["config"]["refit"] and ops["pca_features"]["config"]["refit"]
    totals = udf.process_totals()
    job = defs.resolve_job_def(daily_refit.job_name)
    result = job.execute_in_process(  # the classifier is left out: this output has no training_features
        run_config=request.run_config,
        instance=DagsterInstance.ephemeral(),
        asset_selection=[AssetKey("scaled_features"), AssetKey("pca_features")],
    )
    assert udf.process_totals()["cnn_images"] == totals["cnn_images"]  # no listing, no CNN work at all
    assert metadata_of(result, "scaled_features")["refit"] and metadata_of(result, "pca_features")["refit"]
    made_by = {r.pca_model for r in table(spark, output, "pca_features").collect()}
    assert len(made_by) == 1 and made_by != {before.rsplit("/", 1)[-1]}
    skipped = daily_refit.evaluate_tick(context)  # no batch since this refit: the next tick runs nothing
    assert not skipped.run_requests and "since the scaler and PCA were fitted" in skipped.skip_message


def test_new_cnn_settings_featurize_every_image_again(grown, spark, weights_path, tmp_path):
    from spark_code.featurize import udf

    output = tmp_path / "copy"
    shutil.copytree(grown["output"], output)  # keep the shared tables as they are
    resources = local_resources(str(grown["root"]), str(output), weights_path)
    resources["cnn"] = CnnResource(weights_path=weights_path, image_size=96)  # other settings, other features
    before = udf.process_totals()["cnn_images"]
    result = materialize_features(resources)
    assert udf.process_totals()["cnn_images"] - before == 7  # every image again, with the new settings
    raw = metadata_of(result, "raw_images")
    assert (raw["new"], raw["changed"], raw["deleted"]) == (0, 7, 0)  # the featurized files (not the text file)
    models = {r.cnn_model for r in table(spark, output, "cnn_features").collect()}
    assert models == {resources["cnn"].model_key()} and "96px" in next(iter(models))
    assert metadata_of(result, "scaled_features")["refit"] and metadata_of(result, "pca_features")["refit"]


def test_switching_the_cnn_engine_featurizes_every_image_again_and_the_app_runs_the_same_engine(
    grown, spark, weights_path, tmp_path
):
    from fruits_assets.app.engine import FruitClassifier
    from spark_code.classify.serving import ServingPipeline
    from spark_code.featurize import hardware, udf

    output = tmp_path / "copy"
    shutil.copytree(grown["output"], output)
    auto_rows = {r.path: r for r in table(spark, output, "cnn_features").collect()}  # FRUITS_ENGINE unset: auto
    auto_key = CnnResource(weights_path=weights_path).model_key()
    resources = local_resources(str(grown["root"]), str(output), weights_path)
    resources["cnn"] = CnnResource(weights_path=weights_path, engine="tensorflow")
    before = udf.process_totals()["cnn_images"]
    result = materialize_features(resources)
    assert result.success and udf.process_totals()["cnn_images"] - before == 7  # rows never mix engines
    tf_rows = {r.path: r for r in table(spark, output, "cnn_features").collect()}
    assert {r.cnn_model for r in tf_rows.values()} == {resources["cnn"].model_key()}
    assert "tensorflow-fp32" in resources["cnn"].model_key() and {r.cnn_model for r in auto_rows.values()} == {auto_key}
    bf16 = bool(hardware.native_bf16(hardware.this_cpu()))
    assert ("openvino-bf16" if bf16 else "onnx-fp32") in auto_key
    assert set(tf_rows) == set(auto_rows)
    assert metadata_of(result, "cnn_features")["precision"] == "fp32"
    pipeline = ServingPipeline(np.zeros(1280), np.ones(1280), None, np.zeros((1, 1280)), np.zeros(1), ["x"], 224)
    serving = {name: FruitClassifier(pipeline, weights_path, engine=name) for name in ("auto", "tensorflow")}
    for path, row in tf_rows.items():
        fp32, chosen = np.array(row.features), np.array(auto_rows[path].features)
        assert np.linalg.norm(chosen - fp32) / np.linalg.norm(fp32) < (0.2 if bf16 else 1e-5)
        data = Path(path.removeprefix("file:")).read_bytes()
        # the app's CNN is the Spark path's (engine, precision; its own threads): the same features
        assert np.abs(serving["tensorflow"].features(data) - fp32).max() < 1e-4
        app = serving["auto"].features(data)[0]
        assert np.linalg.norm(app - chosen) / np.linalg.norm(chosen) < (2e-2 if bf16 else 1e-5)
