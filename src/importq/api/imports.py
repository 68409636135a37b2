"""``POST /api/v1/{dataset}/import-rows``: accept rows, stage them, answer 202.

Every refusal happens before or inside the staging transaction, so a refused request
leaves nothing behind.

The body is streamed to a spool file, and the size limit is enforced while it arrives
(:mod:`importq.api.request_body`). Parsing then streams from the spool into staging, in
a worker thread, so the event loop stays free for other requests; a big XLSX file is
read by a process of its own (:mod:`importq.ingest.xlsx_process`). The spool is kept as
the upload.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
import unicodedata
import uuid
from dataclasses import dataclass
from typing import IO, Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Header, Query, Request, Response

from importq.accounts import User
from importq.api.auth import CurrentUser, ServicesDep, require_role
from importq.api.reading import (
    DateFormatOption,
    DecimalOption,
    MappingOption,
    upload_reading,
)
from importq.api.request_body import spool_body, spool_form_file, too_large
from importq.api.schemas import Accepted, accepted_with_location, errors
from importq.callback_urls import CALLBACK_URL_PATTERN, WHAT_IT_MAY_BE, is_callback_url
from importq.errors import Refusal
from importq.i18n import parse_accept_language, resolve_locale
from importq.ingest.csv_reader import DELIMITER_NAMES, read_csv, resolve_delimiter
from importq.ingest.json_rows import read_json_rows
from importq.ingest.limits import UploadLimits
from importq.ingest.off_loop import off_loop
from importq.ingest.parsed_upload import ParsedUpload, within_limits
from importq.ingest.staging import BatchRequest, StagedBatch, stage_batch
from importq.ingest.text_encoding import encoding_names, resolve_encoding
from importq.ingest.xlsx_process import read_xlsx_in_process, worth_a_process
from importq.ingest.xlsx_reader import XLSX_TYPE, read_xlsx
from importq.job_json import Mode
from importq.operations import traces
from importq.operations.metrics import count_staging
from importq.pipeline.on_error import ON_ERROR_PATTERN, OnError
from importq.rules.datasets import Dataset
from importq.services import Services
from importq.sql import queries
from importq.storage import StorageError

router = APIRouter()

log = logging.getLogger(__name__)

# Raw body types and multipart file extensions, each with its (format, delimiter). A
# delimiter of None is sniffed.
BODY_TYPES: dict[str, tuple[str, str | None]] = {
    "text/csv": ("csv", None),
    "text/plain": ("csv", None),
    "application/csv": ("csv", None),
    "text/tab-separated-values": ("csv", "\t"),
    XLSX_TYPE: ("xlsx", None),
}
FILE_EXTENSIONS: dict[str, tuple[str, str | None]] = {
    ".csv": ("csv", None),
    ".txt": ("csv", None),
    ".tsv": ("csv", "\t"),
    ".xlsx": ("xlsx", None),
}
UPLOAD_CONTENT_TYPES = {
    "csv": "text/csv",
    "json": "application/json",
    "xlsx": XLSX_TYPE,
}
ACCEPTED_TYPES = (
    f"application/json, {', '.join(BODY_TYPES)}, or multipart/form-data with a field "
    f"'file' ({', '.join(FILE_EXTENSIONS)})"
)


# How to read a file, for an upload and its preview alike.
EncodingOption = Annotated[
    str | None,
    Query(
        max_length=40,
        description="The CSV's encoding, any case (default: detected)",
        json_schema_extra={"enum": encoding_names()},
    ),
]
DelimiterOption = Annotated[
    str | None,
    Query(
        max_length=10,
        description="The CSV's delimiter, any case (default: sniffed)",
        json_schema_extra={"enum": list(DELIMITER_NAMES)},
    ),
]
SheetOption = Annotated[
    str | None, Query(max_length=31, description="The XLSX sheet (default: the first)")
]


@dataclass(frozen=True)
class FileOptions:
    """How to read an uploaded file: the query options and the limits in force."""

    limits: UploadLimits
    encoding: str | None = None
    delimiter: str | None = None
    sheet: str | None = None

    def asked(self, default_delimiter: str | None = None) -> dict[str, str] | None:
        """The options given, the body type's delimiter for one not given (kept with the
        batch, so that a rerun reads the same)."""
        delimiter = self.delimiter or default_delimiter
        given = {"encoding": self.encoding, "delimiter": delimiter, "sheet": self.sheet}
        kept = {name: value for name, value in given.items() if value is not None}
        return kept or None


async def importable_dataset(
    services: Services, user: User, name: str, version: int | None = None
) -> Dataset:
    """The dataset ``name`` (its current version, or ``version``), if ``user`` may import
    into it (else 404 or 403)."""
    async with services.pool.connection() as conn:
        definition = await services.datasets.get(conn, name, version)
    if definition is None:
        raise Refusal(404, "unknown_dataset", f"There is no dataset named {name!r}.")
    role = definition.import_role
    require_role(user, role, f"Importing into {name} needs the {role} role.")
    return definition


def check_mode_role(user: User, definition: Dataset, mode: str) -> None:
    """Refuse (403) a user whose role the dataset does not let import in ``mode``: to
    import so, or to undo what such an import wrote."""
    needs = definition.mode_role(mode)
    require_role(
        user, needs, f"Importing into {definition.name} in {mode} mode needs the {needs} role."
    )


def file_options(
    services: Services, encoding: str | None, delimiter: str | None, sheet: str | None
) -> FileOptions:
    """The options of a request, checked before a byte of its body is read: an unknown
    encoding or delimiter is refused at once (400)."""
    if encoding is not None:
        resolve_encoding(encoding)
    if delimiter is not None:
        resolve_delimiter(delimiter)
    return FileOptions(
        services.settings.upload_limits, encoding=encoding, delimiter=delimiter, sheet=sheet
    )


@dataclass(frozen=True)
class SpooledBody:
    """A request's body in a spool file, and the file format its type says."""

    source: IO[bytes]
    format: str
    default_delimiter: str | None
    #: The file name a multipart form gave, if the body came as one.
    sent_name: str | None


async def spool_upload(
    request: Request,
    services: Services,
    closed: contextlib.ExitStack,
    limit: int | None = None,
) -> SpooledBody:
    """Spool the request's body under the upload limit (or a lower ``limit``), by its
    content type (415 for a type not accepted). ``closed`` closes the spool, unless the
    caller pops it."""
    limit = min(limit or services.settings.max_upload_bytes, services.settings.max_upload_bytes)
    spool_dir = services.settings.spool_dir
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        source, sent_name = await spool_form_file(request, limit, spool_dir)
        closed.callback(source.close)
        return SpooledBody(source, *_file_format(sent_name), sent_name)
    if media_type == "application/json":
        fmt, default_delimiter = "json", None
    elif media_type in BODY_TYPES:
        fmt, default_delimiter = BODY_TYPES[media_type]
    else:
        raise Refusal(
            415,
            "unsupported_type",
            f"Content type {media_type or '(none)'} is not accepted; send {ACCEPTED_TYPES}.",
        )
    source = await spool_body(request, limit, spool_dir)
    closed.callback(source.close)
    return SpooledBody(source, fmt, default_delimiter, None)


def read_file(
    binary: IO[bytes], fmt: str, default_delimiter: str | None, options: FileOptions
) -> ParsedUpload:
    """Read the upload's header (and, for JSON, check all of it). The caller runs this in
    a worker thread: it reads and decodes the file."""
    if fmt == "json":
        return read_json_rows(binary, limits=options.limits)
    if fmt == "xlsx":
        return read_xlsx(binary, sheet=options.sheet, limits=options.limits)
    return read_csv(
        binary,
        delimiter=options.delimiter or default_delimiter,
        encoding=options.encoding,
        limits=options.limits,
    )


async def read_upload(
    source: IO[bytes],
    fmt: str,
    default_delimiter: str | None,
    options: FileOptions,
    reading_ended: contextlib.AsyncExitStack,
) -> ParsedUpload:
    """Read an upload to be staged: a big XLSX file in a process of its own, which
    ``reading_ended`` ends (:mod:`importq.ingest.xlsx_process`), when one is free; any
    other in a worker thread (:func:`read_file`)."""
    if fmt == "xlsx" and worth_a_process(source):
        upload = await read_xlsx_in_process(
            source, sheet=options.sheet, limits=options.limits, closed=reading_ended
        )
        if upload is not None:
            return upload
    return await off_loop(read_file, source, fmt, default_delimiter, options)


async def keep_upload(services: Services, batch_id: uuid.UUID, fmt: str, source: IO[bytes]) -> None:
    """Keep the uploaded file in storage under ``uploads/<batchId>/`` for the retention
    period. The periodic clean-up deletes it.

    This runs after the 202. The rows are staged already, so this copy never holds the
    answer up: only a rerun reads it. A failure to keep it is only logged (a rerun then
    finds it gone: ``409 expired``).
    """
    path = f"uploads/{batch_id}/upload.{fmt}"
    try:
        await services.storage.put_file(path, source, content_type=UPLOAD_CONTENT_TYPES[fmt])
    except (StorageError, OSError, ValueError) as error:
        log.warning("the upload of batch %s was not kept: %s", batch_id, error)
    finally:
        source.close()


def _request_digest(body: IO[bytes], options: list[str | None]) -> bytes:
    """SHA-256 of what an upload asks for: its options, then its whole body.

    It tells a retry from a different upload. The body is read from its start, and the
    file is left at the position it had.
    """
    digest = hashlib.sha256(json.dumps(options).encode() + b"\n")
    position = body.tell()
    body.seek(0)
    while block := body.read(1 << 20):
        digest.update(block)
    body.seek(position)
    return digest.digest()


# When a user with too many rows queued is told to try again: a 2-core machine processes
# ~50,000 rows in that time.
PENDING_RETRY_SECONDS = 30


async def _check_pending_rows(services: Services, user_id: int) -> None:
    """Refuse a new upload with ``429 too_many_pending_rows`` while the user's active
    batches hold ``IMPORTQ_MAX_PENDING_ROWS_PER_USER`` unprocessed rows or more.

    An upload is refused only when rows are already waiting, so a single file larger
    than the limit is still taken when nothing of the user's is queued.
    """
    limit = services.settings.max_pending_rows_per_user
    if limit == 0:
        return
    async with services.pool.connection() as conn:
        cursor = await conn.execute(queries["pending_rows_of_user"], {"user_id": user_id})
        row = await cursor.fetchone()
    pending = int(row[0]) if row else 0
    if pending >= limit:
        raise Refusal(
            429,
            "too_many_pending_rows",
            f"{pending} rows of your earlier uploads are still waiting, and the limit is "
            f"{limit}; send this upload once they are processed.",
            limit=limit,
            pending=pending,
            retryAfter=PENDING_RETRY_SECONDS,
        )


MAX_FILE_NAME_CHARS = 255
# Controls, format characters (bidi overrides, zero-width), surrogates, private-use and
# unassigned code points, line and paragraph separators: none belongs in a name shown to
# people, and some would make it read as another.
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def clean_file_name(name: str | None) -> str | None:
    """The file name to show in reports and emails: without the characters of
    ``_DROPPED_CATEGORIES``, trimmed, at most ``MAX_FILE_NAME_CHARS`` characters (the
    extension kept). None when nothing is left.

    A name is the client's to choose, so it is cleaned rather than refused: whatever it
    holds, an email's headers and a report's name can be built from it.
    """
    if name is None:
        return None
    kept = "".join(c for c in name if unicodedata.category(c) not in _DROPPED_CATEGORIES)
    kept = kept.strip()
    if len(kept) > MAX_FILE_NAME_CHARS:
        _, dot, extension = kept.rpartition(".")
        tail = dot + extension if dot and len(extension) <= 16 else ""
        kept = kept[: MAX_FILE_NAME_CHARS - len(tail)] + tail
    return kept or None


def _file_format(name: str) -> tuple[str, str | None]:
    """The (format, delimiter) of a multipart upload's file name; other types are 415."""
    extension = name[name.rfind(".") :].lower() if "." in name else ""
    if extension not in FILE_EXTENSIONS:
        raise Refusal(
            415,
            "unsupported_type",
            f"Files of type {extension or 'unknown'} are not accepted; "
            f"send {', '.join(FILE_EXTENSIONS)}.",
            accepted=list(FILE_EXTENSIONS),
        )
    return FILE_EXTENSIONS[extension]


@router.post(
    "/api/v1/{dataset}/import-rows",
    status_code=202,
    response_model=Accepted,
    responses={
        **accepted_with_location("The batch"),
        **errors(400, 403, 404, 413, 415, 429, 503),
    },
)
async def import_rows(
    dataset: str,
    request: Request,
    response: Response,
    user: CurrentUser,
    services: ServicesDep,
    background: BackgroundTasks,
    callbackUrl: Annotated[
        str | None,
        Query(
            max_length=2000,
            description="An http(s) URL the batch's result is posted to",
            json_schema_extra={"pattern": CALLBACK_URL_PATTERN},
        ),
    ] = None,
    fileName: str | None = None,
    encoding: EncodingOption = None,
    delimiter: DelimiterOption = None,
    sheet: SheetOption = None,
    dryRun: Annotated[
        bool, Query(description="Run everything, write nothing to the table: what would happen")
    ] = False,
    onError: Annotated[
        str,
        Query(
            max_length=30,
            description="What failed rows do: continue (every valid row is written), "
            "abort-above=<n>% (once more than n % of the rows failed, the batch stops and "
            "ends failed with nothing written) or atomic (nothing is written unless every "
            "row is valid)",
            json_schema_extra={"pattern": ON_ERROR_PATTERN},
        ),
    ] = "continue",
    mode: Annotated[
        Mode | None,
        Query(
            description="What a row whose key is stored does: insert (it is a duplicate, "
            '"already exists"), upsert (it updates the stored row; a new key is inserted) '
            'or update-only (it updates the stored row; a new key fails, "not found"). '
            "Default: the dataset's"
        ),
    ] = None,
    mapping: MappingOption = None,
    decimal: DecimalOption = None,
    dateFormat: DateFormatOption = None,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None,
) -> Any:
    if request.app.state.draining:
        raise Refusal(
            503, "shutting_down", "The service is stopping; send the upload again shortly."
        )
    definition = await importable_dataset(services, user, dataset)
    chosen = mode or definition.default_mode
    on_error = OnError.parse(onError)
    check_mode_role(user, definition, chosen)
    # Per user: each password sign-in has a token of its own.
    request.app.state.rate_limiter.take(str(user.id))
    await _check_pending_rows(services, user.id)
    limit = services.settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)

    file_name = clean_file_name(fileName)
    # Refuse unusable options before reading a byte of the body.
    options = file_options(services, encoding, delimiter, sheet)
    reading = await upload_reading(services, user.id, definition, mapping, decimal, dateFormat)
    if callbackUrl is not None and not is_callback_url(callbackUrl):
        raise Refusal(400, "bad_callback_url", f"callbackUrl must be {WHAT_IT_MAY_BE}.")
    # Whatever refuses the upload, it is closed, and a spool file is then gone. Only an
    # upload handed over to keep_upload stays open; a process reading it ends with the
    # request all the same.
    async with contextlib.AsyncExitStack() as reading_ended:
        upload_closed = reading_ended.enter_context(contextlib.ExitStack())
        body = await spool_upload(request, services, upload_closed)
        fmt, default_delimiter, source = body.format, body.default_delimiter, body.source
        file_name = clean_file_name(body.sent_name) if body.sent_name else file_name
        upload = await read_upload(source, fmt, default_delimiter, options, reading_ended)

        callback_url = callbackUrl or definition.callback_url
        digest = None
        if idempotency_key is not None:
            asked = [dataset, fmt, file_name, callback_url, encoding, delimiter, sheet]
            # What an upload asked for before these options existed is digested as it was.
            asked += ["dry run"] if dryRun else []
            asked += [f"mode {chosen}"] if chosen != "insert" else []
            asked += [f"on error {on_error.text}"] if on_error.checked else []
            asked += reading.digested()
            digest = await off_loop(_request_digest, source, asked)
        batch_request = BatchRequest(
            dataset=definition,
            initiator_id=user.id,
            format=fmt,
            file_name=file_name,
            locale=resolve_locale(*parse_accept_language(request.headers.get("accept-language"))),
            callback_url=callback_url,
            idempotency_key=idempotency_key,
            request_digest=digest,
            dry_run=dryRun,
            mode=chosen,
            on_error=on_error,
            mapping=reading.mapping,
            decimal=reading.decimal,
            date_format=reading.date_format,
            file_options=options.asked(default_delimiter),
        )
        staged = await stage_and_keep(
            services, background, upload_closed, batch_request, upload, options, source
        )
    return accepted(response, staged.batch_id, staged.total_rows, staged.total_chunks)


async def stage_and_keep(
    services: Services,
    background: BackgroundTasks,
    upload_closed: contextlib.ExitStack,
    request: BatchRequest,
    upload: ParsedUpload,
    options: FileOptions,
    source: IO[bytes],
) -> StagedBatch:
    """Stage ``upload`` as ``request`` asks; a new batch keeps ``source`` (closed by
    :func:`keep_upload`, after the answer, rather than by ``upload_closed``)."""
    started = time.monotonic()
    named = {"importq.dataset": request.dataset.name, "importq.format": request.format}
    with traces.span("staging", named) as span:
        async with services.pool.connection() as conn:
            staged = await stage_batch(
                conn,
                request,
                within_limits(upload, options.limits),
                sizing=services.settings.chunk_sizing,
                defer_chunks=services.queue.defer_chunks,
                connect=services.pool.connection,
            )
        if span is not None:
            span.set_attributes({"importq.batch_id": str(staged.batch_id)})
            span.set_attribute("importq.rows", staged.total_rows)
    if staged.created:
        count_staging(request.dataset.name, request.format, source, time.monotonic() - started)
        upload_closed.pop_all()
        background.add_task(keep_upload, services, staged.batch_id, request.format, source)
    return staged


def accepted(response: Response, batch_id: uuid.UUID, total_rows: int, chunks: int) -> Accepted:
    """The 202 of a new batch, its status URL in ``Location`` too."""
    status_url = f"/api/v1/jobs/{batch_id}"
    response.headers["Location"] = status_url
    return Accepted(
        batchId=batch_id, totalRows=total_rows, totalChunks=chunks, statusUrl=status_url
    )
