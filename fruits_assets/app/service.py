"""`fruits serve`'s service: its options, the live classifier, the micro-batcher and the decode threads."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fruits_assets.app import uploads
from fruits_assets.app.batching import MicroBatcher
from fruits_assets.app.engine import FruitClassifier
from fruits_assets.app.models import RELOAD_ERRORS, LiveModel
from fruits_assets.deploy.settings import Settings
from spark_code.classify.serving import ServingPipeline
from spark_code.featurize.cnn import DEFAULT_ENGINE
from spark_code.featurize.onnx_export import file_digest

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeOptions:
    """What the server needs: the models folder, the CNN's weights and engine, and the serving settings."""

    models: str
    weights: str | None
    engine: str = DEFAULT_ENGINE
    onnx_cache: str | None = None
    max_upload_bytes: int = 20 * 10**6
    max_batch: int = 16
    window_s: float = 0.005
    capacity: int = 128
    poll_seconds: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings, models: str, weights: str | None, engine: str) -> ServeOptions:
        """Options from the FRUITS_* settings, with the command's models folder, weights and engine."""
        return cls(
            models=models,
            weights=weights,
            engine=engine,
            onnx_cache=settings.onnx_cache,
            max_upload_bytes=int(settings.serve_max_upload_mb * 10**6),
            max_batch=settings.batch_size,
            window_s=settings.serve_batch_window_ms / 1000,
            capacity=settings.serve_queue,
            poll_seconds=settings.serve_poll_seconds,
        )


class Service:
    """The live classifier, the batcher and the decode threads of one server."""

    def __init__(self, options: ServeOptions):
        self.options = options
        self.live = LiveModel(options.models, self._build, options.poll_seconds)
        self.batcher = MicroBatcher(self.live, options.max_batch, options.window_s, options.capacity)
        self.decoders = ThreadPoolExecutor(2, thread_name_prefix="fruits-decode")
        self.cnn: dict = {}
        self.tasks: list[asyncio.Task] = []

    def _build(self, pipeline: ServingPipeline) -> FruitClassifier:
        options = self.options
        classifier = FruitClassifier(pipeline, options.weights, engine=options.engine, onnx_cache=options.onnx_cache)
        digest = file_digest(options.weights)
        self.cnn = {"engine": classifier.engine, "input_size": pipeline.image_size, "weights": digest}
        return classifier

    def models(self, version: str) -> dict:
        """The model versions that answer: the classifier's version folder and the CNN (engine, size, weights)."""
        return {"classifier": version, "cnn": self.cnn}

    async def start(self) -> None:
        """Load the newest classifier (in a thread: /healthz answers "not ready" meanwhile), then watch for newer."""
        self.tasks.append(asyncio.create_task(self.batcher.run()))
        try:
            await asyncio.to_thread(self.live.refresh)
        except RELOAD_ERRORS as error:  # not ready; the watcher tries again
            self.live.problem = f"{type(error).__name__}: {error}"
            logger.error("no classifier loaded: %s", self.live.problem)
        self.tasks.append(asyncio.create_task(self.live.watch()))

    async def decode(self, data: bytes, name: str):
        """Decoded pixels, off the event loop; NotAnImageError for unreadable or oversized images."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.decoders, uploads.decode, self.live.current.classifier, data, name)

    def close(self) -> None:
        """Stop the tasks and the threads."""
        for task in self.tasks:
            task.cancel()
        self.batcher.close()
        self.decoders.shutdown(wait=False, cancel_futures=True)
