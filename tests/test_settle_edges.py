"""Chunks of datasets unlike the built-in one, end to end on PostgreSQL: a dataset wider
than a SQL function's 100 arguments, and a value the row rules accept but PostgreSQL
refuses on a row that is a duplicate anyway."""

from __future__ import annotations

import uuid
from typing import Any

from psycopg import sql

from conftest import new_user
from importq.datasets import Dataset, parse_datasets
from importq.processing import process_chunk
from importq.services import Services
from importq.staged import results_table
from importq.staging import BatchRequest, stage_batch
from importq.targets import ensure_target_table
from importq.uploads import read_json_rows

WIDTH = 120
WIDE = parse_datasets(
    '[datasets.wide]\ntable = "wide_rows"\ndedup_key = ["c0"]\n'
    + "".join(
        f'[[datasets.wide.columns]]\nname = "c{n}"\nfield = "c{n}"\n'
        + ("required = true\n" if n == 0 else "")
        for n in range(WIDTH)
    )
)["wide"]
DATED = parse_datasets(
    """
[datasets.dated]
table = "dated_rows"
dedup_key = ["key"]
[[datasets.dated.columns]]
name = "key"
field = "key"
required = true
[[datasets.dated.columns]]
name = "found"
field = "found"
type = "date"
"""
)["dated"]


async def _import(
    services: Services, dataset: Dataset, rows: list[dict[str, Any]]
) -> list[tuple[Any, ...]]:
    """Stage ``rows``, process every chunk; each line's outcome and message."""
    user_id = (await new_user(services, f"edge-{uuid.uuid4().hex[:8]}"))[0]
    async with services.pool.connection() as conn:
        await ensure_target_table(conn, dataset)
        await conn.commit()
        staged = await stage_batch(
            conn,
            BatchRequest(dataset=dataset, initiator_id=user_id, format="json"),
            read_json_rows(rows),
            chunk_size=50,
            max_chunks=services.settings.max_chunks,
            defer_chunks=services.queue.defer_chunks,
        )
        datasets = {dataset.name: dataset}
        for chunk_no in range(staged.total_chunks):
            assert await process_chunk(conn, services.queue, datasets, staged.batch_id, chunk_no)
        cursor = await conn.execute(
            sql.SQL("SELECT line, outcome, message FROM {} ORDER BY line").format(
                results_table(staged.batch_id)
            )
        )
        return await cursor.fetchall()


async def test_a_dataset_wider_than_a_functions_arguments_is_imported(
    services: Services,
) -> None:
    rows = [
        {f"c{n}": f"r{line}-{n}" for n in range(WIDTH)} | {"c110": " padded\u00a0"}
        for line in range(3)
    ]
    rows[2]["c0"] = "r0-0"  # the key of the first row: a duplicate
    assert await _import(services, WIDE, rows) == [
        (2, "success", None),
        (3, "success", None),
        (4, "duplicate", "duplicate of line 2"),
    ]
    async with services.pool.connection() as conn:
        cursor = await conn.execute("SELECT DISTINCT c110, c119 FROM wide_rows ORDER BY 2")
        assert await cursor.fetchall() == [("padded", "r0-119"), ("padded", "r1-119")]


async def test_a_later_row_of_a_key_is_its_duplicate_whatever_postgresql_makes_of_it(
    services: Services,
) -> None:
    """Python reads 2024-W01-1 as a date, PostgreSQL does not: only the row inserted
    has its values cast, so the second row is a duplicate, not a refused row."""
    rows = [{"key": "e1", "found": "2024-01-02"}, {"key": "e1", "found": "2024-W01-1"}]
    assert await _import(services, DATED, rows) == [
        (2, "success", None),
        (3, "duplicate", "duplicate of line 2"),
    ]
