"""Races and crashes, tested by doing them: concurrent completion checks, two worker
processes on one batch, a worker killed with SIGKILL in the middle of a chunk."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from procrastinate.job_context import JobContext
from procrastinate.jobs import Job
from psycopg import sql

from accounting import (
    assert_every_row_accounted_once,
    count,
    inserts_running,
    mixed_rows,
    slow_down_inserts,
)
from helpers import (
    Receiver,
    download,
    entrance,
    read_csv_report,
    row_results,
    summary,
    wait_for_batch,
)
from importq.delivery.at_most_once import DeliveryBusy
from importq.delivery.completion_email import send_completion_email
from importq.delivery.webhooks import deliver_batch_webhook
from importq.ingest.staged_table import results_table
from importq.pipeline import aggregation
from importq.pipeline.chunk_processing import NOT_PROCESSED, fail_chunk, process_chunk
from importq.pipeline.recovery import reconcile
from importq.pipeline.reports import ReportWriter
from importq.services import Services
from importq.worker import tasks


def job_context(services: Services, task_name: str, **kwargs: Any) -> JobContext:
    """The context a worker would hand the task, for calling a task function directly."""
    job = Job(
        id=0, queue="test", lock=None, queueing_lock=None, task_name=task_name, task_kwargs=kwargs
    )
    return JobContext(
        app=services.queue.app,
        job=job,
        start_timestamp=time.time(),
        additional_context={"services": services},
        abort_reason=lambda: None,
    )


async def _staged_batch(
    client: httpx.AsyncClient, rows: list[dict[str, str]], callback_url: str | None = None
) -> tuple[str, int]:
    params = {"callbackUrl": callback_url} if callback_url else {}
    response = await client.post(
        "/api/v1/entrances/import-rows", json={"data": rows}, params=params
    )
    assert response.status_code == 202, response.text
    return response.json()["batchId"], response.json()["totalChunks"]


async def _jobs(services: Services, task_name: str) -> int:
    async with services.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE task_name = %s", (task_name,)
        )
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def _sent_at_once(sends: list[Coroutine[Any, Any, bool]]) -> list[bool]:
    """Run the sends at once. Each says whether it sent, or finds another's claim
    running (DeliveryBusy, which its job would retry); nothing else may happen."""
    outcomes = await asyncio.gather(*sends, return_exceptions=True)
    assert all(isinstance(o, bool | DeliveryBusy) for o in outcomes), outcomes
    return [o is True for o in outcomes]


async def _race_to_the_end(services: Services, batch_id: str) -> list[bool]:
    """50 completion checks, then 50 aggregations, then 50 email sends and 50 webhook
    deliveries, all at once; which of the email sends sent."""
    tasks.register_tasks(services.queue.app, reconcile_cron=services.settings.reconcile_cron)
    context = job_context(services, "check_completion", batch_id=batch_id)
    await asyncio.gather(*(tasks.check_completion(context, batch_id) for _ in range(50)))
    assert await _jobs(services, "aggregate") == 1
    await asyncio.gather(*(tasks.aggregate(context, batch_id) for _ in range(50)))
    assert await _jobs(services, "send_email") == 1
    batch = uuid.UUID(batch_id)
    hooks = await _sent_at_once([deliver_batch_webhook(services, batch) for _ in range(50)])
    assert hooks.count(True) == (1 if await _jobs(services, "deliver_webhook") else 0)
    return await _sent_at_once([send_completion_email(services, batch) for _ in range(50)])


async def test_fifty_completion_checks_aggregate_once(
    client: httpx.AsyncClient,
    services: Services,
    receiver: Receiver,
) -> None:
    rows = [entrance(f"r{i}") for i in range(35)] + [entrance("r1"), entrance("bad", latitude="x")]
    batch_id, total_chunks = await _staged_batch(client, rows, receiver.url)
    assert total_chunks > 1
    for chunk_no in range(total_chunks):
        async with services.pool.connection() as conn:
            assert await process_chunk(
                conn, services.queue, services.datasets, uuid.UUID(batch_id), chunk_no
            )

    sent = await _race_to_the_end(services, batch_id)

    assert sent.count(True) == 1
    job = (await client.get(f"/api/v1/jobs/{batch_id}")).json()
    assert job["status"] == "completed"
    assert job["result"]["summary"] == summary(35, 1, 1)
    assert (
        await count(services, "SELECT count(*) FROM notifications WHERE batch_id = %s", batch_id)
        == 1
    )
    assert (
        await count(services, "SELECT attempts FROM deliveries WHERE batch_id = %s", batch_id) == 1
    )
    assert len(list(services.settings.outbox_dir.glob("*.eml"))) == 1
    assert [json.loads(body)["status"] for _, body in receiver.requests] == ["completed"]


async def test_a_batch_whose_every_chunk_failed_ends_failed_with_its_email(
    client: httpx.AsyncClient,
    services: Services,
    receiver: Receiver,
) -> None:
    rows = [entrance(f"f{i}") for i in range(25)]
    batch_id, total_chunks = await _staged_batch(client, rows, receiver.url)
    for chunk_no in range(total_chunks):
        async with services.pool.connection() as conn:
            assert await fail_chunk(
                conn,
                services.queue,
                services.datasets,
                uuid.UUID(batch_id),
                chunk_no,
                "RuntimeError: boom",
            )

    sent = await _race_to_the_end(services, batch_id)

    assert sent.count(True) == 1
    job = (await client.get(f"/api/v1/jobs/{batch_id}")).json()
    assert job["status"] == "failed"
    assert job["progress"]["failures"] == 25 and job["failedChunks"] == total_chunks
    assert job["result"]["reportUrls"]["success"] is None
    failures = read_csv_report(await download(client, job["result"]["reportUrls"]["failures"]))
    # What stopped the chunk ("boom") is the operator's; the uploader is told what to do.
    assert {row[1] for row in failures[1:]} == {NOT_PROCESSED}
    (eml,) = services.settings.outbox_dir.glob("*.eml")
    assert b"Subject: Import failed: Entrances" in eml.read_bytes()
    assert [json.loads(body)["status"] for _, body in receiver.requests] == ["failed"]


async def test_results_that_double_one_line_and_miss_another_are_never_reported(
    client: httpx.AsyncClient, services: Services
) -> None:
    rows = [entrance(f"a{i}") for i in range(30)] + [entrance("a1"), entrance("bad", latitude="x")]
    batch_id, total_chunks = await _staged_batch(client, rows)
    for chunk_no in range(total_chunks):
        async with services.pool.connection() as conn:
            assert await process_chunk(
                conn, services.queue, services.datasets, uuid.UUID(batch_id), chunk_no
            )
    # As many results as rows, but line 2 has two (a success and the duplicate's) and
    # the duplicate's own line 33 none: only the count of distinct lines tells.
    async with services.pool.connection() as conn:
        await conn.execute(
            sql.SQL("UPDATE {} SET lines = array_replace(lines, 33, 2)").format(
                results_table(uuid.UUID(batch_id))
            )
        )
    tasks.register_tasks(services.queue.app, reconcile_cron=services.settings.reconcile_cron)
    context = job_context(services, "check_completion", batch_id=batch_id)
    await tasks.check_completion(context, batch_id)

    with pytest.raises(aggregation.AccountingError, match="32 row results for 31 lines"):
        await aggregation.aggregate(services, uuid.UUID(batch_id))

    job = (await client.get(f"/api/v1/jobs/{batch_id}")).json()
    assert job["status"] == "aggregating"
    assert not (services.settings.files_dir / "reports" / batch_id).exists()
    assert await _jobs(services, "send_email") == 0


async def test_a_report_that_cannot_be_written_fails_the_aggregation_and_frees_its_connection(
    client: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk error while the results stream in: the aggregation raises (no hang on the
    stream's connection), leaves no report file, and a later run finishes the batch."""
    rows = [entrance(f"w{i}") for i in range(30)]
    batch_id, total_chunks = await _staged_batch(client, rows)
    for chunk_no in range(total_chunks):
        async with services.pool.connection() as conn:
            await process_chunk(
                conn, services.queue, services.datasets, uuid.UUID(batch_id), chunk_no
            )
    tasks.register_tasks(services.queue.app, reconcile_cron=services.settings.reconcile_cron)
    await tasks.check_completion(job_context(services, "check_completion"), batch_id)

    def full(*_: object) -> int:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(ReportWriter, "add", full)
        with pytest.raises(OSError, match="No space"):
            await asyncio.wait_for(aggregation.aggregate(services, uuid.UUID(batch_id)), 20)
    assert list(services.settings.data_dir.glob("importq-reports-*")) == []
    assert await aggregation.aggregate(services, uuid.UUID(batch_id)) == "completed"


async def test_the_purge_sweeps_reports_a_dead_aggregation_left(services: Services) -> None:
    old = services.settings.data_dir / "importq-reports-dead"
    recent = services.settings.data_dir / "importq-reports-busy"
    for scratch in (old, recent):
        scratch.mkdir(parents=True)
        (scratch / "successes.csv").write_text("line\r\n")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    await reconcile(services)
    assert not old.exists() and recent.exists()


# --- worker processes --------------------------------------------------------------


def _worker_env(services: Services) -> dict[str, str]:
    settings = services.settings
    assert settings.database_url is not None
    return {
        **os.environ,
        "IMPORTQ_DATABASE_URL": settings.database_url,
        "IMPORTQ_DATA_DIR": str(settings.data_dir),
        "IMPORTQ_SECRET_KEY": settings.secret_key or "",
        "IMPORTQ_PUBLIC_URL": settings.base_url,
        "IMPORTQ_HEARTBEAT_SECONDS": str(settings.heartbeat_seconds),
        "IMPORTQ_STALLED_SECONDS": str(settings.stalled_seconds),
        "IMPORTQ_RECONCILE_CRON": settings.reconcile_cron,
    }


@pytest.fixture
def spawn_worker(services: Services, tmp_path: Path) -> Iterator[Any]:
    """Start ``importq worker`` processes; all are stopped at the end of the test."""
    started: list[subprocess.Popen[bytes]] = []

    def spawn(concurrency: int = 2) -> subprocess.Popen[bytes]:
        # The process writes to its own copy of the descriptor.
        with (tmp_path / f"worker-{len(started)}.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "importq.cli", "worker", "--concurrency", str(concurrency)],
                env=_worker_env(services),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        started.append(process)
        return process

    yield spawn
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in started:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


async def test_two_worker_processes_give_exact_counts(
    client: httpx.AsyncClient,
    services: Services,
    spawn_worker: Any,
) -> None:
    spawn_worker()
    spawn_worker()
    rows = mixed_rows(1500)
    batch_id, total_chunks = await _staged_batch(client, rows)
    assert total_chunks >= 100

    job = await wait_for_batch(client, batch_id, seconds=120)

    await assert_every_row_accounted_once(services, job, rows)
    assert (
        await count(
            services,
            "SELECT count(DISTINCT worker_id) FROM procrastinate_jobs "
            "WHERE task_name = 'process_chunk'",
        )
        == 2
    )


async def test_a_worker_killed_mid_chunk_loses_and_doubles_nothing(
    client: httpx.AsyncClient,
    services: Services,
    spawn_worker: Any,
) -> None:
    # A chunk's transaction is open long enough to kill its worker inside it.
    await slow_down_inserts(services)
    rows = mixed_rows(200)
    batch_id, _ = await _staged_batch(client, rows)
    victim = spawn_worker(concurrency=1)

    deadline = time.monotonic() + 60
    while True:
        done = await count(
            services,
            "SELECT count(*) FROM chunks WHERE batch_id = %s AND status = 'done'",
            batch_id,
        )
        sleeping = await inserts_running(services)
        if done >= 2 and sleeping >= 1:
            break
        assert time.monotonic() < deadline, "the worker never got going"
        await asyncio.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    in_flight = await count(
        services,
        "SELECT count(*) FROM procrastinate_jobs "
        "WHERE task_name = 'process_chunk' AND status = 'doing'",
    )
    # One chunk slot, and the express slot (a batch this small has its chunks there).
    assert in_flight in (1, 2)

    spawn_worker()
    job = await wait_for_batch(client, batch_id, seconds=120)

    await assert_every_row_accounted_once(services, job, rows)
    # The lost attempt is on record, and the chunk was processed again.
    assert (
        await count(
            services,
            "SELECT count(*) FROM chunks WHERE batch_id = %s "
            "AND error = 'the worker stopped while processing the chunk' AND attempts = 2",
            batch_id,
        )
        == in_flight
    )


async def test_a_chunk_processed_in_slices_decides_like_a_whole_file(
    client: httpx.AsyncClient,
    services: Services,
) -> None:
    # One chunk (chunk size above the row count), read three rows at a time: a key's
    # first valid row and its duplicates fall in different slices.
    rows = mixed_rows(40)
    rows[30] = entrance("m4")  # a duplicate far from its first line
    response = await client.post(
        "/api/v1/entrances/import-rows", json={"data": rows}, params={"fileName": "slices.json"}
    )
    batch_id = response.json()["batchId"]
    async with services.pool.connection() as conn:
        await conn.execute(
            "UPDATE chunks SET hash_to = NULL WHERE batch_id = %s AND chunk_no = 0", (batch_id,)
        )
        await conn.execute("DELETE FROM chunks WHERE batch_id = %s AND chunk_no > 0", (batch_id,))
        await conn.execute("UPDATE batches SET total_chunks = 1 WHERE id = %s", (batch_id,))
        await conn.commit()
        assert await process_chunk(
            conn, services.queue, services.datasets, uuid.UUID(batch_id), 0, slice_rows=3
        )
    sent = await _race_to_the_end(services, batch_id)
    assert sent.count(True) == 1
    job = (await client.get(f"/api/v1/jobs/{batch_id}")).json()
    await assert_every_row_accounted_once(services, job, rows)


async def test_two_batches_storing_one_key_at_once_store_it_once(
    client: httpx.AsyncClient,
    services: Services,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Batch 2's chunk inserts keys batch 1's open transaction holds: its plain insert
    waits, fails once batch 1 commits, and the guarded statement makes them duplicates
    (without probing the chunk row by row, the path of rows the database refuses)."""
    caplog.set_level(logging.INFO, logger="importq.pipeline.chunk_processing")
    rows = [entrance(f"race-{n}") for n in range(3)]
    first, _ = await _staged_batch(client, rows)
    second, _ = await _staged_batch(client, [*rows, entrance("race-new")])
    chunks: dict[str, list[int]] = {}
    async with services.pool.connection() as conn:
        for batch_id in (first, second):
            cursor = await conn.execute(
                "SELECT chunk_no FROM chunks WHERE batch_id = %s ORDER BY chunk_no", (batch_id,)
            )
            chunks[batch_id] = [n for (n,) in await cursor.fetchall()]

    async def process_all(conn: Any, batch_id: str) -> None:
        for chunk_no in chunks[batch_id]:
            await process_chunk(
                conn, services.queue, services.datasets, uuid.UUID(batch_id), chunk_no
            )

    async with services.pool.connection() as holder, services.pool.connection() as racer:
        async with holder.transaction():  # batch 1's chunks, done but not committed
            await process_all(holder, first)
            racing = asyncio.create_task(process_all(racer, second))
            holder_pid = holder.info.backend_pid
            deadline = time.monotonic() + 10
            while True:  # until batch 2's insert waits on batch 1's transaction
                async with services.pool.connection() as probe:
                    cursor = await probe.execute(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE %s = ANY(pg_blocking_pids(pid))",
                        (holder_pid,),
                    )
                    (waiting,) = await cursor.fetchone() or (0,)
                if waiting:
                    break
                assert time.monotonic() < deadline, "batch 2 never waited on batch 1"
                await asyncio.sleep(0.05)
        await racing

    async with services.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT source_id, count(*) FROM entrances WHERE source_id LIKE 'race-%%'"
            " GROUP BY source_id ORDER BY source_id"
        )
        assert await cursor.fetchall() == [
            ("race-0", 1),
            ("race-1", 1),
            ("race-2", 1),
            ("race-new", 1),
        ]
        assert await row_results(conn, uuid.UUID(second)) == [
            (2, "duplicate", "already exists"),
            (3, "duplicate", "already exists"),
            (4, "duplicate", "already exists"),
            (5, "inserted", None),
        ]
    assert not [r for r in caplog.records if "finding the rows refused" in r.getMessage()]


async def test_reconcile_leaves_a_chunk_its_worker_still_holds(
    client: httpx.AsyncClient,
    services: Services,
) -> None:
    from importq.pipeline.recovery import ChunkStillHeld, _count_lost_attempt

    batch_id, _ = await _staged_batch(client, [entrance(f"h{i}") for i in range(25)])
    batch = uuid.UUID(batch_id)
    async with services.pool.connection() as holder, holder.transaction():
        # A live worker inside chunk 0's transaction, whose heartbeat was merely late.
        await holder.execute(
            "SELECT 1 FROM chunks WHERE batch_id = %s AND chunk_no = 0 FOR UPDATE", (batch_id,)
        )
        with pytest.raises(ChunkStillHeld):
            await _count_lost_attempt(services, batch, 0)
        assert await _count_lost_attempt(services, batch, 1) == 1  # a free chunk is counted
    async with services.pool.connection() as conn:
        assert await process_chunk(conn, services.queue, services.datasets, batch, 0)
    assert await _count_lost_attempt(services, batch, 0) is None  # finished: nothing lost


async def test_reconcile_gives_a_chunk_left_without_a_job_a_new_one(
    client: httpx.AsyncClient,
    services: Services,
) -> None:
    from prometheus_client import REGISTRY

    from importq.pipeline.recovery import reconcile

    def chunk_jobs_recovered() -> float:
        found = REGISTRY.get_sample_value(
            "importq_reconcile_recoveries_total", {"kind": "chunk_job"}
        )
        return found or 0.0

    rows = [entrance(f"o{i}") for i in range(25)]
    batch_id, total_chunks = await _staged_batch(client, rows)
    assert total_chunks > 2
    jobs_of = (
        "SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'process_chunk'"
        " AND status IN ('todo', 'doing') AND args->>'batch_id' = %s"
        " AND (args->>'chunk_no')::int = %s"
    )
    async with services.pool.connection() as conn:
        # Chunk 0 finished; chunk 1's job is gone (it ended failed and was cleaned up).
        assert await process_chunk(conn, services.queue, services.datasets, uuid.UUID(batch_id), 0)
        await conn.execute(
            "DELETE FROM procrastinate_jobs WHERE task_name = 'process_chunk'"
            " AND args->>'batch_id' = %s AND (args->>'chunk_no')::int IN (0, 1)",
            (batch_id,),
        )
    recovered = chunk_jobs_recovered()
    await reconcile(services)
    assert chunk_jobs_recovered() - recovered == 1  # chunk 1's, as /metrics counts it
    await reconcile(services)  # a second pass finds the new job and adds none
    assert chunk_jobs_recovered() - recovered == 1
    assert await count(services, jobs_of, batch_id, 0) == 0  # done: nothing to redo
    for chunk_no in range(1, total_chunks):
        assert await count(services, jobs_of, batch_id, chunk_no) == 1


def test_backoff_never_waits_more_than_ten_minutes() -> None:
    from datetime import UTC, datetime, timedelta

    late = Job(
        id=1, queue="q", lock=None, queueing_lock=None, task_name="t", task_kwargs={}, attempts=19
    )
    decision = tasks.BACKOFF.get_retry_decision(exception=RuntimeError(), job=late)
    assert decision is not None and decision.retry_at is not None
    assert decision.retry_at <= datetime.now(UTC) + timedelta(seconds=tasks.MAX_WAIT_SECONDS)
    early = tasks.BACKOFF.get_retry_decision(exception=RuntimeError(), job=late.evolve(attempts=0))
    assert early is not None and early.retry_at is not None
    assert early.retry_at <= datetime.now(UTC) + timedelta(seconds=4)
