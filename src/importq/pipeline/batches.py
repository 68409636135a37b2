"""Batch state: the guarded status transitions, the progress counters, and reads.

Every function takes a connection and runs inside the caller's transaction. The caller
commits.

A batch's status moves only forward. Staging creates a batch ``active``, in the
transaction that stages its rows. Then:

    active ──(completion guard)──▶ aggregating ──▶ completed | failed | cancelled

The completion guard lets a batch through once its last chunk is counted. A batch ends
``cancelled`` when a cancel kept some of its chunks from running; else ``failed`` when
every one of its chunks failed; otherwise ``completed``. A cancel only marks the batch
(``cancelled_at``), without changing its status.

Each transition is a single ``UPDATE … WHERE status = <expected> RETURNING``. Of any
number of concurrent callers, exactly one gets a row back. That caller owns what
follows: one aggregation, one notification, one email.

The counters change only in the transaction that finishes a chunk, or in a cancel's,
which counts the rows of the chunks it kept from running as failures at once. So a
progress read is one row (O(1)), and it never runs ahead of the row results, except for
those cancelled rows, whose records the aggregation makes from the staged rows.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass
from datetime import date, datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from importq.sql import queries

# The outcomes a tally counts, as the batch's counters are named.
_COUNTED = ("inserted", "updated", "unchanged", "deleted", "restored", "duplicates", "failures")


@dataclass(frozen=True)
class ChunkTally:
    """A finished chunk's contribution to its batch's counters."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    #: An undo's: the rows it deleted (inserted by the batch undone), and restored.
    deleted: int = 0
    restored: int = 0
    duplicates: int = 0
    failures: int = 0
    failed: bool = False

    @property
    def successes(self) -> int:
        return self.inserted + self.updated + self.unchanged + self.deleted + self.restored

    @classmethod
    def of(cls, batch: dict[str, Any]) -> ChunkTally:
        """A batch row's counters, as one tally."""
        return cls(**{name: batch[name] for name in _COUNTED})

    @classmethod
    def of_outcomes(cls, counts: dict[str, int]) -> ChunkTally:
        """The tally of a settle statement's count per outcome."""
        named = {"duplicates": "duplicate", "failures": "failure"}
        values: dict[str, Any] = {name: counts.get(named.get(name, name), 0) for name in _COUNTED}
        return cls(**values)

    def counters(self) -> dict[str, int]:
        """The batch counters this tally adds to (or sets)."""
        return {"successes": self.successes, **{name: getattr(self, name) for name in _COUNTED}}

    def __add__(self, other: ChunkTally) -> ChunkTally:
        return ChunkTally(**{name: getattr(self, name) + getattr(other, name) for name in _COUNTED})


@dataclass(frozen=True)
class Counted:
    """What counting a finished chunk found."""

    #: It was the batch's last chunk.
    is_last: bool
    #: The batch is aborted: more of its rows failed than its ``onError`` allows.
    aborted: bool


async def count_finished_chunk(
    conn: AsyncConnection[Any], batch_id: uuid.UUID, tally: ChunkTally
) -> Counted:
    """Add a finished chunk's tally to the batch, and abort it when its failures pass its
    ``abort-above`` share."""
    cursor = await conn.execute(
        queries["count_finished_chunk"],
        {
            "batch_id": batch_id,
            "done": 0 if tally.failed else 1,
            "failed": 1 if tally.failed else 0,
            **tally.counters(),
        },
    )
    row = await cursor.fetchone()
    return Counted(is_last=bool(row and row[0]), aborted=bool(row and row[1]))


async def record_written_batch(
    conn: AsyncConnection[Any], batch_id: uuid.UUID, tally: ChunkTally
) -> None:
    """Set a checked batch's counters to what writing its chunks did (in that transaction)."""
    await conn.execute(queries["record_written_batch"], {"batch_id": batch_id, **tally.counters()})


async def hold_checked_batch(conn: AsyncConnection[Any], batch_id: uuid.UUID) -> None:
    """A checked batch that will not be written: aborted (unless cancelled), and the rows
    its chunks found valid counted as failures."""
    await conn.execute(queries["hold_checked_batch"], {"batch_id": batch_id})


async def start_aggregation(conn: AsyncConnection[Any], batch_id: uuid.UUID) -> bool:
    """The completion guard, ``active → aggregating``. True for the one caller that won."""
    cursor = await conn.execute(queries["start_aggregation"], {"batch_id": batch_id})
    return await cursor.fetchone() is not None


async def finish_batch(
    conn: AsyncConnection[Any],
    batch_id: uuid.UUID,
    *,
    result: dict[str, Any],
    report_paths: dict[str, str],
    reports_expire_at: datetime | None,
) -> str | None:
    """Move ``aggregating → completed | failed | cancelled``.

    Returns the new status, or None when another caller finished the batch first.
    """
    cursor = await conn.execute(
        queries["finish_batch"],
        {
            "batch_id": batch_id,
            "result": json.dumps(result),
            "report_paths": json.dumps(report_paths),
            "reports_expire_at": reports_expire_at,
        },
    )
    row = await cursor.fetchone()
    return None if row is None else str(row[0])


async def record_error(conn: AsyncConnection[Any], batch_id: uuid.UUID, error: str) -> None:
    """Note why a batch is not moving, leaving its status alone."""
    await conn.execute(queries["record_batch_error"], {"batch_id": batch_id, "error": error})


async def cancel_batch(conn: AsyncConnection[Any], batch_id: uuid.UUID) -> bool:
    """Ask an active batch to stop (``cancelled_at``); its status stays ``active`` until
    its chunks are settled, and the one aggregation ends it.

    True when the batch is cancelled (by this call or an earlier one), False when there
    is no such batch or it is finished or about to be (every chunk done, aggregating or
    after).
    """
    cursor = await conn.execute(queries["cancel_batch"], {"batch_id": batch_id})
    return await cursor.fetchone() is not None


async def get_batch(conn: AsyncConnection[Any], batch_id: uuid.UUID) -> dict[str, Any] | None:
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(queries["get_batch"], {"batch_id": batch_id})
        return await cursor.fetchone()


@dataclass(frozen=True)
class BatchFilter:
    """Which batches a list shows; None matches every value. ``since`` and ``until`` are
    UTC days, both included."""

    initiator_id: int | None = None
    status: str | None = None
    dataset: str | None = None
    since: date | None = None
    until: date | None = None


async def list_batches(
    conn: AsyncConnection[Any], which: BatchFilter, *, page: int, page_size: int
) -> tuple[list[dict[str, Any]], int]:
    """A page of batches, newest first, and how many match in all."""
    params = {**asdict(which), "limit": page_size, "offset": (page - 1) * page_size}
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(queries["list_batches"], params)
        rows = await cursor.fetchall()
        if rows:
            return rows, int(rows[0]["total"])
        await cursor.execute(queries["count_batches"], params)
        counted = await cursor.fetchone()
        return [], int(counted["count"]) if counted else 0
