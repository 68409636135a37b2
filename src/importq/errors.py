"""Refusals: the requests the service does not carry out, and why.

Each has an HTTP status, a machine code and a message for a person. It may carry extra
keys, such as ``columns``, ``line`` or ``limit``. Most are the client's doing; a 429
(too much queued) or a 503 (the database away, the service stopping) says when to try
again, in ``Retry-After`` (``retryAfter`` when the refusal carries one).
"""

from __future__ import annotations

from typing import Any

RETRY_AFTER_SECONDS = 5


class Refusal(Exception):
    def __init__(self, status: int, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.extra = extra

    @property
    def headers(self) -> dict[str, str] | None:
        if self.status == 401:
            return {"WWW-Authenticate": "Bearer"}
        if self.status in (429, 503):
            return {"Retry-After": str(self.extra.get("retryAfter", RETRY_AFTER_SECONDS))}
        return None

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail, "code": self.code, **self.extra}
