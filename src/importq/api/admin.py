"""Failed and stuck work, for admins (:mod:`importq.pipeline.troubles`):

- ``GET /api/v1/admin/jobs?state=failed|retrying&batchId=``: the jobs that ended failed
  or wait to be tried again, with attempts and the last error;
- ``POST /api/v1/admin/jobs/{id}/retry``: run one again now;
- ``POST /api/v1/admin/batches/{id}/retry``: run again every failed or retrying job of a
  batch, each on its own: those that moved on meanwhile are skipped, with why;
- ``GET /api/v1/admin/batches/stuck?minutes=``: unfinished batches unchanged that long,
  with why.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from pydantic import BaseModel

from importq.accounts import User
from importq.api.auth import CurrentUser, ServicesDep, require_role
from importq.api.jobs import parse_batch_id
from importq.api.schemas import Page, PageNumber, PageSize, errors
from importq.job_json import Timestamp
from importq.pipeline.troubles import (
    JobState,
    SkippedJob,
    StuckBatch,
    TroubledJob,
    retry_batch_jobs,
    retry_job,
    stuck_batches,
    troubled_jobs,
)

router = APIRouter()


def _admin(user: User) -> None:
    require_role(user, "admin", "Only admins see and retry failed work.")


class QueueJob(BaseModel):
    id: int
    task: str
    queue: str
    #: failed, or retrying (to be tried again after a failed attempt)
    state: JobState
    attempts: int
    #: When a retrying job runs next.
    scheduledAt: Timestamp | None
    batchId: uuid.UUID | None
    chunkNo: int | None
    lastError: str | None

    @classmethod
    def of(cls, job: TroubledJob) -> QueueJob:
        return cls(
            id=job.id,
            task=job.task_name,
            queue=job.queue_name,
            state="failed" if job.status == "failed" else "retrying",
            attempts=job.attempts,
            scheduledAt=job.scheduled_at,
            batchId=job.batch_id,
            chunkNo=job.chunk_no,
            lastError=job.last_error,
        )


class Skipped(BaseModel):
    id: int
    #: The refusal a retry of this job alone would get: nothing_to_retry, not_retryable,
    #: already_waiting or not_found.
    code: str
    detail: str

    @classmethod
    def of(cls, job: SkippedJob) -> Skipped:
        return cls(id=job.id, code=job.code, detail=job.detail)


class Retried(BaseModel):
    #: The jobs run again.
    jobs: list[int]
    #: A batch's jobs not run again, with why (a job that moved on since it was listed).
    skipped: list[Skipped] = []


class StuckBatchInfo(BaseModel):
    batchId: uuid.UUID
    dataset: str
    status: str
    updatedAt: Timestamp
    totalChunks: int
    finishedChunks: int
    reasons: list[str]

    @classmethod
    def of(cls, batch: StuckBatch) -> StuckBatchInfo:
        return cls(
            batchId=batch.id,
            dataset=batch.dataset,
            status=batch.status,
            updatedAt=batch.updated_at,
            totalChunks=batch.total_chunks,
            finishedChunks=batch.finished_chunks,
            reasons=batch.reasons,
        )


class StuckBatches(BaseModel):
    items: list[StuckBatchInfo]


@router.get("/api/v1/admin/jobs", response_model=Page[QueueJob], responses=errors(403, 404))
async def list_jobs(
    user: CurrentUser,
    services: ServicesDep,
    state: JobState = "failed",
    batchId: str | None = None,
    page: PageNumber = 1,
    pageSize: PageSize = 50,
) -> Page[QueueJob]:
    """The queue's failed or retrying jobs, newest first."""
    _admin(user)
    batch = parse_batch_id(batchId) if batchId is not None else None
    async with services.pool.connection() as conn:
        jobs, total = await troubled_jobs(
            conn, state, batch, limit=pageSize, offset=(page - 1) * pageSize
        )
    return Page[QueueJob](
        items=[QueueJob.of(j) for j in jobs], total=total, page=page, pageSize=pageSize
    )


@router.post(
    "/api/v1/admin/jobs/{job_id}/retry",
    status_code=202,
    response_model=Retried,
    responses=errors(403, 404, 409),
)
async def retry_one(
    job_id: Annotated[int, PathParam(ge=1, le=2**63 - 1)],
    user: CurrentUser,
    services: ServicesDep,
) -> Retried:
    """Run a failed or retrying job again now. 409: a job in another state
    (``not_retryable``), a chunk job whose chunk was given up or done
    (``nothing_to_retry``), or a completion check whose batch has one waiting already
    (``already_waiting``)."""
    _admin(user)
    async with services.pool.connection() as conn:
        await retry_job(conn, job_id)
    return Retried(jobs=[job_id])


@router.post(
    "/api/v1/admin/batches/{batch_id}/retry",
    status_code=202,
    response_model=Retried,
    responses=errors(403, 404),
)
async def retry_batch(batch_id: str, user: CurrentUser, services: ServicesDep) -> Retried:
    """Run again now every failed or retrying job of the batch that has work left, each
    on its own; ``skipped``: those not run again (moved on since listed, or nothing left to
    do), with the code and reason a retry of that job alone would be refused with."""
    _admin(user)
    async with services.pool.connection() as conn:
        retried, skipped = await retry_batch_jobs(conn, parse_batch_id(batch_id))
    return Retried(jobs=retried, skipped=[Skipped.of(job) for job in skipped])


@router.get("/api/v1/admin/batches/stuck", response_model=StuckBatches, responses=errors(403))
async def list_stuck(
    user: CurrentUser,
    services: ServicesDep,
    minutes: Annotated[
        float, Query(ge=0, le=525_600, description="Unchanged at least this long")
    ] = 30,
) -> StuckBatches:
    """Unfinished batches that have not changed for ``minutes``, oldest first, with why."""
    _admin(user)
    async with services.pool.connection() as conn:
        return StuckBatches(
            items=[StuckBatchInfo.of(b) for b in await stuck_batches(conn, minutes)]
        )
