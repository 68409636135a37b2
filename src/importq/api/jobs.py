"""Reading batches: ``GET /api/v1/jobs/{batchId}`` and ``GET /api/v1/jobs``.

The initiator, moderators and admins may read a batch. Anyone else gets 403. An unknown
or malformed id gets 404.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from importq.accounts import User, find_user_id
from importq.api.auth import CurrentUser, ServicesDep
from importq.api.imports import accepted, check_mode_role, importable_dataset
from importq.api.schemas import (
    PRINTABLE,
    Accepted,
    Job,
    Page,
    PageNumber,
    PageSize,
    ReportLinks,
    ReportUrls,
    Status,
    accepted_with_location,
    errors,
)
from importq.errors import Refusal
from importq.i18n import parse_accept_language, resolve_locale
from importq.operations.metrics import count_rows
from importq.operations.traces import within_batch
from importq.pipeline import batches
from importq.pipeline.aggregation import report_links
from importq.pipeline.chunk_processing import cancel_chunks
from importq.pipeline.undo import start_undo
from importq.services import Services

router = APIRouter()


def parse_batch_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise Refusal(404, "not_found", f"There is no batch {raw!r}.") from None


async def readable_batch(services: Services, user: User, raw_id: str) -> dict[str, Any]:
    """The batch, if ``user`` may read it.

    An unknown batch is refused with 404, and someone else's with 403.
    """
    batch_id = parse_batch_id(raw_id)
    async with services.pool.connection() as conn:
        batch = await batches.get_batch(conn, batch_id)
    if batch is None:
        raise Refusal(404, "not_found", f"There is no batch {raw_id}.")
    if batch["initiator_id"] != user.id and not user.sees_all_batches:
        raise Refusal(403, "forbidden", "This batch belongs to another user.")
    return batch


@router.get(
    "/api/v1/jobs/{batch_id}",
    response_model=Job,
    responses=errors(403, 404),
)
async def get_job(batch_id: str, user: CurrentUser, services: ServicesDep) -> Job:
    return Job.from_row(await readable_batch(services, user, batch_id))


DAY_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"


def _day_query(description: str) -> Any:
    # A text of the day's form, read by utc_day: a date parameter would also take a
    # number (0 is 1970-01-01), which the document does not allow.
    return Query(pattern=DAY_PATTERN, description=description, json_schema_extra={"format": "date"})


def utc_day(text: str | None) -> date | None:
    """A ``YYYY-MM-DD`` day; 422 for one the calendar does not have."""
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise Refusal(422, "invalid_request", f"{text!r} is not a day (YYYY-MM-DD).") from None


async def list_for(
    services: Services,
    user: User,
    which: batches.BatchFilter,
    initiator: str | None,
    *,
    page: int,
    page_size: int,
) -> Page[Job]:
    """A page of the batches ``user`` may read that ``which`` matches, newest first;
    ``initiator`` (a user's name) narrows them to that user's, which only a moderator or
    an admin may ask of another user (else 403). An unknown name matches nothing."""
    if not user.sees_all_batches:
        if initiator not in (None, user.name):
            raise Refusal(403, "forbidden", "Only moderators and admins see others' batches.")
        which = dataclasses.replace(which, initiator_id=user.id)
    async with services.pool.connection() as conn:
        if initiator is not None and user.sees_all_batches:
            found = await find_user_id(conn, initiator)
            if found is None:
                return Page[Job](items=[], total=0, page=page, pageSize=page_size)
            which = dataclasses.replace(which, initiator_id=found)
        rows, total = await batches.list_batches(conn, which, page=page, page_size=page_size)
    return Page[Job](
        items=[Job.from_row(r) for r in rows], total=total, page=page, pageSize=page_size
    )


@router.get("/api/v1/jobs", response_model=Page[Job], responses=errors(403))
async def list_jobs(
    user: CurrentUser,
    services: ServicesDep,
    status: Status | None = None,
    dataset: Annotated[str | None, Query(max_length=100, pattern=PRINTABLE)] = None,
    initiator: Annotated[
        str | None,
        Query(max_length=100, description="A user's name: their batches (staff: anyone's)"),
    ] = None,
    since: Annotated[str | None, _day_query("Created on this UTC day or after")] = None,
    until: Annotated[str | None, _day_query("Created on this UTC day or before")] = None,
    page: PageNumber = 1,
    pageSize: PageSize = 50,
) -> Page[Job]:
    which = batches.BatchFilter(
        status=status, dataset=dataset, since=utc_day(since), until=utc_day(until)
    )
    return await list_for(services, user, which, initiator, page=page, page_size=pageSize)


@router.post(
    "/api/v1/jobs/{batch_id}/cancel",
    status_code=202,
    response_model=Job,
    responses=errors(403, 404, 409),
)
async def cancel_job(batch_id: str, user: CurrentUser, services: ServicesDep) -> Job:
    """Stop a running batch: chunks not started are not run (their rows fail, "not
    imported: the import was cancelled"), a running one finishes, and the batch ends
    ``cancelled`` through its one aggregation. Cancelling again is fine (202)."""
    batch = await readable_batch(services, user, batch_id)
    if batch["type"] == "undo":
        # Its rows are the batch undone's: a cancel would leave that batch half undone.
        raise Refusal(409, "not_cancellable", "An undo runs to its end: it cannot be cancelled.")
    settled = None
    async with services.pool.connection() as conn:
        async with conn.transaction():
            cancelled = await batches.cancel_batch(conn, batch["id"])
            if cancelled:
                # Its completion check goes on the batch's trace, not the cancel's.
                with within_batch(batch["request_id"], batch["trace"]):
                    settled = await cancel_chunks(conn, services.queue, batch["id"])
        count_rows(settled)
        # After the cancel's commit: a fresh look, whatever waited on whom.
        now = await batches.get_batch(conn, batch["id"])
    assert now is not None
    if not cancelled:
        raise Refusal(
            409,
            "already_finished",
            "The batch is finished, or finishing: it can no longer be cancelled.",
        )
    return Job.from_row(now)


@router.post(
    "/api/v1/jobs/{batch_id}/undo",
    status_code=202,
    response_model=Accepted,
    responses={**accepted_with_location("The undo"), **errors(403, 404, 409, 429)},
)
async def undo_job(
    batch_id: str, request: Request, response: Response, user: CurrentUser, services: ServicesDep
) -> Accepted:
    """Undo a finished batch, as a batch of its own (type ``undo``, with reports, a
    notification and an email): the rows it inserted are deleted and those it updated get
    their values back, unless another batch or a user changed them since (those lines are
    the undo's failures, left alone). The batch becomes ``undone``. 409: a dry run, a
    batch not finished, undone already, an undo, with nothing written, or past the
    retention period (``expired``)."""
    batch = await readable_batch(services, user, batch_id)
    # Undoing writes to the dataset's table as the import did: the same roles may.
    dataset = await importable_dataset(services, user, batch["dataset"], batch["dataset_version"])
    check_mode_role(user, dataset, batch["mode"])
    request.app.state.rate_limiter.take(str(user.id))
    async with services.pool.connection() as conn:
        started = await start_undo(
            conn,
            services.queue,
            dataset,
            batch["id"],
            initiator_id=user.id,
            locale=resolve_locale(*parse_accept_language(request.headers.get("accept-language"))),
            retention_days=services.settings.retention_days,
        )
    return accepted(response, started.batch_id, started.total_rows, started.total_chunks)


@router.post(
    "/api/v1/jobs/{batch_id}/report-links",
    response_model=ReportLinks,
    responses=errors(403, 404, 409),
)
async def refresh_report_links(
    batch_id: str, user: CurrentUser, services: ServicesDep
) -> ReportLinks:
    """Fresh links to a finished batch's reports (old ones may have expired)."""
    batch = await readable_batch(services, user, batch_id)
    if batch["report_paths"] is None:
        raise Refusal(409, "no_reports", f"The batch has no reports yet: it is {batch['status']}.")
    links, expires_at = report_links(services, batch, batch["report_paths"])
    return ReportLinks(reportUrls=ReportUrls(**links), expiresAt=expires_at)
