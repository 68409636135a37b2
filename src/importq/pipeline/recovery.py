"""Recovery after failures that no job can see. ``reconcile`` runs it periodically.

Invariants:

- A chunk that kills its worker cannot loop forever.
- A batch never stays active with nobody at work on it.

The steps:

- Jobs of dead workers are retried. A worker is dead when it has sent no heartbeat for
  ``IMPORTQ_STALLED_SECONDS``. procrastinate's ``retry_job`` ignores retry strategies,
  so a chunk job counts the lost attempt on its chunk. At the cap, the chunk is failed
  instead. A message job is retried only once its delivery's claim has run out: a
  worker that only looked dead may still be sending it.
- Missed steps are deferred again. An active batch whose every chunk is finished gets
  its completion check again. A batch stuck in ``aggregating`` with no aggregate job
  gets one; a storage outage can leave it so. A todo chunk with no job waiting or
  running gets a new one. Such a chunk's job ended failed, because even failing the
  chunk kept failing, as in a long database outage.
- Old data is deleted. That is the staged rows, stored reports and kept uploads of
  batches finished more than ``IMPORTQ_RETENTION_DAYS`` ago, and finished jobs as old.
  It is also the second half of a big upload whose batch never came
  (:class:`importq.ingest.staging.SecondPart`), and the report files of an aggregation
  that died.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from procrastinate.jobs import Job, Status
from procrastinate.manager import JobManager
from psycopg import AsyncConnection

from importq.ingest.staged_table import drop_staged_table
from importq.operations.metrics import count_recoveries
from importq.operations.traces import within_batch
from importq.pipeline.aggregation import REPORT_SCRATCH_PREFIX
from importq.pipeline.chunk_processing import fail_chunk, record_attempt
from importq.services import Services
from importq.sql import queries
from importq.storage import StorageError

log = logging.getLogger(__name__)

WORKER_LOST = "the worker stopped while processing the chunk"
PURGE_BATCHES = 100  # per reconcile run
# A staged part still unclaimed this long after it was committed has lost its batch.
# Staging a file of the largest size allowed takes minutes, far less than this. Report
# files left this long are abandoned too.
ABANDONED_PART_AGE = timedelta(hours=1)


async def _retry(manager: JobManager, job: Job) -> None:
    # A job may have moved on since it was listed. It may have finished, or its twin may
    # already wait under the same queueing lock. That is no reason to stop the other
    # recovery steps.
    try:
        await manager.retry_job(job)
    except Exception as error:
        log.info("job %s was not retried: %s", job.id, error)
        return
    count_recoveries("stalled_job")


# The channel each message task claims its delivery on.
MESSAGE_CHANNELS = {"send_email": "email", "deliver_webhook": "webhook"}


async def _claim_running(services: Services, job: Job) -> bool:
    """Whether the delivery of a message job is claimed still. A worker that only looked
    dead may still be sending it, so its job is retried once the claim has run out."""
    params = {
        "batch_id": uuid.UUID(str(job.task_kwargs["batch_id"])),
        "channel": MESSAGE_CHANNELS[job.task_name],
    }
    async with services.pool.connection() as conn:
        cursor = await conn.execute(queries["delivery_claim_running"], params)
        row = await cursor.fetchone()
    return bool(row and row[0])


class ChunkStillHeld(Exception):
    """The chunk's row is locked. Its worker is alive, and only its heartbeat was late."""


async def _count_lost_attempt(services: Services, batch_id: uuid.UUID, chunk_no: int) -> int | None:
    """Count a lost attempt on the chunk, and return the attempts so far.

    Returns None when the chunk is finished. Raises ChunkStillHeld when its worker still
    holds it.
    """
    async with services.pool.connection() as conn:
        attempts = await record_attempt(conn, batch_id, chunk_no, WORKER_LOST)
        if attempts:
            return attempts
        params = {"batch_id": batch_id, "chunk_no": chunk_no}
        cursor = await conn.execute(queries["chunk_status"], params)
        status = await cursor.fetchone()
    if status is not None and status[0] == "todo":
        raise ChunkStillHeld
    return None


async def _recover_stalled_jobs(services: Services) -> None:
    manager = services.queue.app.job_manager
    stalled = await manager.get_stalled_jobs(
        seconds_since_heartbeat=services.settings.stalled_seconds
    )
    for job in stalled:
        if job.task_name in MESSAGE_CHANNELS and await _claim_running(services, job):
            continue  # its worker may still be sending: retried once the claim ends
        if job.task_name != "process_chunk":
            log.warning("retrying job %s (%s) of a stalled worker", job.id, job.task_name)
            await _retry(manager, job)
            continue
        batch_id = uuid.UUID(str(job.task_kwargs["batch_id"]))
        chunk_no = int(str(job.task_kwargs["chunk_no"]))
        try:
            attempts = await _count_lost_attempt(services, batch_id, chunk_no)
        except ChunkStillHeld:
            continue
        log.warning("retrying chunk job %s of a stalled worker", job.id)
        if attempts is not None and attempts >= services.settings.chunk_max_attempts:
            async with services.pool.connection() as conn:
                await fail_chunk(
                    conn, services.queue, services.datasets, batch_id, chunk_no, WORKER_LOST
                )
            await manager.finish_job(job, status=Status.FAILED, delete_job=False)
            count_recoveries("chunk_given_up")
        else:
            # The attempt was counted, or the chunk finished before its job did. The
            # re-run does the work, or finds nothing to do, and ends the job.
            await _retry(manager, job)


async def _redefer_missed_steps(services: Services) -> None:
    """Defer again the steps no job is left for, and count them once they are committed."""
    async with services.pool.connection() as conn, conn.transaction():
        cursor = await conn.execute(queries["batches_waiting_for_completion"])
        checks = await cursor.fetchall()
        for batch_id, request_id, trace in checks:
            with within_batch(request_id, trace):
                await services.queue.defer_completion_check(conn, batch_id)
        cursor = await conn.execute(queries["batches_stuck_aggregating"])
        aggregations = await cursor.fetchall()
        for batch_id, request_id, trace in aggregations:
            log.info("re-deferring the aggregation of batch %s", batch_id)
            with within_batch(request_id, trace):
                await services.queue.defer_aggregate(conn, batch_id)
        cursor = await conn.execute(queries["chunks_without_job"])
        orphans: dict[uuid.UUID, list[int]] = {}
        origins: dict[uuid.UUID, tuple[str | None, str | None]] = {}
        for batch_id, chunk_no, request_id, trace in await cursor.fetchall():
            orphans.setdefault(batch_id, []).append(chunk_no)
            origins[batch_id] = (request_id, trace)
        for batch_id, chunk_nos in orphans.items():
            log.warning("re-deferring chunks %s of batch %s: no job was left", chunk_nos, batch_id)
            with within_batch(*origins[batch_id]):
                await services.queue.defer_chunk_jobs(conn, batch_id, chunk_nos)
    count_recoveries("completion_check", len(checks))
    count_recoveries("aggregation", len(aggregations))
    count_recoveries("chunk_job", sum(len(chunk_nos) for chunk_nos in orphans.values()))


async def _purge(services: Services) -> None:
    days = services.settings.retention_days
    cutoff = datetime.now(UTC) - timedelta(days=days)
    async with services.pool.connection() as conn:
        cursor = await conn.execute(queries["staged_tables_to_drop"], {"cutoff": cutoff})
        for (name,) in await cursor.fetchall():
            async with conn.transaction():
                if await _undo_reads(conn, uuid.UUID(name[2:])):
                    continue
                await conn.execute(drop_staged_table(name))
        await _drop_abandoned_parts(conn)
    _sweep_report_scratch(services.settings.data_dir)
    await _purge_stored_files(services, cutoff)
    await services.queue.app.job_manager.delete_old_jobs(nb_hours=days * 24, include_failed=True)


async def _undo_reads(conn: AsyncConnection[Any], batch_id: uuid.UUID) -> bool:
    """Lock the batch whose staged tables are to be dropped, in the caller's transaction,
    and say whether an undo of it is running, which reads them: then they stay. An undo
    asked for meanwhile waits for the caller's commit, then finds them gone."""
    cursor = await conn.execute(queries["batch_to_purge_lock"], {"batch_id": batch_id})
    locked = await cursor.fetchone()
    if locked is None or locked[0] is None:
        return False
    cursor = await conn.execute(queries["undo_running"], {"batch_id": locked[0]})
    running = await cursor.fetchone()
    return bool(running and running[0])


async def _drop_abandoned_parts(conn: AsyncConnection[Any]) -> None:
    """Drop the staged parts whose batch never came (see importq.ingest.staging.SecondPart)."""
    cursor = await conn.execute(queries["staged_parts_to_drop"], {"age": ABANDONED_PART_AGE})
    for (name,) in await cursor.fetchall():
        async with conn.transaction():
            forgotten = await conn.execute(queries["forget_staged_part"], {"name": name})
            if await forgotten.fetchone() is not None:
                log.info("dropping %s, a part of an upload that was never staged", name)
                await conn.execute(drop_staged_table(name))


def _sweep_report_scratch(data_dir: Path) -> None:
    """Delete the report files left in the data dir by aggregations that died.

    Each aggregation writes its reports there, in a directory of its own, before storing
    them.
    """
    cutoff = time.time() - ABANDONED_PART_AGE.total_seconds()
    for scratch in data_dir.glob(f"{REPORT_SCRATCH_PREFIX}*"):
        with contextlib.suppress(OSError):
            if scratch.stat().st_mtime < cutoff:
                shutil.rmtree(scratch)


async def _purge_stored_files(services: Services, cutoff: datetime) -> None:
    """Delete the reports and kept upload of batches finished before ``cutoff``.

    A batch is marked purged only once its files are gone, so a storage outage only
    delays its purge.
    """
    async with services.pool.connection() as conn:
        cursor = await conn.execute(
            queries["batches_to_purge"], {"cutoff": cutoff, "limit": PURGE_BATCHES}
        )
        batch_ids = [row[0] for row in await cursor.fetchall()]
    for batch_id in batch_ids:
        try:
            async with services.pool.connection() as conn:
                # Forget the reports first, so that no new link points at files about to
                # be deleted.
                await conn.execute(queries["forget_batch_reports"], {"batch_id": batch_id})
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
