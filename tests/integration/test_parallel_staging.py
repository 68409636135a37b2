"""A big clean CSV file is COPYed in two halves at once (``staging.SecondPart``): the
batch reads exactly as if one COPY had read it, and no half of a refused or unclean
upload stays behind. The size from which a file is split is lowered for these tests."""

from __future__ import annotations

import asyncio
import io
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from psycopg import sql

from conftest import new_user
from helpers import (
    csv_text,
    download,
    entrance,
    quoted_entrances,
    read_csv_report,
    summary,
    wait_for_batch,
)
from importq.db import create_pool
from importq.ingest import staging
from importq.ingest.chunk_bounds import ChunkSizing
from importq.ingest.csv_reader import read_csv
from importq.ingest.limits import UploadLimits
from importq.ingest.staged_table import SCHEMA, part_name, table_name
from importq.ingest.staging import BatchRequest
from importq.pipeline.recovery import reconcile
from importq.rules.datasets import load_datasets
from importq.services import Services


async def _post(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await client.post(
        "/api/v1/entrances/import-rows", content=body, headers={"Content-Type": "text/csv"}
    )


async def _staged_parts(services: Services, batch_id: str) -> list[str]:
    async with services.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass(%s) ORDER BY 1",
            (f"{SCHEMA}.{table_name(uuid.UUID(batch_id))}",),
        )
        return [row[0] for row in await cursor.fetchall()]


async def _leftovers(services: Services) -> tuple[int, list[str]]:
    """Registered parts, and tables of the staging schema that are no batch's."""
    async with services.pool.connection() as conn:
        registered = await conn.execute("SELECT count(*) FROM staging_parts")
        (count,) = await registered.fetchone() or (0,)
        tables = await conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s AND tablename ~ '_[0-9]+$' "
            "AND NOT EXISTS (SELECT FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE c.relname = tablename)",
            (SCHEMA,),
        )
        return int(count), [row[0] for row in await tables.fetchall()]


def _with_stray_quote(rows: list[dict[str, str]], index: int) -> bytes:
    """``rows`` as CSV, row ``index``'s label (the last column) holding a quote mid-cell:
    PostgreSQL would open a quoted cell there, importq's reader keeps it as text."""
    rows[index]["rdfs:label"] = "stray"
    body = csv_text(rows).encode().replace(b",stray\r\n", b',str"ay\r\n')
    assert body.count(b'str"ay') == 1
    return body


async def _read_by_importq(
    client: httpx.AsyncClient, services: Services, body: bytes, seconds: float = 60
) -> dict[str, Any]:
    """Post ``body``, which PostgreSQL's COPY gives up on: accepted, staged by importq's
    reader into one table, nothing of either half left; the finished batch."""
    response = await _post(client, body)
    assert response.status_code == 202, response.text
    batch_id = response.json()["batchId"]
    job = await wait_for_batch(client, batch_id, seconds=seconds)
    assert await _staged_parts(services, batch_id) == []
    assert await _leftovers(services) == (0, [])
    return job


async def _assert_read_as_written(client: httpx.AsyncClient, job: dict[str, Any]) -> None:
    """The outcome of quoted_entrances(), line by line, as one reader of the whole file gives it."""
    assert job["result"]["summary"] == summary(58, 1, 2)
    reports = {
        kind: read_csv_report(await download(client, url))
        for kind, url in job["result"]["reportUrls"].items()
        if url is not None
    }
    assert [row[:2] for row in reports["failures"][1:]] == [
        ["7", 'w3geo:latitude: "north" is not a number'],
        ["52", "w3geo:longitude: 999 is above 180"],
    ]
    assert [row[:3] for row in reports["duplicates"][1:]] == [["62", "duplicate of line 5", "p3"]]
    success = reports["success"][1:]
    assert [int(row[0]) for row in success] == [
        line for line in range(2, 62) if line not in (7, 52)
    ]
    assert [row[1] for row in success[-2:]] == ["p58", "p59"]
    assert success[0][1:3] == ["p0", "FFS"]


async def test_a_file_copied_in_halves_reads_as_one_copy_would(
    client: httpx.AsyncClient,
    services: Services,
    worker: asyncio.Task[None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(staging, "PARALLEL_COPY_BYTES", 0)
    response = await _post(client, csv_text(quoted_entrances()).encode())
    assert response.status_code == 202, response.text
    batch_id = response.json()["batchId"]
    await _assert_read_as_written(client, await wait_for_batch(client, batch_id))

    hex_id = uuid.UUID(batch_id).hex
    assert await _staged_parts(services, batch_id) == [f"b_{hex_id}_0", f"b_{hex_id}_1"]
    async with services.pool.connection() as conn:
        staged = sql.Identifier(SCHEMA, table_name(uuid.UUID(batch_id)))
        cursor = await conn.execute(
            sql.SQL("SELECT array_agg(line ORDER BY line) FROM {}").format(staged)
        )
        (lines,) = await cursor.fetchone() or (None,)
    assert lines == list(range(2, 63))
    assert await _leftovers(services) == (0, [])


@pytest.mark.parametrize("unclean", [10, 55], ids=["first half", "second half"])
async def test_a_half_that_is_not_clean_makes_importq_read_the_file_and_leaves_nothing(
    client: httpx.AsyncClient,
    services: Services,
    worker: asyncio.Task[None],
    monkeypatch: pytest.MonkeyPatch,
    unclean: int,
) -> None:
    monkeypatch.setattr(staging, "PARALLEL_COPY_BYTES", 0)
    job = await _read_by_importq(client, services, _with_stray_quote(quoted_entrances(), unclean))
    await _assert_read_as_written(client, job)


@pytest.mark.parametrize("index", [3, 58], ids=["first half", "second half"])
async def test_a_refused_upload_leaves_neither_half(
    client: httpx.AsyncClient,
    services: Services,
    monkeypatch: pytest.MonkeyPatch,
    index: int,
) -> None:
    """A cell over the limit stops its half's COPY (its part's CHECK); importq's reader
    then refuses the file with the cell's line."""
    monkeypatch.setattr(staging, "PARALLEL_COPY_BYTES", 0)
    rows = quoted_entrances()
    rows[index]["rdfs:label"] = "x" * (services.settings.max_cell_chars + 1)
    response = await _post(client, csv_text(rows).encode())
    assert response.status_code == 413, response.text
    assert response.json()["line"] == index + 2
    assert await _leftovers(services) == (0, [])


async def test_the_purge_drops_a_second_half_whose_batch_never_came(services: Services) -> None:
    old, recent = uuid.uuid4(), uuid.uuid4()
    async with services.pool.connection() as conn:
        for batch_id, age in ((old, timedelta(hours=2)), (recent, timedelta(minutes=1))):
            name = part_name(batch_id, 1)
            await conn.execute(
                sql.SQL("CREATE TABLE {} (line integer)").format(sql.Identifier(SCHEMA, name))
            )
            await conn.execute(
                "INSERT INTO staging_parts (name, created_at) VALUES (%s, %s)",
                (name, datetime.now(UTC) - age),
            )
    await reconcile(services)
    assert await _leftovers(services) == (1, [part_name(recent, 1)])


async def test_with_no_second_connection_free_the_file_is_copied_in_one_piece(
    services: Services, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    """The second half waits for no connection: a pool with none free means one COPY."""
    monkeypatch.setattr(staging, "PARALLEL_COPY_BYTES", 0)
    body = csv_text(quoted_entrances()).encode()
    upload = read_csv(io.BytesIO(body), limits=UploadLimits())
    user_id = (await new_user(services, "busy"))[0]
    request = BatchRequest(load_datasets()["entrances"], initiator_id=user_id, format="csv")
    busy = create_pool(database_url, max_size=1)
    await busy.open(wait=True)
    try:
        async with busy.connection(), services.pool.connection() as conn:
            staged = await staging.stage_batch(
                conn,
                request,
                upload,
                sizing=ChunkSizing(10, services.settings.max_chunks),
                defer_chunks=services.queue.defer_chunks,
                connect=busy.connection,
            )
    finally:
        await busy.close()
    assert staged.total_rows == 61
    assert await _staged_parts(services, str(staged.batch_id)) == []
    assert await _leftovers(services) == (0, [])


async def test_line_ends_that_are_not_line_feeds_make_importq_read_the_file(
    client: httpx.AsyncClient,
    services: Services,
    worker: asyncio.Task[None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Records ended by a bare CR: PostgreSQL reads more records in the first half than
    its line feeds count, part 0's CHECK of its lines stops the COPY, and importq's own
    reader takes the file."""
    monkeypatch.setattr(staging, "PARALLEL_COPY_BYTES", 0)
    rows = [entrance(f"cr{n}") for n in range(40)]
    text = csv_text(rows).encode()
    head, _, rest = text.partition(b"\r\n")
    records = rest.split(b"\r\n")
    body = head + b"\r\n" + b"\r".join(records[:25]) + b"\r" + b"\r\n".join(records[25:])
    job = await _read_by_importq(client, services, body)
    assert job["result"]["summary"] == summary(40, 0, 0)


@pytest.mark.parametrize("unclean", [100, 15_100], ids=["first half", "second half"])
async def test_a_half_refused_early_leaves_both_connections_usable(
    client: httpx.AsyncClient,
    services: Services,
    worker: asyncio.Task[None],
    monkeypatch: pytest.MonkeyPatch,
    unclean: int,
) -> None:
    """The other half is still COPYing (the file is big enough) when one is refused: it
    runs to its end rather than being cut short, and importq reads the file."""
    monkeypatch.setattr(staging, "PARALLEL_COPY_BYTES", 0)
    rows = [entrance(f"big{n}", **{"rdfs:label": f"L{n}"}) for n in range(20_000)]
    job = await _read_by_importq(client, services, _with_stray_quote(rows, unclean), 120)
    assert job["result"]["summary"] == summary(20_000, 0, 0)


@pytest.mark.parametrize("halves", [True, False], ids=["in halves", "in one piece"])
async def test_every_row_copied_gets_its_own_line_across_the_line_numbers_cache(
    client: httpx.AsyncClient,
    services: Services,
    monkeypatch: pytest.MonkeyPatch,
    halves: bool,
) -> None:
    """The staged line numbers come from the identity's cache a thousand at a time: over
    several refills, in both halves, each row still gets the line it is on."""
    if halves:
        monkeypatch.setattr(staging, "PARALLEL_COPY_BYTES", 0)
    rows = [entrance(f"n{n}") for n in range(4_500)]
    response = await _post(client, csv_text(rows).encode())
    assert response.status_code == 202, response.text
    batch_id = uuid.UUID(response.json()["batchId"])
    async with services.pool.connection() as conn:
        staged = sql.Identifier(SCHEMA, table_name(batch_id))
        cursor = await conn.execute(sql.SQL("SELECT line, c0 FROM {} ORDER BY line").format(staged))
        staged_rows = await cursor.fetchall()
    assert staged_rows == [(n + 2, f"n{n}") for n in range(4_500)]
    assert len(await _staged_parts(services, str(batch_id))) == (2 if halves else 0)
