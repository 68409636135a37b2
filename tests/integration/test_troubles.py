"""Failed and stuck work seen and recovered through the admin API, with a real worker:
a chunk whose every attempt fails (the target table refuses inserts) until the fault is
removed, then is retried at once."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from accounting import count
from conftest import new_user
from helpers import api_client, entrance, running_worker, until, wait_for_batch
from importq.pipeline import troubles
from importq.services import Services
from importq.sql import queries


async def _break_inserts(services: Services) -> None:
    async with services.pool.connection() as conn:
        await conn.execute(
            "CREATE FUNCTION broken_insert() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'the disk is on fire' USING ERRCODE = 'XX000'; END $$"
        )
        await conn.execute(
            "CREATE TRIGGER broken BEFORE INSERT ON entrances "
            "FOR EACH STATEMENT EXECUTE FUNCTION broken_insert()"
        )


async def test_a_failing_chunk_is_listed_explained_and_retried_once_fixed(
    services: Services, client: httpx.AsyncClient
) -> None:
    admin = (await new_user(services, "root", "admin"))[1]
    await _break_inserts(services)
    posted = await client.post(
        "/api/v1/entrances/import-rows", json={"data": [entrance(f"t{i}") for i in range(3)]}
    )
    batch_id = posted.json()["batchId"]
    async with running_worker(services), api_client(services, admin) as as_admin:

        async def retrying() -> bool:
            found = await as_admin.get("/api/v1/admin/jobs", params={"state": "retrying"})
            return bool(found.json()["items"])

        await until(retrying)
        jobs = (await as_admin.get("/api/v1/admin/jobs", params={"state": "retrying"})).json()
        [job] = jobs["items"]
        assert (job["task"], job["batchId"], job["chunkNo"]) == ("process_chunk", batch_id, 0)
        assert job["attempts"] >= 1 and "the disk is on fire" in job["lastError"]
        assert (await client.get("/api/v1/admin/jobs")).status_code == 403

        stuck = (await as_admin.get("/api/v1/admin/batches/stuck", params={"minutes": 0})).json()
        [batch] = stuck["items"]
        assert batch["batchId"] == batch_id and batch["status"] == "active"
        assert any(
            "1 chunks not done, tried up to" in r and "the disk is on fire" in r
            for r in batch["reasons"]
        ), batch["reasons"]

        async with services.pool.connection() as conn:
            await conn.execute(sql.SQL("DROP TRIGGER broken ON entrances"))
        retried = await as_admin.post(f"/api/v1/admin/batches/{batch_id}/retry")
        assert retried.status_code == 202 and retried.json()["jobs"] == [job["id"]]
        done = await wait_for_batch(client, batch_id, seconds=20)
    assert done["status"] == "completed" and done["result"]["summary"]["successes"] == 3
    assert await count(services, "SELECT count(*) FROM entrances") == 3
    async with api_client(services, admin) as as_admin:
        again = await as_admin.post(f"/api/v1/admin/jobs/{job['id']}/retry")
        assert (again.status_code, again.json()["code"]) == (409, "nothing_to_retry")
        assert (await as_admin.get("/api/v1/admin/batches/stuck", params={"minutes": 0})).json()[
            "items"
        ] == []


async def _job(
    services: Services,
    batch_id: str,
    task: str,
    status: str,
    attempts: int,
    queueing_lock: str | None = None,
) -> int:
    """A job of the batch, as the queue would hold it."""
    async with services.pool.connection() as conn:
        cursor = await conn.execute(
            "INSERT INTO procrastinate_jobs (queue_name, task_name, args, status, attempts, "
            "queueing_lock) VALUES ('completion', %s, jsonb_build_object('batch_id', %s::text), "
            "%s, %s, %s) RETURNING id",
            [task, batch_id, status, attempts, queueing_lock],
        )
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def _status(services: Services, job_id: int) -> tuple[str, int]:
    async with services.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT status::text, attempts FROM procrastinate_jobs WHERE id = %s", [job_id]
        )
        row = await cursor.fetchone()
    assert row is not None
    return row[0], row[1]


async def _a_batch(client: httpx.AsyncClient) -> str:
    posted = await client.post("/api/v1/entrances/import-rows", json={"data": [entrance("a")]})
    return str(posted.json()["batchId"])


async def test_a_batch_retry_runs_each_failed_job_once(
    services: Services, client: httpx.AsyncClient
) -> None:
    admin = (await new_user(services, "root", "admin"))[1]
    batch_id = await _a_batch(client)
    failed = await _job(services, batch_id, "aggregate", "failed", 20)
    async with api_client(services, admin) as as_admin:
        retried = await as_admin.post(f"/api/v1/admin/batches/{batch_id}/retry")
    assert retried.status_code == 202
    assert retried.json() == {"jobs": [failed], "skipped": []}
    assert await _status(services, failed) == ("todo", 21)  # one more attempt, not two


async def test_a_batch_retry_skips_a_job_a_worker_took_and_retries_the_rest(
    services: Services,
    client: httpx.AsyncClient,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    admin = (await new_user(services, "root", "admin"))[1]
    batch_id = await _a_batch(client)
    failed = await _job(services, batch_id, "aggregate", "failed", 20)
    waiting = await _job(services, batch_id, "send_email", "todo", 3)
    listed = troubles.troubled_jobs

    async def listed_then_taken(
        conn: Any, state: troubles.JobState, *args: Any, **kwargs: Any
    ) -> Any:
        # A worker fetches the waiting job once it is listed, before its retry.
        jobs = await listed(conn, state, *args, **kwargs)
        if state == "retrying":
            async with await psycopg.AsyncConnection.connect(
                database_url, autocommit=True
            ) as worker:
                await worker.execute(
                    "UPDATE procrastinate_jobs SET status = 'doing' WHERE id = %s", [waiting]
                )
        return jobs

    monkeypatch.setattr(troubles, "troubled_jobs", listed_then_taken)
    async with api_client(services, admin) as as_admin:
        retried = await as_admin.post(f"/api/v1/admin/batches/{batch_id}/retry")
        alone = await as_admin.post(f"/api/v1/admin/jobs/{waiting}/retry")
    assert retried.status_code == 202, retried.text
    assert retried.json()["jobs"] == [failed]
    assert retried.json()["skipped"] == [
        {
            "id": waiting,
            "code": "not_retryable",
            "detail": f"Job {waiting} is doing: neither failed nor retrying.",
        }
    ]
    assert await _status(services, failed) == ("todo", 21)
    assert (alone.status_code, alone.json()["code"]) == (409, "not_retryable")


async def test_a_completion_check_beside_a_waiting_one_is_not_retried(
    services: Services, client: httpx.AsyncClient
) -> None:
    """The reconcile deferred a new check of the batch: the queue takes one a batch."""
    admin = (await new_user(services, "root", "admin"))[1]
    batch_id = await _a_batch(client)
    failed = await _job(services, batch_id, "check_completion", "failed", 20, batch_id)
    await _job(services, batch_id, "check_completion", "todo", 0, batch_id)
    other = await _job(services, batch_id, "aggregate", "failed", 20)
    async with api_client(services, admin) as as_admin:
        alone = await as_admin.post(f"/api/v1/admin/jobs/{failed}/retry")
        retried = await as_admin.post(f"/api/v1/admin/batches/{batch_id}/retry")
    assert alone.status_code == 409
    assert alone.json()["code"] == "already_waiting"
    assert "already has one waiting" in alone.json()["detail"]
    assert retried.status_code == 202, retried.text
    assert retried.json()["jobs"] == [other]
    assert [(job["id"], job["code"]) for job in retried.json()["skipped"]] == [
        (failed, "already_waiting")
    ]
    assert await _status(services, failed) == ("failed", 20)


async def test_stuck_batches_read_the_queue_once_and_each_its_own_jobs(
    services: Services, client: httpx.AsyncClient
) -> None:
    """One batch with a failed job, one whose jobs are gone, one waiting for a worker:
    each is told its own, from one pass over procrastinate_jobs (a lookup per batch
    scanned the table per batch: 6 s for 200 batches beside 600,000 jobs)."""
    failing, lost, waiting = [await _a_batch(client) for _ in range(3)]
    await _job(services, failing, "aggregate", "failed", 20)
    async with services.pool.connection() as conn:
        await conn.execute("DELETE FROM procrastinate_jobs WHERE args ->> 'batch_id' = %s", [lost])
        found = {str(b.id): b.reasons for b in await troubles.stuck_batches(conn, 0)}
        cursor = await conn.execute(
            sql.SQL("EXPLAIN (FORMAT JSON) {}").format(sql.SQL(queries["stuck_batches"])),
            {"minutes": 0},
        )
        row = await cursor.fetchone()
    assert row is not None
    assert found[failing] == ["1 of its jobs failed: retry them", "1 chunks waiting for a worker"]
    assert found[lost] == [
        "1 chunks waiting for a worker",
        "no job is waiting for it: the periodic reconcile defers a missed step",
    ]
    assert found[waiting] == ["1 chunks waiting for a worker"]

    def scans(node: dict[str, Any]) -> int:
        own = 1 if node.get("Relation Name") == "procrastinate_jobs" else 0
        return own + sum(scans(child) for child in node.get("Plans", []))

    assert scans(row[0][0]["Plan"]) == 1
