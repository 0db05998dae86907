"""The CNN engines: ONNX Runtime serves the Keras model with Keras' numbers; its cache is checked, never trusted."""

import json

import numpy as np
import pytest

from spark_code.featurize import cnn, hardware, onnx_export
from spark_code.featurize.cnn import CnnEngine, CnnSpec


@pytest.fixture(scope="module")
def pixels(fruits_dir, original_dir):
    """Real photos, 100×100 and original sizes, as uint8 pixel batches at 224 and 160 px."""
    from spark_code.featurize.decode import decode_image

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
    with pytest.raises(ValueError, match="FRUITS_ENGINE"):
        CnnEngine("auto")  # `auto` is a choice to resolve (CnnEngine.chosen), not a runtime


def _cpuinfo(tmp_path, flags: str):
    """A /proc/cpuinfo of one CPU with these flags (what the engine choice reads)."""
    path = tmp_path / f"cpuinfo-{len(flags)}"
    path.write_text(f"processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    return hardware.cpu_flags(path)


def test_engine_choice_follows_the_cpus_bf16(tmp_path):
    genoa = _cpuinfo(tmp_path, "fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni")
    sapphire = _cpuinfo(tmp_path, "fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile")
    skylake = _cpuinfo(tmp_path, "fpu sse2 avx2 avx512f avx512_vnni")
    assert hardware.native_bf16(sapphire) == ("amx_bf16", "avx512_bf16") and not hardware.native_bf16(skylake)
    spec = CnnSpec()
    chosen = {
        name: CnnEngine.chosen("auto", spec, 1, None, flags)
        for name, flags in [("genoa", genoa), ("sapphire", sapphire), ("skylake", skylake)]
    }
    assert chosen["genoa"].label == chosen["sapphire"].label == "openvino-bf16"
    assert chosen["skylake"].label == "onnx-fp32"  # the fastest fp32 engine measured here
    assert CnnEngine.chosen("openvino", spec, 1, None, skylake).label == "openvino-fp32"
    assert CnnEngine.chosen("onnx", spec, 1, None, sapphire).label == "onnx-fp32"  # FRUITS_ENGINE forces one
    assert hardware.cpu_flags(tmp_path / "no-such-file") == frozenset()  # not Linux: no flags, fp32
    with pytest.raises(ValueError, match="FRUITS_ENGINE"):
        hardware.choose("tflite", sapphire)
    with pytest.raises(ValueError, match="fp32 only"):
        CnnEngine("onnx", spec, precision="bf16")
    with pytest.raises(RuntimeError, match="no native bf16.*FRUITS_ENGINE=onnx"):
        hardware.require_bf16_here("a core node", skylake)


def test_bf16_features_stay_close_to_fp32_and_name_the_same_fruit(pixels, weights_path, tmp_path):
    """OpenVINO in bf16 against ONNX Runtime in fp32 on real photos: ~10 % relative L2, each photo's nearest
    reference photo (cosine) the same."""
    from spark_code.featurize import openvino_engine

    spec = CnnSpec()
    data = cnn.model_payload(CnnEngine("onnx", spec, onnx_cache=str(tmp_path)), weights_path)
    fp32 = onnx_export.onnx_predict(data, 1)(pixels[224])
    bf16 = openvino_engine.openvino_predict(data, 1, "bf16")(pixels[224])
    assert bf16.shape == fp32.shape and bf16.dtype == np.float32
    error = np.linalg.norm(bf16 - fp32, axis=1) / np.linalg.norm(fp32, axis=1)
    assert error.max() < 0.2, error
    if hardware.native_bf16(hardware.this_cpu()):
        assert error.mean() > 1e-3  # really computed in bf16 here (fp32 would agree to ~1e-6)
    fp32_all = openvino_engine.openvino_predict(data, 0, "fp32")(pixels[224])  # every core, async requests
    assert np.abs(fp32_all - fp32).max() < 1e-3

    def nearest(queries, bank):
        q, b = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (queries, bank))
        similarity = q @ b.T
        np.fill_diagonal(similarity, -np.inf)  # not itself
        return similarity.argmax(axis=1)

    assert (nearest(bf16, fp32) == nearest(fp32, fp32)).all()
