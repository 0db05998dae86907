"""Settings: FRUITS_* variables parsed once, and every bad one named with its value and the fix."""

import pytest

from fruits_assets.deploy.emr.settings import DeploymentError, deployment
from fruits_assets.deploy.settings import Settings, SettingsError


def test_unset_and_blank_variables_take_the_defaults():
    settings = Settings.from_env({"FRUITS_BATCH_SIZE": "  ", "PATH": "/bin"})
    assert (settings.batch_size, settings.image_size, settings.engine, settings.deployment) == (
        16,
        224,
        "onnx",
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


def test_the_deployment_switch_reads_the_same_settings():
    assert deployment({}) == "local" and deployment({"FRUITS_DEPLOYMENT": "EMR"}) == "emr"
    with pytest.raises(DeploymentError, match="FRUITS_DEPLOYMENT='gcp'"):
        deployment({"FRUITS_DEPLOYMENT": "gcp"})


def test_each_variable_is_documented_in_the_readme():
    from tests.conftest import REPO

    readme = (REPO / "README.md").read_text()
    missing = [Settings.variable(field) for field in Settings.model_fields if Settings.variable(field) not in readme]
    assert missing == []
