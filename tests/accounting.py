"""Row accounting, checked against the row rules' model: what a file's rows must end as,
and that a finished batch accounts for each of them exactly once."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import httpx
from psycopg import sql

from helpers import download, entrance, json_upload, read_csv_report, row_results, summary
from importq.rules.datasets import load_datasets
from importq.rules.row_rules import StagedRow
from importq.services import Services
from rules_model import decide


async def count(services: Services, query: str | sql.Composed, *params: Any) -> int:
    async with services.pool.connection() as conn:
        cursor = await conn.execute(query, params)
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


def expected_outcomes(rows: list[dict[str, str]]) -> Counter[str]:
    dataset = load_datasets()["entrances"]
    upload = json_upload(rows)
    positions = dataset.match_header(upload.header).positions
    staged: list[StagedRow] = list(upload.rows)
    winners, rejected = decide(dataset, positions, staged)
    return Counter(
        {
            "successes": len(winners),
            "duplicates": sum(r.outcome == "duplicate" for r in rejected),
            "failures": sum(r.outcome == "failure" for r in rejected),
        }
    )


def mixed_rows(count: int) -> list[dict[str, str]]:
    rows = []
    for i in range(count):
        if i % 17 == 5:
            rows.append(entrance(f"m{i}", latitude="95"))
        elif i % 11 == 3:
            rows.append(entrance(f"m{i // 2}"))
        else:
            rows.append(entrance(f"m{i}"))
    return rows


async def assert_every_row_accounted_once(
    services: Services, job: dict[str, Any], rows: list[dict[str, str]]
) -> None:
    """The batch completed with the outcomes the row rules give for the whole file, one
    result per row, and exactly the winners in the target table."""
    expected = expected_outcomes(rows)
    assert job["status"] == "completed"
    assert job["result"]["summary"] == summary(
        expected["successes"], expected["duplicates"], expected["failures"]
    )
    assert await count(services, "SELECT count(*) FROM entrances") == expected["successes"]
    async with services.pool.connection() as conn:
        results = await row_results(conn, uuid.UUID(job["batchId"]))
    assert sorted(line for line, _, _ in results) == list(range(2, len(rows) + 2))


async def slow_down_inserts(services: Services, seconds: float = 0.4) -> None:
    """Make every insert statement into ``entrances`` sleep ``seconds``, so that a chunk's
    transaction stays open long enough to kill its worker inside it."""
    async with services.pool.connection() as conn:
        await conn.execute(
            sql.SQL(
                "CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN PERFORM pg_sleep({}); RETURN NULL; END $$"
            ).format(sql.Literal(seconds))
        )
        await conn.execute(
            "CREATE TRIGGER slow BEFORE INSERT ON entrances "
            "FOR EACH STATEMENT EXECUTE FUNCTION slow_insert()"
        )


async def report_rows(client: httpx.AsyncClient, job: dict[str, Any]) -> dict[str, list[list[str]]]:
    """A finished batch's reports, by kind (``success``, ``duplicates``, ``failures``):
    their rows without the header, none for a report that was not written."""
    rows: dict[str, list[list[str]]] = {}
    for kind, url in job["result"]["reportUrls"].items():
        rows[kind] = read_csv_report(await download(client, url))[1:] if url else []
    return rows


async def assert_reports_account_for_every_row(
    client: httpx.AsyncClient, job: dict[str, Any], total: int
) -> None:
    """Each line of a ``total``-row file is in exactly one of the three reports."""
    reports = await report_rows(client, job)
    lines = [int(row[0]) for rows in reports.values() for row in rows]
    assert sorted(lines) == list(range(2, total + 2))


async def inserts_running(services: Services) -> int:
    """How many statements inserting into ``entrances`` run now in the test's database
    (a slowed chunk, say). Other tests' databases on the same server are not counted."""
    return await count(
        services,
        # The chunk statement inserts into the target table (this query names it too).
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
        " AND datname = current_database()"
        " AND query LIKE '%%INSERT INTO \"entrances\"%%' AND pid <> pg_backend_pid()",
    )
