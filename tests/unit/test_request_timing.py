"""A request's time and span, as the API's middlewares record them: from its start to the
end of its answer, never the background tasks its endpoint leaves to run after it; and
the request series, bounded by the routes whatever method or path a client sends."""

from __future__ import annotations

import asyncio

import httpx
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from importq.api.headers import RequestSpans
from importq.api.metrics import RequestDurations

ROUTE = "/api/v1/{dataset}/import-rows"
# What keeping an upload in storage stands for: it runs after the 202.
KEEPING_SECONDS = 0.5


async def _upload(request: Request) -> JSONResponse:
    async def keep_upload() -> None:
        await asyncio.sleep(KEEPING_SECONDS)

    return JSONResponse({"batchId": "b"}, status_code=202, background=BackgroundTask(keep_upload))


def _seconds_recorded(labels: dict[str, str]) -> tuple[float, float]:
    """The request-duration histogram's count and sum for ``labels``."""
    name = "importq_http_request_duration_seconds"
    return (
        REGISTRY.get_sample_value(f"{name}_count", labels) or 0.0,
        REGISTRY.get_sample_value(f"{name}_sum", labels) or 0.0,
    )


async def test_a_request_ends_with_its_answer_not_its_background_tasks(
    exported: InMemorySpanExporter,
) -> None:
    app = RequestDurations(
        RequestSpans(Starlette(routes=[Route(ROUTE, _upload, methods=["POST"])]))
    )
    labels = {"route": ROUTE, "method": "POST", "status": "202"}
    count, total = _seconds_recorded(labels)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://importq.test"
    ) as client:
        # The in-process transport returns once the background task, too, has run.
        answer = await client.post("/api/v1/entrances/import-rows")
    assert answer.status_code == 202
    after_count, after_total = _seconds_recorded(labels)
    assert after_count == count + 1
    assert after_total - total < KEEPING_SECONDS / 2
    (span,) = exported.get_finished_spans()
    assert span.name == f"POST {ROUTE}"
    assert span.attributes is not None and span.attributes["http.route"] == ROUTE
    assert span.start_time is not None and span.end_time is not None
    assert (span.end_time - span.start_time) / 1e9 < KEEPING_SECONDS / 2


async def test_any_method_and_path_a_client_sends_make_a_bounded_set_of_series() -> None:
    """An unknown method is ``other``; a path no route matches, or a route that refuses
    the method (405), is ``unmatched``."""
    app = RequestDurations(Starlette(routes=[Route(ROUTE, _upload, methods=["POST"])]))
    name = "importq_http_request_duration_seconds_count"
    sent = [
        ("BREW", "/api/v1/entrances/import-rows", 405),
        ("PROPFIND", "/api/v1/entrances/import-rows", 405),
        ("GET", "/api/v1/entrances/import-rows", 405),
        ("M-SEARCH", "/nowhere", 404),
        ("GET", "/nowhere/else", 404),
        ("POST", "/api/v1/entrances/import-rows", 202),
    ]
    expected = {
        ("unmatched", "other", "405"): 2,
        ("unmatched", "GET", "405"): 1,
        ("unmatched", "other", "404"): 1,
        ("unmatched", "GET", "404"): 1,
        (ROUTE, "POST", "202"): 1,
    }

    def counts() -> dict[tuple[str, str, str], float]:
        return {
            key: REGISTRY.get_sample_value(
                name, {"route": key[0], "method": key[1], "status": key[2]}
            )
            or 0.0
            for key in expected
        }

    before = counts()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://importq.test"
    ) as client:
        for method, path, status in sent:
            assert (await client.request(method, path)).status_code == status, method
    assert {key: n - before[key] for key, n in counts().items()} == expected
    methods = {
        sample.labels["method"]
        for family in REGISTRY.collect()
        if family.name == "importq_http_request_duration_seconds"
        for sample in family.samples
    }
    assert not methods - {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
