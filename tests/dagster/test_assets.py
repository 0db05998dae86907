"""The whole asset graph materialized with dagster.materialize on real photos, broken files included."""

import shutil

import pytest
from dagster import DagsterInstance, materialize

from fruits_assets.defs import CHECKS, FEATURE_ASSETS, FEATURE_CHECKS
from fruits_assets.defs.reduction import PcaConfig
from fruits_assets.deploy.deployments import local_resources
from spark_code.ingest import batches
from spark_code.storage import versions
from tests.helpers import materialize_features, metadata_of, table


def _rel(path, root):
    return path.split(str(root) + "/", 1)[1]


def test_all_assets_materialize_and_counts_reconcile(run, spark, sample_root, expected_outcomes):
    result, output, _ = run
    assert result.success
    raw, features, quarantined = (table(spark, output, n) for n in ("raw_images", "cnn_features", "quarantined_images"))
    assert raw.count() == len(expected_outcomes) == features.count() + quarantined.count()
    assert {_rel(r.path, sample_root) for r in features.collect()} == {
        k for k, v in expected_outcomes.items() if v == "featurized"
    }
    reasons = {_rel(r.path, sample_root): r.reason for r in quarantined.collect()}
    assert set(reasons) == {k for k, v in expected_outcomes.items() if v == "quarantined"}
    assert all(reasons.values())


def test_each_image_featurized_exactly_once_across_the_run(run, expected_outcomes, training_root):
    result, _, counted = run
    featurized = sum(v == "featurized" for v in expected_outcomes.values())
    undecodable = 4  # truncated, corrupt, 2 texts: decoded (and failed) once; empty/root files never reach the CNN
    training = len(list(training_root.rglob("*.jpg")))  # the classifier's training photos, featurized once too
    assert counted["cnn_images"] == featurized + training
    assert counted["images_decoded"] == featurized + undecodable + training
    assert metadata_of(result, "cnn_features")["cnn_images"] == featurized
    assert metadata_of(result, "training_features")["featurized"] == training


def test_pca_output_and_metadata(run, spark):
    result, output, _ = run
    pca = table(spark, output, "pca_features")
    meta = metadata_of(result, "pca_features")
    assert pca.columns == [*batches.IDENTITY, "label", batches.BATCH, "pca_features", "pca_model"]
    assert {len(r.pca_features) for r in pca.collect()} == {meta["k"]}
    assert meta["k_choice"] == "accuracy" and "variance_target" not in meta  # by default k is chosen by accuracy
    assert 0 < meta["explained_variance"] <= 1 and pca.schema["pca_features"].dataType.simpleString() == "array<float>"
    assert "cumulative explained variance" in meta["cumulative_variance"]
    for plot in ("variance_plot", "pca_scatter"):  # inline PNGs the UI renders
        assert meta[plot].startswith("![") and "(data:image/png;base64," in meta[plot]
    assert "Apple Braeburn" in {r.label for r in pca.collect()}


def test_raw_metadata_counts_classes(run, expected_outcomes):
    result, _, _ = run
    meta = metadata_of(result, "raw_images")
    assert meta["image_count"] == len(expected_outcomes)
    assert meta["class_count"] == 6  # 3 Fruits-360 + 2 original-size + "Broken Fruit"


def test_all_asset_checks_pass(run):
    result, _, _ = run
    evaluations = result.get_asset_check_evaluations()
    assert {e.check_name for e in evaluations} == {c.check_key.name for c in CHECKS}
    assert all(e.passed for e in evaluations), [(e.check_name, e.metadata) for e in evaluations if not e.passed]


def test_models_saved_and_reloadable(run, spark):
    from pyspark.ml.feature import PCAModel, StandardScalerModel

    result, output, _ = run
    pca = versions.load_model(spark, PCAModel, f"{output}/models", "pca_features")
    scaler = versions.load_model(spark, StandardScalerModel, f"{output}/models", "scaled_features")
    assert pca.getK() == metadata_of(result, "pca_features")["k"]
    assert scaler.mean.size == 1280


def test_rematerialize_replaces_version(run, spark, sample_root, weights_path, tmp_path):
    output = str(tmp_path / "copy")
    shutil.copytree(run[1], output)  # keep the shared run's tables untouched for other tests
    before = versions.latest_uri(f"{output}/models", "pca_features")
    result = materialize(  # no batch: an unpartitioned asset alone
        [*FEATURE_ASSETS, *FEATURE_CHECKS],
        selection=["pca_features"],
        resources=local_resources(str(sample_root), output, weights_path),
        run_config={"ops": {"pca_features": {"config": {"k": 4}}}},
        instance=DagsterInstance.ephemeral(),
    )
    assert result.success and metadata_of(result, "pca_features")["k"] == 4
    after = versions.latest_uri(f"{output}/models", "pca_features")
    assert after != before and versions.list_versions(f"{output}/models", "pca_features")[0] == [before, after]
    rows = table(spark, output, "pca_features").collect()
    assert {len(r.pca_features) for r in rows} == {4} and {r.pca_model for r in rows} == {after.rsplit("/", 1)[-1]}
    meta = metadata_of(result, "pca_features")  # one commit replaced every row: the old ones removed
    assert meta["rederived"] and meta["rows_added"] == meta["rows_removed"] == len(rows) == meta["row_count"]


def test_missing_root_fails_fast_naming_it(spark, tmp_path, weights_path):
    missing = str(tmp_path / "missing photos")
    result = materialize_features(local_resources(missing, str(tmp_path / "out"), weights_path), raise_on_error=False)
    assert not result.success
    assert "missing photos" in str(result.all_events) and "FRUITS_IMAGE_ROOT" in str(result.all_events)


def test_missing_weights_fail_before_any_spark_work(spark, sample_root, tmp_path):
    bad = str(tmp_path / "gone.weights.h5")
    result = materialize_features(local_resources(str(sample_root), str(tmp_path / "out"), bad), raise_on_error=False)
    assert not result.success
    assert "gone.weights.h5" in str(result.all_events)
    assert not (tmp_path / "out").exists()  # nothing was computed or written


def test_bad_pca_config_names_the_field():
    with pytest.raises(Exception, match="variance_target"):
        PcaConfig(variance_target=1.5)
