"""The job queue: procrastinate on importq's own database, and every deferral.

A job exists if and only if the state change that asked for it committed. To keep that
true, every job is deferred by task name on the caller's connection, inside the
caller's transaction. The caller commits.

Every job carries, besides its own arguments, the request id and the trace of what
deferred it (:func:`importq.operations.traces.job_arguments`); the worker takes them
off before the task runs.

The queues:

- ``chunks``: one ``process_chunk`` job per chunk. A chunk job's priority is minus its
  chunk number, and procrastinate takes the highest priority first, then the oldest. So
  batches are interleaved: every batch's first chunk comes before any batch's second, and
  a small batch posted behind a big one waits for a free slot only, not for the big
  one's remaining chunks.
- ``chunks-express``: the chunk jobs of a batch of at most ``EXPRESS_ROWS`` rows. A
  worker serves it with a slot of its own, besides its ``chunks`` slots, so a small
  batch never waits for a big batch's chunk to end.
- ``completion``: ``check_completion``, with the batch id as its ``queueing_lock``,
  then ``aggregate``.
- ``messages``: ``send_email``.
- ``webhooks``: ``deliver_webhook``, apart from emails, so a slow receiver never delays
  anyone's email. (A ``deliver_webhook`` job deferred on ``messages`` before the split
  still runs there.)
- ``maintenance``: ``reconcile``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import procrastinate
from procrastinate import exceptions as procrastinate_errors
from psycopg import AsyncConnection

from importq.operations.traces import job_arguments

CHUNKS = "chunks"
CHUNKS_EXPRESS = "chunks-express"
# A batch this small, or smaller, has its chunks on the express queue: ~50 ms of work.
EXPRESS_ROWS = 1_000
COMPLETION = "completion"
MESSAGES = "messages"
WEBHOOKS = "webhooks"
MAINTENANCE = "maintenance"


def create_queue_app() -> procrastinate.App:
    """A procrastinate app without a pool; open it with ``open_async(pool=…)``."""
    return procrastinate.App(connector=procrastinate.PsycopgConnector())


class JobQueue:
    """Defers importq's jobs. Each method defers in the transaction of the connection given."""

    def __init__(self, app: procrastinate.App) -> None:
        self.app = app

    async def defer_chunks(
        self,
        conn: AsyncConnection[Any],
        batch_id: uuid.UUID,
        total_chunks: int,
        total_rows: int,
        chunk_nos: Iterable[int] | None = None,
    ) -> None:
        """One ``process_chunk`` job per chunk of a new batch of ``total_rows`` rows:
        chunks 0 to ``total_chunks`` - 1, or those ``chunk_nos`` (an undo's)."""
        queue = CHUNKS_EXPRESS if total_rows <= EXPRESS_ROWS else CHUNKS
        numbers = range(total_chunks) if chunk_nos is None else chunk_nos
        await self.defer_chunk_jobs(conn, batch_id, numbers, queue=queue)

    async def defer_chunk_jobs(
        self,
        conn: AsyncConnection[Any],
        batch_id: uuid.UUID,
        chunk_nos: Iterable[int],
        *,
        queue: str = CHUNKS,
    ) -> None:
        deferrer = self.app.configure_task("process_chunk", connection=conn, queue=queue)
        carried = job_arguments()
        jobs = [
            deferrer.make_new_job(batch_id=str(batch_id), chunk_no=n, **carried).evolve(priority=-n)
            for n in chunk_nos
        ]
        await self.app.job_manager.batch_defer_jobs_async(jobs, connection=conn)

    async def defer_completion_check(self, conn: AsyncConnection[Any], batch_id: uuid.UUID) -> None:
        """Defer the batch's completion check unless one is already waiting.

        A queueing lock already taken aborts the statement. So the deferral runs in a
        savepoint, which is rolled back alone. The check already waiting will see the same
        committed state.
        """
        deferrer = self.app.configure_task(
            "check_completion", connection=conn, queue=COMPLETION, queueing_lock=str(batch_id)
        )
        try:
            async with conn.transaction():
                await deferrer.defer_async(batch_id=str(batch_id), **job_arguments())
        except procrastinate_errors.AlreadyEnqueued:
            pass

    async def defer_aggregate(self, conn: AsyncConnection[Any], batch_id: uuid.UUID) -> None:
        deferrer = self.app.configure_task("aggregate", connection=conn, queue=COMPLETION)
        await deferrer.defer_async(batch_id=str(batch_id), **job_arguments())

    async def defer_email(self, conn: AsyncConnection[Any], batch_id: uuid.UUID) -> None:
        deferrer = self.app.configure_task("send_email", connection=conn, queue=MESSAGES)
        await deferrer.defer_async(batch_id=str(batch_id), **job_arguments())

    async def defer_webhook(self, conn: AsyncConnection[Any], batch_id: uuid.UUID) -> None:
        deferrer = self.app.configure_task("deliver_webhook", connection=conn, queue=WEBHOOKS)
        await deferrer.defer_async(batch_id=str(batch_id), **job_arguments())
