"""``POST /api/v1/{dataset}/import-rows``: accept rows, stage them, answer 202.

Every refusal happens before or inside the staging transaction, so a refused request
leaves nothing behind.

The body is streamed to a spool file, and the size limit is enforced while it arrives.
Parsing then streams from the spool into staging. The spool is kept as the upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, BackgroundTasks, Header, Query, Request
from starlette.datastructures import UploadFile

from importq.api.auth import CurrentUser, ServicesDep
from importq.api.schemas import Accepted, ErrorBody
from importq.errors import Refusal
from importq.i18n import parse_accept_language, resolve_locale
from importq.ingest.csv_reader import read_csv, resolve_delimiter
from importq.ingest.json_rows import read_json_rows
from importq.ingest.limits import UploadLimits
from importq.ingest.parsed_upload import ParsedUpload, within_limits
from importq.ingest.staging import BatchRequest, stage_batch
from importq.ingest.text_encoding import resolve_encoding
from importq.ingest.xlsx_reader import read_xlsx
from importq.services import Services
from importq.storage import StorageError

router = APIRouter()

log = logging.getLogger(__name__)

XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
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


@dataclass(frozen=True)
class FileOptions:
    """How to read an uploaded file: the query options and the limits in force."""

    limits: UploadLimits
    encoding: str | None = None
    delimiter: str | None = None
    sheet: str | None = None


def _read_file(
    binary: IO[bytes], fmt: str, default_delimiter: str | None, options: FileOptions
) -> ParsedUpload:
    if fmt == "xlsx":
        return read_xlsx(binary, sheet=options.sheet, limits=options.limits)
    return read_csv(
        binary,
        delimiter=options.delimiter or default_delimiter,
        encoding=options.encoding,
        limits=options.limits,
    )


async def keep_upload(services: Services, batch_id: uuid.UUID, fmt: str, source: IO[bytes]) -> None:
    """Keep the uploaded file in storage under ``uploads/<batchId>/`` for the retention
    period. The periodic clean-up deletes it.

    This runs after the 202. The rows are staged already, so this copy is only for the
    record and never holds the answer up. A failure to keep it is only logged.
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


def _too_large(limit: int) -> Refusal:
    return Refusal(
        413, "too_large", f"The upload is larger than the limit of {limit} bytes.", limit=limit
    )


def _spool_file(directory: Path) -> IO[bytes]:
    """A file with no name in ``directory``. It is gone when closed, unless storage gives
    it a name.

    It is opened with ``O_TMPFILE`` but without ``O_EXCL``. :class:`tempfile.TemporaryFile`
    adds ``O_EXCL``, so that its file can never get a name. Without it, local storage on
    the same file system keeps the upload by naming the file instead of copying it. The
    upload is then not written again while its chunks run. Where the system has no
    ``O_TMPFILE``, this is an ordinary temporary file, which storage copies.
    """
    directory.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600)
    except (AttributeError, OSError):
        return tempfile.TemporaryFile(dir=directory)
    return open(descriptor, "w+b")


async def _spool(request: Request, limit: int, directory: Path) -> IO[bytes]:
    """The request's body in a spool file (see :func:`_spool_file`), at its start.

    The spool is closed, and so gone, if the body is refused or does not arrive whole.
    """
    spool = _spool_file(directory)
    try:
        size = 0
        async for part in request.stream():
            size += len(part)
            if size > limit:
                raise _too_large(limit)
            spool.write(part)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return spool


def _json_upload(spool: IO[bytes], limits: UploadLimits) -> ParsedUpload:
    try:
        body = json.load(spool)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise Refusal(400, "bad_json", f"The body is not valid JSON: {error}") from None
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise Refusal(400, "bad_json", 'The body must be an object {"data": [{column: value}, …]}.')
    return read_json_rows(body["data"], limits=limits)


async def _multipart_upload(
    request: Request, limit: int, options: FileOptions
) -> tuple[ParsedUpload, IO[bytes], str, str]:
    form = await request.form(max_files=1)
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile) or not upload.filename:
            raise Refusal(400, "missing_file", "Send the file in a multipart field named 'file'.")
        if upload.size is not None and upload.size > limit:
            raise _too_large(limit)
        name = upload.filename
        extension = name[name.rfind(".") :].lower() if "." in name else ""
        if extension not in FILE_EXTENSIONS:
            raise Refusal(
                415,
                "unsupported_type",
                f"Files of type {extension or 'unknown'} are not accepted; "
                f"send {', '.join(FILE_EXTENSIONS)}.",
                accepted=list(FILE_EXTENSIONS),
            )
        fmt, delimiter = FILE_EXTENSIONS[extension]
        return _read_file(upload.file, fmt, delimiter, options), upload.file, name, fmt
    except BaseException:
        # Nothing else closes the form's files: they were read by hand, not as parameters.
        await form.close()
        raise


@router.post(
    "/api/v1/{dataset}/import-rows",
    status_code=202,
    response_model=Accepted,
    responses={code: {"model": ErrorBody} for code in (400, 401, 403, 404, 413, 415, 422, 503)},
)
async def import_rows(
    dataset: str,
    request: Request,
    user: CurrentUser,
    services: ServicesDep,
    background: BackgroundTasks,
    callbackUrl: Annotated[str | None, Query(max_length=2000)] = None,
    fileName: Annotated[str | None, Query(max_length=255)] = None,
    encoding: Annotated[str | None, Query(max_length=40)] = None,
    delimiter: Annotated[str | None, Query(max_length=10)] = None,
    sheet: Annotated[str | None, Query(max_length=31)] = None,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None,
) -> Any:
    if request.app.state.draining:
        raise Refusal(
            503, "shutting_down", "The service is stopping; send the upload again shortly."
        )
    definition = services.datasets.get(dataset)
    if definition is None:
        raise Refusal(404, "unknown_dataset", f"There is no dataset named {dataset!r}.")
    if not user.has_role(definition.import_role):
        raise Refusal(
            403, "forbidden", f"Importing into {dataset} needs the {definition.import_role} role."
        )
    limit = services.settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)  # JSON's own, lower limit is enforced while spooling

    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    file_name = fileName
    limits = services.settings.upload_limits
    # Refuse unusable options before reading a byte of the body.
    if encoding is not None:
        resolve_encoding(encoding)
    if delimiter is not None:
        resolve_delimiter(delimiter)
    options = FileOptions(limits, encoding=encoding, delimiter=delimiter, sheet=sheet)
    # Whatever refuses the upload, it is closed, and a spool file is then gone. Only an
    # upload handed over to keep_upload stays open.
    with contextlib.ExitStack() as upload_closed:
        if media_type == "application/json":
            # A JSON body is parsed whole, so it has a limit of its own. Files stream.
            json_limit = min(limit, services.settings.max_json_bytes)
            source = await _spool(request, json_limit, services.settings.spool_dir)
            upload_closed.callback(source.close)
            upload, fmt = _json_upload(source, limits), "json"
        elif media_type in BODY_TYPES:
            fmt, default_delimiter = BODY_TYPES[media_type]
            source = await _spool(request, limit, services.settings.spool_dir)
            upload_closed.callback(source.close)
            upload = _read_file(source, fmt, default_delimiter, options)
        elif media_type == "multipart/form-data":
            upload, source, file_name, fmt = await _multipart_upload(request, limit, options)
            upload_closed.callback(source.close)
        else:
            raise Refusal(
                415,
                "unsupported_type",
                f"Content type {media_type or '(none)'} is not accepted; send {ACCEPTED_TYPES}.",
            )

        callback_url = callbackUrl or definition.callback_url
        if callback_url is not None:
            parts = urlsplit(callback_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise Refusal(400, "bad_callback_url", "callbackUrl must be an http(s) URL.")
        digest = None
        if idempotency_key is not None:
            asked = [dataset, fmt, file_name, callback_url, encoding, delimiter, sheet]
            digest = await asyncio.to_thread(_request_digest, source, asked)
        batch_request = BatchRequest(
            dataset=definition,
            initiator_id=user.id,
            format=fmt,
            file_name=file_name,
            locale=resolve_locale(*parse_accept_language(request.headers.get("accept-language"))),
            callback_url=callback_url,
            idempotency_key=idempotency_key,
            request_digest=digest,
        )
        async with services.pool.connection() as conn:
            staged = await stage_batch(
                conn,
                batch_request,
                within_limits(upload, limits),
                chunk_size=services.settings.chunk_size,
                max_chunks=services.settings.max_chunks,
                defer_chunks=services.queue.defer_chunks,
                connect=services.pool.connection,
            )
        if staged.created:
            upload_closed.pop_all()  # keep_upload closes it
            background.add_task(keep_upload, services, staged.batch_id, fmt, source)
    return Accepted(
        batchId=staged.batch_id,
        totalRows=staged.total_rows,
        totalChunks=staged.total_chunks,
        statusUrl=f"/api/v1/jobs/{staged.batch_id}",
    )
