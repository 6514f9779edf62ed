"""Builds the API app: routers, error handlers, the upload cap, and the frontend at `/`.

    uvicorn backend.api.main:app --host 0.0.0.0 --port 8000

`create_app(settings)` builds an app; `app`, what that command loads, is built from the environment's
settings when first asked for, not at import.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from kombu.exceptions import OperationalError
from redis.exceptions import ResponseError

from backend.config import Settings, get_settings
from backend.nca.jobspec import SpecError
from backend.nca.target import TargetError
from backend.storage.artifacts import ArtifactCorrupt, ArtifactMissing, ArtifactUnavailable
from backend.storage.connection import REDIS_DOWN_ERRORS, is_storage_full
from backend.storage.shared import Storage

from .previews import Previews
from .renders import Renders
from .routes import config, estimate, health, jobs, models, rooms, sharing, targets
from .schemas import ErrorOut
from .upload_limit import UploadLimitMiddleware

log = logging.getLogger(__name__)
MULTIPART_OVERHEAD = 64 * 1024  # form fields and boundaries on top of the image itself


def migrate(storage: Storage) -> None:
    """Jobs stored by the previous version (blobs in Redis) move to the artifact store (read through meanwhile);
    the active-job counters are rebuilt from the previous version's set (else before the first upload)."""
    try:
        storage.quota.upgrade()
        moved = storage.jobs.migrate_all()
    except (*REDIS_DOWN_ERRORS, ArtifactUnavailable) as exc:  # later: the reads go through until then
        log.warning("could not move old jobs to the artifact store now: %s", exc)
        return
    if moved:
        log.info("moved %d jobs stored by the previous version to the artifact store", moved)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await asyncio.to_thread(migrate, app.state.storage)
    yield


def create_app(settings: Settings) -> FastAPI:
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    app = FastAPI(title="Growing NCA studio", version="0.1.0",
                  description="Train a Growing Neural Cellular Automaton on your own image (docs/api.md).",
                  responses={422: {"model": ErrorOut, "description": "invalid input"}},  # as invalid_request answers
                  lifespan=lifespan)
    app.state.settings = settings
    app.state.storage = Storage.connect(settings)  # connects lazily, reconnects by itself after an outage
    app.state.previews = Previews()
    # Videos, cards, exports: computed off the event loop, cached in memory and in the artifact store.
    app.state.renders = Renders(artifacts=app.state.storage.artifacts)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        message = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"detail": message}, status_code=422)

    @app.exception_handler(SpecError)
    async def bad_options(_: Request, exc: SpecError) -> JSONResponse:
        return JSONResponse({"detail": f"invalid options: {exc}"}, status_code=422)

    @app.exception_handler(TargetError)
    async def bad_image(_: Request, exc: TargetError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    async def redis_down(_: Request, exc: Exception) -> JSONResponse:
        log.warning("Redis is unreachable: %s", exc)
        return JSONResponse({"detail": f"the job store (Redis) is unreachable: {exc}; try again shortly"},
                            status_code=503)

    for error in (*REDIS_DOWN_ERRORS, OperationalError):  # OperationalError: kombu could not send a message
        app.add_exception_handler(error, redis_down)

    @app.exception_handler(ResponseError)  # OutOfMemoryError is one; a script's OOM is a plain ResponseError
    async def storage_full(_: Request, exc: ResponseError) -> JSONResponse:
        if not is_storage_full(exc):
            log.error("Redis error: %s", exc)
            return JSONResponse({"detail": "internal error of the job store"}, status_code=500)
        log.warning("Redis refused a write for memory (maxmemory, noeviction): %s", exc)
        return JSONResponse({"detail": "storage is full: the server cannot take new data now; try again later"},
                            status_code=503, headers={"Retry-After": "60"})

    @app.exception_handler(ArtifactUnavailable)
    async def store_down(_: Request, exc: ArtifactUnavailable) -> JSONResponse:
        log.warning("artifact store unavailable: %s", exc)
        return JSONResponse({"detail": f"the artifact store is unavailable ({exc}); try again shortly"},
                            status_code=503, headers={"Retry-After": "10"})

    @app.exception_handler(ArtifactMissing)
    @app.exception_handler(ArtifactCorrupt)
    async def artifact_lost(_: Request, exc: ArtifactMissing | ArtifactCorrupt) -> JSONResponse:
        what = "is missing" if isinstance(exc, ArtifactMissing) else "is damaged (its checksum does not match)"
        log.error("artifact %s %s", exc.key, what)
        return JSONResponse({"detail": f"this file of the job {what} in the artifact store ({exc.key}); "
                                       "it cannot be served"}, status_code=410)

    app.add_middleware(UploadLimitMiddleware, max_body_bytes=settings.max_upload_bytes + MULTIPART_OVERHEAD)
    for module in (jobs, sharing, estimate, targets, models, rooms, health, config):
        app.include_router(module.router)
    if settings.frontend_dir.is_dir():  # last: every path the API does not own is a frontend file
        app.mount("/", StaticFiles(directory=settings.frontend_dir, html=True), name="frontend")
    return app


@cache
def _default_app() -> FastAPI:
    return create_app(get_settings())


def __getattr__(name: str) -> FastAPI:
    """`app` (what `uvicorn backend.api.main:app` loads), built on first access."""
    if name == "app":
        return _default_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
