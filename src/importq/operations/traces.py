"""One OpenTelemetry trace per batch: its POST, staging, every chunk job, the completion
check, the aggregation, the email and the webhook.

Tracing is off unless the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set: then :func:`configure_from_environment`
sends spans by OTLP over HTTP (protobuf), in batches, from a thread of the SDK's, and
the other ``OTEL_*`` variables (``OTEL_SERVICE_NAME``, headers, timeouts) apply as the
SDK reads them. Off, :func:`span` opens nothing and jobs carry no trace: no cost.

A job carries what it is part of in two arguments of its own (:func:`job_arguments`,
read back by :func:`job_span`): ``request_id``, the id of the request that started the
batch (:mod:`importq.operations.logs`), and ``trace``, the W3C ``traceparent`` of the
span that deferred it. A job deferred while another runs (a chunk's completion check,
the aggregation's email) so becomes that job's child, in the same trace.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import context
from opentelemetry import trace as opentelemetry_trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from importq.operations import logs

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
TRACEPARENT = "traceparent"
_propagator = TraceContextTextMapPropagator()
_tracer: opentelemetry_trace.Tracer | None = None


def configure(provider: TracerProvider | None) -> None:
    """Trace into ``provider`` from now on; ``None`` turns tracing off."""
    global _tracer
    _tracer = None if provider is None else provider.get_tracer("importq")


def configure_from_environment() -> None:
    """Export by OTLP when an endpoint is set; else leave tracing off. The provider is
    shut down, its last spans sent, when the process exits."""
    if not any(os.environ.get(name) for name in ENDPOINT_VARIABLES):
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES override the default name.
    resource = Resource({"service.name": "importq"}).merge(OTELResourceDetector().detect())
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    atexit.register(provider.shutdown)
    configure(provider)


def on() -> bool:
    return _tracer is not None


@contextlib.contextmanager
def span(
    name: str,
    attributes: Mapping[str, str | int] | None = None,
    *,
    parent: Mapping[str, str] | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    root: bool = False,
    links: Sequence[Link] = (),
    end_on_exit: bool = True,
) -> Iterator[Span | None]:
    """A span named ``name`` around the block: the current span's child, the child of the
    remote span whose ``traceparent`` ``parent`` holds, or with ``root`` the first of a
    trace of its own. An exception that leaves the block marks the span failed, unless it
    has ended. Without ``end_on_exit``, the caller ends it (a request's, when its answer
    has been sent). Yields ``None``, and does nothing, when tracing is off."""
    if _tracer is None:
        yield None
        return
    origin = Context() if root else _propagator.extract(parent) if parent else None
    with _tracer.start_as_current_span(
        name,
        context=origin,
        kind=kind,
        attributes=attributes,
        links=links,
        end_on_exit=end_on_exit,
    ) as current:
        yield current


def job_arguments() -> dict[str, str]:
    """The arguments a job deferred now carries besides its own: the request id, and the
    current span's ``traceparent`` when tracing is on."""
    carried: dict[str, str] = {}
    request = logs.request_id.get()
    if request is not None:
        carried["request_id"] = request
    if _tracer is not None:
        headers: dict[str, str] = {}
        _propagator.inject(headers)
        if TRACEPARENT in headers:
            carried["trace"] = headers[TRACEPARENT]
    return carried


def batch_origin() -> dict[str, str | None]:
    """What a new batch keeps of the request staging it (``batches.request_id`` and
    ``trace``), for the jobs deferred on its behalf outside its own (:func:`within_batch`)."""
    carried = job_arguments()
    return {"request_id": carried.get("request_id"), "trace": carried.get("trace")}


@contextlib.contextmanager
def within_batch(request_id: str | None, trace: str | None) -> Iterator[None]:
    """Defer a batch's jobs from outside its own (a cancel, reconcile) as its own would
    be: carrying the request id and the trace its row keeps."""
    previous = logs.request_id.set(request_id)
    origin = (
        _propagator.extract({TRACEPARENT: trace})
        if trace
        else opentelemetry_trace.set_span_in_context(opentelemetry_trace.INVALID_SPAN)
    )
    token = context.attach(origin)
    try:
        yield
    finally:
        context.detach(token)
        logs.request_id.reset(previous)


@contextlib.contextmanager
def job_span(
    task_name: str, attributes: Mapping[str, str | int], request_id: str | None, trace: str | None
) -> Iterator[None]:
    """Run a job as its carried request's and trace's: its log lines name the request,
    and its span is the child of the one that deferred it."""
    logs.request_id.set(request_id)
    parent = {TRACEPARENT: trace} if trace else None
    with span(task_name, attributes, parent=parent, kind=SpanKind.CONSUMER):
        yield


def client_links(headers: Mapping[str, Any]) -> list[Link]:
    """A link to the span a request's ``traceparent`` names, if it names one.

    A client's trace is linked, never continued: on an API open to the internet, a
    client must not choose the trace its batch's spans join, nor whether they are
    sampled."""
    value = headers.get(TRACEPARENT)
    if not isinstance(value, str) or not value:
        return []
    remote = opentelemetry_trace.get_current_span(_propagator.extract({TRACEPARENT: value}))
    client = remote.get_span_context()
    return [Link(client)] if client.is_valid else []
