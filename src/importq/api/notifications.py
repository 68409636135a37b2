"""In-app notifications of the calling user: list, mark one read, mark all read."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from psycopg.rows import dict_row

from importq.api.auth import CurrentUser, ServicesDep
from importq.api.schemas import Notification, NotificationPage, PageNumber, PageSize, errors
from importq.errors import Refusal
from importq.sql import queries

router = APIRouter()

MAX_BIGINT = 2**63 - 1  # a larger id cannot be one of ours


@router.get("/api/v1/notifications", response_model=NotificationPage)
async def list_notifications(
    user: CurrentUser,
    services: ServicesDep,
    unread: bool = False,
    page: PageNumber = 1,
    pageSize: PageSize = 50,
) -> NotificationPage:
    params = {
        "user_id": user.id,
        "unread": unread,
        "limit": pageSize,
        "offset": (page - 1) * pageSize,
    }
    async with services.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(queries["list_notifications"], params)
        rows = await cur.fetchall()
        await cur.execute(queries["count_notifications"], params)
        counts = await cur.fetchone()
    assert counts is not None
    items = [
        Notification(
            id=r["id"],
            type=r["type"],
            batchId=r["batch_id"],
            payload=r["payload"],
            createdAt=r["created_at"],
            readAt=r["read_at"],
        )
        for r in rows
    ]
    return NotificationPage(
        items=items,
        total=counts["total"],
        page=page,
        pageSize=pageSize,
        unreadCount=counts["unread"],
    )


@router.post("/api/v1/notifications/{notification_id}/read", status_code=204, responses=errors(404))
async def mark_read(
    notification_id: Annotated[int, Path(ge=1, le=MAX_BIGINT)],
    user: CurrentUser,
    services: ServicesDep,
) -> None:
    async with services.pool.connection() as conn:
        cursor = await conn.execute(
            queries["mark_notification_read"], {"id": notification_id, "user_id": user.id}
        )
        if await cursor.fetchone() is None:
            raise Refusal(404, "not_found", f"There is no notification {notification_id}.")


@router.post("/api/v1/notifications/read-all", status_code=204)
async def mark_all_read(user: CurrentUser, services: ServicesDep) -> None:
    async with services.pool.connection() as conn:
        await conn.execute(queries["mark_all_notifications_read"], {"user_id": user.id})
