"""``GET /health``: each component's state; 200 when all are ok, else 503."""

from __future__ import annotations

import os

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from importq.api.schemas import HealthReport
from importq.services import Services
from importq.storage import StorageError

router = APIRouter()


async def _components(services: Services) -> dict[str, str]:
    components: dict[str, str] = {}
    try:
        async with services.pool.connection(timeout=5) as conn:
            await conn.execute("SELECT 1")
            components["database"] = "ok"
    except Exception as error:
        components["database"] = f"error: {error}"
    try:
        ok = await services.queue.app.job_manager.check_connection_async()
        components["queue"] = "ok" if ok else "error: procrastinate schema missing"
    except Exception as error:
        components["queue"] = f"error: {error}"
    try:
        await services.storage.check()
        components["storage"] = "ok"
    except StorageError as error:
        components["storage"] = f"error: {error}"
    settings = services.settings
    if settings.smtp_url:
        components["email"] = "ok"
    else:
        settings.outbox_dir.mkdir(parents=True, exist_ok=True)
        writable = os.access(settings.outbox_dir, os.W_OK)
        components["email"] = "ok" if writable else f"error: {settings.outbox_dir} not writable"
    return components


@router.get("/health", response_model=HealthReport)
async def health(request: Request) -> JSONResponse:
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        report = HealthReport(status="starting", components={})
    else:
        components = await _components(services)
        healthy = all(state == "ok" for state in components.values())
        report = HealthReport(status="ok" if healthy else "degraded", components=components)
    return JSONResponse(report.model_dump(), status_code=200 if report.status == "ok" else 503)
