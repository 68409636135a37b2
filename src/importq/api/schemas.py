"""Request and response shapes: the API contract (the OpenAPI document comes from these)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Annotated, Any, Generic, Literal, TypeVar

from fastapi import Query
from pydantic import BaseModel, Field

from importq.job_json import (
    Job,
    Progress,
    ReportUrls,
    Result,
    Status,
    Summary,
    Timestamp,
)

__all__ = [
    "ERROR_MEANINGS",
    "PRINTABLE",
    "Accepted",
    "ErrorBody",
    "HealthReport",
    "Job",
    "Notification",
    "NotificationPage",
    "Page",
    "PageNumber",
    "PageSize",
    "Progress",
    "ReportLinks",
    "ReportUrls",
    "Result",
    "Status",
    "Summary",
    "accepted_with_location",
    "errors",
]


# Text without control characters: names and labels shown to people, and anything that
# goes to PostgreSQL as text (which cannot hold NUL). Spelled out rather than with a
# class shorthand, for Python and JSON Schema read it alike.
PRINTABLE = r"^[^\u0000-\u001f\u007f]*$"

# A page past this is refused (422), not sent to PostgreSQL as an offset it cannot hold.
MAX_PAGE = 1_000_000
PageNumber = Annotated[int, Query(ge=1, le=MAX_PAGE)]
PageSize = Annotated[int, Query(ge=1, le=500)]


def accepted_with_location(what: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI answer 202 of a route that answers :class:`Accepted` and a ``Location``
    header naming ``what``'s status URL."""
    header = {"description": f"{what}'s status URL, as ``statusUrl``", "schema": {"type": "string"}}
    return {202: {"headers": {"Location": {**header, "required": True}}}}


class Accepted(BaseModel):
    batchId: uuid.UUID
    totalRows: int
    totalChunks: int
    statusUrl: str


class ReportLinks(BaseModel):
    reportUrls: ReportUrls
    expiresAt: Timestamp


Item = TypeVar("Item")


class Page(BaseModel, Generic[Item]):
    items: list[Item]
    total: int
    page: int
    pageSize: int


class Notification(BaseModel):
    id: int
    type: str
    batchId: uuid.UUID | None
    payload: dict[str, Any]
    createdAt: Timestamp
    readAt: Timestamp | None


class NotificationPage(Page[Notification]):
    unreadCount: int


class HealthReport(BaseModel):
    """``ok``: every component answers. ``degraded``: the database does, but storage or
    email does not (200: the service still takes uploads). ``unavailable``: the database
    does not (503). ``starting``: the process is not serving yet (503)."""

    status: Literal["ok", "degraded", "unavailable", "starting"]
    components: dict[str, str]


class Liveness(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    """``ready``: the process serves, its database answers and is migrated. Otherwise
    ``not_ready`` and why (a load balancer then sends requests elsewhere)."""

    status: Literal["ready", "not_ready"]
    reason: str | None = None


class ErrorBody(BaseModel):
    """Every error's body. The keys after ``code`` come with the refusals they help."""

    detail: str = Field(description="What was wrong, for a person")
    code: str = Field(description="What was wrong, for a program (a refusal's code)")
    line: int | None = Field(default=None, description="The line of the upload at fault")
    offset: int | None = Field(default=None, description="The byte offset at fault")
    columns: list[str] | None = Field(default=None, description="The columns at fault")
    limit: int | None = Field(default=None, description="The limit that was exceeded")
    pending: int | None = Field(default=None, description="The caller's rows still waiting")
    retryAfter: int | None = Field(default=None, description="Seconds to wait before retrying")
    accepted: list[str] | None = Field(default=None, description="What is accepted instead")
    sheets: list[str] | None = Field(default=None, description="The workbook's sheets")
    batchId: uuid.UUID | None = Field(default=None, description="The batch concerned")


# Why each error status is answered; a route's own cases are in its refusals' ``code``.
ERROR_MEANINGS: Mapping[int, str] = {
    400: "The body cannot be read as sent (``code`` says why; ``line``, ``columns``…).",
    401: "No API token, or one that is unknown, revoked, expired or its user's disabled.",
    403: "The caller's role or the link does not allow this.",
    404: "There is no such thing, or not one of the caller's.",
    409: "The thing is not in a state that allows this.",
    413: "The upload is over a limit (``limit`` names it).",
    415: "The content type or file type is not accepted.",
    422: "A parameter or the body does not fit this document (``detail`` names which).",
    429: "Too many requests, or too many rows waiting (``Retry-After`` says when to retry).",
    503: "The database is unavailable, or the service is stopping; retry after a while.",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """A route's ``responses=`` for the errors of its own (401, 422 and 503 are added to
    every route that can answer them, by :mod:`importq.api.openapi`)."""
    return {s: {"model": ErrorBody, "description": ERROR_MEANINGS[s]} for s in statuses}
