"""The Keras model converted to ONNX once (tf2onnx), cached on disk by weights and size, served by ONNX Runtime."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from spark_code.storage import files

logger = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME = "pixels"


class ModelCacheError(RuntimeError):
    """No usable converted model in the cache, and no TensorFlow to convert one."""


def default_cache_dir() -> str:
    """Where converted models are kept: $XDG_CACHE_HOME/fruits-features/onnx (default ~/.cache/...)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fruits-features", "onnx")


def file_digest(path: str | None) -> str:
    """SHA-256 (first 16 hex digits) of a file's contents; "imagenet" for Keras' own download."""
    if path is None:
        return "imagenet"
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _versions() -> dict:
    import tf2onnx

    return {"opset": OPSET, "tf2onnx": tf2onnx.__version__}


def cache_paths(cache_dir: str, input_size: int, weights_digest: str) -> tuple[Path, Path]:
    """The ONNX file and its JSON sidecar for one (weights, input size)."""
    stem = Path(cache_dir) / f"mobilenet_v2-{input_size}px-{weights_digest}"
    return stem.with_suffix(".onnx"), stem.with_suffix(".json")


def cached_onnx(spec, weights_path: str | None, cache_dir: str | None, weights: Callable[[], list]) -> bytes:
    """The ONNX bytes of `spec` with these weights: read from the cache when intact, else converted and cached.

    `weights` loads the Keras weights (called only when a conversion is needed).
    """
    cache_dir = cache_dir or default_cache_dir()
    digest = file_digest(weights_path)
    model_path, sidecar = cache_paths(cache_dir, spec.input_size, digest)
    expected = {"input_size": spec.input_size, "weights_sha256": digest, "feature_dim": spec.feature_dim}
    problem, cached = _cache_problem(model_path, sidecar, expected)
    if problem is None:
        return cached
    if importlib.util.find_spec("tensorflow") is None:
        raise ModelCacheError(
            f"no usable ONNX model for {spec.input_size} px in {cache_dir} ({problem}), and no TensorFlow here to "
            "convert one: convert it where TensorFlow is installed (on EMR: bootstrap/emr_cluster.py upload, with the "
            "run's FRUITS_IMAGE_SIZE, then a new cluster) or set FRUITS_ONNX_CACHE to a folder that holds it"
        )
    logger.info("converting the Keras model to ONNX (%s)", problem)
    data = export(spec, weights())
    files.write_whole(str(model_path), data)
    record = {**expected, **_versions(), "sha256": hashlib.sha256(data).hexdigest()}
    files.write_whole(str(sidecar), json.dumps(record, indent=2).encode())
    return data


def _cache_problem(model_path: Path, sidecar: Path, expected: dict) -> tuple[str | None, bytes]:
    """(why the cached model cannot be used — missing, corrupt, another model — or None, the bytes read)."""
    if not model_path.is_file() or not sidecar.is_file():
        return f"no cached model at {model_path}", b""
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, ValueError) as error:
        return f"unreadable sidecar {sidecar}: {error}", b""
    data = model_path.read_bytes()
    if record.get("sha256") != hashlib.sha256(data).hexdigest():
        return f"{model_path} does not match its recorded checksum", data
    if {key: record.get(key) for key in expected} != expected or record.get("opset") != OPSET:
        return f"{model_path} was made for other settings", data
    shape = _io_shape(data)
    size, dim = expected["input_size"], expected["feature_dim"]
    if shape != ([size, size, 3], dim):
        return f"{model_path} takes {shape[0]} → {shape[1]}, not [{size}, {size}, 3] → {dim}", data
    return None, data


def _io_shape(data: bytes) -> tuple[list, object]:
    """(input shape without the batch axis, output width) declared by an ONNX graph, as ONNX Runtime reads it (no
    graph optimization: only the declarations are looked at; the `onnx` package is not needed where models run)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    dims, out = session.get_inputs()[0].shape, session.get_outputs()[0].shape
    return [d if isinstance(d, int) else 0 for d in dims[1:]], out[-1] if out and isinstance(out[-1], int) else None


def export(spec, weights: list[np.ndarray]) -> bytes:
    """Convert Keras' preprocessing + MobileNetV2 with these weights to ONNX (uint8 pixels in, features out)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import tf2onnx

    model = spec.build(None)
    model.set_weights(weights)
    size = spec.input_size
    signature = (tf.TensorSpec([None, size, size, 3], tf.uint8, name=INPUT_NAME),)

    @tf.function(input_signature=signature)
    def features(pixels):
        return model(spec.preprocess(tf.cast(pixels, tf.float32)), training=False)

    proto, _ = tf2onnx.convert.from_function(features, input_signature=signature, opset=OPSET)
    return proto.SerializeToString()


def onnx_predict(data: bytes, threads: int):
    """An ONNX Runtime session over the model bytes: uint8 pixels (N, S, S, 3) → float32 features (N, 1280)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(threads, 0)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda pixels: session.run(None, {name: np.ascontiguousarray(pixels, dtype=np.uint8)})[0]
