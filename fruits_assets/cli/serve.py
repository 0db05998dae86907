"""`fruits serve`: the app's engine over HTTP (FastAPI on uvicorn): POST /classify, a web page, GET /healthz."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from starlette.datastructures import UploadFile

from fruits_assets.cli.serve_batching import BusyError, MicroBatcher
from fruits_assets.cli.serve_models import RELOAD_ERRORS, LiveModel
from fruits_assets.deploy.settings import Settings
from spark_code.classify.serving import FruitClassifier, NotAnImageError, ServingPipeline
from spark_code.featurize.cnn import DEFAULT_ENGINE
from spark_code.featurize.onnx_export import file_digest
from spark_code.ingest.images import DECODE_ERRORS, register_formats

logger = logging.getLogger(__name__)

FIELD = "photo"
PAGE = Path(__file__).with_name("serve_page.html")
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the photo
DRAIN_FACTOR = 4  # an oversized body is read (and dropped) up to this many limits, so the client sees the 413
RAW_TYPES = ("image/", "application/octet-stream")
MAX_PIXELS = 50_000_000  # non-JPEG images above this are refused (phones' photos are 12 to 48 MP)
CLASSIFY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {FIELD: {"type": "string", "format": "binary"}},
                    "required": [FIELD],
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


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


class Engine:
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
        return await loop.run_in_executor(self.decoders, _decode, self.live.current.classifier, data, name)

    def close(self) -> None:
        """Stop the tasks and the threads."""
        for task in self.tasks:
            task.cancel()
        self.batcher.close()
        self.decoders.shutdown(wait=False, cancel_futures=True)


def _decode(classifier: FruitClassifier, data: bytes, name: str):
    """The classifier's decode, after a look at the header: a non-JPEG image over MAX_PIXELS is refused (JPEGs are
    decoded at reduced size whatever their size; others are decoded whole, so their pixels bound the memory)."""
    register_formats()
    pixels, jpeg = 0, True
    with contextlib.suppress(*DECODE_ERRORS), Image.open(io.BytesIO(data)) as image:  # unreadable: decode says why
        pixels, jpeg = image.size[0] * image.size[1], image.format == "JPEG"
    if not jpeg and pixels > MAX_PIXELS:
        raise NotAnImageError(f"{name}: {pixels} pixels > {MAX_PIXELS} (a decompression bomb?)")
    return classifier.decode(data, name)


async def _read_body(request: Request, allowed: int, slack: int = 0) -> bytes:
    """The request body, refused with 413 past `allowed` (+ `slack`) bytes (dropped unread beyond, up to a bound)."""
    limit, declared = allowed + slack, request.headers.get("content-length", "")
    too_large = HTTPException(413, f"upload larger than the limit of {allowed} bytes (FRUITS_SERVE_MAX_UPLOAD_MB)")
    if declared.isdigit() and int(declared) > limit:
        await _drain(request, DRAIN_FACTOR * limit)
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            await _drain(request, DRAIN_FACTOR * limit - size)
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _drain(request: Request, budget: int) -> None:
    """Read and drop the rest of the body, up to `budget` bytes, so the client can read our answer."""
    with contextlib.suppress(Exception):  # the client may have gone: nothing to answer then
        async for chunk in request.stream():
            budget -= len(chunk)
            if budget <= 0:
                return


async def _photo(request: Request, limit: int) -> tuple[bytes, str]:
    """The uploaded photo and its name: multipart field `photo`, or the raw body with an image content type."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        body = await _read_body(request, limit, MULTIPART_SLACK)

        async def replay() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        async with Request(request.scope, replay).form(max_files=4, max_fields=16) as form:
            upload = form.get(FIELD)
            if not isinstance(upload, UploadFile):
                found = ", ".join(repr(key) for key in form) or "none"
                raise HTTPException(400, f"no file in multipart field {FIELD!r} (fields sent: {found})")
            data, name = await upload.read(), upload.filename or FIELD
    elif kind.startswith(RAW_TYPES):
        data, name = await _read_body(request, limit), FIELD
    else:
        raise HTTPException(
            415, f"content type {kind or 'none'!r}: send multipart/form-data with field {FIELD!r}, or the raw image"
        )
    if len(data) > limit:
        raise HTTPException(413, f"photo of {len(data)} bytes > the limit of {limit} (FRUITS_SERVE_MAX_UPLOAD_MB)")
    if not data:
        raise HTTPException(400, f"{name}: empty upload (0 bytes)")
    return data, name


def create_app(options: ServeOptions) -> FastAPI:
    """The ASGI app: the classifier loads when the server starts; a newer committed version replaces it live."""
    engine = Engine(options)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.tasks.append(asyncio.create_task(engine.start()))
        try:
            yield
        finally:
            engine.close()

    app = FastAPI(title="Fruits!", summary="Name the fruit in a photo.", lifespan=lifespan)
    app.state.engine = engine

    @app.post("/classify", openapi_extra=CLASSIFY_BODY)
    async def classify(request: Request) -> JSONResponse:
        """One photo → its fruit (or `unknown`), the top-3 with probabilities, the unknown score, the models."""
        if engine.live.current is None:
            raise HTTPException(503, "the classifier is still loading: retry in a few seconds")
        try:
            with engine.batcher.admit():
                data, name = await _photo(request, options.max_upload_bytes)
                pixels = await engine.decode(data, name)
                prediction, version = await engine.batcher.classify(pixels, name)
        except BusyError as error:
            raise HTTPException(503, str(error), headers={"Retry-After": "1"}) from None
        except NotAnImageError as error:
            raise HTTPException(422, str(error)) from None
        return JSONResponse({**prediction.as_json(), "models": engine.models(version)})

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """Ready or not, and which classifier version answers."""
        loaded = engine.live.current
        body = {
            "ready": loaded is not None,
            "classifier": loaded and loaded.version,
            "classes": loaded and len(loaded.classifier.pipeline.labels),
            "cnn": engine.cnn or None,
            "in_progress": engine.batcher.admitted,
            "batches": engine.batcher.batches,
            "reload_problem": engine.live.problem,
        }
        return JSONResponse(body, status_code=200 if loaded else 503)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        """The web page: choose or drop a photo, see its fruit and the top-3."""
        return HTMLResponse(PAGE.read_text())

    return app


def serve(options: ServeOptions, host: str, port: int, log_level: str = "warning") -> None:
    """Run the server until interrupted (uvicorn; uvloop and httptools when installed)."""
    import uvicorn

    uvicorn.run(create_app(options), host=host, port=port, log_level=log_level.lower(), access_log=False)
