"""One trace per batch: the POST, its staging, every chunk job, the completion check, the
aggregation, the email and the webhook, each the child of what deferred it, the jobs a
cancel or reconcile defers included; and a job carries the request that started its
batch, so its log lines name it.

In the service's process with the SDK's in-memory exporter, then as an operator runs it:
``importq serve --no-worker`` and an ``importq worker`` exporting by OTLP to a collector
of the test's, their spans of one batch in one trace.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from helpers import (
    Receiver,
    accepted_rows,
    entrance,
    running_worker,
    until,
    wait_for_batch,
)
from importq.services import Services
from processes import serving, start_worker

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


def _of_batch(spans: tuple[ReadableSpan, ...], batch_id: str) -> dict[str, list[ReadableSpan]]:
    named: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        if (span.attributes or {}).get("importq.batch_id") == batch_id:
            named.setdefault(span.name, []).append(span)
    return named


def _parent(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def _id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


@pytest.mark.usefixtures("worker")
async def test_a_batch_is_one_trace_from_its_post_to_its_webhook(
    client: httpx.AsyncClient,
    services: Services,
    receiver: Receiver,
    exported: InMemorySpanExporter,
) -> None:
    client.headers["traceparent"] = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    client.headers["X-Request-ID"] = "upload-7"
    rows = [entrance(f"trace-{n}") for n in range(25)]  # three chunks of at most 10
    accepted = await accepted_rows(client, rows, callbackUrl=receiver.url)
    batch_id = accepted["batchId"]
    await wait_for_batch(client, batch_id)

    async def delivered() -> bool:
        named = _of_batch(exported.get_finished_spans(), batch_id)
        return "send_email" in named and "deliver_webhook" in named

    await until(delivered)
    spans = exported.get_finished_spans()
    named = _of_batch(spans, batch_id)
    [post] = [s for s in spans if s.name == "POST /api/v1/{dataset}/import-rows"]
    # The client's span is linked, not continued: a client chooses no trace of importq's.
    assert post.context is not None and post.context.trace_id != int(CLIENT_TRACE, 16)
    assert _parent(post) is None
    [link] = post.links
    assert (link.context.trace_id, link.context.span_id) == (
        int(CLIENT_TRACE, 16),
        int(CLIENT_SPAN, 16),
    )
    assert (post.attributes or {})["http.response.status_code"] == 202
    assert {s.context.trace_id for ss in named.values() for s in ss if s.context} == {
        post.context.trace_id
    }
    [staging] = named["staging"]
    assert _parent(staging) == _id(post)
    chunks = named["process_chunk"]
    assert sorted(str((s.attributes or {})["importq.chunk_no"]) for s in chunks) == ["0", "1", "2"]
    assert {_parent(s) for s in chunks} == {_id(staging)}
    checks = named["check_completion"]
    assert {_parent(s) for s in checks} <= {_id(s) for s in chunks}
    [aggregation] = named["aggregate"]
    assert _parent(aggregation) in {_id(s) for s in checks}
    for delivery in ("send_email", "deliver_webhook"):
        assert [_parent(s) for s in named[delivery]] == [_id(aggregation)]
    # Every job of the batch carried the request's id.
    async with services.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT DISTINCT args ->> 'request_id' FROM procrastinate_jobs "
            "WHERE args ->> 'batch_id' = %s",
            (batch_id,),
        )
        assert await cursor.fetchall() == [("upload-7",)]


async def _carried(services: Services, batch_id: str, task: str) -> set[tuple[Any, Any]]:
    async with services.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT args ->> 'request_id', args ->> 'trace' FROM procrastinate_jobs "
            "WHERE args ->> 'batch_id' = %s AND task_name = %s",
            (batch_id, task),
        )
        return set(await cursor.fetchall())


async def test_jobs_a_cancel_or_reconcile_defers_carry_the_batchs_request_and_trace(
    client: httpx.AsyncClient, services: Services, exported: InMemorySpanExporter
) -> None:
    client.headers["X-Request-ID"] = "upload-8"
    rows = [entrance(f"lost-{n}") for n in range(25)]
    batch_id = (await accepted_rows(client, rows))["batchId"]
    [staging] = _of_batch(exported.get_finished_spans(), batch_id)["staging"]
    assert staging.context is not None
    async with services.pool.connection() as conn:
        # Two of its chunk jobs lost, as after a restore of an older backup.
        await conn.execute(
            "DELETE FROM procrastinate_jobs WHERE args ->> 'batch_id' = %s "
            "AND (args ->> 'chunk_no')::int > 0",
            (batch_id,),
        )
    async with running_worker(services):  # its reconcile runs every second
        await until(lambda: _carried(services, batch_id, "check_completion"))
        await wait_for_batch(client, batch_id)
    [(request, trace)] = await _carried(services, batch_id, "process_chunk")
    assert request == "upload-8" and trace is not None
    named = _of_batch(exported.get_finished_spans(), batch_id)
    assert {s.context.trace_id for ss in named.values() for s in ss if s.context} == {
        staging.context.trace_id
    }
    assert len(named["process_chunk"]) == 3

    # A cancel's deferral carries the batch's request, not the cancel's.
    other = (await accepted_rows(client, [entrance("cancelled-1")]))["batchId"]
    cancelled = await client.post(
        f"/api/v1/jobs/{other}/cancel", headers={"X-Request-ID": "cancel-9"}
    )
    assert cancelled.status_code == 202
    [(request, trace)] = await _carried(services, other, "check_completion")
    [other_staging] = _of_batch(exported.get_finished_spans(), other)["staging"]
    assert other_staging.context is not None
    assert request == "upload-8" and trace is not None
    assert trace.split("-")[1:3] == [
        f"{other_staging.context.trace_id:032x}",
        f"{other_staging.context.span_id:016x}",
    ]


async def test_a_job_drops_the_arguments_its_task_does_not_take(
    client: httpx.AsyncClient, services: Services
) -> None:
    """A newer release's job, carrying more, still runs on this release's worker."""
    batch_id = (await accepted_rows(client, [entrance("newer-1")]))["batchId"]
    async with services.pool.connection() as conn:
        await conn.execute(
            "UPDATE procrastinate_jobs SET args = args || '{\"priority_hint\": 3}' "
            "WHERE args ->> 'batch_id' = %s",
            (batch_id,),
        )
    async with running_worker(services):
        job = await wait_for_batch(client, batch_id)
    assert job["status"] == "completed" and job["result"]["summary"]["successes"] == 1


@pytest.mark.usefixtures("worker")
async def test_with_tracing_off_jobs_carry_the_request_id_alone(
    client: httpx.AsyncClient, services: Services
) -> None:
    client.headers["X-Request-ID"] = "no-trace-1"
    batch_id = (await accepted_rows(client, [entrance("untraced")]))["batchId"]
    await wait_for_batch(client, batch_id)
    async with services.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT DISTINCT args - 'batch_id' - 'chunk_no' FROM procrastinate_jobs "
            "WHERE args ->> 'batch_id' = %s",
            (batch_id,),
        )
        assert await cursor.fetchall() == [({"request_id": "no-trace-1"},)]


class Collector(ThreadingHTTPServer):
    """An OTLP/HTTP receiver of traces: each export's spans, by service name."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Export)
        self.spans: list[tuple[str, Any]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Export(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(self.rfile.read(int(self.headers["Content-Length"])))
        for resource in request.resource_spans:
            service = next(
                a.value.string_value
                for a in resource.resource.attributes
                if a.key == "service.name"
            )
            for scope in resource.scope_spans:
                self.server.spans.extend((service, span) for span in scope.spans)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_an_api_and_a_worker_export_one_trace_by_otlp(
    database_url: str, tmp_path: Path, collector: Collector
) -> None:
    env = {
        **os.environ,
        "IMPORTQ_DATABASE_URL": database_url,
        "IMPORTQ_DATA_DIR": str(tmp_path / "data"),
        "IMPORTQ_CHUNK_SIZE": "10",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # export every 0.2 s, not 5 s
        "IMPORTQ_LOG_FORMAT": "json",
    }
    api_env = {**env, "OTEL_SERVICE_NAME": "importq-api"}
    with serving(api_env, tmp_path / "serve.log", "--no-worker") as (url, _):
        # After serve has migrated the database.
        worker_env = {**env, "OTEL_SERVICE_NAME": "importq-worker"}
        worker = start_worker(worker_env, tmp_path / "worker.log")
        try:
            token = (tmp_path / "data" / "admin-token").read_text().strip()
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=url, headers=headers) as client:
                rows = [entrance(f"otlp-{n}") for n in range(15)]
                posted = client.post("/api/v1/entrances/import-rows", json={"data": rows})
                assert posted.status_code == 202, posted.text
                batch_id = posted.json()["batchId"]

                async def completed() -> bool:
                    async with httpx.AsyncClient(base_url=url, headers=headers) as poll:
                        job = (await poll.get(f"/api/v1/jobs/{batch_id}")).json()
                    return bool(job["status"] == "completed")

                asyncio.run(until(completed))
        finally:
            worker.terminate()
            assert worker.wait(timeout=30) == 0  # its last spans are sent as it exits

    by_service: dict[str, set[str]] = {}
    trace_ids = set()
    for service, span in collector.spans:
        attributes = {a.key: a.value for a in span.attributes}
        if "importq.batch_id" in attributes:
            assert attributes["importq.batch_id"].string_value == batch_id
            by_service.setdefault(service, set()).add(span.name)
            trace_ids.add(span.trace_id)
    assert by_service["importq-api"] == {"staging"}
    assert {"process_chunk", "check_completion", "aggregate"} <= by_service["importq-worker"]
    assert len(trace_ids) == 1  # the worker's spans go on the API's trace
