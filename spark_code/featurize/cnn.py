"""The CNN: MobileNetV2's spec and weights (Keras, the source of truth) and the engines that run it."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from spark_code.featurize import hardware, onnx_export, openvino_engine

logger = logging.getLogger(__name__)

FEATURE_DIM = 1280
WEIGHTS_FILE = "mobilenet_v2_1.0_224_no_top.weights.h5"
ENGINES = (hardware.AUTO, *hardware.RUNTIMES)  # what FRUITS_ENGINE may say
DEFAULT_ENGINE = hardware.AUTO
# The CNN's settings and their bounds, declared here once (the settings, the resource and the featurizer use them).
BATCH_SIZE, MAX_BATCH_SIZE = 16, 4096  # images per model call (16: as fast as 64 in ONNX Runtime, less memory)
IMAGE_SIZE, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 224, 32, 1024  # square model input, pixels

Predict = Callable[[np.ndarray], np.ndarray]  # uint8 pixels (N, S, S, 3) → float32 features (N, 1280)


class WeightsError(ValueError):
    """The Keras weights file is missing or does not fit MobileNetV2 (no top)."""


@dataclass(frozen=True)
class CnnSpec:
    """MobileNetV2 (ImageNet, no top, average pooling) and the preprocessing that belongs to it."""

    input_size: int = 224
    feature_dim: int = FEATURE_DIM

    def build(self, weights: str | None):
        """Build the Keras model; `weights` is a weights-file path, "imagenet" (download) or None."""
        import tensorflow as tf

        return tf.keras.applications.MobileNetV2(
            weights=weights,
            include_top=False,
            pooling="avg",
            input_shape=(self.input_size, self.input_size, 3),
        )

    @staticmethod
    def preprocess(pixels):
        """Keras' own MobileNetV2 preprocessing (RGB scaled to [-1, 1]), on NumPy arrays or TF tensors."""
        from tensorflow.keras.applications.mobilenet_v2 import preprocess_input

        if isinstance(pixels, np.ndarray):
            pixels = pixels.astype(np.float32)
        return preprocess_input(pixels)


@dataclass(frozen=True)
class CnnEngine:
    """Which runtime serves the Keras model, in which precision: `onnx` (ONNX Runtime on the converted graph, fp32),
    `openvino` (OpenVINO's CPU plugin on the same graph, bf16 or fp32) or `tensorflow` (fp32).

    `threads` is the intra-op thread count of one model instance (0: the runtime's default).
    """

    name: str = "onnx"
    spec: CnnSpec = CnnSpec()
    threads: int = 1
    onnx_cache: str | None = None
    precision: str = hardware.FP32

    def __post_init__(self):
        if self.name not in hardware.RUNTIMES:
            raise ValueError(
                f"CNN engine {self.name!r} is not one of {hardware.RUNTIMES}: set FRUITS_ENGINE to one of {ENGINES}"
            )
        if self.precision != hardware.FP32 and (self.name, self.precision) != ("openvino", hardware.BF16):
            raise ValueError(f"CNN engine {self.name} runs in {hardware.FP32} only, not {self.precision}")

    @property
    def label(self) -> str:
        """`runtime-precision`, as `cnn_model` and the metadata record it."""
        return f"{self.name}-{self.precision}"

    @classmethod
    def chosen(
        cls, requested: str, spec: CnnSpec, threads: int, onnx_cache: str | None, flags: frozenset[str] | None = None
    ) -> CnnEngine:
        """The engine `requested` (FRUITS_ENGINE, `auto` included) resolves to on a CPU with `flags` (default:
        this one), logged once per process."""
        choice = hardware.choose(requested, flags)
        hardware.log_once(choice)
        return cls(choice.runtime, spec, threads, onnx_cache, choice.precision)


def weights_fingerprint(weights_path: str | None) -> str:
    """A short id of the weights file (path, size, mtime), used as an in-process cache key."""
    if weights_path is None:
        return "imagenet-download"
    stat = os.stat(weights_path)
    key = f"{os.path.abspath(weights_path)}:{stat.st_size}:{stat.st_mtime_ns}"
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def require_weights_file(weights_path: str | None, where: str = "") -> None:
    """A WeightsError naming the file and the fix when `weights_path` is set but is no file (`where`: a hint of
    where the file usually is)."""
    if weights_path is not None and not os.path.isfile(weights_path):
        raise WeightsError(
            f"weights file {weights_path!r} not found: set FRUITS_WEIGHTS to the path of {WEIGHTS_FILE}{where}, "
            "or unset it to let Keras download the ImageNet weights"
        )


def load_weights(spec: CnnSpec, weights_path: str | None) -> list[np.ndarray]:
    """Load the weights with Keras' own loader; clear errors for a missing or wrong file."""
    require_weights_file(weights_path)
    if weights_path is None:
        return _download_weights(spec)
    try:
        model = spec.build(weights_path)
    except (ValueError, OSError, KeyError, TypeError) as error:
        raise WeightsError(
            f"weights file {weights_path!r} is not a Keras MobileNetV2 (alpha 1.0, no top) weights file: {error}"
        ) from error
    return model.get_weights()


def _download_weights(spec: CnnSpec) -> list[np.ndarray]:
    """Keras' own ImageNet download: the fallback on machines with internet."""
    try:
        return spec.build("imagenet").get_weights()
    except Exception as error:  # Keras wraps network failures in a bare Exception
        raise WeightsError(
            f"Keras could not download the MobileNetV2 ImageNet weights ({error}): "
            f"set FRUITS_WEIGHTS to a local {WEIGHTS_FILE}"
        ) from error


def model_payload(engine: CnnEngine, weights_path: str | None):
    """What a worker needs to build the model: the ONNX bytes (onnx, openvino) or the weight arrays (tensorflow)."""
    if weights_path is not None and not os.path.isfile(weights_path):
        load_weights(engine.spec, weights_path)  # raises the WeightsError that names the file
    if engine.name in ("onnx", "openvino"):
        return onnx_export.cached_onnx(
            engine.spec, weights_path, engine.onnx_cache, lambda: load_weights(engine.spec, weights_path)
        )
    return load_weights(engine.spec, weights_path)


def build_predict(engine: CnnEngine, payload) -> Predict:
    """A predict function over uint8 pixel batches, for the engine's payload (see `model_payload`)."""
    if engine.name == "onnx":
        return onnx_export.onnx_predict(payload, engine.threads)
    if engine.name == "openvino":
        if engine.precision == hardware.BF16:
            hardware.require_bf16_here()
        return openvino_engine.openvino_predict(payload, engine.threads, engine.precision)
    return tensorflow_predict(engine.spec, payload, engine.threads)


def tensorflow_predict(spec: CnnSpec, weights: list[np.ndarray], threads: int) -> Predict:
    """A traced `tf.function`: Keras' preprocessing then the model in inference mode, any batch length."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    _set_tf_threads(tf, threads)
    model = spec.build(None)
    model.set_weights(weights)
    signature = [tf.TensorSpec([None, spec.input_size, spec.input_size, 3], tf.uint8)]
    traced = tf.function(
        lambda x: model(spec.preprocess(tf.cast(x, tf.float32)), training=False), input_signature=signature
    )
    return lambda pixels: traced(pixels).numpy()


def _set_tf_threads(tf, threads: int) -> None:
    """Pin TF's thread pools (once per process) so Spark task slots and TF threads do not oversubscribe."""
    if threads <= 0:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TF already initialised in this process: keep its pools
        pass
