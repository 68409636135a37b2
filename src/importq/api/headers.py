"""Headers on every answer, added as the answer starts: security headers, and the
request's id.

- ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer`` everywhere:
  a report link carries its signature in its query, which no other site should see.
- ``Cache-Control: no-store`` on the API's answers, which hold users' jobs and links.
- ``Strict-Transport-Security`` when the service's public URL is https.
- ``X-Request-ID``: the request's id (:class:`RequestIds`), in its log lines too.
- ``traceparent``: the client's span, which the request's span links to (:class:`RequestSpans`).

Plain ASGI middlewares, so that uploads and downloads stream through them untouched.

A request ends with its answer (:func:`answer_ended`): the background tasks an endpoint
adds run after it (an upload is kept in storage after its ``202``), and are no part of
the request's time or span.
"""

from __future__ import annotations

import re
import uuid

from opentelemetry.trace import Span, SpanKind
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from importq.operations import logs, traces

API_PREFIX = "/api/"
HSTS_SECONDS = 365 * 24 * 3600


def answer_ended(message: Message) -> bool:
    """Whether the app's ``message`` is the last part of its answer's body."""
    return message["type"] == "http.response.body" and not message.get("more_body", False)


def route_template(scope: Scope) -> str | None:
    """The template of the route the router matched (``/api/v1/jobs/{batch_id}``), which
    it leaves in the scope; None before routing, or when no route matched."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else None


class SecurityHeaders:
    def __init__(self, app: ASGIApp, *, https: bool) -> None:
        self._app = app
        self._always = [
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
        ]
        if https:
            self._always.append((b"strict-transport-security", f"max-age={HSTS_SECONDS}".encode()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        extra = list(self._always)
        if scope["path"].startswith(API_PREFIX):
            extra.append((b"cache-control", b"no-store"))

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                added = [(n, v) for n, v in extra if n not in present]
                message = {**message, "headers": [*message.get("headers", []), *added]}
            await send(message)

        await self._app(scope, receive, with_headers)


REQUEST_ID_HEADER = "x-request-id"
# A request id a client may choose: a log collector's, a proxy's (UUIDs, hex, base64).
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}")


class RequestIds:
    """Each request's id, for its log lines (:mod:`importq.operations.logs`) and its
    answer's ``X-Request-ID``: the one the request sent, when it is a plain token of at
    most 128 characters, else a new one."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        sent = dict(scope.get("headers", [])).get(REQUEST_ID_HEADER.encode(), b"")
        text = sent.decode("latin-1")
        chosen = text if _REQUEST_ID.fullmatch(text) else uuid.uuid4().hex
        logs.request_id.set(chosen)

        async def with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.lower() != REQUEST_ID_HEADER.encode()
                ]
                headers.append((REQUEST_ID_HEADER.encode(), chosen.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self._app(scope, receive, with_id)


class RequestSpans:
    """Each request in a span of its own when tracing is on (:mod:`importq.operations.
    traces`), named by its route's template (``POST /api/v1/{dataset}/import-rows``): the
    root of a trace, linked to the client's span when the request sent a ``traceparent``.
    An upload's staging and its batch's jobs are this span's descendants. The span ends
    once the answer has been sent, before any background task of the endpoint runs."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not traces.on():
            await self._app(scope, receive, send)
            return
        method: str = scope["method"]
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
        }
        span: Span | None = None

        def end() -> None:
            """Name the span by the route matched, and end it, once."""
            if span is None or not span.is_recording():
                return
            route = route_template(scope)
            if route is not None:
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
            span.end()

        async def with_status(message: Message) -> None:
            if message["type"] == "http.response.start" and span is not None:
                span.set_attribute("http.response.status_code", message["status"])
            await send(message)
            if answer_ended(message):
                end()

        try:
            # Not ended on leaving the block: an error before the answer's end marks it
            # failed first, then the finally ends it.
            with traces.span(
                method,
                {"http.request.method": method, "importq.request_id": logs.request_id.get() or ""},
                kind=SpanKind.SERVER,
                root=True,
                links=traces.client_links(headers),
                end_on_exit=False,
            ) as span:
                await self._app(scope, receive, with_status)
        finally:
            end()
