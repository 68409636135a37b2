"""The settings importq's big statements run under hold for their transaction only.

JIT is off for staging, chunks and the aggregation: on a server with JIT, compiling a
big chunk's statements takes seconds (measured in docs/benchmarks.md), far more than
they save."""

from __future__ import annotations

import pytest

from importq.services import Services
from importq.sql import queries


@pytest.mark.parametrize("statement", ["staging_settings", "chunk_settings", "report_plan"])
async def test_jit_is_off_in_the_transaction_and_back_after_it(
    services: Services, statement: str
) -> None:
    async with services.pool.connection() as conn:
        cursor = await conn.execute("SELECT current_setting('jit')")
        before = (await cursor.fetchone() or (None,))[0]
        await conn.rollback()
        async with conn.transaction():
            await conn.execute(queries[statement])
            cursor = await conn.execute("SELECT current_setting('jit')")
            assert (await cursor.fetchone() or (None,))[0] == "off"
        cursor = await conn.execute("SELECT current_setting('jit')")
        assert (await cursor.fetchone() or (None,))[0] == before
