"""No one stalls anyone: batches interleave, lanes keep messages from chunks, each user's
queue is bounded, and authentication never waits behind the main pool."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import make_settings
from helpers import Receiver, entrance, post_rows, running_worker, wait_for_batch
from importq.config import Settings
from importq.services import Services


@pytest.fixture
def options() -> dict[str, Any]:
    return {}


@pytest.fixture
def settings(database_url: str, tmp_path: Path, options: dict[str, Any]) -> Settings:
    return make_settings(database_url, tmp_path / "data", **options)


async def _accepted(client: httpx.AsyncClient, rows: list[dict[str, str]], **params: str) -> str:
    response = await client.post(
        "/api/v1/entrances/import-rows", params=params, json={"data": rows}
    )
    assert response.status_code == 202, response.text
    return str(response.json()["batchId"])


async def _completed_at(services: Services, batch_id: str) -> Any:
    async with services.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT completed_at FROM batches WHERE id = %s", (uuid.UUID(batch_id),)
        )
        row = await cursor.fetchone()
    assert row is not None
    return row[0]


def _entrances(prefix: str, count: int) -> list[dict[str, str]]:
    return [entrance(f"{prefix}{i}") for i in range(count)]


@pytest.mark.parametrize("options", [{"chunk_size": 100}])
async def test_batches_queued_one_after_the_other_take_turns_chunk_by_chunk(
    client: httpx.AsyncClient, services: Services
) -> None:
    """One chunk slot; twelve chunks of one batch queued first, eleven of another after:
    chunk priorities interleave them, so the second finishes first."""
    first = await _accepted(client, _entrances("first", 1_200))
    second = await _accepted(client, _entrances("second", 1_100))
    async with running_worker(services, concurrency=1):
        await wait_for_batch(client, first)
        await wait_for_batch(client, second)
    assert await _completed_at(services, second) < await _completed_at(services, first)
    async with services.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT args->>'batch_id', priority, queue_name FROM procrastinate_jobs"
            " WHERE task_name = 'process_chunk' ORDER BY id"
        )
        jobs = await cursor.fetchall()
    assert [p for b, p, _ in jobs if b == first] == [-n for n in range(12)]
    assert [p for b, p, _ in jobs if b == second] == [-n for n in range(11)]
    assert {q for *_, q in jobs} == {"chunks"}


@pytest.mark.parametrize("options", [{"chunk_size": 100}])
async def test_a_small_batch_has_a_slot_while_a_big_one_holds_every_other(
    client: httpx.AsyncClient, services: Services
) -> None:
    """The big batch's chunk holds the only chunk slot (its row is locked here, so it
    waits); a batch of at most 1,000 rows goes through the express slot meanwhile."""
    big = await _accepted(client, _entrances("big", 1_200))
    async with services.pool.connection() as holder:  # its transaction holds the lock
        await holder.execute(
            "SELECT 1 FROM chunks WHERE batch_id = %s FOR UPDATE", (uuid.UUID(big),)
        )
        async with running_worker(services, concurrency=1):
            small = await _accepted(client, _entrances("small", 1_000))
            job = await wait_for_batch(client, small, seconds=20)
            assert job["result"]["summary"]["successes"] == 1_000
            assert (await client.get(f"/api/v1/jobs/{big}")).json()["status"] == "active"
            await holder.rollback()
            await wait_for_batch(client, big)


@pytest.mark.parametrize(
    "options", [{"message_concurrency": 1, "webhook_timeout": 60, "shutdown_seconds": 1}]
)
async def test_a_stuck_receiver_holds_only_the_webhook_lane(
    client: httpx.AsyncClient, services: Services, receiver: Receiver
) -> None:
    """While the only webhook slot waits on a receiver that answers a byte a second,
    another batch's chunks, aggregation and email all go through."""
    receiver.answers = [b"HTTP/1.1 200 OK\r\nContent-Length: 60\r\n\r\n" + b"x" * 60]
    receiver.trickle = 1.0
    async with running_worker(services, concurrency=2):
        stuck = await _accepted(client, [entrance("s1")], callbackUrl=receiver.url)
        await wait_for_batch(client, stuck)
        for _ in range(100):
            if receiver.requests:
                break
            await asyncio.sleep(0.1)
        other = await _accepted(client, [entrance(f"o{i}") for i in range(30)])
        job = await wait_for_batch(client, other, seconds=20)
        assert job["status"] == "completed" and job["result"]["summary"]["successes"] == 30
        for _ in range(100):
            if any(other in path.name for path in services.settings.outbox_dir.iterdir()):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the other batch's email was not written")
        assert len(receiver.requests) == 1  # the trickle goes on: the first POST still runs


@pytest.mark.parametrize("options", [{"max_pending_rows_per_user": 3}])
async def test_a_user_with_rows_waiting_past_the_limit_gets_429(
    client: httpx.AsyncClient, services: Services
) -> None:
    first = await _accepted(client, [entrance(f"p{i}") for i in range(4)])
    refused = await post_rows(client, [entrance("late")])
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "30"
    body = refused.json()
    assert (body["code"], body["limit"], body["pending"]) == ("too_many_pending_rows", 3, 4)
    async with running_worker(services, concurrency=2):
        await wait_for_batch(client, first)
    assert (await post_rows(client, [entrance("late")])).status_code == 202


async def test_authentication_does_not_wait_for_the_main_pool(
    client: httpx.AsyncClient, services: Services
) -> None:
    """With every connection of the main pool taken, a request is still authenticated
    (and a bad token refused) at once."""
    async with contextlib.AsyncExitStack() as held:
        for _ in range(services.pool.max_size):
            await held.enter_async_context(services.pool.connection())
        refused = await client.get(
            "/api/v1/notifications", headers={"Authorization": "Bearer nope"}
        )
        assert refused.status_code == 401
