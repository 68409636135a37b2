"""``POST /api/v1/{dataset}/import-rows``: accept rows, stage them, answer 202.

The body is streamed to a temporary spool (memory up to a few MiB, then disk) with the
size limit enforced while it arrives; parsing then streams from the spool into staging.
Every refusal happens before or inside the staging transaction, so a refused request
leaves nothing behind.
"""

from __future__ import annotations

import json
import tempfile
from typing import IO, Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from starlette.datastructures import UploadFile

from importq.api.auth import CurrentUser, ServicesDep
from importq.api.schemas import Accepted, ErrorBody
from importq.errors import Refusal
from importq.i18n import parse_accept_language, resolve_locale
from importq.staging import BatchRequest, stage_batch
from importq.uploads import (
    ParsedUpload,
    UploadLimits,
    read_csv,
    read_json_rows,
    within_limits,
)

router = APIRouter()

SPOOL_IN_MEMORY = 4 * 1024 * 1024
CSV_TYPES = ("text/csv", "text/plain", "application/csv")
CSV_EXTENSIONS = {".csv": ",", ".txt": ",", ".tsv": "\t"}
ACCEPTED_TYPES = "application/json, text/csv, multipart/form-data (field 'file': .csv, .tsv, .txt)"


def _too_large(limit: int) -> Refusal:
    return Refusal(
        413, "too_large", f"The upload is larger than the limit of {limit} bytes.", limit=limit
    )


async def _spool(request: Request, limit: int) -> IO[bytes]:
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            spool.close()
            raise _too_large(limit)
        spool.write(part)
    spool.seek(0)
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
    request: Request, limit: int, limits: UploadLimits
) -> tuple[ParsedUpload, str]:
    form = await request.form(max_files=1)
    upload = form.get("file")
    if not isinstance(upload, UploadFile) or not upload.filename:
        raise Refusal(400, "missing_file", "Send the file in a multipart field named 'file'.")
    if upload.size is not None and upload.size > limit:
        raise _too_large(limit)
    name = upload.filename
    extension = name[name.rfind(".") :].lower() if "." in name else ""
    if extension not in CSV_EXTENSIONS:
        raise Refusal(
            415,
            "unsupported_type",
            f"Files of type {extension or 'unknown'} are not accepted; "
            f"send {', '.join(CSV_EXTENSIONS)}.",
            accepted=list(CSV_EXTENSIONS),
        )
    return read_csv(upload.file, delimiter=CSV_EXTENSIONS[extension], limits=limits), name


@router.post(
    "/api/v1/{dataset}/import-rows",
    status_code=202,
    response_model=Accepted,
    responses={code: {"model": ErrorBody} for code in (400, 401, 403, 404, 413, 415, 503)},
)
async def import_rows(
    dataset: str,
    request: Request,
    user: CurrentUser,
    services: ServicesDep,
    callbackUrl: Annotated[str | None, Query(max_length=2000)] = None,
    fileName: Annotated[str | None, Query(max_length=255)] = None,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None,
) -> Any:
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
        raise _too_large(limit)

    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    file_name = fileName
    limits = services.settings.upload_limits
    if media_type == "application/json":
        upload, fmt = _json_upload(await _spool(request, limit), limits), "json"
    elif media_type in CSV_TYPES:
        upload, fmt = read_csv(await _spool(request, limit), limits=limits), "csv"
    elif media_type == "multipart/form-data":
        (upload, file_name), fmt = await _multipart_upload(request, limit, limits), "csv"
    else:
        raise Refusal(
            415,
            "unsupported_type",
            f"Content type {media_type or '(none)'} is not accepted; send {ACCEPTED_TYPES}.",
        )

    batch_request = BatchRequest(
        dataset=definition,
        initiator_id=user.id,
        format=fmt,
        file_name=file_name,
        locale=resolve_locale(*parse_accept_language(request.headers.get("accept-language"))),
        callback_url=callbackUrl,
        idempotency_key=idempotency_key,
    )
    async with services.pool.connection() as conn:
        staged = await stage_batch(
            conn,
            batch_request,
            within_limits(upload, limits),
            chunk_size=services.settings.chunk_size,
            max_chunks=services.settings.max_chunks,
            defer_chunks=services.queue.defer_chunks,
        )
    return Accepted(
        batchId=staged.batch_id,
        totalRows=staged.total_rows,
        totalChunks=staged.total_chunks,
        statusUrl=f"/api/v1/jobs/{staged.batch_id}",
    )
