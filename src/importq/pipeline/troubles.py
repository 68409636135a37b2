"""Work that failed or is stuck, made visible and recoverable without SQL (admins).

- **Troubled jobs**: the queue's jobs that ended ``failed``, or that are ``retrying``
  (waiting to be tried again after a failed attempt), each with the batch and chunk it
  works on and the last error importq recorded for that work: a chunk's attempt, an
  email's or a webhook's delivery, else the batch's.
- **Retrying** a job runs it again now: a failed one through procrastinate's own retry
  (its attempts go on counting), a waiting one by moving its time to now. A chunk job
  whose chunk is no longer to do is not retried: the chunk was given up (its rows are
  failures in the batch's reports) or done, and running its job would change nothing.
  Nor is a completion check while another of its batch is already waiting to run: the
  queue keeps one such check a batch (its ``queueing_lock``), and that one will do.
- **Retrying a batch's jobs** retries each job once, each in its own transaction (a
  savepoint when the caller's transaction is open): a job that moved on meanwhile (a
  worker took it, it ended) is skipped, with why, and the others are still retried.
- **Stuck batches**: unfinished batches unchanged for a while, with why, in words.

Each function owns its transaction on the connection it is given.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from psycopg import AsyncConnection
from psycopg.errors import UniqueViolation
from psycopg.rows import dict_row

from importq.errors import Refusal
from importq.sql import queries

Connection = AsyncConnection[Any]
JobState = Literal["failed", "retrying"]


@dataclass(frozen=True)
class TroubledJob:
    id: int
    task_name: str
    queue_name: str
    #: failed, or todo (retrying)
    status: str
    attempts: int
    scheduled_at: datetime | None
    batch_id: uuid.UUID | None
    chunk_no: int | None
    last_error: str | None


async def troubled_jobs(
    conn: Connection,
    state: JobState,
    batch_id: uuid.UUID | None = None,
    *,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[TroubledJob], int]:
    """A page of the jobs in ``state`` (of one batch, when given), and how many there are."""
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            queries["troubled_jobs"],
            {
                "state": state,
                "batch_id": None if batch_id is None else str(batch_id),
                "limit": limit,
                "offset": offset,
            },
        )
        rows = await cursor.fetchall()
    total = int(rows[0].pop("total")) if rows else 0
    for row in rows:
        row.pop("total", None)
    return [TroubledJob(**row) for row in rows], total


# The queue's rule of one waiting completion check a batch (job_queue.COMPLETION).
QUEUEING_LOCK_INDEX = "procrastinate_jobs_queueing_lock_idx_v1"


async def retry_job(conn: Connection, job_id: int) -> None:
    """Run job ``job_id`` again now (see the module's docstring), in a transaction of its
    own. ``404`` for no such job; ``409`` for a job neither failed nor retrying
    (``not_retryable``), a chunk job with nothing left to do (``nothing_to_retry``), or a
    job whose twin already waits to run (``already_waiting``)."""
    try:
        async with conn.transaction():
            await _retry(conn, job_id)
    except UniqueViolation as error:
        if error.diag.constraint_name != QUEUEING_LOCK_INDEX:
            raise
        raise Refusal(
            409,
            "already_waiting",
            f"Job {job_id} is a completion check of a batch that already has one waiting "
            "to run: that one will do.",
        ) from None


async def _retry(conn: Connection, job_id: int) -> None:
    cursor = await conn.execute(queries["job_to_retry"], {"job_id": job_id})
    row = await cursor.fetchone()
    if row is None:
        raise Refusal(404, "not_found", f"There is no job {job_id}.")
    status, attempts, chunk_settled = row
    if chunk_settled:
        raise Refusal(
            409,
            "nothing_to_retry",
            f"Job {job_id}'s chunk is no longer to do: it was given up (its rows are "
            "failures in the batch's reports) or done.",
        )
    if status == "failed":
        await conn.execute(queries["retry_failed_job"], {"job_id": job_id})
    elif status == "todo" and attempts > 0:
        await conn.execute(queries["retry_waiting_job"], {"job_id": job_id})
    else:
        raise Refusal(
            409, "not_retryable", f"Job {job_id} is {status}: neither failed nor retrying."
        )


@dataclass(frozen=True)
class SkippedJob:
    """A job of a batch not retried: its refusal's code and why."""

    id: int
    code: str
    detail: str


async def retry_batch_jobs(
    conn: Connection, batch_id: uuid.UUID
) -> tuple[list[int], list[SkippedJob]]:
    """Run again now every failed or retrying job of the batch that has work left, each
    once and on its own (see the module's docstring): the ids of those run again, and
    those skipped with why."""
    # Listed before any is retried: a retried failed job is retrying, and must not be
    # retried a second time as such.
    listed: dict[int, None] = {}
    for state in ("failed", "retrying"):
        jobs, _ = await troubled_jobs(conn, state, batch_id, limit=10_000)
        listed.update((job.id, None) for job in jobs)
    retried, skipped = [], []
    for job_id in listed:
        try:
            await retry_job(conn, job_id)
        except Refusal as refused:
            skipped.append(SkippedJob(job_id, refused.code, refused.detail))
        else:
            retried.append(job_id)
    return retried, skipped


@dataclass(frozen=True)
class StuckBatch:
    id: uuid.UUID
    dataset: str
    status: str
    updated_at: datetime
    total_chunks: int
    finished_chunks: int
    #: Why it has not moved, in words.
    reasons: list[str]


def _reasons(row: dict[str, Any]) -> list[str]:
    reasons = []
    if row["jobs_failed"]:
        reasons.append(f"{row['jobs_failed']} of its jobs failed: retry them")
    if row["chunks_to_do"] and row["most_attempts"]:
        errors = f": {row['chunk_errors']}" if row["chunk_errors"] else ""
        reasons.append(
            f"{row['chunks_to_do']} chunks not done, tried up to {row['most_attempts']} "
            f"times{errors}"
        )
    elif row["chunks_to_do"]:
        reasons.append(f"{row['chunks_to_do']} chunks waiting for a worker")
    if row["status"] == "aggregating":
        reasons.append("its reports are being written")
    if row["last_error"]:
        reasons.append(f"last error: {row['last_error']}")
    if not row["jobs_waiting"] and not row["jobs_failed"]:
        reasons.append("no job is waiting for it: the periodic reconcile defers a missed step")
    return reasons


async def stuck_batches(conn: Connection, minutes: float) -> list[StuckBatch]:
    """Unfinished batches unchanged for ``minutes``, oldest first (200 at most)."""
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(queries["stuck_batches"], {"minutes": minutes})
        rows = await cursor.fetchall()
    return [
        StuckBatch(
            id=row["id"],
            dataset=row["dataset"],
            status=row["status"],
            updated_at=row["updated_at"],
            total_chunks=row["total_chunks"],
            finished_chunks=row["finished_chunks"],
            reasons=_reasons(row),
        )
        for row in rows
    ]
