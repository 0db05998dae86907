"""The CNN engines: ONNX Runtime serves the Keras model with Keras' numbers; its cache is checked, never trusted."""

import json

import numpy as np
import pytest

from spark_code.featurize import cnn, onnx_export
from spark_code.featurize.cnn import CnnEngine, CnnSpec


@pytest.fixture(scope="module")
def pixels(fruits_dir, original_dir):
    """Real photos, 100×100 and original sizes, as uint8 pixel batches at 224 and 160 px."""
    from spark_code.ingest.images import decode_image

    paths = sorted((fruits_dir / "Banana").iterdir())[:3] + sorted((original_dir / "Cherry 3").iterdir())[:3]
    return {size: np.stack([decode_image(p.read_bytes(), size) for p in paths]) for size in (224, 160)}


@pytest.mark.parametrize("size", [224, 160])
def test_onnx_features_equal_keras_predict(pixels, weights_path, tmp_path, size):
    spec = CnnSpec(input_size=size)
    engine = CnnEngine("onnx", spec, threads=1, onnx_cache=str(tmp_path))
    predict = cnn.build_predict(engine, cnn.model_payload(engine, weights_path))
    expected = spec.build(weights_path).predict(spec.preprocess(pixels[size]), verbose=0)
    actual = predict(pixels[size])
    assert actual.shape == (len(pixels[size]), 1280) and actual.dtype == np.float32
    assert np.abs(actual - expected).max() < 1e-4
    assert actual.std() > 0.1


def test_tensorflow_engine_equals_keras_predict(pixels, weights_path):
    spec = CnnSpec()
    engine = CnnEngine("tensorflow", spec, threads=1)
    predict = cnn.build_predict(engine, cnn.model_payload(engine, weights_path))
    expected = spec.build(weights_path).predict(spec.preprocess(pixels[224]), verbose=0)
    assert np.abs(predict(pixels[224]) - expected).max() < 1e-4  # thread counts change oneDNN sums slightly


def test_onnx_cache_is_reused_then_rebuilt_when_corrupt_or_mismatched(weights_path, tmp_path):
    spec, cache = CnnSpec(input_size=96), str(tmp_path)
    calls = []

    def weights():
        calls.append(1)
        return cnn.load_weights(spec, weights_path)

    def serve() -> bytes:
        data = onnx_export.cached_onnx(spec, weights_path, cache, weights)
        assert onnx_export.onnx_predict(data, 1)(np.zeros((1, 96, 96, 3), np.uint8)).shape == (1, 1280)
        assert data == model.read_bytes()  # what was served is what the cache now holds
        return data

    model, sidecar = onnx_export.cache_paths(cache, 96, onnx_export.file_digest(weights_path))
    first = serve()
    assert serve() == first and len(calls) == 1  # the second call read the cache

    model.write_bytes(first[: len(first) // 2])  # a truncated file (a crash mid-copy, a full disk)
    serve()
    assert len(calls) == 2

    other = onnx_export.cached_onnx(CnnSpec(input_size=64), weights_path, cache, weights)
    record = json.loads(onnx_export.cache_paths(cache, 64, onnx_export.file_digest(weights_path))[1].read_text())
    model.write_bytes(other)  # another model, its checksum copied into the sidecar: the declared shape is wrong
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "sha256": record["sha256"]}))
    assert serve() != other and len(calls) == 4


def test_unknown_engine_names_the_variable():
    with pytest.raises(ValueError, match="FRUITS_ENGINE"):
        CnnEngine("litert")
