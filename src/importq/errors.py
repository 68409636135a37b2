"""Refusals: errors a client caused.

Each has an HTTP status, a machine code and a message for a person. It may carry extra
keys, such as ``columns``, ``line`` or ``limit``.
"""

from __future__ import annotations

from typing import Any


class Refusal(Exception):
    def __init__(self, status: int, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.extra = extra

    @property
    def headers(self) -> dict[str, str] | None:
        return {"WWW-Authenticate": "Bearer"} if self.status == 401 else None

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail, "code": self.code, **self.extra}
