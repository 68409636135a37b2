"""Recovery after failures no job can see: what ``reconcile`` does, periodically.

- Jobs of dead workers (no heartbeat for ``IMPORTQ_STALLED_SECONDS``) are retried.
  procrastinate's ``retry_job`` ignores retry strategies, so a chunk job counts the lost
  attempt on its chunk and, at the cap, the chunk is failed instead: a chunk that kills
  its worker cannot loop forever.
- Active batches whose every chunk is finished get their completion check again, and
  batches stuck in ``aggregating`` with no aggregate job get one (a storage outage).
- Staged rows, stored reports and kept uploads of batches finished longer than
  ``IMPORTQ_RETENTION_DAYS`` ago, and finished jobs as old, are deleted.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta

from procrastinate.jobs import Status

from importq.processing import fail_chunk, record_attempt
from importq.services import Services
from importq.sql import queries
from importq.storage import StorageError

log = logging.getLogger(__name__)

WORKER_LOST = "the worker stopped while processing the chunk"
PURGE_BATCHES = 100  # per reconcile run


async def _recover_stalled_jobs(services: Services) -> None:
    manager = services.queue.app.job_manager
    stalled = await manager.get_stalled_jobs(
        seconds_since_heartbeat=services.settings.stalled_seconds
    )
    for job in stalled:
        log.warning("retrying job %s (%s) of a stalled worker", job.id, job.task_name)
        if job.task_name != "process_chunk":
            await manager.retry_job(job)
            continue
        batch_id = uuid.UUID(str(job.task_kwargs["batch_id"]))
        chunk_no = int(str(job.task_kwargs["chunk_no"]))
        async with services.pool.connection() as conn:
            attempts = await record_attempt(conn, batch_id, chunk_no, WORKER_LOST)
            if attempts >= services.settings.chunk_max_attempts:
                await fail_chunk(
                    conn, services.queue, services.datasets, batch_id, chunk_no, WORKER_LOST
                )
                await manager.finish_job(job, status=Status.FAILED, delete_job=False)
            else:
                await manager.retry_job(job)


async def _redefer_missed_steps(services: Services) -> None:
    async with services.pool.connection() as conn, conn.transaction():
        cursor = await conn.execute(queries["batches_waiting_for_completion"])
        for (batch_id,) in await cursor.fetchall():
            await services.queue.defer_completion_check(conn, batch_id)
        cursor = await conn.execute(queries["batches_stuck_aggregating"])
        for (batch_id,) in await cursor.fetchall():
            log.info("re-deferring the aggregation of batch %s", batch_id)
            await services.queue.defer_aggregate(conn, batch_id)


async def _purge(services: Services) -> None:
    days = services.settings.retention_days
    cutoff = datetime.now(UTC) - timedelta(days=days)
    async with services.pool.connection() as conn, conn.transaction():
        await conn.execute(queries["purge_staged_rows"], {"cutoff": cutoff})
    await _purge_stored_files(services, cutoff)
    await services.queue.app.job_manager.delete_old_jobs(nb_hours=days * 24, include_failed=True)


async def _purge_stored_files(services: Services, cutoff: datetime) -> None:
    """Delete the reports and kept upload of batches finished before ``cutoff``; a batch
    is marked only once its files are gone, so a storage outage just delays it."""
    async with services.pool.connection() as conn:
        cursor = await conn.execute(
            queries["batches_to_purge"], {"cutoff": cutoff, "limit": PURGE_BATCHES}
        )
        batch_ids = [row[0] for row in await cursor.fetchall()]
    for batch_id in batch_ids:
        try:
            for prefix in (f"reports/{batch_id}", f"uploads/{batch_id}"):
                await services.storage.delete_prefix(prefix)
        except StorageError as error:
            log.warning("stored files of batch %s not purged yet: %s", batch_id, error)
            return
        async with services.pool.connection() as conn:
            await conn.execute(queries["mark_batch_purged"], {"batch_id": batch_id})


async def reconcile(services: Services) -> None:
    """One pass of every recovery step."""
    await _recover_stalled_jobs(services)
    await _redefer_missed_steps(services)
    await _purge(services)
