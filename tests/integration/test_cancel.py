"""Cancelling a running import: ``POST /api/v1/jobs/{id}/cancel``.

Chunks not started are not run, a running one finishes, and the batch ends ``cancelled``
through its one aggregation, with every row in exactly one report: the rows never
processed are failures, "not imported: the import was cancelled".
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from accounting import assert_reports_account_for_every_row, count, report_rows
from helpers import (
    csv_text,
    entrance,
    quoted_entrances,
    running_worker,
    summary,
    until,
    wait_for_batch,
)
from importq.pipeline import batches
from importq.pipeline.chunk_processing import CANCELLED, fail_chunk, process_chunk
from importq.services import Services

ROWS = [entrance(f"c{i}") for i in range(60)]  # 6 chunks of 10


async def _post(client: httpx.AsyncClient, rows: list[dict[str, str]] = ROWS) -> str:
    response = await client.post("/api/v1/entrances/import-rows", json={"data": rows})
    assert response.status_code == 202, response.text
    return str(response.json()["batchId"])


async def _failures(client: httpx.AsyncClient, job: dict[str, Any]) -> list[list[str]]:
    return (await report_rows(client, job))["failures"]


async def _stored(services: Services, batch_id: str) -> int:
    return await count(
        services, "SELECT count(*) FROM entrances WHERE imported_batch = %s", batch_id
    )


async def test_a_batch_cancelled_before_it_starts_imports_nothing(
    client: httpx.AsyncClient, services: Services
) -> None:
    batch_id = await _post(client)
    cancelled = await client.post(f"/api/v1/jobs/{batch_id}/cancel")
    assert cancelled.status_code == 202
    assert cancelled.json()["status"] == "active" and cancelled.json()["cancelledAt"]
    again = await client.post(f"/api/v1/jobs/{batch_id}/cancel")
    assert (
        again.status_code == 202 and again.json()["cancelledAt"] == cancelled.json()["cancelledAt"]
    )
    # The cancelled chunks' jobs are gone: only the completion check waits.
    waiting = await count(
        services,
        "SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo' AND args->>'batch_id' = %s"
        " AND task_name = 'process_chunk'",
        batch_id,
    )
    assert waiting == 0

    async with running_worker(services):
        job = await wait_for_batch(client, batch_id, until=("cancelled",))

        async def emailed() -> bool:
            return any(services.settings.outbox_dir.glob("*.eml"))

        await until(emailed)  # sent by a job of its own, after the batch has ended
    assert job["result"]["summary"] == summary(0, 0, 60)
    assert job["result"]["reportUrls"]["success"] is None
    failures = await _failures(client, job)
    assert [row[0] for row in failures] == [str(line) for line in range(2, 62)]
    assert {row[1] for row in failures} == {CANCELLED}
    assert await _stored(services, batch_id) == 0
    # Cancelling what is cancelled is fine; there is still one of everything.
    assert (await client.post(f"/api/v1/jobs/{batch_id}/cancel")).status_code == 202
    notifications = (await client.get("/api/v1/notifications")).json()["items"]
    assert [n["payload"]["status"] for n in notifications] == ["cancelled"]
    (eml,) = services.settings.outbox_dir.glob("*.eml")
    assert b"Subject: Import cancelled: Entrances" in eml.read_bytes()


async def test_a_batch_cancelled_half_way_keeps_what_it_imported(
    client: httpx.AsyncClient, services: Services
) -> None:
    batch_id = await _post(client)
    async with services.pool.connection() as conn:
        for chunk_no in range(3):  # as a worker would, before the cancel
            await process_chunk(
                conn, services.queue, services.datasets, uuid.UUID(batch_id), chunk_no
            )
    assert (await client.post(f"/api/v1/jobs/{batch_id}/cancel")).status_code == 202
    async with running_worker(services):
        job = await wait_for_batch(client, batch_id, until=("cancelled",))
    assert job["result"]["summary"] == summary(30, 0, 30)
    assert await _stored(services, batch_id) == 30
    assert {row[1] for row in await _failures(client, job)} == {CANCELLED}
    await assert_reports_account_for_every_row(client, job, total=60)


async def test_a_finished_batch_cannot_be_cancelled(
    client: httpx.AsyncClient, services: Services
) -> None:
    batch_id = await _post(client, ROWS[:5])
    async with running_worker(services):
        await wait_for_batch(client, batch_id)
    refused = await client.post(f"/api/v1/jobs/{batch_id}/cancel")
    assert (refused.status_code, refused.json()["code"]) == (409, "already_finished")
    assert (await client.get(f"/api/v1/jobs/{batch_id}")).json()["status"] == "completed"


async def test_cancel_racing_the_last_chunk_ends_one_way_or_the_other(
    client: httpx.AsyncClient, services: Services
) -> None:
    """The cancel and a batch's one chunk, twenty times, the cancel later each time. Before
    the chunk starts: 202, nothing imported, ``cancelled``. While it runs: 202, but it
    finishes, so the batch ends ``completed`` (with ``cancelledAt``). After its commit:
    409, ``completed``. Never a lost row or a second aggregation."""
    seen = set()
    for round_no in range(20):
        rows = [entrance(f"race{round_no}-{i}") for i in range(10)]  # one chunk
        batch_id = await _post(client, rows)

        async def work(batch: uuid.UUID, after: float) -> None:
            await asyncio.sleep(after)
            async with services.pool.connection() as conn:
                await process_chunk(conn, services.queue, services.datasets, batch, 0)

        async def cancel(batch: str, after: float) -> httpx.Response:
            await asyncio.sleep(after)
            return await client.post(f"/api/v1/jobs/{batch}/cancel")

        # From before the chunk starts (the first round, whatever the machine's load) to
        # well after its commit, so that both orders happen.
        _, answer = await asyncio.gather(
            work(uuid.UUID(batch_id), 0.5 if round_no == 0 else 0),
            cancel(batch_id, round_no * 0.01),
        )
        async with running_worker(services):
            job = await wait_for_batch(client, batch_id, until=("cancelled", "completed"))
        assert answer.status_code in (202, 409)
        assert (job["cancelledAt"] is not None) == (answer.status_code == 202)
        expected = summary(0, 0, 10) if job["status"] == "cancelled" else summary(10, 0, 0)
        assert job["result"]["summary"] == expected
        seen.add((answer.status_code, job["status"]))
        await assert_reports_account_for_every_row(client, job, total=10)
    assert (409, "completed") in seen and any(code == 202 for code, _ in seen)


async def test_a_cancel_waiting_on_another_is_202_too(
    client: httpx.AsyncClient, services: Services
) -> None:
    """Two cancels whose transactions overlap: the second waits for the first's row lock,
    then finds the batch cancelled, and says so (202), not already_finished."""
    batch_id = await _post(client)
    async with services.pool.connection() as first, first.transaction():
        assert await batches.cancel_batch(first, uuid.UUID(batch_id))
        second = asyncio.create_task(client.post(f"/api/v1/jobs/{batch_id}/cancel"))
        await asyncio.sleep(0.3)
        assert not second.done()  # waiting on the first's lock
    answer = await second
    assert answer.status_code == 202 and answer.json()["cancelledAt"]


async def _chunk_statuses(services: Services, batch_id: str) -> list[str]:
    async with services.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT status FROM chunks WHERE batch_id = %s ORDER BY chunk_no",
            (uuid.UUID(batch_id),),
        )
        return [str(status) for (status,) in await cursor.fetchall()]


async def test_the_cancel_settles_every_chunk_not_held_at_once(
    client: httpx.AsyncClient, services: Services
) -> None:
    """One chunk is held, as a running chunk or a failing attempt holds it: the cancel
    settles the five others in its own transaction, without waiting. The held one is
    left to its holder; released unfinished, it is cancelled by its next delivery."""
    batch_id = await _post(client)
    async with services.pool.connection() as holder:
        await holder.execute(
            "SELECT FROM chunks WHERE batch_id = %s AND chunk_no = 2 FOR UPDATE",
            (uuid.UUID(batch_id),),
        )
        answer = await client.post(f"/api/v1/jobs/{batch_id}/cancel")
        assert answer.status_code == 202
        assert answer.json()["progress"]["processedRows"] == 50
        statuses = await _chunk_statuses(services, batch_id)
        assert statuses == ["cancelled", "cancelled", "todo", "cancelled", "cancelled", "cancelled"]
        await holder.rollback()
    async with running_worker(services):
        job = await wait_for_batch(client, batch_id, until=("cancelled",))
    assert job["result"]["summary"] == summary(0, 0, 60)
    assert await _chunk_statuses(services, batch_id) == ["cancelled"] * 6
    assert await _stored(services, batch_id) == 0
    await assert_reports_account_for_every_row(client, job, total=60)


async def test_a_chunk_given_up_after_the_cancel_reports_its_rows_as_cancelled(
    client: httpx.AsyncClient, services: Services
) -> None:
    """Held by a failing attempt when the cancel came, then given up: its rows were never
    imported, so they are cancelled, not "could not process"."""
    batch_id = await _post(client, ROWS[:10])
    async with services.pool.connection() as holder:
        await holder.execute(
            "SELECT FROM chunks WHERE batch_id = %s FOR UPDATE", (uuid.UUID(batch_id),)
        )
        assert (await client.post(f"/api/v1/jobs/{batch_id}/cancel")).status_code == 202
        await holder.rollback()
    assert await _chunk_statuses(services, batch_id) == ["todo"]
    async with services.pool.connection() as conn:
        assert await fail_chunk(
            conn, services.queue, services.datasets, uuid.UUID(batch_id), 0, "boom"
        )
    assert await _chunk_statuses(services, batch_id) == ["cancelled"]
    async with running_worker(services):
        job = await wait_for_batch(client, batch_id, until=("cancelled",))
    assert {row[1] for row in await _failures(client, job)} == {CANCELLED}
    assert job["failedChunks"] == 0


async def test_two_cancels_at_once_make_one_cancellation(
    client: httpx.AsyncClient, services: Services
) -> None:
    batch_id = await _post(client)
    answers = await asyncio.gather(
        *(client.post(f"/api/v1/jobs/{batch_id}/cancel") for _ in range(10))
    )
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["cancelledAt"] for a in answers}) == 1
    async with running_worker(services):
        await wait_for_batch(client, batch_id, until=("cancelled",))
    async with services.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM notifications WHERE batch_id = %s", (uuid.UUID(batch_id),)
        )
        assert await cursor.fetchone() == (1,)


async def test_cancelled_rows_are_reported_as_a_chunk_reports_them(
    client: httpx.AsyncClient, services: Services
) -> None:
    """The aggregation makes the failure records of cancelled chunks from their staged
    rows; they are the records a chunk makes of the same rows (given up, here), byte for
    byte but the message: quoting, line feeds, formula prefixes, numbers, padding, cells
    past the header."""
    rows = quoted_entrances()
    rows[1]["rdfs:label"] = "  padded, with a comma  "
    rows[2]["rdfs:label"] = '=HYPERLINK("x")'
    rows[3]["w3geo:latitude"] = "-12.5"
    rows[4]["w3geo:longitude"] = "+3"
    rows[6]["dct:rights/cc:attributionName"] = "@club"
    rows[8]["w3geo:latitude"] = "-north"
    body = csv_text(rows) + "ragged,karstlink:UndergroundCavity,FFS,CC-BY-SA,FR,1,2,fra,x,y,=z\r\n"

    async def post() -> uuid.UUID:
        response = await client.post(
            "/api/v1/entrances/import-rows", content=body, headers={"Content-Type": "text/csv"}
        )
        assert response.status_code == 202, response.text
        return uuid.UUID(response.json()["batchId"])

    cancelled, given_up = await post(), await post()
    assert (await client.post(f"/api/v1/jobs/{cancelled}/cancel")).status_code == 202
    async with services.pool.connection() as conn:
        for chunk_no in range((await batches.get_batch(conn, given_up) or {})["total_chunks"]):
            await fail_chunk(conn, services.queue, services.datasets, given_up, chunk_no, "x")
    async with running_worker(services):
        reports = [
            (await report_rows(client, await wait_for_batch(client, str(batch), until=until)))
            for batch, until in ((cancelled, ("cancelled",)), (given_up, ("failed",)))
        ]
    assert reports[0]["success"] == reports[0]["duplicates"] == []
    assert [row[1] for row in reports[0]["failures"]] == [CANCELLED] * (len(rows) + 1)
    without_message = [[[row[0], *row[2:]] for row in r["failures"]] for r in reports]
    assert without_message[0] == without_message[1]
    assert without_message[0][-1][-1] == "'=z"  # a formula cell past the header


async def test_a_delivery_that_waited_on_a_rolled_back_holder_sees_the_cancel(
    client: httpx.AsyncClient, services: Services
) -> None:
    """A second delivery of a chunk job waits on the chunk's lock; the cancel commits
    (skipping the held chunk); the holder rolls back. The waiting delivery must see the
    cancel, though its statement began before it, and cancel the chunk, not run it."""
    batch_id = await _post(client, ROWS[:10])
    async with services.pool.connection() as holder:
        await holder.execute(
            "SELECT FROM chunks WHERE batch_id = %s FOR UPDATE", (uuid.UUID(batch_id),)
        )

        async def deliver() -> bool:
            async with services.pool.connection() as conn:
                return await process_chunk(
                    conn, services.queue, services.datasets, uuid.UUID(batch_id), 0
                )

        delivery = asyncio.create_task(deliver())
        await until(lambda: count(services, "SELECT count(*) FROM pg_locks WHERE NOT granted"))
        assert (await client.post(f"/api/v1/jobs/{batch_id}/cancel")).status_code == 202
        await holder.rollback()
    assert await delivery
    assert await _chunk_statuses(services, batch_id) == ["cancelled"]
    assert await _stored(services, batch_id) == 0
