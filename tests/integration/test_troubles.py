"""Failed and stuck work seen and recovered through the admin API, with a real worker:
a chunk whose every attempt fails (the target table refuses inserts) until the fault is
removed, then is retried at once."""

from __future__ import annotations

import httpx
from psycopg import sql

from accounting import count
from conftest import new_user
from helpers import api_client, entrance, running_worker, until, wait_for_batch
from importq.services import Services


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
