"""Request and response shapes: the API contract (the OpenAPI document comes from these)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Generic, Literal, TypeVar

from fastapi import Query
from pydantic import BaseModel

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
]


# A page past this is refused (422), not sent to PostgreSQL as an offset it cannot hold.
MAX_PAGE = 1_000_000
PageNumber = Annotated[int, Query(ge=1, le=MAX_PAGE)]
PageSize = Annotated[int, Query(ge=1, le=500)]


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
    detail: str
    code: str
