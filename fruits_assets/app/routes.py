"""`fruits serve`'s routes: POST /classify, GET /healthz and the page at /."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse

from fruits_assets.app import uploads
from fruits_assets.app.batching import BusyError
from fruits_assets.app.engine import NotAnImageError
from fruits_assets.app.schemas import Classification, Health, Problem
from fruits_assets.app.service import Service

PAGE = Path(__file__).with_name("page.html")
REFUSALS = {
    code: {"model": Problem, "description": text}
    for code, text in {
        400: "no photo in the request",
        413: "upload over FRUITS_SERVE_MAX_UPLOAD_MB",
        415: "neither multipart/form-data nor an image content type",
        422: "not a readable image",
        503: "still loading, or busy (Retry-After)",
    }.items()
}

router = APIRouter()


def service(request: Request) -> Service:
    """The server's service (its live classifier, batcher and decode threads)."""
    return request.app.state.engine


ServiceDep = Annotated[Service, Depends(service)]


@router.post("/classify", response_model=Classification, responses=REFUSALS, openapi_extra=uploads.BODY)
async def classify(request: Request, engine: ServiceDep) -> Classification:
    """One photo → its fruit (or `unknown`), the top-3 with probabilities, the unknown score, the models."""
    if engine.live.current is None:
        raise HTTPException(503, "the classifier is still loading: retry in a few seconds")
    try:
        with engine.batcher.admit():
            data, name = await uploads.photo(request, engine.options.max_upload_bytes)
            pixels = await engine.decode(data, name)
            prediction, version = await engine.batcher.classify(pixels, name)
    except BusyError as error:
        raise HTTPException(503, str(error), headers={"Retry-After": "1"}) from None
    except NotAnImageError as error:
        raise HTTPException(422, str(error)) from None
    return Classification.model_validate({**prediction.as_json(), "models": engine.models(version)})


@router.get("/healthz", response_model=Health, responses={503: {"model": Health, "description": "not ready"}})
async def healthz(engine: ServiceDep) -> JSONResponse:
    """Ready or not, and which classifier version answers."""
    loaded = engine.live.current
    health = Health(
        ready=loaded is not None,
        classifier=loaded.version if loaded else None,
        classes=len(loaded.classifier.pipeline.labels) if loaded else None,
        cnn=engine.cnn or None,
        in_progress=engine.batcher.admitted,
        batches=engine.batcher.batches,
        reload_problem=engine.live.problem,
    )
    return JSONResponse(health.model_dump(mode="json"), status_code=200 if loaded else 503)


@router.get("/", response_class=HTMLResponse)
async def page() -> HTMLResponse:
    """The web page: choose or drop a photo, see its fruit and the top-3."""
    return HTMLResponse(PAGE.read_text())
