"""Security headers on every answer, added as the answer starts.

- ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer`` everywhere:
  a report link carries its signature in its query, which no other site should see.
- ``Cache-Control: no-store`` on the API's answers, which hold users' jobs and links.
- ``Strict-Transport-Security`` when the service's public URL is https.

A plain ASGI middleware, so that uploads and downloads stream through it untouched.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

API_PREFIX = "/api/"
HSTS_SECONDS = 365 * 24 * 3600


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
