"""Which classifier answers: the newest committed version (local, or s3:// copied once), swapped in whole when a
newer one is committed (`fruits serve` re-checks every few seconds)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from fruits_assets.app.engine import FruitClassifier
from spark_code.classify.serving import ServingPipeline, load_pipeline
from spark_code.storage import uris, versions
from spark_code.storage.versions import ModelNotFoundError

logger = logging.getLogger(__name__)

# What a failed reload may raise: a version pruned or half-read while loading, a bad file. The old model stays.
RELOAD_ERRORS = (ModelNotFoundError, OSError, ValueError, KeyError, IndexError, BotoCoreError, ClientError)


class RemoteModelsError(ValueError):
    """`--models` names a store the server cannot read (it reads a local folder or s3://)."""


def check_models_folder(models: str) -> Path:
    """The newest committed classifier version under a local models folder, or under an s3:// one (copied once
    into a local cache); clear errors otherwise."""
    if not uris.is_supported(models):
        raise RemoteModelsError(
            f"--models {models!r}: `fruits serve` reads a local models folder or an s3:// one; copy the models to "
            "one of those and pass it"
        )
    return versions.local_folder(models, "fruit_classifier")


@dataclass(frozen=True)
class Loaded:
    """One classifier version, complete: what a batch takes at its start and keeps to its end."""

    version: str
    classifier: FruitClassifier
    loaded_at: float


class LiveModel:
    """The newest committed `fruit_classifier` under `models`; `refresh` loads a newer one and swaps it in at once.

    `build` makes the first classifier (CNN included) from a pipeline; later versions reuse its CNN.
    """

    def __init__(self, models: str, build: Callable[[ServingPipeline], FruitClassifier], poll_seconds: float):
        self.models, self.build, self.poll_seconds = models, build, poll_seconds
        self.current: Loaded | None = None
        self.problem: str | None = None

    def refresh(self) -> bool:
        """Load the newest committed version if it is not the current one; True when a new one was swapped in."""
        folder = check_models_folder(self.models)
        if self.current is not None and folder.name == self.current.version:
            return False
        pipeline = load_pipeline(folder)
        previous = self.current
        same_size = previous is not None and pipeline.image_size == previous.classifier.spec.input_size
        classifier = previous.classifier.with_pipeline(pipeline) if same_size else self.build(pipeline)
        self.current = Loaded(folder.name, classifier, time.time())  # one assignment: the swap is atomic
        self.problem = None
        logger.warning("serving classifier %s (%d classes)", folder.name, len(pipeline.labels))
        return True

    async def watch(self) -> None:
        """Check for a new version every `poll_seconds`, forever; a failed check keeps the current model."""
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await asyncio.to_thread(self.refresh)
            except RELOAD_ERRORS as error:
                self.problem = f"{type(error).__name__}: {error}"
                logger.warning("keeping classifier %s: %s", self.current and self.current.version, self.problem)
