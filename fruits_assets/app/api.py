"""`fruits serve`'s ASGI app (FastAPI on uvicorn): the routes over one service, started and stopped with the server."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import FastAPI

from fruits_assets.app.routes import router
from fruits_assets.app.service import ServeOptions, Service


def create_app(options: ServeOptions) -> FastAPI:
    """The ASGI app: the classifier loads when the server starts; a newer committed version replaces it live."""
    engine = Service(options)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.tasks.append(asyncio.create_task(engine.start()))
        try:
            yield
        finally:
            engine.close()

    app = FastAPI(title="Fruits!", summary="Name the fruit in a photo.", lifespan=lifespan)
    app.state.engine = engine
    app.include_router(router)
    return app


def serve(options: ServeOptions, host: str, port: int, log_level: str = "warning") -> None:
    """Run the server until interrupted (uvicorn; uvloop and httptools when installed)."""
    import uvicorn

    uvicorn.run(create_app(options), host=host, port=port, log_level=log_level.lower(), access_log=False)
