"""What the service imports into: ``GET /api/v1/datasets`` (a page of them, each at its
current version), ``GET /api/v1/datasets/{name}`` (``?version=N`` for an older one: its
columns, their rules in words, the dedup key, the role that may import, and the
definition itself) and its template files (``template.csv``, ``template.xlsx``: the
header and one example row). Any signed-in user may read them.

``POST /api/v1/datasets/{name}/versions`` (admins) publishes a new version, from TOML or
from the JSON the GET answers (:func:`importq.pipeline.dataset_versions.publish`).
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel

from importq.api.auth import CurrentUser, ServicesDep, require_role
from importq.api.schemas import Page, PageNumber, PageSize, errors
from importq.errors import Refusal
from importq.ingest.xlsx_reader import XLSX_TYPE
from importq.pipeline.dataset_versions import (
    definition_from_json,
    definition_from_toml,
    publish,
)
from importq.rules.dataset_json import DatasetDetail, DatasetSummary
from importq.rules.dataset_templates import template_csv, template_xlsx
from importq.rules.datasets import Dataset, DatasetError
from importq.services import Services

router = APIRouter()


async def _dataset(services: Services, name: str, version: int | None = None) -> Dataset:
    async with services.pool.connection() as conn:
        found = await services.datasets.get(conn, name, version)
    if found is None:
        if version is not None:
            raise Refusal(404, "unknown_version", f"There is no version {version} of {name!r}.")
        raise Refusal(404, "unknown_dataset", f"There is no dataset named {name!r}.")
    return found


@router.get("/api/v1/datasets", response_model=Page[DatasetSummary])
async def list_datasets(
    user: CurrentUser, services: ServicesDep, page: PageNumber = 1, pageSize: PageSize = 50
) -> Page[DatasetSummary]:
    async with services.pool.connection() as conn:
        current = await services.datasets.current(conn)
    names = sorted(current)
    shown = names[(page - 1) * pageSize : page * pageSize]
    return Page[DatasetSummary](
        items=[DatasetSummary.of(current[n]) for n in shown],
        total=len(names),
        page=page,
        pageSize=pageSize,
    )


VersionOption = Annotated[
    int | None, Query(ge=1, description="A published version (default: the current one)")
]


@router.get("/api/v1/datasets/{name}", response_model=DatasetDetail, responses=errors(404))
async def get_dataset(
    name: str, user: CurrentUser, services: ServicesDep, version: VersionOption = None
) -> DatasetDetail:
    detail = DatasetDetail.of(await _dataset(services, name, version))
    if not user.has_role("admin"):
        # A webhook's address may carry credentials: only those who publish see it.
        detail.definition.pop("callback_url", None)
    return detail


# A definition is small: a dataset of a thousand columns is some 200 kB of TOML.
MAX_DEFINITION_BYTES = 1024 * 1024


class PublishedVersion(BaseModel):
    dataset: DatasetDetail
    #: False when the definition equals the current version's: nothing was published.
    created: bool
    #: What publishing changed in the target table, in words.
    changes: list[str]


@router.post(
    "/api/v1/datasets/{name}/versions",
    status_code=201,
    response_model=PublishedVersion,
    responses=errors(400, 403, 409, 413, 415),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/toml": {"schema": {"type": "string"}},
                "application/json": {"schema": {"type": "object"}},
            },
        }
    },
)
async def publish_version(
    name: str, request: Request, response: Response, user: CurrentUser, services: ServicesDep
) -> PublishedVersion:
    """Publish a new version of dataset ``name`` (a new dataset's version 1), from TOML
    (a ``[datasets.<name>]`` table, or the keys alone) or from JSON (what ``GET
    /api/v1/datasets/{name}`` answers, or its ``definition``). 409 ``incompatible``: a
    change the target table cannot take, with the reason. 200 when the definition is the
    current version's."""
    require_role(user, "admin", "Only admins publish dataset versions.")
    text = await _definition_text(request)
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if media_type == "application/json":
            try:
                definition = definition_from_json(json.loads(text))
            except (json.JSONDecodeError, RecursionError) as error:
                raise DatasetError(f"the body is not valid JSON: {error}") from None
        elif media_type in ("application/toml", "text/plain", "text/x-toml"):
            try:
                definition = definition_from_toml(name, text)
            except RecursionError:
                raise DatasetError("the TOML is nested too deeply") from None
        else:
            raise Refusal(
                415, "unsupported_type", "Send the definition as application/toml or JSON."
            )
    except DatasetError as error:
        raise Refusal(400, "bad_definition", f"{error}.") from None
    async with services.pool.connection() as conn:
        published = await publish(conn, name, definition, published_by=user.id)
    if not published.created:
        response.status_code = 200
    return PublishedVersion(
        dataset=DatasetDetail.of(published.dataset),
        created=published.created,
        changes=published.changes,
    )


async def _definition_text(request: Request) -> str:
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > MAX_DEFINITION_BYTES:
            raise Refusal(
                413,
                "too_large",
                f"A definition is at most {MAX_DEFINITION_BYTES} bytes.",
                limit=MAX_DEFINITION_BYTES,
            )
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise Refusal(400, "bad_definition", "The definition is not UTF-8 text.") from None


def _file(media_type: str) -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "description": "The header and one example row",
            "content": {media_type: {"schema": {"type": "string", "format": "binary"}}},
        },
        **errors(404),
    }


@router.get(
    "/api/v1/datasets/{name}/template.csv",
    response_class=Response,
    responses=_file("text/csv"),
)
async def csv_template(name: str, user: CurrentUser, services: ServicesDep) -> Response:
    dataset = await _dataset(services, name)
    return _download(template_csv(dataset), "text/csv; charset=utf-8", f"{dataset.name}.csv")


@router.get(
    "/api/v1/datasets/{name}/template.xlsx",
    response_class=Response,
    responses=_file(XLSX_TYPE),
)
async def xlsx_template(name: str, user: CurrentUser, services: ServicesDep) -> Response:
    dataset = await _dataset(services, name)
    return _download(template_xlsx(dataset), XLSX_TYPE, f"{dataset.name}.xlsx")


def _download(body: bytes, media_type: str, file_name: str) -> Response:
    # A dataset's name is the operator's to choose: only safe characters go in a header.
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", file_name)
    return Response(
        body,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{safe}"'},
    )
