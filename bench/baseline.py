"""The bare-model baseline: one plain Python process, file → decode → resize → preprocess → MobileNetV2.

`--engine tensorflow` runs the Keras model as a traced `tf.function` (TensorFlow's default threads); `--engine onnx`
runs the same model converted to ONNX in one ONNX Runtime session using every core; `--engine openvino` or `auto`
(what the pipeline chooses for this CPU: OpenVINO in bf16 where it has native bf16) the same graph in OpenVINO.
"""

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from bench.common import image_files
from bench.memory import PeakRss
from fruits_assets.deploy.settings import Settings
from spark_code.featurize.cnn import ENGINES, CnnEngine, CnnSpec, build_predict, model_payload
from spark_code.featurize.decode import try_decode


def run(root: Path, weights: str, batch_size: int, image_size: int, engine: str = "tensorflow") -> dict:
    """Featurize every image under root once; return timings, counts and peak memory."""
    with PeakRss() as memory:
        started = time.perf_counter()
        cache = Settings.from_env().onnx_cache
        cnn = CnnEngine.chosen(engine, CnnSpec(input_size=image_size), threads=0, onnx_cache=cache)  # 0: every core
        predict = build_predict(cnn, model_payload(cnn, weights))
        loaded = time.perf_counter()
        files, decode_s, infer_s, images, failed = image_files(root), 0.0, 0.0, 0, 0
        for start in range(0, len(files), batch_size):
            t0 = time.perf_counter()
            decoded = [try_decode(p.read_bytes(), image_size)[0] for p in files[start : start + batch_size]]
            pixels = [d for d in decoded if d is not None]
            t1 = time.perf_counter()
            predict(np.stack(pixels))
            infer_s += time.perf_counter() - t1
            decode_s += t1 - t0
            images, failed = images + len(pixels), failed + len(decoded) - len(pixels)
        seconds = time.perf_counter() - started
    return {
        "engine": cnn.name,
        "precision": cnn.precision,
        "images": images,
        "failed": failed,
        "seconds": round(seconds, 2),
        "images_per_s": round(images / seconds, 2),
        "startup_and_model_load_s": round(loaded - started, 2),
        "read_decode_preprocess_s": round(decode_s, 2),
        "inference_s": round(infer_s, 2),
        "threads": os.cpu_count(),
        "peak_rss_mib": memory.peak_mib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--engine", choices=ENGINES, default="tensorflow")
    args = parser.parse_args()
    print(json.dumps(run(args.root, args.weights, args.batch_size, args.image_size, args.engine)))


if __name__ == "__main__":
    main()
