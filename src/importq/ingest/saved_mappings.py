"""A user's saved header mappings: a name, the dataset, the header it was made for, and
the mapping (upload header → dataset column).

A mapping is offered again for a file whose header holds every name of the header it
was saved for (by default, the names it maps), in any order, compared as an import
compares header names (trimmed, case-folded). Each reads and writes in a transaction of
its own, on the connection it is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from importq.rules.datasets import normalise_header_name
from importq.sql import queries

Connection = AsyncConnection[Any]


@dataclass(frozen=True)
class SavedMapping:
    name: str
    dataset: str
    #: The header it was saved for, normalised.
    header: list[str]
    mapping: dict[str, str]
    saved_at: datetime

    def fits(self, header: Sequence[str]) -> bool:
        """Whether a file with ``header`` has every name of the header this mapping was
        saved for."""
        return set(self.header) <= set(_header_key(header))


def _header_key(header: Sequence[str]) -> list[str]:
    return sorted({normalise_header_name(name) for name in header} - {""})


async def save_mapping(
    conn: Connection,
    user_id: int,
    name: str,
    dataset: str,
    mapping: dict[str, str],
    header: Sequence[str],
) -> SavedMapping:
    """Save (or replace) the user's mapping ``name`` for files with ``header``."""
    async with conn.transaction():
        cursor = await conn.execute(
            queries["save_mapping"],
            {
                "user_id": user_id,
                "name": name,
                "dataset": dataset,
                "header": _header_key(header),
                "mapping": Jsonb(mapping),
            },
        )
        row = await cursor.fetchone()
    assert row is not None
    return SavedMapping(name, dataset, _header_key(header), mapping, row[0])


async def user_mappings(
    conn: Connection, user_id: int, dataset: str | None = None
) -> list[SavedMapping]:
    """The user's mappings (of ``dataset`` alone, when given), newest first."""
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(queries["user_mappings"], {"user_id": user_id, "dataset": dataset})
        return [SavedMapping(**row) for row in await cursor.fetchall()]


async def saved_mapping(conn: Connection, user_id: int, name: str) -> SavedMapping | None:
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(queries["user_mapping"], {"user_id": user_id, "name": name})
        row = await cursor.fetchone()
    return None if row is None else SavedMapping(**row)


async def delete_mapping(conn: Connection, user_id: int, name: str) -> bool:
    async with conn.transaction():
        cursor = await conn.execute(queries["delete_mapping"], {"user_id": user_id, "name": name})
        return await cursor.fetchone() is not None


async def mapping_for_header(
    conn: Connection, user_id: int, dataset: str, header: Sequence[str]
) -> SavedMapping | None:
    """The user's newest mapping of ``dataset`` saved for a file with ``header``."""
    return next((m for m in await user_mappings(conn, user_id, dataset) if m.fits(header)), None)
