"""Micro-batching for `fruits serve`: photos of concurrent requests go through the CNN together, in a bounded queue."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from fruits_assets.app.engine import Prediction
from fruits_assets.app.models import LiveModel, Loaded

logger = logging.getLogger(__name__)


class BusyError(RuntimeError):
    """As many photos as the queue holds are already admitted: the caller should retry later."""


@dataclass
class _Item:
    pixels: np.ndarray
    name: str
    future: asyncio.Future


class MicroBatcher:
    """Collects decoded photos for at most `window_s` after the first (or until `max_batch`), then classifies them in
    one CNN call on one inference thread, as model servers batch (Triton's dynamic batching, Ray Serve's
    `@serve.batch`). At most `capacity` photos are admitted at once (reading, decoding, queued or in the CNN)."""

    def __init__(self, live: LiveModel, max_batch: int, window_s: float, capacity: int):
        self.live, self.max_batch, self.window_s, self.capacity = live, max_batch, window_s, capacity
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(capacity)
        self.admitted = 0
        self.batches = 0
        self._inference = ThreadPoolExecutor(1, thread_name_prefix="fruits-cnn")

    @contextlib.contextmanager
    def admit(self):
        """Hold one of the `capacity` places for a request's whole life; BusyError when none is free."""
        if self.admitted >= self.capacity:
            raise BusyError(f"{self.admitted} photos are in progress (FRUITS_SERVE_QUEUE={self.capacity}): retry")
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    async def classify(self, pixels: np.ndarray, name: str) -> tuple[Prediction, str]:
        """The prediction of one decoded photo and the classifier version that made it."""
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait(_Item(pixels, name, future))
        except asyncio.QueueFull:
            raise BusyError(f"the queue is full ({self.capacity} photos): retry") from None
        return await future

    async def run(self) -> None:
        """Form batches and classify them, forever (one task per server)."""
        while True:
            batch = await self._next_batch()
            await self._classify(batch, self.live.current)  # taken once: a swap mid-batch does not touch it

    async def _next_batch(self) -> list[_Item]:
        batch = [await self.queue.get()]
        if self.window_s > 0 and self.queue.qsize() < self.max_batch - 1:
            await asyncio.sleep(self.window_s)
        while len(batch) < self.max_batch and not self.queue.empty():
            batch.append(self.queue.get_nowait())
        return [item for item in batch if not item.future.done()]  # a client gone away is not classified

    async def _classify(self, batch: list[_Item], loaded: Loaded) -> None:
        if not batch:
            return
        loop = asyncio.get_running_loop()
        pixels, names = np.stack([item.pixels for item in batch]), [item.name for item in batch]
        try:
            predictions = await loop.run_in_executor(self._inference, loaded.classifier.classify_pixels, pixels, names)
        except Exception as error:  # the batch's failure is each of its requests' failure, never the loop's
            logger.exception("batch of %d failed", len(batch))
            predictions = [error] * len(batch)
        self.batches += 1
        for item, prediction in zip(batch, predictions, strict=True):
            if item.future.done():
                continue
            if isinstance(prediction, Exception):
                item.future.set_exception(prediction)
            else:
                item.future.set_result((prediction, loaded.version))

    def close(self) -> None:
        """Stop the inference thread (after the batch it runs)."""
        self._inference.shutdown(wait=False, cancel_futures=True)
