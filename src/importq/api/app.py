"""The FastAPI application, assembled from the routers.

``create_app`` opens the process's services in the app's lifespan. With
``run_worker_in_process`` it also runs a queue worker in the same event loop. That is
how ``importq serve`` runs the whole service in one command.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping

import psycopg
import psycopg_pool
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match, Route

from importq.api import (
    admin,
    datasets,
    files,
    health,
    imports,
    job_events,
    jobs,
    mappings,
    metrics,
    notifications,
    openapi,
    preview,
    reruns,
    users,
)
from importq.api.auth import database_unavailable
from importq.api.headers import RequestIds, RequestSpans, SecurityHeaders
from importq.api.metrics import RequestDurations
from importq.api.rate_limit import RateLimiter
from importq.config import Settings
from importq.errors import Refusal
from importq.operations.metrics import StateReader
from importq.rules.datasets import Dataset, load_datasets
from importq.services import Services, open_services
from importq.ui import pages
from importq.worker.tasks import run_worker, worker_connections, worker_lanes

log = logging.getLogger(__name__)

# The main pool's connections for the API's own work: staging (two a big upload), reads.
API_CONNECTIONS = 20


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Refusal)
    async def refusal(request: Request, error: Refusal) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 400:  # FastAPI's only one: a body it could not decode
            return await refusal(request, _bad_json("the body could not be decoded"))
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        headers = dict(error.headers or {})
        if error.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return JSONResponse(
            {"detail": str(error.detail), "code": code},
            status_code=error.status_code,
            headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        for problem in error.errors():
            if problem["type"] == "json_invalid":
                reason = problem.get("ctx", {}).get("error", "malformed")
                return await refusal(request, _bad_json(str(reason)))
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        return JSONResponse({"detail": problems, "code": "invalid_request"}, status_code=422)

    @app.exception_handler(psycopg.OperationalError)
    @app.exception_handler(psycopg_pool.PoolTimeout)
    async def database_down(request: Request, error: Exception) -> JSONResponse:
        services: Services | None = request.app.state.services
        if services is not None:
            services.outage.noticed(error)  # logs the outage once, and its end
        return await refusal(request, database_unavailable())


def _bad_json(reason: str) -> Refusal:
    """Malformed JSON is 400, as for uploads (``bad_json``); a well-formed body that does
    not fit the document is 422."""
    return Refusal(400, "bad_json", f"The body is not valid JSON: {reason}.")


def _allowed_methods(request: Request) -> list[str]:
    """The methods of every route at the request's path (a path may have several routes,
    one a method): what a 405's ``Allow`` lists."""
    methods: set[str] = set()
    for route in request.app.state.api_routes:
        if route.matches(request.scope)[0] is not Match.NONE:
            methods |= route.methods or set()
    return sorted(methods)


def _without_query(record: logging.LogRecord) -> bool:
    """Drop the query from the path an access log line shows: report links carry their
    signature there, and uploads their callback URL."""
    args = record.args
    if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
        record.args = (*args[:2], args[2].partition("?")[0], *args[3:])
    return True


def _worker_ended(worker: asyncio.Task[None]) -> None:
    """Only a cancel should end the in-process worker: anything else is a bug, said
    loudly here (and by /health), not left for the garbage collector to mention."""
    if not worker.cancelled() and worker.exception() is not None:
        log.critical("the worker stopped for good", exc_info=worker.exception())


def create_app(
    settings: Settings,
    *,
    run_worker_in_process: bool = False,
    worker_concurrency: int | None = None,
) -> FastAPI:
    """The app. Its lifespan opens the process's services; ``app.state.drain()`` starts a
    graceful stop (see :func:`drain`)."""
    worker: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal worker
        # Here, after the server has set its logging up: a filter added before may go.
        access_log = logging.getLogger("uvicorn.access")
        if _without_query not in access_log.filters:
            access_log.addFilter(_without_query)
        chunk_concurrency = worker_concurrency or settings.worker_concurrency
        pool_size = API_CONNECTIONS
        if run_worker_in_process:
            pool_size += worker_connections(worker_lanes(settings, chunk_concurrency))
        async with open_services(settings, pool_size=pool_size) as services:
            async with services.pool.connection() as conn:
                await services.datasets.current(conn)  # for the OpenAPI document
            if run_worker_in_process:
                worker = asyncio.create_task(run_worker(services, concurrency=chunk_concurrency))
                worker.add_done_callback(_worker_ended)
                app.state.worker = worker
            app.state.services = services
            try:
                yield
            finally:
                await drain()
                app.state.services = None

    async def drain() -> None:
        """Stop taking uploads (503 ``shutting_down``, and ``/health/ready`` 503), end the
        job event streams (a client resumes elsewhere with ``Last-Event-ID``), then stop
        the worker: it lets its jobs finish for ``IMPORTQ_SHUTDOWN_SECONDS`` and gives back
        the rest. Status reads and downloads are still answered meanwhile."""
        app.state.draining = True
        if app.state.job_watch is not None:
            await app.state.job_watch.close()  # event streams end: clients resume elsewhere
        if worker is not None and not worker.done():
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    app = FastAPI(title="importq", version="0.1.0", lifespan=lifespan)
    app.state.services = None
    app.state.worker = None
    app.state.draining = False
    app.state.drain = drain
    app.state.rate_limiter = RateLimiter(settings.rate_limit)
    app.state.storage_check = None  # the last check of storage by /health: (when, state)
    app.state.job_watch = None  # the listener of the job event streams, once one opens
    app.state.metrics_token = settings.metrics_token  # /metrics asks for it when set
    app.state.metrics_state = StateReader()  # the database's part of /metrics
    _install_error_handlers(app)
    app.add_middleware(SecurityHeaders, https=(settings.public_url or "").startswith("https://"))
    app.add_middleware(RequestSpans)  # inside RequestIds: a span names its request
    app.add_middleware(RequestIds)
    app.add_middleware(RequestDurations)  # around the others: the whole answer
    if settings.cors_allowed:
        # Off unless origins are named: a page elsewhere (a club's web app) calling the
        # API with a user's token.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allowed,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"],
            expose_headers=["Retry-After", "Location", "X-Request-ID"],
            max_age=600,
        )
    routers = (
        imports,
        preview,
        jobs,
        reruns,
        job_events,
        datasets,
        mappings,
        notifications,
        users,
        admin,
        files,
        health,
        metrics,
    )
    for module in routers:
        app.include_router(module.router)
    pages.install(app)
    # Every route itself, for Allow: the app's own list holds each included router as
    # one entry, beside its own routes (/openapi.json, /docs).
    app.state.api_routes = [
        route
        for route in (*app.routes, *(r for m in (*routers, pages) for r in m.router.routes))
        if isinstance(route, Route)
    ]
    openapi.install(app, lambda: _datasets_seen(app, settings), settings.upload_limits)
    return app


def _datasets_seen(app: FastAPI, settings: Settings) -> Mapping[str, Dataset]:
    """The datasets' current versions as this process last read them; before the
    service opens, those of the datasets files."""
    services: Services | None = app.state.services
    if services is None:
        return load_datasets(settings.datasets_file)
    return services.datasets.last_seen
