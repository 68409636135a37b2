"""What failed rows do (onError): continue, abort-above=<n>%, atomic. A batch that is not
continue writes nothing until every chunk is checked, and nothing at all when its
failures are too many; its reports still account for every line."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

from accounting import assert_reports_account_for_every_row, count
from helpers import (
    accepted_rows,
    download,
    entrance,
    imported_by_a_worker,
    read_csv_report,
    report_records,
    running_worker,
    summary,
    until,
    wait_for_batch,
)
from importq.pipeline.aggregation import aggregate
from importq.pipeline.batches import start_aggregation
from importq.pipeline.chunk_processing import CANCELLED, process_chunk
from importq.pipeline.on_error import ABORTED
from importq.services import Services


async def _import(
    client: httpx.AsyncClient, services: Services, rows: list[dict[str, str]], **params: str
) -> dict[str, Any]:
    job = await imported_by_a_worker(client, services, rows, **params)
    await assert_reports_account_for_every_row(client, job, total=len(rows))
    return job


async def _messages(client: httpx.AsyncClient, job: dict[str, Any], kind: str) -> dict[int, str]:
    return {int(r["line"]): r["message"] for r in await report_records(client, job, kind)}


def _rows(count_: int, failing: set[int]) -> list[dict[str, str]]:
    """``count_`` entrances; those at the indexes ``failing`` fail the row rules."""
    return [entrance(f"r{i}", latitude="95" if i in failing else "45") for i in range(count_)]


async def test_an_abort_threshold_crossed_half_way_stops_the_batch_and_writes_nothing(
    client: httpx.AsyncClient, services: Services
) -> None:
    failing = set(range(0, 100, 4))  # 25 %, everywhere in the file
    rows = _rows(100, failing)
    accepted = await accepted_rows(client, rows, onError="abort-above=10%")
    # One chunk at a time: the threshold is crossed after a few chunks, and the others
    # are not run.
    async with running_worker(services, concurrency=1):
        job = await wait_for_batch(client, accepted["batchId"])
    assert job["status"] == "failed" and job["abortedAt"] is not None
    assert job["onError"] == "abort-above=10%"
    assert job["result"]["summary"] == summary(0, 0, 100)
    assert await count(services, "SELECT count(*) FROM entrances") == 0
    await assert_reports_account_for_every_row(client, job, total=100)
    messages = await _messages(client, job, "failures")
    assert {messages[i + 2] for i in set(range(100)) - failing} == {ABORTED}
    judged = [i for i in failing if messages[i + 2] != ABORTED]
    assert 10 < len(judged) < len(failing)  # some were never checked
    assert all(messages[i + 2].startswith("w3geo:latitude") for i in judged)
    unrun = await count(
        services,
        "SELECT count(*) FROM chunks WHERE batch_id = %s AND status = 'cancelled'",
        uuid.UUID(job["batchId"]),
    )
    assert unrun > 0


@pytest.mark.parametrize("policy", ["abort-above=10%", "abort-above=4.5%"])
async def test_failures_within_the_threshold_write_the_valid_rows(
    client: httpx.AsyncClient, services: Services, policy: str
) -> None:
    rows = _rows(100, {7, 50, 93})  # 3 %
    job = await _import(client, services, rows, onError=policy)
    assert job["status"] == "completed" and job["abortedAt"] is None
    assert job["result"]["summary"] == summary(97, 0, 3)
    assert await count(services, "SELECT count(*) FROM entrances") == 97
    _, *successes = read_csv_report(await download(client, job["result"]["reportUrls"]["success"]))
    assert all(row[3].isdigit() for row in successes)  # written: each has its id


async def test_an_atomic_batch_with_one_failed_row_writes_nothing(
    client: httpx.AsyncClient, services: Services
) -> None:
    rows = _rows(60, {33})
    dry = await _import(client, services, rows, onError="atomic", dryRun="true")
    job = await _import(client, services, rows, onError="atomic")
    assert job["status"] == dry["status"] == "failed"
    assert job["result"]["summary"] == dry["result"]["summary"] == summary(0, 0, 60)
    assert await count(services, "SELECT count(*) FROM entrances") == 0
    messages = await _messages(client, job, "failures")
    assert messages.pop(35) == "w3geo:latitude: 95 is above 90"
    assert set(messages.values()) == {ABORTED}
    assert await _messages(client, dry, "failures") == await _messages(client, job, "failures")


async def test_an_atomic_batch_of_valid_rows_is_written_whole(
    client: httpx.AsyncClient, services: Services
) -> None:
    await _import(client, services, [entrance("r3", latitude="1")])
    rows = [*_rows(60, set()), entrance("r5")]  # a duplicate in the file
    job = await _import(client, services, rows, onError="atomic", mode="upsert")
    assert job["status"] == "completed" and job["abortedAt"] is None
    assert job["result"]["summary"] == summary(60, 1, 0, updated=1)
    assert await count(services, "SELECT count(*) FROM entrances") == 60
    assert await count(services, "SELECT count(*) FROM entrances WHERE latitude = 45") == 60


async def test_a_row_refused_only_when_written_rolls_every_write_back(
    client: httpx.AsyncClient, services: Services
) -> None:
    """A trigger is not copied into a check's table: its refusal comes in the writing
    transaction, after some chunks are written, and takes them all back."""
    async with services.pool.connection() as conn:
        await conn.execute(
            "CREATE FUNCTION no_r50() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.source_id = 'r50' THEN RAISE check_violation USING MESSAGE = 'no r50'; "
            "END IF; RETURN NEW; END $$"
        )
        await conn.execute(
            "CREATE TRIGGER no_r50 BEFORE INSERT ON entrances"
            " FOR EACH ROW EXECUTE FUNCTION no_r50()"
        )
    rows = _rows(100, set())
    job = await _import(client, services, rows, onError="atomic")
    assert job["status"] == "failed" and job["abortedAt"] is not None
    assert job["result"]["summary"] == summary(0, 0, 100)
    assert await count(services, "SELECT count(*) FROM entrances") == 0
    assert set((await _messages(client, job, "failures")).values()) == {ABORTED}

    # Above the threshold it is written, the refused row a failure.
    written = await _import(client, services, rows, onError="abort-above=1%")
    assert written["status"] == "completed"
    assert written["result"]["summary"] == summary(99, 0, 1)
    assert await count(services, "SELECT count(*) FROM entrances") == 99


async def test_a_cancelled_checked_batch_imports_nothing(
    client: httpx.AsyncClient, services: Services
) -> None:
    rows = _rows(1000, set())
    accepted = await accepted_rows(client, rows, onError="atomic")
    status_url = f"/api/v1/jobs/{accepted['batchId']}"

    async def some_checked() -> bool:
        return bool((await client.get(status_url)).json()["progress"]["completedChunks"])

    async with running_worker(services, concurrency=1):
        await until(some_checked)
        cancelled = await client.post(f"{status_url}/cancel")
        assert cancelled.status_code == 202, cancelled.text
        job = await wait_for_batch(client, accepted["batchId"])
    assert job["status"] == "cancelled" and job["abortedAt"] is None
    assert job["result"]["summary"] == summary(0, 0, 1000)
    assert await count(services, "SELECT count(*) FROM entrances") == 0
    await assert_reports_account_for_every_row(client, job, total=1000)
    assert set((await _messages(client, job, "failures")).values()) == {CANCELLED}


@pytest.mark.parametrize("policy", ["stop", "abort-above=101%", "abort-above=5", "atomic "])
async def test_an_unknown_policy_is_refused(client: httpx.AsyncClient, policy: str) -> None:
    answer = await client.post(
        "/api/v1/entrances/import-rows", params={"onError": policy}, json={"data": []}
    )
    assert answer.status_code in (400, 422), answer.text
    assert "onError" in answer.text


async def test_two_runs_of_a_checked_batchs_aggregation_write_it_once(
    client: httpx.AsyncClient, services: Services
) -> None:
    """A stalled aggregation retried while the first still runs: one writes, the other
    finds the batch written, and the reports are the writes'."""
    accepted = await accepted_rows(client, _rows(25, set()), onError="atomic")
    batch_id = uuid.UUID(accepted["batchId"])
    async with services.pool.connection() as conn:
        for chunk_no in range(accepted["totalChunks"]):
            await process_chunk(conn, services.queue, services.datasets, batch_id, chunk_no)
        async with conn.transaction():
            assert await start_aggregation(conn, batch_id)
    statuses = await asyncio.gather(aggregate(services, batch_id), aggregate(services, batch_id))
    assert "completed" in statuses
    job = (await client.get(f"/api/v1/jobs/{batch_id}")).json()
    assert job["result"]["summary"] == summary(25, 0, 0)
    successes = await report_records(client, job, "success")
    assert len(successes) == 25 and all(r["targetId"] for r in successes)
    assert await count(services, "SELECT count(*) FROM entrances") == 25
