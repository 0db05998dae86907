"""Growth: the new-photos sensor, incremental featurization, and the refit policy of the scaler and the PCA."""

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from dagster import AssetCheckSeverity, AssetKey, DagsterInstance, build_schedule_context, build_sensor_context
from PIL import Image
from pyspark.ml.feature import PCAModel, StandardScalerModel

from fruits_assets.automation import daily_refit, new_images
from fruits_assets.definitions import build_defs
from fruits_assets.deployments import local_resources
from fruits_assets.partitions import CHANGES_TAG, ingest_batches
from fruits_assets.resources import CnnResource, ImageSource
from spark_code import batches, reduce, snapshot, storage
from tests.conftest import CLASSES, FRUITS, first_images
from tests.helpers import materialize_features, metadata_of

# ---- the sensor ------------------------------------------------------------------------------------------------


def _tick(root, cursor=None, settle=0.0):
    context = build_sensor_context(
        cursor=cursor, resources={"image_source": ImageSource(root=str(root), settle_seconds=settle)}
    )
    result = new_images(context)
    return result, context.cursor if result.cursor is None else result.cursor


def _seed(root, n=2):
    for name in CLASSES[:2]:
        (root / name).mkdir(parents=True, exist_ok=True)
        for image in first_images(FRUITS / name, n):
            shutil.copy(image, root / name / image.name)


def test_sensor_sees_everything_then_nothing_then_only_what_changed(tmp_path):
    _seed(tmp_path)
    first, cursor = _tick(tmp_path)
    assert len(first.run_requests) == 1 and first.run_requests[0].tags["fruits/new"] == "4"
    batch = first.run_requests[0].partition_key  # a new ingest batch, added as a dynamic partition
    assert batches.check_key(batch) and first.dynamic_partitions_requests[0].partition_keys == [batch]
    second, cursor = _tick(tmp_path, cursor)
    assert not second.run_requests and "no settled change" in second.skip_reason.skip_message
    extra = first_images(FRUITS / CLASSES[2], 2)
    (tmp_path / CLASSES[2]).mkdir()
    for image in extra:
        shutil.copy(image, tmp_path / CLASSES[2] / image.name)
    third, cursor = _tick(tmp_path, cursor)
    assert third.run_requests[0].tags["fruits/new"] == "2" and third.run_requests[0].tags["fruits/changed"] == "0"
    state, _ = snapshot.advance(snapshot.State.decode(cursor), snapshot.list_local(str(tmp_path)), 0)
    assert set(state.accepted) == {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.jpg")}
    edited = next((tmp_path / CLASSES[0]).glob("*.jpg"))
    edited.write_bytes(edited.read_bytes() + b"\0")
    gone = next((tmp_path / CLASSES[1]).glob("*.jpg"))
    gone.unlink()
    fourth, cursor = _tick(tmp_path, cursor)
    tags = fourth.run_requests[0].tags
    assert (tags["fruits/new"], tags["fruits/changed"], tags["fruits/deleted"]) == ("0", "1", "1")
    assert fourth.run_requests[0].run_key != third.run_requests[0].run_key
    assert len({r.run_requests[0].partition_key for r in (first, third, fourth)}) == 3


def test_changes_name_exactly_the_files():
    before = snapshot.State({"a/1.jpg": (10, 1), "a/2.jpg": (10, 1), "b/3.jpg": (10, 1)})
    now = {"a/1.jpg": (10, 1), "a/2.jpg": (11, 2), "c/4.jpg": (5, 1)}
    state, changes = snapshot.advance(before, now, settle_s=0, now_ns=10**12)
    assert (changes.new, changes.changed, changes.deleted) == (["c/4.jpg"], ["a/2.jpg"], ["b/3.jpg"])
    assert state.accepted == now
    assert snapshot.State.decode(state.encode()).accepted == now  # the cursor survives a restart
    key = snapshot.run_key("cursor-1", changes, state)  # the same tick evaluated again: the same run
    assert key == snapshot.run_key("cursor-1", changes, state) != snapshot.run_key("cursor-2", changes, state)
    again, other = snapshot.advance(before, {**now, "a/2.jpg": (12, 3)}, settle_s=0, now_ns=10**12)
    assert snapshot.run_key("cursor-1", other, again) != key  # the same paths, another version of one of them


def test_half_written_file_waits_until_its_size_holds(tmp_path):
    _seed(tmp_path, n=1)
    old = time.time() - 3600
    for path in tmp_path.rglob("*.jpg"):
        os.utime(path, (old, old))
    _, cursor = _tick(tmp_path, settle=60)
    growing = tmp_path / CLASSES[0] / "upload.jpg"
    data = first_images(FRUITS / CLASSES[0], 3)[2].read_bytes()
    growing.write_bytes(data[: len(data) // 2])  # just written: still being uploaded
    result, cursor = _tick(tmp_path, cursor, settle=60)
    assert not result.run_requests and "1 file(s) still being written" in result.skip_reason.skip_message
    growing.write_bytes(data)  # the size changed between the two listings: wait again
    result, cursor = _tick(tmp_path, cursor, settle=60)
    assert not result.run_requests
    result, cursor = _tick(tmp_path, cursor, settle=60)  # same size and mtime as last tick: complete
    assert result.run_requests[0].tags["fruits/new"] == "1"


def test_schedule_refits_scaler_and_pca_daily():
    assert daily_refit.cron_schedule == "0 3 * * *"
    request = daily_refit.evaluate_tick(build_schedule_context()).run_requests[0]
    ops = request.run_config["ops"]
    assert ops["scaled_features"]["config"]["refit"] and ops["pca_features"]["config"]["refit"]


# ---- incremental materializations --------------------------------------------------------------------------


def _materialize(root, output, weights, run_config=None, instance=None):
    from spark_code import featurize

    before = featurize.process_totals()
    resources = local_resources(str(root), str(output), weights)
    result = materialize_features(resources, instance or DagsterInstance.ephemeral(), run_config=run_config)
    after = featurize.process_totals()
    return result, {key: after[key] - before[key] for key in after}


@pytest.fixture(scope="module")
def grown(spark, weights_path, tmp_path_factory):
    """A root materialized, then grown (2 new photos, 1 changed, 1 deleted) and materialized again."""
    root, output = tmp_path_factory.mktemp("growing"), tmp_path_factory.mktemp("grown-out")
    _seed(root, n=3)
    (root / "Broken Fruit").mkdir()
    (root / "Broken Fruit" / "notes.jpg").write_text("not an image")
    instance = DagsterInstance.ephemeral()
    first, first_counts = _materialize(root, output, weights_path, instance=instance)
    first_batch = storage.partition_uris(spark, str(output), "cnn_features")
    first_pca = {r.path: r for r in batches.read_current(spark, str(output), "pca_features").collect()}
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
        "first_batch": first_batch,
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


def test_each_batch_is_a_partition_and_earlier_batches_are_not_rewritten(grown, spark):
    output = str(grown["output"])
    keys = grown["instance"].get_dynamic_partitions(ingest_batches.name)
    assert len(keys) == 2 and keys == sorted(keys)
    (first_key, first_uri), (second_key, _) = storage.partition_uris(spark, output, "cnn_features").items()
    assert grown["first_batch"] == {first_key: first_uri}  # the first batch's version was left as it was
    assert (first_key, second_key) == tuple(keys)
    rows = {
        key: spark.read.parquet(uri).count() for key, uri in storage.partition_uris(spark, output, "raw_images").items()
    }
    assert rows == {first_key: 7, second_key: 4}  # 6 photos + the text file; then 2 new, 1 changed, 1 deleted
    checks = {e.check_name: e.passed for e in grown["second"][0].get_asset_check_evaluations()}
    assert checks["counts_reconcile"] and all(checks.values())


def test_incremental_outputs_equal_a_full_recompute(grown, spark, weights_path, tmp_path):
    root, output = grown["root"], grown["output"]
    features = {
        r.path: np.array(r.features) for r in batches.read_current(spark, str(output), "cnn_features").collect()
    }
    assert f"file:{grown['deleted']}" not in features
    assert set(features) == {f"file:{p}" for p in root.rglob("*.jpg") if p.parent.name != "Broken Fruit"}
    _materialize(root, tmp_path / "full", weights_path)
    recomputed = {
        r.path: np.array(r.features)
        for r in batches.read_current(spark, str(tmp_path / "full"), "cnn_features").collect()
    }
    assert recomputed.keys() == features.keys()
    assert max(np.abs(recomputed[p] - features[p]).max() for p in features) < 1e-5
    quarantined = batches.read_current(spark, str(output), "quarantined_images").collect()
    assert [r.path.rsplit("/", 1)[-1] for r in quarantined] == ["notes.jpg"]


def test_new_rows_projected_with_the_saved_model_version(grown, spark):
    output = str(grown["output"])
    _, _, first_pca = grown["first"]
    pca = {r.path: r for r in batches.read_current(spark, output, "pca_features").collect()}
    assert {r.pca_model for r in pca.values()} == {next(iter(first_pca.values())).pca_model}
    assert metadata_of(grown["second"][0], "pca_features")["refit"] is False
    unchanged = [p for p in pca if p in first_pca and p != f"file:{grown['changed']}"]
    assert unchanged and all(np.allclose(pca[p].pca_features, first_pca[p].pca_features, atol=1e-9) for p in unchanged)
    # the same projection a full recompute gives: the saved scaler + PCA applied to the features again
    scaler = storage.load_model(spark, StandardScalerModel, f"{output}/models", "scaled_features")
    model = storage.load_model(spark, PCAModel, f"{output}/models", "pca_features")
    features = batches.read_current(spark, output, "cnn_features")
    again = reduce.transform_arrays(model, reduce.transform_arrays(scaler, features)).collect()
    assert max(np.abs(np.array(r.pca_features) - np.array(pca[r.path].pca_features)).max() for r in again) < 1e-6


def test_a_batch_scales_and_projects_only_its_own_rows(grown, spark):
    first, second = (
        metadata_of(grown["first"][0], "scaled_features"),
        metadata_of(grown["second"][0], "scaled_features"),
    )
    assert (first["parts_written"], first["rows_written"]) == (1, 6)  # the first batch: every featurized photo
    assert (second["refit"], second["parts_written"], second["rows_written"]) == (False, 1, 3)  # 2 new + 1 changed
    projected = metadata_of(grown["second"][0], "pca_features")
    assert (projected["batches_projected"], projected["rows_written"]) == (1, 3)
    first_key = next(iter(grown["first_batch"]))
    for name in ("scaled_features", "pca_features"):  # the first batch's parts were not written again
        assert len(storage.list_versions(spark, str(grown["output"]), f"{name}/{first_key}")[0]) == 1


def test_drift_is_measured_and_warned_but_the_batch_is_only_projected(spark, weights_path, tmp_path, monkeypatch):
    from fruits_assets import assets, console

    root, output = tmp_path / "root", tmp_path / "out"
    _seed(root, n=3)
    _materialize(root, output, weights_path)
    noise = np.random.default_rng(7).integers(0, 256, size=(2, 100, 100, 3), dtype=np.uint8)
    for i, pixels in enumerate(noise):  # nothing like a fruit: the saved basis explains little of these rows
        Image.fromarray(pixels).save(root / CLASSES[0] / f"noise-{i}.png")
    monkeypatch.setattr(assets, "MIN_DRIFT_ROWS", 2)  # two rows are enough to measure on this tiny sample
    before = storage.latest_uri(spark, f"{output}/models", "pca_features")
    strict = {"ops": {"pca_features": {"config": {"max_drift": 0.03}}}}
    result, counts = _materialize(root, output, weights_path, strict)
    pca = metadata_of(result, "pca_features")
    assert result.success and counts["cnn_images"] == 2
    assert pca["drift"] > 0.03 and pca["refit_due"] is True and pca["refit"] is False
    assert (pca["rows_written"], storage.latest_uri(spark, f"{output}/models", "pca_features")) == (2, before)
    check = next(e for e in result.get_asset_check_evaluations() if e.check_name == "pca_basis_fits_new_rows")
    assert not check.passed and check.severity == AssetCheckSeverity.WARN  # a warning: the run still succeeds
    assert console.failed_checks(result) == ([], ["pca_basis_fits_new_rows"])  # the main command exits 0
    lines = console.summary(result, str(output), tmp_path / "log", "dagster dev")
    assert lines[0].endswith(": success") and "warnings: ['pca_basis_fits_new_rows']" in " ".join(lines)


def test_daily_refit_job_fits_new_models_without_cnn_work(grown, spark, weights_path):
    from spark_code import featurize

    output = str(grown["output"])
    before = storage.latest_uri(spark, f"{output}/models", "pca_features")
    defs = build_defs(local_resources(str(grown["root"]), output, weights_path))
    request = daily_refit.evaluate_tick(build_schedule_context()).run_requests[0]
    totals = featurize.process_totals()
    job = defs.resolve_job_def(daily_refit.job_name)
    result = job.execute_in_process(  # the classifier is left out: this output has no training_features
        run_config=request.run_config,
        instance=DagsterInstance.ephemeral(),
        asset_selection=[AssetKey("scaled_features"), AssetKey("pca_features")],
    )
    assert featurize.process_totals()["cnn_images"] == totals["cnn_images"]  # no listing, no CNN work at all
    assert metadata_of(result, "scaled_features")["refit"] and metadata_of(result, "pca_features")["refit"]
    versions = {r.pca_model for r in batches.read_current(spark, output, "pca_features").collect()}
    assert len(versions) == 1 and versions != {before.rsplit("/", 1)[-1]}


def test_new_cnn_settings_featurize_every_image_again(grown, spark, weights_path, tmp_path):
    from spark_code import featurize

    output = tmp_path / "copy"
    shutil.copytree(grown["output"], output)  # keep the shared tables as they are
    resources = local_resources(str(grown["root"]), str(output), weights_path)
    resources["cnn"] = CnnResource(weights_path=weights_path, image_size=96)  # other settings, other features
    before = featurize.process_totals()["cnn_images"]
    result = materialize_features(resources)
    assert featurize.process_totals()["cnn_images"] - before == 7  # every image again, with the new settings
    raw = metadata_of(result, "raw_images")
    assert (raw["new"], raw["changed"], raw["deleted"]) == (0, 8, 0)  # the batches' files, the text file too
    models = {r.cnn_model for r in batches.read_current(spark, str(output), "cnn_features").collect()}
    assert models == {resources["cnn"].model_key()} and "96px" in next(iter(models))
    assert metadata_of(result, "scaled_features")["refit"] and metadata_of(result, "pca_features")["refit"]


def test_switching_the_cnn_engine_featurizes_every_image_again_with_the_same_numbers(
    grown, spark, weights_path, tmp_path
):
    from spark_code import featurize
    from spark_code.serving import FruitClassifier, ServingPipeline

    output = tmp_path / "copy"
    shutil.copytree(grown["output"], output)
    onnx_rows = {r.path: r for r in batches.read_current(spark, str(output), "cnn_features").collect()}
    resources = local_resources(str(grown["root"]), str(output), weights_path)
    resources["cnn"] = CnnResource(weights_path=weights_path, engine="tensorflow")
    before = featurize.process_totals()["cnn_images"]
    result = materialize_features(resources)
    assert result.success and featurize.process_totals()["cnn_images"] - before == 7  # rows never mix engines
    tf_rows = {r.path: r for r in batches.read_current(spark, str(output), "cnn_features").collect()}
    assert {r.cnn_model for r in tf_rows.values()} == {resources["cnn"].model_key()}
    assert "tensorflow" in resources["cnn"].model_key() and all("onnx" in r.cnn_model for r in onnx_rows.values())
    assert set(tf_rows) == set(onnx_rows)
    pipeline = ServingPipeline(np.zeros(1280), np.ones(1280), None, np.zeros((1, 1280)), np.zeros(1), ["x"], 224)
    serving = {name: FruitClassifier(pipeline, weights_path, engine=name) for name in ("onnx", "tensorflow")}
    for path, row in tf_rows.items():
        assert np.abs(np.array(row.features) - np.array(onnx_rows[path].features)).max() < 1e-4
        data = Path(path.removeprefix("file:")).read_bytes()
        for name, rows in (("tensorflow", tf_rows), ("onnx", onnx_rows)):  # classify makes the Spark path's features
            assert np.abs(serving[name].features(data) - np.array(rows[path].features)).max() < 1e-4


def test_a_sensor_run_takes_the_batch_the_sensor_found_without_listing(spark, weights_path, tmp_path):
    from spark_code import featurize

    root, output = tmp_path / "root", tmp_path / "out"
    _seed(root, n=2)
    resources = local_resources(str(root), str(output), weights_path)
    state = resources["image_source"].state_uri  # the sensor keeps its snapshots beside the tables
    source = ImageSource(root=str(root), state_uri=state, settle_seconds=0.0)  # a photo counts once copied
    instance, cursor = DagsterInstance.ephemeral(), None

    def tick_and_run():
        nonlocal cursor
        ticked = new_images(build_sensor_context(cursor=cursor, resources={"image_source": source}))
        request, cursor = ticked.run_requests[0], ticked.cursor
        before = featurize.process_totals()["cnn_images"]
        result = materialize_features(resources, instance, key=request.partition_key, tags=request.tags)
        return request, result, featurize.process_totals()["cnn_images"] - before

    request, result, cnn_images = tick_and_run()
    assert CHANGES_TAG in request.tags and cnn_images == 4 and metadata_of(result, "raw_images")["listing"] == "sensor"
    new = first_images(FRUITS / CLASSES[2], 1)[0]
    (root / CLASSES[2]).mkdir()
    shutil.copy(new, root / CLASSES[2] / new.name)
    gone = sorted((root / CLASSES[0]).glob("*.jpg"))[0]
    gone.unlink()
    request, result, cnn_images = tick_and_run()
    raw = metadata_of(result, "raw_images")
    assert (raw["listing"], raw["new"], raw["changed"], raw["deleted"], cnn_images) == ("sensor", 1, 0, 1, 1)
    assert all(e.passed for e in result.get_asset_check_evaluations())
    current = {r.path for r in batches.read_current(spark, str(output), "pca_features").collect()}
    assert current == {f"file:{p}" for p in root.rglob("*.jpg")}  # the union of the batches: the root as it is now
