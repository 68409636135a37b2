"""Running a batch's upload again, and comparing runs:

- ``POST /api/v1/jobs/{id}/rerun?version=N&dryRun=…``: the batch's kept upload, staged
  again as a new batch judged by version N of its dataset (default: the current one),
  read as the batch's was (format, encoding, delimiter, sheet, mapping, local formats),
  in its mode and failure policy. A dry run unless ``dryRun=false``, which only the
  current version may judge. A dry run rerunning an insert does not see as stored the
  rows the first batch inserted: it says what the file would do in that batch's place.
- ``GET /api/v1/jobs/{id}/compare/{other}``: how the lines moved from one run to the
  other (:mod:`importq.pipeline.compare`).

Whoever may read a batch may compare it; rerunning it takes the roles an import into
its dataset in its mode takes. Once the upload (or a run's results) is purged, both are
``409 expired``.
"""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Query, Request, Response
from pydantic import BaseModel

from importq.accounts import User
from importq.api.auth import CurrentUser, ServicesDep
from importq.api.imports import (
    FileOptions,
    accepted,
    check_mode_role,
    importable_dataset,
    read_upload,
    stage_and_keep,
)
from importq.api.jobs import readable_batch
from importq.api.reading import Reading
from importq.api.schemas import Accepted, accepted_with_location, errors
from importq.errors import Refusal
from importq.i18n import parse_accept_language, resolve_locale
from importq.ingest.staging import BatchRequest
from importq.pipeline.aggregation import REPORT_SCRATCH_PREFIX
from importq.pipeline.compare import comparison_path, results_kept, write_moved_lines
from importq.pipeline.on_error import OnError
from importq.pipeline.target_evolution import type_changes
from importq.services import Services

router = APIRouter()

FINISHED = ("completed", "failed", "cancelled", "undone")


def _expired(what: str) -> Refusal:
    return Refusal(
        409,
        "expired",
        f"The batch's {what} is no longer kept: it was purged after the retention period.",
    )


def upload_root(batch: dict[str, Any]) -> uuid.UUID:
    """The batch whose upload ``batch`` ran: itself, or the one a rerun ran again."""
    root: uuid.UUID = batch["rerun_of"] or batch["id"]
    return root


async def _kept_upload(
    services: Services, batch: dict[str, Any], closed: contextlib.ExitStack
) -> IO[bytes]:
    """The batch's kept upload, in a spool file that ``closed`` closes (``409 expired``
    once purged)."""
    if batch["purged_at"] is not None:
        raise _expired("upload")
    services.settings.spool_dir.mkdir(parents=True, exist_ok=True)
    # Closed by ``closed`` (or, once staged, by keep_upload), not here.
    spool = closed.enter_context(tempfile.TemporaryFile(dir=services.settings.spool_dir))  # noqa: SIM115
    try:
        await services.storage.read_into(f"uploads/{batch['id']}/upload.{batch['format']}", spool)
    except FileNotFoundError:
        # Not purged: storing it failed (the failure was logged), or it is being stored.
        raise Refusal(
            409, "no_upload", "The batch's upload is not in storage: it cannot be run again."
        ) from None
    spool.seek(0)
    return spool


@router.post(
    "/api/v1/jobs/{batch_id}/rerun",
    status_code=202,
    response_model=Accepted,
    responses={**accepted_with_location("The rerun"), **errors(400, 403, 404, 409, 429)},
)
async def rerun_job(
    batch_id: str,
    request: Request,
    response: Response,
    user: CurrentUser,
    services: ServicesDep,
    background: BackgroundTasks,
    version: Annotated[
        int | None,
        Query(ge=1, description="The dataset version to judge by (default: the current one)"),
    ] = None,
    dryRun: Annotated[
        bool, Query(description="Write nothing (the default); false imports the file again")
    ] = True,
) -> Accepted:
    """Run the batch's kept upload again, as a new batch (``rerunOf``) judged by version
    ``version`` of its dataset. 409: an undo (``not_rerunnable``), an import under a
    version that is not the current one (``not_current``), a version whose column types
    the table no longer has (``outdated``), the upload purged (``expired``) or never
    stored (``no_upload``)."""
    batch = await readable_batch(services, user, batch_id)
    if batch["type"] != "import":
        raise Refusal(409, "not_rerunnable", "An undo has no upload to run again.")
    definition = await _version(services, user, batch["dataset"], version)
    if not dryRun:
        current = await importable_dataset(services, user, batch["dataset"])
        if current.version != definition.version:
            raise Refusal(
                409,
                "not_current",
                f"Only the current version ({current.version}) of {definition.name} may "
                "import; rerun under an older one as a dry run.",
            )
    check_mode_role(user, definition, batch["mode"])
    async with services.pool.connection() as conn:
        changed = await type_changes(conn, definition)
    if changed:
        raise Refusal(
            409,
            "outdated",
            f"Version {definition.version} of {definition.name} no longer fits its table "
            f"({'; '.join(changed)}): rerun under a later version.",
        )
    # The first batch's mapping, less what the version no longer has.
    mapping = definition.known_mapping(batch["mapping"] or {}) or None
    decimal, date_format = batch["decimal_mark"], batch["date_format"]
    Reading(mapping, None, decimal, date_format).judging(definition)
    request.app.state.rate_limiter.take(str(user.id))
    options = FileOptions(services.settings.upload_limits, **(batch["file_options"] or {}))
    # The spool is handed over to keep_upload once staged; a process reading it ends with
    # the request all the same.
    async with contextlib.AsyncExitStack() as reading_ended:
        upload_closed = reading_ended.enter_context(contextlib.ExitStack())
        source = await _kept_upload(services, batch, upload_closed)
        upload = await read_upload(source, batch["format"], None, options, reading_ended)
        batch_request = BatchRequest(
            dataset=definition,
            initiator_id=user.id,
            format=batch["format"],
            file_name=batch["file_name"],
            locale=resolve_locale(*parse_accept_language(request.headers.get("accept-language"))),
            callback_url=definition.callback_url,
            dry_run=dryRun,
            mode=batch["mode"],
            on_error=OnError(batch["on_error"], batch["abort_percent"]),
            mapping=mapping,
            decimal=decimal,
            date_format=date_format,
            rerun_of=upload_root(batch),
            file_options=batch["file_options"],
        )
        staged = await stage_and_keep(
            services, background, upload_closed, batch_request, upload, options, source
        )
    return accepted(response, staged.batch_id, staged.total_rows, staged.total_chunks)


async def _version(services: Services, user: User, name: str, version: int | None) -> Any:
    """The dataset's version ``version`` (404 when it was never published)."""
    try:
        return await importable_dataset(services, user, name, version)
    except Refusal as refused:
        if refused.code == "unknown_dataset" and version is not None:
            raise Refusal(
                404, "unknown_version", f"Dataset {name} has no version {version}."
            ) from None
        raise


class Comparison(BaseModel):
    #: ``"<outcome>-><outcome>"`` (inserted, updated, unchanged, duplicate, failure;
    #: none: no result) → how many lines moved so (a line moves when its outcome
    #: changes).
    moved: dict[str, int]
    #: A CSV of the lines that moved, with both runs' outcomes and messages (it expires
    #: as report links do).
    url: str


@router.get(
    "/api/v1/jobs/{batch_id}/compare/{other_id}",
    response_model=Comparison,
    responses=errors(403, 404, 409),
)
async def compare_jobs(
    batch_id: str, other_id: str, user: CurrentUser, services: ServicesDep
) -> Comparison:
    """How the lines of two runs of one upload moved between outcomes, from
    ``batch_id``'s to ``other_id``'s. 409: not runs of one upload (``not_comparable``), a
    run not finished (``not_finished``), a run's results purged (``expired``)."""
    batch = await readable_batch(services, user, batch_id)
    other = await readable_batch(services, user, other_id)
    if batch["type"] != "import" or upload_root(batch) != upload_root(other):
        raise Refusal(
            409, "not_comparable", "Only runs of one upload (a batch and its reruns) compare."
        )
    for run in (batch, other):
        if run["status"] not in FINISHED:
            raise Refusal(409, "not_finished", f"Batch {run['id']} is still {run['status']}.")
    path = comparison_path(batch["id"], other["id"])
    name = f"{batch['dataset']}-{batch['id']}-{other['id']}-compare.csv"
    services.settings.data_dir.mkdir(parents=True, exist_ok=True)
    # Written in the data dir, so local storage can take the file without copying it.
    with tempfile.TemporaryDirectory(
        prefix=REPORT_SCRATCH_PREFIX, dir=services.settings.data_dir
    ) as directory:
        written = Path(directory) / "compare.csv"
        async with services.pool.connection() as conn:
            if not await results_kept(conn, batch["id"], other["id"]):
                raise _expired("results")
            moved = await write_moved_lines(conn, batch["id"], other["id"], written)
        # Stored once the read's transaction is over: storage may take its time.
        await services.storage.put_file(path, written, content_type="text/csv", download_name=name)
    expires_at = datetime.now(UTC) + timedelta(seconds=services.settings.report_url_ttl)
    url = services.storage.link(path, download_name=name, expires_at=expires_at)
    return Comparison(moved=moved, url=url)
