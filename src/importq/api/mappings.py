"""A user's saved header mappings: ``GET /api/v1/mappings`` (``?dataset=``), ``PUT
/api/v1/mappings/{name}`` and ``DELETE /api/v1/mappings/{name}``.

A saved mapping is offered again for files whose header holds the header it was saved
for: the preview applies the newest that fits, and an upload names it in ``mapping``.
Each user sees and changes only their own. A mapping to a column the dataset's current
version does not have is ``400``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, Field

from importq.api.auth import CurrentUser, ServicesDep
from importq.api.imports import importable_dataset
from importq.api.reading import Reading, check_mapping, check_names
from importq.api.schemas import errors
from importq.errors import Refusal
from importq.ingest.saved_mappings import SavedMapping, delete_mapping, save_mapping, user_mappings
from importq.job_json import Timestamp

router = APIRouter()

MappingName = Annotated[str, Path(min_length=1, max_length=100)]


class MappingIn(BaseModel):
    dataset: str = Field(max_length=63)
    #: Upload header → dataset column (name or alias).
    mapping: dict[str, str] = Field(max_length=1000)
    #: The header of the files it is for (default: the mapping's headers).
    header: list[str] | None = Field(default=None, max_length=10000)


class MappingOut(BaseModel):
    name: str
    dataset: str
    #: The header it is offered for (files whose header holds these names), as compared
    #: (trimmed, case-folded), sorted.
    header: list[str]
    mapping: dict[str, str]
    savedAt: Timestamp

    @classmethod
    def of(cls, saved: SavedMapping) -> MappingOut:
        return cls(
            name=saved.name,
            dataset=saved.dataset,
            header=saved.header,
            mapping=saved.mapping,
            savedAt=saved.saved_at,
        )


class MappingList(BaseModel):
    items: list[MappingOut]


@router.get("/api/v1/mappings", response_model=MappingList)
async def list_mappings(
    user: CurrentUser, services: ServicesDep, dataset: str | None = None
) -> MappingList:
    """Your saved mappings (of ``dataset``, when given), newest first."""
    async with services.pool.connection() as conn:
        saved = await user_mappings(conn, user.id, dataset)
    return MappingList(items=[MappingOut.of(m) for m in saved])


@router.put("/api/v1/mappings/{name}", response_model=MappingOut, responses=errors(400, 403, 404))
async def put_mapping(
    name: MappingName, body: MappingIn, user: CurrentUser, services: ServicesDep
) -> MappingOut:
    """Save a mapping under ``name`` (replacing yours of that name)."""
    definition = await importable_dataset(services, user, body.dataset)
    if not body.mapping:
        raise Refusal(400, "bad_mapping", "A mapping maps at least one header.")
    check_names([name, *(body.header or ())])
    check_mapping(body.mapping)
    Reading(body.mapping).judging(definition)
    async with services.pool.connection() as conn:
        saved = await save_mapping(
            conn,
            user.id,
            name,
            definition.name,
            body.mapping,
            body.header if body.header is not None else list(body.mapping),
        )
    return MappingOut.of(saved)


@router.delete("/api/v1/mappings/{name}", status_code=204, responses=errors(404))
async def remove_mapping(name: MappingName, user: CurrentUser, services: ServicesDep) -> Response:
    check_names([name])
    async with services.pool.connection() as conn:
        if not await delete_mapping(conn, user.id, name):
            raise Refusal(404, "not_found", f"You have no saved mapping named {name!r}.")
    return Response(status_code=204)
