"""What the service imports into: ``GET /api/v1/datasets`` (a page of them),
``GET /api/v1/datasets/{name}`` (its columns, their rules in words, the dedup key, the
role that may import) and its template files (``template.csv``, ``template.xlsx``: the
header and one example row). Any signed-in user may read them.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Response

from importq.api.auth import CurrentUser, ServicesDep
from importq.api.schemas import Page, PageNumber, PageSize, errors
from importq.errors import Refusal
from importq.ingest.xlsx_reader import XLSX_TYPE
from importq.rules.dataset_json import DatasetDetail, DatasetSummary
from importq.rules.dataset_templates import template_csv, template_xlsx
from importq.rules.datasets import Dataset
from importq.services import Services

router = APIRouter()


def _dataset(services: Services, name: str) -> Dataset:
    found = services.datasets.get(name)
    if found is None:
        raise Refusal(404, "unknown_dataset", f"There is no dataset named {name!r}.")
    return found


@router.get("/api/v1/datasets", response_model=Page[DatasetSummary])
async def list_datasets(
    user: CurrentUser, services: ServicesDep, page: PageNumber = 1, pageSize: PageSize = 50
) -> Page[DatasetSummary]:
    names = sorted(services.datasets)
    shown = names[(page - 1) * pageSize : page * pageSize]
    return Page[DatasetSummary](
        items=[DatasetSummary.of(services.datasets[n]) for n in shown],
        total=len(names),
        page=page,
        pageSize=pageSize,
    )


@router.get("/api/v1/datasets/{name}", response_model=DatasetDetail, responses=errors(404))
async def get_dataset(name: str, user: CurrentUser, services: ServicesDep) -> DatasetDetail:
    return DatasetDetail.of(_dataset(services, name))


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
    dataset = _dataset(services, name)
    return _download(template_csv(dataset), "text/csv; charset=utf-8", f"{dataset.name}.csv")


@router.get(
    "/api/v1/datasets/{name}/template.xlsx",
    response_class=Response,
    responses=_file(XLSX_TYPE),
)
async def xlsx_template(name: str, user: CurrentUser, services: ServicesDep) -> Response:
    dataset = _dataset(services, name)
    return _download(template_xlsx(dataset), XLSX_TYPE, f"{dataset.name}.xlsx")


def _download(body: bytes, media_type: str, file_name: str) -> Response:
    # A dataset's name is the operator's to choose: only safe characters go in a header.
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", file_name)
    return Response(
        body,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{safe}"'},
    )
