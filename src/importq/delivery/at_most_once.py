"""Handing over what a finished batch owes: one message per channel, email or webhook.

Invariants:

- Each batch and channel has at most one ``deliveries`` row. The aggregation creates
  it, and inserting it again does nothing.
- Once the row's ``sent_at`` is recorded, the message is never sent again.
- Two jobs never send a message at once. The row is locked while the message is handed
  over.
- Nothing here touches the batch's status.

:func:`deliver_once` owns its transaction. Every attempt is logged in
``delivery_attempts``. A failed hand-over is recorded on the row in the same
transaction, still under the lock. It is then re-raised, so the job retries with
backoff. The last attempt ends the delivery, and so does a :class:`PermanentFailure`,
which no retry can mend. Either is also noted on the batch, as ``lastError`` =
``<channel>: …``. A later success clears that note.
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

# Hands the message over. It takes the connection, the batch row and the message id, and
# returns the receiver's status code when there is one. It may read with the connection
# but must not write with it: its failure is recorded in the same transaction.
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
    """Hand over the batch's ``channel`` message, unless it was handed over already.

    Returns True when this call handed it over. The failure of an attempt that may be
    retried is raised, after it is recorded. After recording the last attempt's failure,
    or a permanent failure, it returns False.
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
            # send() wrote nothing, so the transaction is sound. The failure is recorded
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
