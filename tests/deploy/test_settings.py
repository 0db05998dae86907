"""Settings: FRUITS_* variables parsed once, and every bad one named with its value and the fix."""

import pytest

from fruits_assets.deploy.emr.settings import DeploymentError, deployment
from fruits_assets.deploy.settings import Settings, SettingsError


def test_unset_and_blank_variables_take_the_defaults():
    settings = Settings.from_env({"FRUITS_BATCH_SIZE": "  ", "PATH": "/bin"})
    assert (settings.batch_size, settings.image_size, settings.engine, settings.deployment) == (
        16,
        224,
        "auto",
        "local",
    )
    assert settings.output_uri.endswith("/data") and settings.model_fields_set == set()


def test_values_are_typed_and_normalised():
    env = {"FRUITS_BATCH_SIZE": "32", "FRUITS_ENGINE": "TensorFlow", "FRUITS_ACCURACY_FLOOR": "0.97"}
    settings = Settings.from_env(env)
    assert (settings.batch_size, settings.engine, settings.accuracy_floor) == (32, "tensorflow", 0.97)


def test_every_bad_variable_is_named_with_its_value():
    env = {"FRUITS_BATCH_SIZE": "sixteen", "FRUITS_IMAGE_SIZE": "8", "FRUITS_ENGINE": "tflite"}
    with pytest.raises(SettingsError) as error:
        Settings.from_env(env)
    message = str(error.value)
    for expected in ("FRUITS_BATCH_SIZE='sixteen'", "valid integer", "FRUITS_IMAGE_SIZE='8'", "FRUITS_ENGINE='tflite'"):
        assert expected in message
    assert "unset FRUITS_BATCH_SIZE" in message


def test_the_sensor_settle_time_reaches_both_deployments():
    from fruits_assets.deploy.deployments import emr_resources, local_resources

    env = {"FRUITS_SETTLE_SECONDS": "2.5", "FRUITS_EMR_STAGING_BUCKET": "fruits-data"}
    env |= {"FRUITS_EMR_CLUSTER_ID": "j-2AXXXXXXGAPLF"}
    env |= {
        "FRUITS_OUTPUT_URI": "s3://fruits-data/out",
        "FRUITS_IMAGE_ROOT": "s3://fruits-data/images",
        "FRUITS_EMR_REGION": "eu-west-3",
    }
    settings = Settings.from_env(env)
    assert local_resources(settings=settings)["image_source"].settle_seconds == 2.5
    assert emr_resources(settings=settings)["image_source"].settle_seconds == 2.5
    with pytest.raises(SettingsError, match="FRUITS_SETTLE_SECONDS='-1'"):
        Settings.from_env({"FRUITS_SETTLE_SECONDS": "-1"})


def test_the_deployment_switch_reads_the_same_settings():
    assert deployment({}) == "local" and deployment({"FRUITS_DEPLOYMENT": "EMR"}) == "emr"
    with pytest.raises(DeploymentError, match="FRUITS_DEPLOYMENT='gcp'"):
        deployment({"FRUITS_DEPLOYMENT": "gcp"})


def test_each_variable_is_documented_in_the_docs():
    from tests.conftest import REPO

    page = (REPO / "docs" / "configuration.md").read_text()
    missing = [Settings.variable(field) for field in Settings.model_fields if Settings.variable(field) not in page]
    assert missing == []


def test_each_emr_variable_is_declared_once_in_settings():
    """EmrSettings takes its FRUITS_EMR_* fields from Settings: same type, default, description and checks, so no
    second declaration can drift (a field re-declared in EmrSettings with another default fails here)."""
    from fruits_assets.deploy.emr.settings import EMR_FIELDS, ENV_VARS, ROOTS, EmrSettings

    emr_variables = {field for field in Settings.model_fields if field.startswith("emr_")} - {"emr_node"}
    assert {f"emr_{field}" for field in EMR_FIELDS} == emr_variables
    assert set(EmrSettings.model_fields) == set(EMR_FIELDS) | set(ROOTS) == set(ENV_VARS)
    for field in EMR_FIELDS:
        mine, source = EmrSettings.model_fields[field], Settings.model_fields[f"emr_{field}"]
        assert (mine.annotation, mine.default, mine.description, mine.metadata) == (
            source.annotation,
            source.default,
            source.description,
            source.metadata,
        ), field
        assert ENV_VARS[field] == Settings.variable(f"emr_{field}")
    required = {
        "FRUITS_EMR_CLUSTER_ID": "j-1ABCDEFGHIJKL",
        "FRUITS_EMR_STAGING_BUCKET": "my-bucket",
        "FRUITS_OUTPUT_URI": "s3://my-bucket/out",
        "FRUITS_IMAGE_ROOT": "s3://my-bucket/images",
        "FRUITS_EMR_REGION": "eu-west-3",
    }
    emr, defaults = EmrSettings.from_env(required), Settings.from_env({})
    unset = [field for field in EMR_FIELDS if ENV_VARS[field] not in required]
    assert unset and {f: getattr(emr, f) for f in unset} == {f: getattr(defaults, f"emr_{f}") for f in unset}


def test_bad_emr_variables_are_named_by_settings_with_the_fix():
    env = {"FRUITS_EMR_CLUSTER_ID": "cluster-1", "FRUITS_EMR_POLL_SECONDS": "0", "FRUITS_EMR_PACKAGE_URI": "/code.zip"}
    with pytest.raises(SettingsError) as error:
        Settings.from_env(env)
    message = str(error.value)
    for expected in ("FRUITS_EMR_CLUSTER_ID='cluster-1'", "j-2AXXXXXXGAPLF", "unset FRUITS_EMR_CLUSTER_ID"):
        assert expected in message
    assert "FRUITS_EMR_POLL_SECONDS='0'" in message and "FRUITS_EMR_PACKAGE_URI='/code.zip'" in message
    settings = Settings.from_env({"FRUITS_EMR_STAGING_PREFIX": "/team/staging/", "FRUITS_EMR_REGION": "eu-west-1"})
    assert (settings.emr_staging_prefix, settings.emr_region) == ("team/staging", "eu-west-1")
