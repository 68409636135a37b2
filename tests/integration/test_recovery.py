"""Recovery as production needs it, done to real processes: ``importq serve`` killed
whole with SIGKILL and started again, stopped with SIGTERM mid-batch, and its
PostgreSQL restarted under it. Periodic recovery runs on the real scheduler, with its
default cron."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from accounting import (
    assert_every_row_accounted_once,
    assert_reports_account_for_every_row,
    count,
    inserts_running,
    mixed_rows,
    report_rows,
    slow_down_inserts,
)
from conftest import make_settings
from helpers import until, wait_for_batch
from importq.db import embedded_database_url, embedded_pg_ctl, start_embedded_server
from importq.pipeline.chunk_processing import CANCELLED
from importq.services import Services, open_services
from processes import free_port, kill_group, start_serve, wait_healthy

STALLED_SECONDS = 5
RECONCILE_PERIOD = 15  # the default cron's, "* * * * * */15"
# What the rest of a batch takes once recovery has run (its slowed inserts), and the
# service's own start.
WORK_SECONDS = 20


def _env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {
        **os.environ,
        "IMPORTQ_DATA_DIR": str(tmp_path / "data"),
        "IMPORTQ_CHUNK_SIZE": "10",
        "IMPORTQ_WORKER_CONCURRENCY": "2",
        "IMPORTQ_HEARTBEAT_SECONDS": "1",
        "IMPORTQ_STALLED_SECONDS": str(STALLED_SECONDS),
        **settings,
    }
    env.pop("IMPORTQ_RECONCILE_CRON", None)  # the default, as an operator runs it
    return env


class Service:
    """One ``importq serve`` at a time on ``env``, with an API client on it."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.client = httpx.AsyncClient(timeout=30)

    def start(self) -> None:
        port = free_port()
        self.process = start_serve(self.env, self.log, port)
        url = f"http://127.0.0.1:{port}"
        wait_healthy(self.process, url, self.log)
        token = (Path(self.env["IMPORTQ_DATA_DIR"]) / "admin-token").read_text().strip()
        self.client.base_url = httpx.URL(url)
        self.client.headers["Authorization"] = f"Bearer {token}"

    async def post(self, rows: list[dict[str, str]]) -> str:
        response = await self.client.post("/api/v1/entrances/import-rows", json={"data": rows})
        assert response.status_code == 202, response.text
        batch_id: str = response.json()["batchId"]
        return batch_id

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            kill_group(self.process)


@pytest.fixture
async def service(database_url: str, tmp_path: Path) -> AsyncIterator[Service]:
    """``importq serve`` on the test's database (start it with ``service.start()``)."""
    running = Service(_env(tmp_path, IMPORTQ_DATABASE_URL=database_url), tmp_path / "serve.log")
    yield running
    running.stop()
    await running.client.aclose()


async def _chunks_in_flight(services: Services, batch_id: str) -> bool:
    """Two chunks done, and one inside its slowed insert."""
    done = await count(
        services,
        "SELECT count(*) FROM chunks WHERE batch_id = %s AND status = 'done'",
        batch_id,
    )
    inserting = await inserts_running(services)
    return done >= 2 and inserting >= 1


async def _doing(services: Services) -> int:
    return await count(
        services,
        "SELECT count(*) FROM procrastinate_jobs"
        " WHERE task_name = 'process_chunk' AND status = 'doing'",
    )


async def _batch_in_flight(
    service: Service, services: Services, *, insert_seconds: float = 0.4
) -> tuple[str, list[dict[str, str]]]:
    """Post a batch whose inserts are slowed (starting the service unless it runs), and
    return its id and rows once some chunks are done and others are inserting."""
    await slow_down_inserts(services, seconds=insert_seconds)
    rows = mixed_rows(200)
    if service.process is None:
        service.start()
    batch_id = await service.post(rows)
    await until(lambda: _chunks_in_flight(services, batch_id))
    return batch_id, rows


async def test_a_service_killed_mid_batch_finishes_it_after_a_restart(
    service: Service, services: Services
) -> None:
    batch_id, rows = await _batch_in_flight(service, services)
    service.stop()  # SIGKILL to uvicorn, its worker and all they run
    assert await _doing(services) >= 1

    restarted = time.monotonic()
    service.start()
    # The dead worker's jobs are found once its heartbeat is STALLED_SECONDS old, by the
    # next periodic reconcile; one more period covers a tick the new worker misses.
    deadline = STALLED_SECONDS + 2 * RECONCILE_PERIOD + WORK_SECONDS
    job = await wait_for_batch(service.client, batch_id, seconds=deadline)
    assert time.monotonic() - restarted < deadline
    await assert_every_row_accounted_once(services, job, rows)
    lost = await count(
        services,
        "SELECT count(*) FROM chunks WHERE batch_id = %s"
        " AND error = 'the worker stopped while processing the chunk'",
        batch_id,
    )
    assert lost >= 1
    # The restarted service counted what its reconcile retried of the dead worker's.
    scraped = (await service.client.get("/metrics")).text
    recovered = {
        sample.labels["kind"]: sample.value
        for family in text_string_to_metric_families(scraped)
        for sample in family.samples
        if sample.name == "importq_reconcile_recoveries_total"
    }
    assert recovered["stalled_job"] >= 1


async def test_a_batch_cancelled_across_a_crash_ends_cancelled_with_every_row(
    service: Service, services: Services
) -> None:
    """The service dies mid-chunk; the user cancels through the restarted one before
    recovery has retried the dead worker's chunk. The cancel settles that chunk (its
    lock died with its worker), or its retried job sees the cancel: either way its rows
    are reported cancelled, once, and the batch ends cancelled."""
    batch_id, rows = await _batch_in_flight(service, services)
    service.stop()  # SIGKILL to uvicorn, its worker and all they run
    service.start()
    cancelled = await service.client.post(f"/api/v1/jobs/{batch_id}/cancel")
    assert cancelled.status_code == 202, cancelled.text

    deadline = STALLED_SECONDS + 2 * RECONCILE_PERIOD + WORK_SECONDS
    job = await wait_for_batch(service.client, batch_id, seconds=deadline)
    assert job["status"] == "cancelled"
    await assert_reports_account_for_every_row(service.client, job, len(rows))
    failures = (await report_rows(service.client, job))["failures"]
    assert any(row[1] == CANCELLED for row in failures)  # the chunk the crash cut short
    summary = job["result"]["summary"]
    assert summary["successes"] + summary["duplicates"] + summary["failures"] == len(rows)
    stored = await count(
        services, "SELECT count(*) FROM entrances WHERE imported_batch = %s", batch_id
    )
    assert stored == summary["successes"]


async def test_sigterm_lets_running_chunks_finish_and_gives_back_the_rest(
    database_url: str, tmp_path: Path, services: Services
) -> None:
    # Stalled-job detection is far off: nothing below may wait for it.
    env = _env(
        tmp_path,
        IMPORTQ_DATABASE_URL=database_url,
        IMPORTQ_STALLED_SECONDS="600",
        # Shorter than a chunk's slowed insert: the chunks running are given back.
        IMPORTQ_SHUTDOWN_SECONDS="1.5",
    )
    service = Service(env, tmp_path / "serve.log")
    try:
        batch_id, rows = await _batch_in_flight(service, services, insert_seconds=3)
        assert service.process is not None
        service.process.send_signal(signal.SIGTERM)

        # Draining: the node is not ready, uploads are refused, reads still answered.
        async def draining() -> bool:
            return (await service.client.get("/health/ready")).status_code == 503

        await until(draining, seconds=10)
        refused = await service.client.post(
            "/api/v1/entrances/import-rows", json={"data": rows[:1]}
        )
        assert (refused.status_code, refused.json()["code"]) == (503, "shutting_down")
        assert refused.headers["retry-after"]
        assert (await service.client.get(f"/api/v1/jobs/{batch_id}")).status_code == 200

        assert service.process.wait(timeout=30) == 0
        assert await _doing(services) == 0  # finished, or given back to the queue
        # Given back means waiting to be retried, not ended.
        ended = await count(
            services,
            "SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'process_chunk'"
            " AND status IN ('aborted', 'failed', 'cancelled')",
        )
        assert ended == 0
        lost = await count(
            services,
            "SELECT count(*) FROM chunks WHERE batch_id = %s AND error IS NOT NULL",
            batch_id,
        )
        assert lost == 0

        service.start()
        job = await wait_for_batch(service.client, batch_id, seconds=120)
        await assert_every_row_accounted_once(services, job, rows)
    finally:
        service.stop()
        await service.client.aclose()


async def test_the_service_rides_out_every_connection_being_cut(
    service: Service, services: Services
) -> None:
    # What a restart does to the service, on any server (the machine's PostgreSQL when
    # IMPORTQ_TEST_DATABASE_URL is set): every connection to its database is cut.
    batch_id, rows = await _batch_in_flight(service, services)
    async with services.pool.connection() as conn:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    deadline = STALLED_SECONDS + 2 * RECONCILE_PERIOD + WORK_SECONDS
    job = await wait_for_batch(service.client, batch_id, seconds=deadline)
    assert service.process is not None and service.process.poll() is None
    await assert_every_row_accounted_once(services, job, rows)


async def test_the_service_rides_out_an_outage_of_its_postgresql(tmp_path: Path) -> None:
    # The service's own embedded server, so that stopping it disturbs no other test.
    env = _env(tmp_path, IMPORTQ_EMBEDDED_SHARED_BUFFERS="128MB")
    env.pop("IMPORTQ_DATABASE_URL", None)
    pg_dir = Path(env["IMPORTQ_DATA_DIR"]) / "pg"
    service = Service(env, tmp_path / "serve.log")
    try:
        service.start()
        url = embedded_database_url(pg_dir)
        async with open_services(make_settings(url, tmp_path / "checks")) as services:
            batch_id, rows = await _batch_in_flight(service, services)

            embedded_pg_ctl(pg_dir, "stop", "-m", "fast")  # cuts every connection
            for _ in range(3):
                away = await service.client.get(f"/api/v1/jobs/{batch_id}")
                assert away.status_code == 503, away.text
                assert away.json()["code"] == "database_unavailable"
                assert away.headers["retry-after"] == "5"
                assert (await service.client.get("/health")).status_code == 503
                assert (await service.client.get("/health/live")).status_code == 200
                await asyncio.sleep(1)
            start_embedded_server(pg_dir)

            async def ready() -> bool:
                return (await service.client.get("/health/ready")).status_code == 200

            await until(ready, seconds=30)  # the service sees the database back by itself
            deadline = STALLED_SECONDS + 2 * RECONCILE_PERIOD + WORK_SECONDS
            job = await wait_for_batch(service.client, batch_id, seconds=deadline)
            assert service.process is not None and service.process.poll() is None
            await assert_every_row_accounted_once(services, job, rows)
    finally:
        service.stop()
        await service.client.aclose()
        # The test joined the server, and started it again itself: the service's stop
        # leaves it running, and it would outlive the test run.
        if (pg_dir / "postmaster.pid").exists():
            embedded_pg_ctl(pg_dir, "stop", "-m", "fast")
    log = service.log.read_text()
    # One line when the outage began and one when it ended, however many requests and
    # jobs met it.
    assert log.count("the database is unavailable") == 1, log
    assert log.count("the database is available again") == 1, log
