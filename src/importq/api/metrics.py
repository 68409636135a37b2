"""``GET /metrics``: the service's metrics for Prometheus (:mod:`importq.operations.metrics`),
and the time each request takes (:class:`RequestDurations`).

``/metrics`` is open, as ``/health`` is, unless ``IMPORTQ_METRICS_TOKEN`` is set: then it
answers only ``Authorization: Bearer <that token>`` (an API token is not one), else
``401``. It answers while the service starts and while its database is away, with
``importq_database_up`` 0 and without the figures the database gives. Those are read on
the main pool, by one query at a time whose answer serves 2 s of scrapes
(:class:`~importq.operations.metrics.StateReader`): anonymous scrapes never take the
connections that authenticate requests.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from importq.api.headers import answer_ended, route_template
from importq.api.schemas import ErrorBody
from importq.errors import Refusal
from importq.operations import metrics
from importq.services import Services

router = APIRouter()


@router.get(
    "/metrics",
    operation_id="metrics",
    summary="The service's metrics, in Prometheus's text format",
    response_class=Response,
    responses={
        200: {
            "description": "Every importq_… series (README: Running it in production)",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        401: {
            "model": ErrorBody,
            "description": "IMPORTQ_METRICS_TOKEN is set, and the request does not carry it "
            "as `Authorization: Bearer <token>`",
        },
    },
)
async def scrape(request: Request) -> Response:
    token: str | None = request.app.state.metrics_token
    if token is not None and not metrics.token_matches(request.headers.get("authorization"), token):
        raise Refusal(
            401, "metrics_token", "Send the metrics token as 'Authorization: Bearer <token>'."
        )
    services: Services | None = request.app.state.services
    pools = {}
    rows = None
    if services is not None:
        pools = {"main": services.pool}
        if services.auth_pool is not services.pool:
            pools["auth"] = services.auth_pool
        state: metrics.StateReader = request.app.state.metrics_state
        rows = await state.read(services.pool, services.outage)
    # The pools' figures here, on their loop; the rest in a thread: with
    # PROMETHEUS_MULTIPROC_DIR, every process's files are read.
    figures = metrics.pool_figures(pools)
    body = await asyncio.to_thread(metrics.exposition, figures, metrics.DatabaseState(rows))
    return Response(body, media_type=CONTENT_TYPE_LATEST)


class RequestDurations:
    """Time each request, from its start to the last part of its answer's body
    (:func:`~importq.api.headers.answer_ended`: not the background tasks that run after
    it), by the template of the route it matched (``/api/v1/jobs/{batch_id}``: never the
    path itself, whose ids would make a series each), its method and its status. A
    request no route matched, or whose route refused its method (``405``), counts as
    ``unmatched``, and a method the API never serves as ``other``: whatever anyone sends,
    the series are bounded by the routes. A plain ASGI middleware, so uploads stream
    through it."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500  # unless an answer starts
        observed = False

        def observe() -> None:
            nonlocal observed
            if not observed:
                observed = True
                metrics.observe_request(
                    _route(scope, status), _method(scope), status, time.monotonic() - started
                )

        async def noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if answer_ended(message):
                observe()

        try:
            await self._app(scope, receive, noting_status)
        finally:
            observe()  # an answer cut short, or none


def _route(scope: Scope, status: int) -> str:
    """The template of the route the router matched (it leaves it in the scope), unless
    that route refused the method."""
    path = route_template(scope)
    return path if path is not None and status != 405 else metrics.UNMATCHED


def _method(scope: Scope) -> str:
    method: str = scope["method"]
    return method if method in metrics.METHODS else metrics.OTHER_METHOD
