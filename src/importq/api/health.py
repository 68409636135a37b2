"""Health, for people and for load balancers.

- ``/health/live``: the process answers (always 200). A supervisor restarts a process
  that does not.
- ``/health/ready``: this process should get traffic: it is serving and not stopping,
  and its database answers and is migrated (200); else 503, and a load balancer sends
  requests to another node.
- ``/health``: each component's state (``database``, ``queue``, ``storage``, ``email``,
  and ``worker`` where the process runs one): ``ok`` or ``failing`` to anyone, the error
  itself to an admin's token. Storage is checked at most every few seconds for others
  (each check is a request to it), at every call of an admin's. It is 503 only when the
  database is away: with storage, email or the worker down the service still takes
  uploads, so it is ``degraded`` and 200, and a proxy does not drop every node over an
  SMTP outage.

Every check gives up after five seconds, so a load balancer's probe never hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from importq.accounts import user_for_token
from importq.api.auth import bearer_token
from importq.api.schemas import HealthReport, Liveness, Readiness
from importq.db import Pool
from importq.migrate import pending_migrations
from importq.services import Services
from importq.sql import queries
from importq.storage import StorageError

router = APIRouter()
log = logging.getLogger(__name__)

# What a component's state shows to a caller who is not an admin, when it is not ok: the
# error itself may name hosts, paths or accounts.
FAILING = "failing"
STORAGE_CHECK_SECONDS = 5.0
# The components without which nothing is served.
_VITAL = ("database", "queue")
_CHECK_TIMEOUT = 5.0


@contextlib.asynccontextmanager
async def _checking(pool: Pool) -> AsyncIterator[AsyncConnection[TupleRow]]:
    """A connection of ``pool`` for a check, which gives up after ``_CHECK_TIMEOUT`` in
    all, whether it waits for the connection or for the database's answer."""
    async with asyncio.timeout(_CHECK_TIMEOUT), pool.connection(timeout=_CHECK_TIMEOUT) as conn:
        yield conn


async def _storage(request: Request, services: Services, *, fresh: bool) -> str:
    """Storage's state. Unless ``fresh``, the last check's for ``STORAGE_CHECK_SECONDS``:
    anyone may call /health, and each check is a request to the storage service."""
    last: tuple[float, str] | None = request.app.state.storage_check
    now = time.monotonic()
    if not fresh and last is not None and now - last[0] < STORAGE_CHECK_SECONDS:
        return last[1]
    try:
        await services.storage.check()
        state = "ok"
    except StorageError as error:
        state = f"error: {error}"
    request.app.state.storage_check = (now, state)
    return state


async def _is_admin(request: Request, services: Services) -> bool:
    """Whether the caller sent an admin's token: only they see why a component fails."""
    token = await bearer_token(request)
    if token is None or services.outage.ongoing:
        return False
    try:
        async with _checking(services.auth_pool) as conn:
            user = await user_for_token(conn, token)
    except Exception:  # a refused token, or no database: not an admin's call
        return False
    return user is not None and user.has_role("admin")


async def _components(request: Request, services: Services, *, fresh: bool) -> dict[str, str]:
    components: dict[str, str] = {}
    if services.outage.ongoing:
        # Known to be away: no check would answer before the client gives up.
        components["database"] = components["queue"] = "error: the database is unavailable"
    else:
        try:
            async with _checking(services.pool) as conn:
                await conn.execute(queries["ping"])
            components["database"] = "ok"
        except Exception as error:
            components["database"] = f"error: {error!r}"
        try:
            ok = await asyncio.wait_for(
                services.queue.app.job_manager.check_connection_async(), _CHECK_TIMEOUT
            )
            components["queue"] = "ok" if ok else "error: procrastinate schema missing"
        except Exception as error:
            components["queue"] = f"error: {error!r}"
    components["storage"] = await _storage(request, services, fresh=fresh)
    settings = services.settings
    if settings.smtp_url:
        components["email"] = "ok"
    else:
        settings.outbox_dir.mkdir(parents=True, exist_ok=True)
        writable = os.access(settings.outbox_dir, os.W_OK)
        components["email"] = "ok" if writable else f"error: {settings.outbox_dir} not writable"
    return components


@router.get(
    "/health",
    response_model=HealthReport,
    responses={503: {"model": HealthReport, "description": "The database is unavailable"}},
)
async def health(request: Request) -> JSONResponse:
    services: Services | None = request.app.state.services
    if services is None:
        report = HealthReport(status="starting", components={})
    else:
        admin = await _is_admin(request, services)
        components = await _components(request, services, fresh=admin)
        worker: asyncio.Task[None] | None = request.app.state.worker
        if worker is not None:
            components["worker"] = (
                "ok" if not worker.done() else f"error: stopped ({_ended(worker)})"
            )
        if not admin:
            components = {
                name: "ok" if state == "ok" else FAILING for name, state in components.items()
            }
        if any(components[name] != "ok" for name in _VITAL):
            report = HealthReport(status="unavailable", components=components)
        elif any(state != "ok" for state in components.values()):
            report = HealthReport(status="degraded", components=components)
        else:
            report = HealthReport(status="ok", components=components)
    served = report.status in ("ok", "degraded")
    return JSONResponse(report.model_dump(), status_code=200 if served else 503)


def _ended(worker: asyncio.Task[None]) -> str:
    if worker.cancelled():
        return "stopping"
    return repr(worker.exception())


@router.get("/health/live", response_model=Liveness)
async def live() -> Liveness:
    return Liveness(status="ok")


@router.get(
    "/health/ready",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready: ``reason`` says why"}},
)
async def ready(request: Request) -> JSONResponse:
    reason = await _not_ready(request)
    readiness = (
        Readiness(status="not_ready", reason=reason) if reason else Readiness(status="ready")
    )
    return JSONResponse(readiness.model_dump(), status_code=503 if reason else 200)


async def _not_ready(request: Request) -> str | None:
    services: Services | None = request.app.state.services
    if services is None:
        return "starting"
    if request.app.state.draining:
        return "stopping"
    if services.outage.ongoing:
        return "database unavailable"
    try:
        async with _checking(services.pool) as conn:
            pending = await pending_migrations(conn)
    except Exception as error:
        # The error names the database's host and user: for the log, not for anyone.
        log.warning("not ready: the database does not answer: %s", error)
        return "database unavailable"
    return f"migrations not applied: {', '.join(pending)}" if pending else None
