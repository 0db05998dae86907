"""Wiring: the code location loads, the job resolves, config errors name the bad value."""

import pytest
from dagster import AssetKey
from pydantic import ValidationError

from fruits_assets.definitions import defs as load_defs
from fruits_assets.io.resources import CnnResource

defs = load_defs()  # the code location, as Dagster loads it


def test_defs_load_and_job_resolves():
    job = defs.resolve_job_def("materialize_all")
    assert job is not None
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {
        "raw_images",
        "cnn_features",
        "quarantined_images",
        "scaled_features",
        "pca_features",
        "training_features",
        "fruit_classifier",
    }


def test_sensor_and_schedule_target_the_asset_jobs():
    assert defs.resolve_sensor_def("new_images").job_name == "materialize_all"
    assert defs.resolve_schedule_def("daily_refit").job_name == "refit_models"
    refit = {key.to_user_string() for key in defs.resolve_job_def("refit_models").asset_layer.executable_asset_keys}
    assert refit == {"scaled_features", "pca_features", "fruit_classifier"}  # no listing, no CNN


def test_image_level_assets_are_partitioned_by_ingest_batch():
    graph = defs.resolve_asset_graph()
    partitioned = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).partitions_def}
    assert partitioned == {"raw_images", "cnn_features", "quarantined_images"}
    assert {graph.get(k).partitions_def.name for k in graph.get_all_asset_keys() if graph.get(k).partitions_def} == {
        "ingest_batches"
    }
    parents = {k.to_user_string() for k in graph.get(AssetKey("scaled_features")).parent_keys}
    assert parents == {"cnn_features"}  # over every batch


def test_one_group_with_lineage():
    graph = defs.resolve_asset_graph()
    groups = {graph.get(k).group_name for k in graph.get_all_asset_keys()}
    assert groups == {"fruits"}
    parents = {
        k.to_user_string()
        for k in graph.get(
            next(iter(k for k in graph.get_all_asset_keys() if k.to_user_string() == "pca_features"))
        ).parent_keys
    }
    assert parents == {"scaled_features", "training_features"}  # k is chosen by the classifier's accuracy


@pytest.mark.parametrize(("field", "value"), [("batch_size", 0), ("image_size", 8), ("weights_path", " ")])
def test_cnn_config_errors_name_the_field(field, value):
    with pytest.raises(ValidationError, match=field):
        CnnResource(**{field: value})
