"""Webhooks: signed, retried with backoff, recorded, delivered once, never inward."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import hmac
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from procrastinate.jobs import Job

from conftest import make_settings, new_user
from helpers import Receiver, api_client, entrance, wait_for_batch
from importq.config import Settings
from importq.delivery.at_most_once import DeliveryBusy
from importq.delivery.webhooks import (
    WebhookFailed,
    deliver_batch_webhook,
    pinned_request,
)
from importq.pipeline.recovery import _claim_running
from importq.services import Services


@pytest.fixture
def allow_hosts() -> str:
    return "127.0.0.1"


@pytest.fixture
def webhook_options() -> dict[str, Any]:
    return {"webhook_max_attempts": 3}


@pytest.fixture
def settings(
    database_url: str, tmp_path: Path, allow_hosts: str, webhook_options: dict[str, Any]
) -> Settings:
    return make_settings(
        database_url,
        tmp_path / "data",
        webhook_allow_hosts=allow_hosts,
        webhook_secret="hook-secret",
        **webhook_options,
    )


async def _import(client: httpx.AsyncClient, url: str) -> str:
    response = await client.post(
        "/api/v1/entrances/import-rows",
        params={"callbackUrl": url},
        json={"data": [entrance("w1"), entrance("w2", latitude="99")]},
    )
    assert response.status_code == 202, response.text
    return str(response.json()["batchId"])


async def _rows(services: Services, query: str, *params: Any) -> list[tuple[Any, ...]]:
    async with services.pool.connection() as conn:
        cursor = await conn.execute(query, params)
        return list(await cursor.fetchall())


async def _wait_for(predicate: Any, seconds: float = 30) -> None:
    """Poll ``predicate`` (sync or async) every 0.1 s until it holds."""
    for _ in range(int(seconds * 10)):
        held = predicate()
        if asyncio.iscoroutine(held):
            held = await held
        if held:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the condition never held")


@pytest.mark.usefixtures("worker")
async def test_a_failing_receiver_gets_the_signed_delivery_on_the_third_try(
    client: httpx.AsyncClient,
    services: Services,
    receiver: Receiver,
) -> None:
    receiver.statuses = [500, 503]
    batch_id = await _import(client, receiver.url)
    job = await wait_for_batch(client, batch_id)
    await _wait_for(lambda: len(receiver.requests) == 3)

    ids = {headers["x-importq-delivery"] for headers, _ in receiver.requests}
    assert ids == {f"webhook-{batch_id}"}
    for headers, body in receiver.requests:
        stamp = headers["x-importq-timestamp"]
        expected = hmac.new(b"hook-secret", stamp.encode() + b"." + body, hashlib.sha256)
        assert headers["x-importq-signature"] == "sha256=" + expected.hexdigest()
    delivered = json.loads(receiver.requests[-1][1])
    assert delivered["batchId"] == batch_id and delivered["status"] == "completed"
    assert delivered["result"] == job["result"]
    sent_query = (
        "SELECT sent_at IS NOT NULL, attempts FROM deliveries "
        "WHERE batch_id = %s AND channel = 'webhook'"
    )

    async def recorded() -> bool:
        # The receiver answers before the delivery's transaction records the success.
        return await _rows(services, sent_query, batch_id) == [(True, 3)]

    await _wait_for(recorded)
    attempts = await _rows(
        services,
        "SELECT attempt, status_code FROM delivery_attempts "
        "WHERE batch_id = %s AND channel = 'webhook' ORDER BY attempt",
        batch_id,
    )
    assert attempts == [(1, 500), (2, 503), (3, 200)]


@pytest.mark.usefixtures("worker")
async def test_fifty_deliveries_at_once_post_once(
    client: httpx.AsyncClient,
    services: Services,
    receiver: Receiver,
) -> None:
    receiver.statuses = [500] * 100  # the worker's own attempt fails and waits to retry
    batch_id = await _import(client, receiver.url)
    await wait_for_batch(client, batch_id)
    await _wait_for(lambda: len(receiver.requests) >= 1)
    receiver.statuses = []
    sent = await asyncio.gather(
        *(deliver_batch_webhook(services, uuid.UUID(batch_id)) for _ in range(50)),
        return_exceptions=True,
    )
    assert sent.count(True) == 1
    assert len(receiver.requests) == 2  # the failed first try, then exactly one delivery


@pytest.mark.parametrize("allow_hosts", [""])
@pytest.mark.usefixtures("worker")
async def test_an_inward_callback_is_refused_and_recorded(
    client: httpx.AsyncClient,
    services: Services,
    receiver: Receiver,
) -> None:
    batch_id = await _import(client, receiver.url)
    await wait_for_batch(client, batch_id)

    async def last_error() -> str | None:
        error: str | None = (await client.get(f"/api/v1/jobs/{batch_id}")).json()["lastError"]
        return error

    async def recorded() -> bool:
        return (await last_error() or "").startswith("webhook:")

    await _wait_for(recorded, 20)
    error = await last_error() or ""
    assert "refused by the webhook address policy" in error and "127.0.0.1" not in error
    assert receiver.requests == []
    job = (await client.get(f"/api/v1/jobs/{batch_id}")).json()
    assert job["status"] == "completed"


async def test_the_last_failed_attempt_is_recorded_on_the_batch(
    client: httpx.AsyncClient,
    services: Services,
    receiver: Receiver,
) -> None:
    receiver.statuses = [500, 500]
    batch_id = await _import(client, receiver.url)
    async with services.pool.connection() as conn:
        await conn.execute(
            "INSERT INTO deliveries (batch_id, channel, message_id) VALUES (%s, 'webhook', %s)",
            (batch_id, f"webhook-{batch_id}"),
        )
    with pytest.raises(Exception, match="answered 500"):
        await deliver_batch_webhook(services, uuid.UUID(batch_id))
    assert not await deliver_batch_webhook(services, uuid.UUID(batch_id), last_attempt=True)
    job = (await client.get(f"/api/v1/jobs/{batch_id}")).json()
    assert job["lastError"] == "webhook: the receiver answered 500"
    assert job["status"] == "active"  # a webhook never changes the batch's status


async def test_a_callback_url_that_is_not_http_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/entrances/import-rows",
        params={"callbackUrl": "file:///etc/passwd"},
        json={"data": [entrance("x")]},
    )
    assert response.status_code == 400 and response.json()["code"] == "bad_callback_url"


async def test_a_delivery_goes_to_the_address_that_was_checked(receiver: Receiver) -> None:
    """The request is sent to the checked address, whatever the name resolves to by
    then: here a name that resolves nowhere reaches the receiver on loopback, with the
    URL's host as its Host header."""
    url = f"http://hooks.invalid:{receiver.port}/hooks/import"
    async with httpx.AsyncClient() as client:
        request = pinned_request(client, url, "127.0.0.1", {"X-Test": "1"}, b"{}")
        response = await client.send(request)
    assert response.status_code == 200
    [(headers, body)] = receiver.requests
    assert headers["host"] == f"hooks.invalid:{receiver.port}"
    assert (headers["x-test"], body) == ("1", b"{}")


async def _given_up(client: httpx.AsyncClient, receiver: Receiver) -> uuid.UUID:
    """A completed batch whose one webhook attempt failed (the receiver answered 500),
    so that the test can make the next one itself."""
    receiver.statuses = [500]
    batch_id = await _import(client, receiver.url)
    job = await wait_for_batch(client, batch_id)
    await _wait_for(lambda: len(receiver.requests) == 1)
    for _ in range(100):
        if (job := (await client.get(f"/api/v1/jobs/{batch_id}")).json())["lastError"]:
            break
        await asyncio.sleep(0.1)
    assert job["lastError"].startswith("webhook: the receiver answered 500")
    return uuid.UUID(batch_id)


ONE_TRY = {"webhook_max_attempts": 1, "webhook_timeout": 1.0}


@pytest.mark.parametrize("webhook_options", [ONE_TRY])
@pytest.mark.usefixtures("worker")
async def test_a_trickling_receiver_is_cut_off_at_the_deadline_holding_nothing(
    client: httpx.AsyncClient, services: Services, receiver: Receiver
) -> None:
    """An answer sent a byte at a time never times a read out; the POST's deadline
    stops it; meanwhile no transaction or row lock is open for it. (The
    receiver listens on a port of its own, which its allowed host may use.)

    The running worker opens short transactions of its own at any moment, so the
    check looks for one that has been open since the request was sent, and for a
    lock on the delivery's own row."""
    batch_id = await _given_up(client, receiver)
    receiver.answers = [b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n" + b"x" * 40]
    receiver.trickle = 0.3
    attempt = asyncio.create_task(deliver_batch_webhook(services, batch_id))
    await _wait_for(lambda: len(receiver.requests) == 2)
    await asyncio.sleep(0.4)
    open_work = await _rows(
        services,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND state LIKE 'idle in transaction%%' AND pid <> pg_backend_pid()"
        " AND xact_start < now() - interval '300 milliseconds'",
    )
    async with services.pool.connection() as conn:
        # Fails at once (instead of waiting) if anyone holds the row's lock.
        locked_row = await conn.execute(
            "SELECT channel FROM deliveries WHERE batch_id = %s AND channel = 'webhook'"
            " FOR UPDATE NOWAIT",
            (batch_id,),
        )
        assert await locked_row.fetchall() == [("webhook",)]
    assert open_work == [(0,)]
    with pytest.raises(WebhookFailed, match="no answer within 1 s"):
        await attempt
    recorded = await _rows(
        services,
        "SELECT attempt, error FROM delivery_attempts WHERE batch_id = %s ORDER BY attempt",
        batch_id,
    )
    assert recorded[-1] == (2, "no answer within 1 s")


@pytest.mark.parametrize("webhook_options", [ONE_TRY])
@pytest.mark.usefixtures("worker")
async def test_an_answer_is_read_only_up_to_64_kib_and_never_decompressed(
    client: httpx.AsyncClient, services: Services, receiver: Receiver
) -> None:
    bomb = gzip.compress(b"\0" * (64 << 20))  # 64 MiB once decompressed
    head = f"HTTP/1.1 500 X\r\nContent-Encoding: gzip\r\nContent-Length: {len(bomb)}\r\n\r\n"
    plain = b"HTTP/1.1 503 X\r\nContent-Length: 18\r\n\r\nmaintenance window"
    batch_id = await _given_up(client, receiver)
    receiver.answers = [head.encode() + bomb, plain]
    with pytest.raises(WebhookFailed) as compressed:
        await deliver_batch_webhook(services, batch_id)
    assert str(compressed.value) == "the receiver answered 500"
    with pytest.raises(WebhookFailed) as quoted:
        await deliver_batch_webhook(services, batch_id)
    assert str(quoted.value) == "the receiver answered 503: maintenance window"


@pytest.mark.parametrize("webhook_options", [ONE_TRY])
@pytest.mark.usefixtures("worker")
async def test_a_running_claim_leaves_the_delivery_to_its_attempt_until_it_runs_out(
    client: httpx.AsyncClient, services: Services, receiver: Receiver
) -> None:
    """An attempt whose worker looks dead may still be sending, or may have died before
    recording: while its claim runs, another attempt is told to retry; once it has run
    out, the next one sends."""
    batch_id = await _given_up(client, receiver)

    async def claim(until: str) -> None:
        async with services.pool.connection() as conn:
            await conn.execute(
                "UPDATE deliveries SET claimed_until = now() + %s::interval,"
                " claimed_by = 'elsewhere' WHERE batch_id = %s AND channel = 'webhook'",
                (until, batch_id),
            )

    # Recovery leaves a stalled job of this delivery alone while the claim runs.
    stalled = Job(
        id=1,
        queue="webhooks",
        lock=None,
        queueing_lock=None,
        task_name="deliver_webhook",
        task_kwargs={"batch_id": str(batch_id)},
    )
    await claim("1 hour")
    assert await _claim_running(services, stalled) is True
    with pytest.raises(DeliveryBusy):  # its job retries, and sends once the claim ends
        await deliver_batch_webhook(services, batch_id)
    assert len(receiver.requests) == 1
    await claim("-1 second")
    assert await _claim_running(services, stalled) is False
    assert await deliver_batch_webhook(services, batch_id) is True
    assert len(receiver.requests) == 2
    claimed = await _rows(
        services,
        "SELECT claimed_until, claimed_by FROM deliveries"
        " WHERE batch_id = %s AND channel = 'webhook'",
        batch_id,
    )
    assert claimed == [(None, None)]


@pytest.mark.parametrize("webhook_options", [ONE_TRY])
@pytest.mark.usefixtures("worker")
async def test_a_2xx_status_is_a_delivery_whatever_body_follows(
    client: httpx.AsyncClient, services: Services, receiver: Receiver
) -> None:
    batch_id = await _given_up(client, receiver)
    receiver.answers = [b"HTTP/1.1 204 X\r\nContent-Length: 1000\r\n\r\ncut short"]
    assert await deliver_batch_webhook(services, batch_id) is True


def _signed_with(secret: str, headers: dict[str, str], body: bytes) -> bool:
    stamp = headers["x-importq-timestamp"].encode()
    expected = hmac.new(secret.encode(), stamp + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["x-importq-signature"], f"sha256={expected}")


@pytest.mark.parametrize("webhook_options", [{"webhook_keys": "per-user"}])
@pytest.mark.usefixtures("worker")
async def test_with_per_user_keys_one_users_receiver_cannot_sign_for_another(
    client: httpx.AsyncClient, services: Services, receiver: Receiver
) -> None:
    """Each user reads their own key; a delivery of one user's batch does not verify
    with another's key, nor with the shared one."""
    _, other_token = await new_user(services, "bob")
    async with api_client(services, other_token) as bob:
        secrets, owners = {}, {}
        for who, caller in (("alice", client), ("bob", bob)):
            answer = await caller.get("/api/v1/webhook-secret")
            assert answer.status_code == 200, answer.text
            secrets[who] = answer.json()["secret"]
            owners[await _import(caller, receiver.url)] = who
    await _wait_for(lambda: len(receiver.requests) == 2)
    assert len({*secrets.values(), "hook-secret"}) == 3
    for headers, body in receiver.requests:
        owner = owners[json.loads(body)["batchId"]]
        verified = {who for who, secret in secrets.items() if _signed_with(secret, headers, body)}
        assert verified == {owner}
        assert not _signed_with("hook-secret", headers, body)


async def test_with_a_shared_key_no_user_can_read_it(client: httpx.AsyncClient) -> None:
    answer = await client.get("/api/v1/webhook-secret")
    assert (answer.status_code, answer.json()["code"]) == (409, "shared_webhook_secret")
