"""The FastAPI application, assembled from the routers.

``create_app`` opens the process's services in the app's lifespan. With
``run_worker_in_process`` it also runs a queue worker in the same event loop. That is
how ``importq serve`` runs the whole service in one command.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import psycopg
import psycopg_pool
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from importq.api import files, health, imports, jobs, notifications
from importq.config import Settings
from importq.errors import Refusal
from importq.services import open_services
from importq.worker.tasks import run_worker

log = logging.getLogger(__name__)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Refusal)
    async def refusal(request: Request, error: Refusal) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return JSONResponse(
            {"detail": str(error.detail), "code": code}, status_code=error.status_code
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        return JSONResponse({"detail": problems, "code": "invalid_request"}, status_code=422)

    @app.exception_handler(psycopg.OperationalError)
    @app.exception_handler(psycopg_pool.PoolTimeout)
    async def database_down(request: Request, error: Exception) -> JSONResponse:
        log.error("database unavailable: %s", error)
        return JSONResponse(
            {
                "detail": "The database is unavailable; try again shortly.",
                "code": "database_unavailable",
            },
            status_code=503,
        )


def create_app(
    settings: Settings,
    *,
    run_worker_in_process: bool = False,
    worker_concurrency: int | None = None,
) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_services(settings, pool_size=20) as services:
            worker: asyncio.Task[None] | None = None
            if run_worker_in_process:
                worker = asyncio.create_task(
                    run_worker(
                        services,
                        concurrency=worker_concurrency or settings.worker_concurrency,
                        install_signal_handlers=False,
                    )
                )
            app.state.services = services
            try:
                yield
            finally:
                app.state.services = None
                if worker is not None:
                    worker.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await worker

    app = FastAPI(title="importq", version="0.1.0", lifespan=lifespan)
    _install_error_handlers(app)
    for router in (imports.router, jobs.router, notifications.router, files.router, health.router):
        app.include_router(router)
    return app
