"""Undo: a batch of its own that deletes what a batch inserted and restores what it
updated, leaving alone (and reporting) the rows changed since."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from accounting import count, report_rows
from conftest import new_user
from helpers import (
    api_client,
    entrance,
    imported_by_a_worker,
    report_records,
    running_worker,
    summary,
    wait_for_batch,
)
from importq.pipeline.chunk_processing import CHANGED, GONE, NOT_UNDONE, fail_chunk, process_chunk
from importq.services import Services


async def _undo(client: httpx.AsyncClient, services: Services, batch_id: str) -> dict[str, Any]:
    answer = await client.post(f"/api/v1/jobs/{batch_id}/undo")
    assert answer.status_code == 202, answer.text
    accepted = answer.json()
    assert answer.headers["Location"] == accepted["statusUrl"]
    async with running_worker(services):
        job = await wait_for_batch(client, accepted["batchId"])
    assert job["type"] == "undo" and job["undoOf"] == batch_id
    # Its rows are the lines of the batch undone that wrote: each in one report, once.
    lines = [int(row[0]) for rows in (await report_rows(client, job)).values() for row in rows]
    assert len(lines) == len(set(lines)) == accepted["totalRows"]
    return job


async def _latitudes(services: Services) -> dict[str, float]:
    async with services.pool.connection() as conn:
        cursor = await conn.execute("SELECT source_id, latitude FROM entrances")
        return dict(await cursor.fetchall())


async def test_undo_deletes_inserts_restores_updates_and_spares_later_changes(
    client: httpx.AsyncClient, services: Services
) -> None:
    await imported_by_a_worker(
        client, services, [entrance(f"s{i}", latitude="1") for i in range(4)]
    )
    rows = [
        entrance("s0", latitude="2"),  # 2 updated
        entrance("s1", latitude="2"),  # 3 updated, then changed by a later batch
        entrance("s2", latitude="1"),  # 4 unchanged: nothing to undo
        entrance("n0", latitude="3"),  # 5 inserted
        entrance("n1", latitude="3"),  # 6 inserted, then changed by a later batch
        entrance("n2", latitude="3"),  # 7 inserted, then deleted by a user
        entrance("s3", latitude="5"),  # 8 updated, then deleted by a user
        entrance("bad", latitude="95"),  # 9 failure: nothing to undo
    ]
    upsert = await imported_by_a_worker(client, services, rows, mode="upsert")
    assert upsert["result"]["summary"] == summary(7, 0, 1, updated=3, unchanged=1)
    later = await imported_by_a_worker(
        client,
        services,
        [entrance("s1", latitude="7"), entrance("n1", latitude="7")],
        mode="upsert",
    )
    assert later["result"]["summary"] == summary(2, 0, 0, updated=2)
    async with services.pool.connection() as conn:
        await conn.execute("DELETE FROM entrances WHERE source_id IN ('n2', 's3')")

    undo = await _undo(client, services, upsert["batchId"])
    assert undo["status"] == "completed" and undo["progress"]["totalRows"] == 6
    assert undo["result"]["summary"] == summary(2, 0, 4, deleted=1, restored=1)
    undone = (await client.get(f"/api/v1/jobs/{upsert['batchId']}")).json()
    assert undone["status"] == "undone" and undone["undoneBy"] == undo["batchId"]
    successes = await report_records(client, undo, "success")
    assert [(r["line"], r["id"], r["outcome"], r["changedColumns"]) for r in successes] == [
        ("2", "s0", "restored", "w3geo:latitude"),
        ("5", "n0", "deleted", ""),
    ]
    failures = await report_records(client, undo, "failures")
    assert [(r["line"], r["message"], r["id"]) for r in failures] == [
        ("3", CHANGED, "s1"),
        ("6", CHANGED, "n1"),
        ("7", GONE, "n2"),
        ("8", GONE, "s3"),
    ]
    assert await _latitudes(services) == {"s0": 1, "s1": 7, "s2": 1, "n1": 7}

    # Undone once; an undo is not undone; a dry run has nothing to undo.
    again = await client.post(f"/api/v1/jobs/{upsert['batchId']}/undo")
    assert (again.status_code, again.json()["code"]) == (409, "already_undone")
    assert again.json()["batchId"] == undo["batchId"]
    of_undo = await client.post(f"/api/v1/jobs/{undo['batchId']}/undo")
    assert (of_undo.status_code, of_undo.json()["code"]) == (409, "not_undoable")
    dry = await imported_by_a_worker(client, services, [entrance("d")], dryRun="true")
    refused = await client.post(f"/api/v1/jobs/{dry['batchId']}/undo")
    assert (refused.status_code, refused.json()["code"]) == (409, "dry_run")
    cancel = await client.post(f"/api/v1/jobs/{undo['batchId']}/cancel")
    assert (cancel.status_code, cancel.json()["code"]) == (409, "not_cancellable")


async def test_a_cancelled_batch_is_undone_and_an_expired_one_is_not(
    client: httpx.AsyncClient, services: Services
) -> None:
    rows = [entrance(f"c{i}") for i in range(300)]
    answer = await client.post("/api/v1/entrances/import-rows", json={"data": rows})
    batch_id = answer.json()["batchId"]
    async with services.pool.connection() as conn:
        # Two chunks imported, then the cancel settles the others.
        for chunk_no in (0, 1):
            await process_chunk(
                conn, services.queue, services.datasets, uuid.UUID(batch_id), chunk_no
            )
    assert (await client.post(f"/api/v1/jobs/{batch_id}/cancel")).status_code == 202
    async with running_worker(services):
        cancelled = await wait_for_batch(client, batch_id)
    assert cancelled["status"] == "cancelled"
    imported = cancelled["result"]["summary"]["inserted"]
    assert 0 < imported < 300

    undo = await _undo(client, services, batch_id)
    assert undo["result"]["summary"] == summary(imported, 0, 0, deleted=imported)
    assert await count(services, "SELECT count(*) FROM entrances") == 0

    old = await imported_by_a_worker(client, services, [entrance("old")])
    async with services.pool.connection() as conn:
        await conn.execute(
            "UPDATE batches SET completed_at = %s WHERE id = %s",
            (
                datetime.now(UTC) - timedelta(days=services.settings.retention_days + 1),
                old["batchId"],
            ),
        )
    expired = await client.post(f"/api/v1/jobs/{old['batchId']}/undo")
    assert (expired.status_code, expired.json()["code"]) == (409, "expired")


async def test_only_the_owner_and_staff_may_undo(
    client: httpx.AsyncClient, services: Services
) -> None:
    job = await imported_by_a_worker(client, services, [entrance("o1")])
    other = (await new_user(services, "mallory"))[1]
    moderator = (await new_user(services, "mod", "moderator"))[1]
    async with api_client(services, other) as as_other, api_client(services, moderator) as as_mod:
        assert (await as_other.post(f"/api/v1/jobs/{job['batchId']}/undo")).status_code == 403
        answer = await as_mod.post(f"/api/v1/jobs/{job['batchId']}/undo")
        assert answer.status_code == 202, answer.text
        async with running_worker(services):
            undo = await wait_for_batch(as_mod, answer.json()["batchId"])
    assert undo["result"]["summary"]["deleted"] == 1
    assert await count(services, "SELECT count(*) FROM entrances") == 0


async def test_an_undo_given_up_leaves_every_row_and_says_so(
    client: httpx.AsyncClient, services: Services
) -> None:
    job = await imported_by_a_worker(client, services, [entrance(f"g{i}") for i in range(30)])
    answer = await client.post(f"/api/v1/jobs/{job['batchId']}/undo")
    undo_id = uuid.UUID(answer.json()["batchId"])
    async with services.pool.connection() as conn:
        cursor = await conn.execute("SELECT chunk_no FROM chunks WHERE batch_id = %s", [undo_id])
        for (chunk_no,) in await cursor.fetchall():
            assert await fail_chunk(
                conn, services.queue, services.datasets, undo_id, chunk_no, "broken"
            )
    async with running_worker(services):
        undo = await wait_for_batch(client, str(undo_id))
    assert undo["status"] == "failed" and undo["result"]["summary"] == summary(0, 0, 30)
    failures = await report_records(client, undo, "failures")
    assert {r["message"] for r in failures} == {NOT_UNDONE}
    assert sorted(int(r["line"]) for r in failures) == list(range(2, 32))
    assert await count(services, "SELECT count(*) FROM entrances") == 30
