"""OpenVINO's CPU plugin on the converted ONNX graph: bf16 on CPUs with native bf16 (AMX, AVX512_BF16), else fp32."""

from __future__ import annotations

import logging
import threading

import numpy as np

from spark_code.featurize import hardware

logger = logging.getLogger(__name__)

_PRECISION = {hardware.BF16: "bf16", hardware.FP32: "f32"}


def compile_config(threads: int, precision: str) -> dict[str, str]:
    """The CPU plugin's settings: `threads` > 0 is one Spark task's share (one stream, that many threads, no core
    pinning: other tasks share the cores); 0 is every core, one stream per core fed by an async queue."""
    config = {"INFERENCE_PRECISION_HINT": _PRECISION[precision]}
    if threads > 0:
        return config | {
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": "1",
            "INFERENCE_NUM_THREADS": str(threads),
            "ENABLE_CPU_PINNING": "NO",
        }
    return config | {"PERFORMANCE_HINT": "THROUGHPUT"}


def openvino_predict(data: bytes, threads: int, precision: str):
    """An OpenVINO model over the ONNX bytes: uint8 pixels (N, S, S, 3) → float32 features (N, 1280).

    A batch is one inference: split over the compiled model's infer requests (one per stream) and run at once.
    """
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(data), "CPU", compile_config(threads, precision))
    requests = max(int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")), 1)
    queue = ov.AsyncInferQueue(compiled, requests)
    lock = threading.Lock()  # one batch at a time through the queue (the app's threads may share one model)

    def predict(pixels: np.ndarray) -> np.ndarray:
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        chunks = np.array_split(pixels, min(requests, len(pixels))) if len(pixels) else [pixels]
        results: list[np.ndarray | None] = [None] * len(chunks)

        def done(request, index):
            results[index] = request.get_output_tensor(0).data.copy()

        with lock:
            queue.set_callback(done)
            for index, chunk in enumerate(chunks):
                queue.start_async({0: chunk}, index)
            queue.wait_all()
        return np.concatenate(results).astype(np.float32, copy=False)

    return predict
