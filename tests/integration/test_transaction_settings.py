"""The settings importq's big statements run under hold for their transaction only.

JIT is off for staging, chunks and the aggregation: on a server with JIT, compiling a
big chunk's statements takes seconds (measured in docs/benchmarks.md), far more than
they save."""

from __future__ import annotations

from typing import Any

import pytest
from psycopg import AsyncConnection

from importq.services import Services
from importq.sql import queries


async def _jit(conn: AsyncConnection[Any]) -> str | None:
    cursor = await conn.execute("SELECT current_setting('jit')")
    return (await cursor.fetchone() or (None,))[0]


@pytest.mark.parametrize("statement", ["staging_settings", "chunk_settings", "report_plan"])
async def test_jit_is_off_in_the_transaction_and_back_after_it(
    services: Services, statement: str
) -> None:
    async with services.pool.connection() as conn:
        before = await _jit(conn)
        await conn.rollback()
        async with conn.transaction():
            await conn.execute(queries[statement])
            assert await _jit(conn) == "off"
        assert await _jit(conn) == before
