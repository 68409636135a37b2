"""Handing over what a finished batch owes: one message per channel, email or webhook.

Invariants:

- Each batch and channel has at most one ``deliveries`` row. The aggregation creates
  it, and inserting it again does nothing.
- Once the row's ``sent_at`` is recorded, the message is never sent again.
- Two attempts never send a message at once, unless one outlived its claim. An attempt
  first *claims* the row for ``lease_seconds`` (longer than a send can take), in a
  transaction of its own. Another attempt that finds the claim running raises
  :class:`DeliveryBusy`, and its job retries: the claimant records the outcome, or its
  claim runs out and the retry sends. A job whose worker died is retried only once its
  claim has run out (:mod:`importq.pipeline.recovery`).
- No transaction, row lock or pooled connection is held while a message is handed
  over, so a slow receiver holds nothing but its own job.
- Nothing here touches the batch's status.

:func:`deliver_once` runs three short transactions: claim, then (after sending) record.
Every attempt is logged in ``delivery_attempts``. A failed hand-over is recorded on the
row, which gives up the claim; it is then re-raised, so the job retries with backoff. The
last attempt ends the delivery, and so does a :class:`PermanentFailure`, which no retry
can mend. Either is also noted on the batch, as ``lastError`` = ``<channel>: …``. A later
success clears that note.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from psycopg import AsyncConnection

from importq.operations.metrics import count_delivery
from importq.pipeline import batches
from importq.services import Services
from importq.sql import queries

log = logging.getLogger(__name__)

# Hands the message over, with no transaction open. It takes the batch row and the
# message id, and returns the receiver's status code when there is one.
Send = Callable[[dict[str, Any], str], Awaitable[int | None]]


class PermanentFailure(Exception):
    """A failure no retry can mend (a refused destination, no address)."""


class DeliveryBusy(Exception):
    """Another attempt's claim is running. That attempt may still send, or may have died
    without recording: the job retries, and goes ahead once the claim has run out."""


async def _record(
    conn: AsyncConnection[Any],
    batch_id: uuid.UUID,
    channel: str,
    claimant: str,
    *,
    status_code: int | None,
    error: str | None,
) -> None:
    params = {"batch_id": batch_id, "channel": channel, "claimant": claimant}
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


async def _claim(
    services: Services, batch_id: uuid.UUID, channel: str, lease_seconds: float, claimant: str
) -> tuple[dict[str, Any], str] | None:
    """Claim the delivery: the batch row and the message id. None when it was sent
    already or was never owed. Raises :class:`DeliveryBusy` while another attempt's
    claim runs."""
    params = {"batch_id": batch_id, "channel": channel}
    async with services.pool.connection() as conn, conn.transaction():
        cursor = await conn.execute(
            queries["claim_delivery"],
            {**params, "lease_seconds": lease_seconds, "claimant": claimant},
        )
        claimed = await cursor.fetchone()
        if claimed is None:
            cursor = await conn.execute(queries["delivery_state"], params)
            state = await cursor.fetchone()
            if state is None or state[0] is not None:
                return None
            raise DeliveryBusy(f"another attempt holds it until {state[1]:%H:%M:%S %Z}")
        batch = await batches.get_batch(conn, batch_id)
        assert batch is not None
        return batch, str(claimed[0])


async def deliver_once(
    services: Services,
    batch_id: uuid.UUID,
    channel: str,
    send: Send,
    *,
    lease_seconds: float,
    last_attempt: bool = False,
) -> bool:
    """Hand over the batch's ``channel`` message, unless it was handed over already.

    ``lease_seconds`` bounds how long ``send`` may take; the claim lasts that long.
    Returns True when this call handed it over. The failure of an attempt that may be
    retried is raised, after it is recorded. After recording the last attempt's failure,
    or a permanent failure, it returns False.
    """
    claimant = str(uuid.uuid4())
    claimed = await _claim(services, batch_id, channel, lease_seconds, claimant)
    if claimed is None:
        return False
    batch, message_id = claimed
    failure: Exception | None = None
    status_code: int | None = None
    try:
        status_code = await send(batch, message_id)
    except Exception as error:
        failure = error
    final = failure is not None and (last_attempt or isinstance(failure, PermanentFailure))
    if failure is not None:
        status_code = getattr(failure, "status_code", None)
    async with services.pool.connection() as conn, conn.transaction():
        await _record(
            conn,
            batch_id,
            channel,
            claimant,
            error=None if failure is None else str(failure),
            status_code=status_code,
        )
        if final:
            await batches.record_error(conn, batch_id, f"{channel}: {failure}")
    count_delivery(channel, "sent" if failure is None else "given_up" if final else "failed")
    if failure is None:
        return True
    log.warning(
        "%s for batch %s failed%s: %s", channel, batch_id, " (given up)" if final else "", failure
    )
    if final:
        return False
    raise failure
