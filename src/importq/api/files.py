"""``GET /files/<path>``: downloads from local storage through signed, expiring links.

A link needs no token, and no database: it is answered while the database is away.
``HEAD`` answers like ``GET`` without the body, so a client can check a link first.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse

from importq.api.schemas import errors
from importq.errors import Refusal
from importq.services import Services
from importq.storage import StorageError
from importq.storage.local import LocalStorage

router = APIRouter()


# Two operations of one function: HEAD answers like GET without the body.
_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The report, a CSV file",
        "content": {"text/csv": {"schema": {"type": "string"}}},
    },
    **errors(403, 404),
}


@router.head(
    "/files/{path:path}",
    operation_id="check_report_link",
    response_class=FileResponse,
    responses=_ANSWERS,
)
@router.get(
    "/files/{path:path}",
    operation_id="download_report",
    response_class=FileResponse,
    responses=_ANSWERS,
)
async def download(
    path: str,
    request: Request,
    expires: Annotated[int, Query()],
    name: Annotated[str, Query(max_length=255)],
    signature: Annotated[str, Query(max_length=128)],
) -> FileResponse:
    services: Services = request.app.state.services
    storage = services.storage
    if not isinstance(storage, LocalStorage):  # Azure links point at Azure, not here
        raise Refusal(404, "not_found", "No such file.")
    if not storage.verify(path, expires, name, signature):
        raise Refusal(403, "link_invalid", "This link is not valid or has expired.")
    try:
        file = storage.resolve(path)
    except StorageError:
        raise Refusal(404, "not_found", "No such file.") from None
    if not file.is_file():
        raise Refusal(404, "not_found", "The file no longer exists.")
    return FileResponse(file, media_type="text/csv; charset=utf-8", filename=name)
