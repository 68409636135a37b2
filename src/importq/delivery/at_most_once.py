"""Handing over what a finished batch owes: one message per channel (email, webhook),
sent at most once after a recorded success.

The ``deliveries`` row is locked while the message is handed over, so two jobs never
send it at once; once ``sent_at`` is recorded it is never sent again. Every attempt is
logged in ``delivery_attempts``. A failed hand-over is recorded on the row in the same
transaction, still under the lock, then re-raised so the job retries with backoff. The
last attempt, or a :class:`PermanentFailure` no retry can mend, is also noted on the
batch (``lastError`` = ``<channel>: …``) and ends the delivery; a later success clears
that note. Nothing here touches the batch's status.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from psycopg import AsyncConnection

from importq.pipeline import batches
from importq.services import Services
from importq.sql import queries

log = logging.getLogger(__name__)

# Hands the message over: (connection, batch row, message id) → the receiver's status
# code, if it has one. It may read with the connection but must not write with it.
Send = Callable[[AsyncConnection[Any], dict[str, Any], str], Awaitable[int | None]]


class PermanentFailure(Exception):
    """A failure no retry can mend (a refused destination, no address)."""


async def _record(
    conn: AsyncConnection[Any],
    batch_id: uuid.UUID,
    channel: str,
    *,
    status_code: int | None,
    error: str | None,
) -> None:
    params = {"batch_id": batch_id, "channel": channel}
    if error is None:
        await conn.execute(queries["delivery_sent"], params)
        await conn.execute(
            queries["clear_delivery_error_on_batch"],
            {"batch_id": batch_id, "prefix": f"{channel}: "},
        )
    else:
        await conn.execute(queries["delivery_failed"], {**params, "error": error})
    await conn.execute(
        queries["record_delivery_attempt"], {**params, "status_code": status_code, "error": error}
    )


async def deliver_once(
    services: Services,
    batch_id: uuid.UUID,
    channel: str,
    send: Send,
    *,
    last_attempt: bool = False,
) -> bool:
    """Hand the batch's ``channel`` message over unless it was; True when this call did.

    Raises the failure of an attempt that may be retried; returns False after recording
    the last attempt's or a permanent failure.
    """
    failure: Exception | None = None
    async with services.pool.connection() as conn, conn.transaction():
        cursor = await conn.execute(
            queries["lock_delivery"], {"batch_id": batch_id, "channel": channel}
        )
        delivery = await cursor.fetchone()
        if delivery is None or delivery[1] is not None:
            return False
        batch = await batches.get_batch(conn, batch_id)
        assert batch is not None
        try:
            status_code = await send(conn, batch, str(delivery[0]))
        except Exception as error:
            # send() wrote nothing, so the transaction is sound: the failure is recorded
            # while the row is still locked, and committed.
            failure = error
            await _record(
                conn,
                batch_id,
                channel,
                error=str(error),
                status_code=getattr(error, "status_code", None),
            )
            if last_attempt or isinstance(error, PermanentFailure):
                await batches.record_error(conn, batch_id, f"{channel}: {error}")
        else:
            await _record(conn, batch_id, channel, status_code=status_code, error=None)
    if failure is None:
        return True
    final = last_attempt or isinstance(failure, PermanentFailure)
    log.warning(
        "%s for batch %s failed%s: %s", channel, batch_id, " (given up)" if final else "", failure
    )
    if final:
        return False
    raise failure
