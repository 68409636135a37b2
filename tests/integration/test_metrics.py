"""``/metrics`` as Prometheus reads it: the series move by what an import did, the
database's gauges say what it holds, a token closes it when one is set, and processes
sharing ``PROMETHEUS_MULTIPROC_DIR`` report each other's counts, an ``importq worker``
on a port of its own."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from conftest import make_settings, new_user
from helpers import (
    Receiver,
    accepted_rows,
    api_client,
    csv_text,
    entrance,
    running_worker,
    until,
    wait_for_batch,
)
from importq.db import DatabaseOutage, Pool
from importq.operations import metrics
from importq.operations.metrics import QUEUES
from importq.services import Services, open_services
from processes import free_port, run_importq, serving, start_worker, stop_group

# A sample's name and its labels, sorted.
Key = tuple[str, tuple[tuple[str, str], ...]]
IMPORT_ROUTE = "/api/v1/{dataset}/import-rows"


@pytest.fixture(autouse=True)
def _fresh_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each scrape reads the database again, unless a test keeps its answer."""
    monkeypatch.setattr(metrics, "STATE_SECONDS", 0.0)


def _samples(text: str) -> dict[Key, float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _key(name: str, **labels: str) -> Key:
    return name, tuple(sorted(labels.items()))


async def _scrape(client: httpx.AsyncClient) -> dict[Key, float]:
    answer = await client.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return _samples(answer.text)


def _moved(before: Mapping[Key, float], after: Mapping[Key, float], key: Key) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def _rows(failing: int = 3) -> list[dict[str, str]]:
    """32 rows over several chunks: 27 to insert, 2 repeating a key, 3 with a bad
    latitude."""
    rows = [entrance(f"metrics-{i}") for i in range(27)]
    rows += [entrance("metrics-3", latitude="46.5"), entrance("metrics-20", latitude="46.5")]
    rows += [entrance(f"bad-{i}", latitude="north") for i in range(failing)]
    return rows


async def test_an_import_moves_every_series_by_what_it_did(
    client: httpx.AsyncClient, worker: asyncio.Task[None], receiver: Receiver
) -> None:
    before = await _scrape(client)
    body = csv_text(_rows()).encode()
    posted = await client.post(
        "/api/v1/entrances/import-rows",
        params={"callbackUrl": receiver.url},
        content=body,
        headers={"Content-Type": "text/csv"},
    )
    assert posted.status_code == 202, posted.text
    accepted = posted.json()
    assert accepted["totalChunks"] > 2
    job = await wait_for_batch(client, accepted["batchId"])
    summary = job["result"]["summary"]
    assert (summary["inserted"], summary["duplicates"], summary["failures"]) == (27, 2, 3)

    sent = {
        _key("importq_deliveries_total", channel=channel, outcome="sent")
        for channel in ("email", "webhook")
    }
    after: dict[Key, float] = {}

    async def delivered() -> bool:
        after.update(await _scrape(client))
        return all(_moved(before, after, key) == 1 for key in sent)

    await until(delivered, seconds=30)

    def moved(name: str, **labels: str) -> float:
        return _moved(before, after, _key(name, **labels))

    rows = {
        outcome: moved("importq_rows_total", dataset="entrances", run="import", outcome=outcome)
        for outcome in ("inserted", "updated", "unchanged", "duplicate", "failure")
    }
    assert rows == {"inserted": 27, "updated": 0, "unchanged": 0, "duplicate": 2, "failure": 3}
    chunks = moved("importq_chunk_duration_seconds_count", dataset="entrances")
    assert chunks == accepted["totalChunks"]
    assert moved("importq_chunk_duration_seconds_sum", dataset="entrances") > 0
    staged = {"dataset": "entrances", "format": "csv"}
    assert moved("importq_staging_bytes_total", **staged) == len(body)
    assert moved("importq_staging_duration_seconds_count", **staged) == 1
    assert moved("importq_deliveries_total", channel="notification", outcome="created") == 1
    upload = {"route": IMPORT_ROUTE, "method": "POST", "status": "202"}
    assert moved("importq_http_request_duration_seconds_count", **upload) == 1
    read = {"route": "/api/v1/jobs/{batch_id}", "method": "GET", "status": "200"}
    assert moved("importq_http_request_duration_seconds_count", **read) >= 1
    routes = {
        dict(labels).get("route") for name, labels in after if name.startswith("importq_http")
    }
    assert not [route for route in routes if route and accepted["batchId"] in route]

    # Read from the database at the scrape: the batch, the queues, and this process's pools.
    assert after[_key("importq_database_up")] == 1
    assert after[_key("importq_batches", dataset="entrances", status="completed")] == 1
    for queue in QUEUES:
        for status in ("todo", "doing"):
            assert _key("importq_queue_jobs", queue=queue, status=status) in after
        assert after[_key("importq_queue_oldest_job_age_seconds", queue=queue)] >= 0
    for pool in ("main", "auth"):
        for state in ("size", "available", "max"):
            assert after[_key("importq_db_pool_connections", pool=pool, state=state)] >= 0
        assert _key("importq_db_pool_requests_waiting", pool=pool) in after
    assert after[_key("importq_db_pool_connections", pool="main", state="max")] == 60


# A job summary's counters, by the outcome the reports name.
_REPORTED = {
    "inserted": "inserted",
    "updated": "updated",
    "unchanged": "unchanged",
    "deleted": "deleted",
    "restored": "restored",
    "duplicates": "duplicate",
    "failures": "failure",
}


def _rows_counted() -> dict[tuple[str, str], float]:
    """This process's importq_rows_total of entrances, by run and outcome."""
    return {
        (run, outcome): REGISTRY.get_sample_value(
            "importq_rows_total", {"dataset": "entrances", "run": run, "outcome": outcome}
        )
        or 0.0
        for run in ("import", "dry_run")
        for outcome in _REPORTED.values()
    }


def _counted_since(before: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    return {key: n - before[key] for key, n in _rows_counted().items() if n != before[key]}


def _as_reported(job: dict[str, Any], run: str = "import") -> dict[tuple[str, str], float]:
    summary = job["result"]["summary"]
    return {(run, outcome): summary[name] for name, outcome in _REPORTED.items() if summary[name]}


async def test_rows_are_counted_once_by_the_outcome_their_reports_give(
    client: httpx.AsyncClient, services: Services
) -> None:
    """A dry run under its own run; a checked batch once, when written (not also as its
    chunks checked it) or, held, as failures; a cancel's rows as failures, by the cancel."""
    valid = [entrance(f"counted-{i}") for i in range(25)]

    async def finished(
        rows: list[dict[str, str]], **params: str
    ) -> tuple[dict[str, Any], dict[tuple[str, str], float]]:
        before = _rows_counted()
        accepted = await accepted_rows(client, rows, **params)
        async with running_worker(services):
            job = await wait_for_batch(client, accepted["batchId"])
            run = "dry_run" if "dryRun" in params else "import"

            async def counted() -> bool:  # after the final commit, which the job shows
                return _counted_since(before) == _as_reported(job, run)

            await until(counted, seconds=10)
        return job, _counted_since(before)

    job, counted = await finished(valid, dryRun="true")
    assert counted == _as_reported(job, "dry_run") == {("dry_run", "inserted"): 25}
    job, counted = await finished(valid, dryRun="true", onError="atomic")
    assert counted == _as_reported(job, "dry_run") == {("dry_run", "inserted"): 25}
    job, counted = await finished([*valid, entrance("north", latitude="north")], onError="atomic")
    assert job["status"] == "failed"
    assert counted == _as_reported(job) == {("import", "failure"): 26}
    job, counted = await finished(valid, onError="atomic")
    assert counted == _as_reported(job) == {("import", "inserted"): 25}

    before = _rows_counted()
    accepted = await accepted_rows(client, [entrance(f"cancelled-{i}") for i in range(25)])
    assert (await client.post(f"/api/v1/jobs/{accepted['batchId']}/cancel")).status_code == 202
    assert _counted_since(before) == {("import", "failure"): 25}  # by the cancel itself
    async with running_worker(services):
        job = await wait_for_batch(client, accepted["batchId"])
        await asyncio.sleep(0.5)  # nothing more is counted as the batch finishes
    assert job["status"] == "cancelled"
    assert _counted_since(before) == _as_reported(job) == {("import", "failure"): 25}


async def test_a_waiting_job_shows_in_its_queue_with_its_age(
    client: httpx.AsyncClient, services: Services
) -> None:
    """With no worker running, the batch's chunk jobs wait on the express queue."""
    posted = await client.post(
        "/api/v1/entrances/import-rows", json={"data": [entrance("waiting")]}
    )
    assert posted.status_code == 202, posted.text
    await asyncio.sleep(0.3)
    after = await _scrape(client)
    assert after[_key("importq_queue_jobs", queue="chunks-express", status="todo")] == 1
    assert after[_key("importq_queue_jobs", queue="chunks", status="todo")] == 0
    assert after[_key("importq_queue_oldest_job_age_seconds", queue="chunks-express")] >= 0.2
    assert after[_key("importq_queue_oldest_job_age_seconds", queue="chunks")] == 0
    assert after[_key("importq_batches", dataset="entrances", status="active")] == 1


async def test_a_queue_s_age_counts_from_when_its_job_became_due(
    app_client: httpx.AsyncClient, services: Services
) -> None:
    """A retried job is due from its scheduled_at, however long ago it was deferred; one
    scheduled for later is not due yet, and its queue waits on nothing."""
    async with services.pool.connection() as conn:
        for queue, due_in in (("messages", -100), ("webhooks", 3600)):
            await conn.execute(
                "INSERT INTO procrastinate_jobs (queue_name, task_name, args, scheduled_at) "
                "VALUES (%s, 'send_email', '{}', now() + make_interval(secs => %s))",
                [queue, due_in],
            )
    after = await _scrape(app_client)
    assert 100 <= after[_key("importq_queue_oldest_job_age_seconds", queue="messages")] < 110
    assert after[_key("importq_queue_oldest_job_age_seconds", queue="webhooks")] == 0
    assert after[_key("importq_queue_jobs", queue="webhooks", status="todo")] == 1


async def test_scrapes_share_one_state_query_on_the_main_pool(
    app_client: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty scrapes at once: one query, on the main pool, so that they never hold the
    connections authentication needs; the scrapes of the next STATE_SECONDS reuse it."""
    # Long enough that a loaded machine's twenty scrapes all fall within it.
    monkeypatch.setattr(metrics, "STATE_SECONDS", 60.0)
    read = metrics.read_state
    pools: list[object] = []

    async def slow_read(pool: Pool, outage: DatabaseOutage) -> list[metrics.StateRow] | None:
        pools.append(pool)
        await asyncio.sleep(0.2)  # the scrapes come while it runs
        return await read(pool, outage)

    monkeypatch.setattr(metrics, "read_state", slow_read)
    scraped = await asyncio.gather(*(_scrape(app_client) for _ in range(20)))
    assert all(s[_key("importq_database_up")] == 1 for s in scraped)
    assert pools == [services.pool] and services.pool is not services.auth_pool
    await _scrape(app_client)
    assert len(pools) == 1
    monkeypatch.setattr(metrics, "STATE_SECONDS", 0.0)  # the answer has aged out
    await _scrape(app_client)
    assert len(pools) == 2


async def test_a_metrics_token_closes_metrics_to_everyone_else(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(database_url, tmp_path / "data", metrics_token="scrape-me")
    async with open_services(settings) as services:
        _, user_token = await new_user(services, "alice")
        for refused in (None, "not-it", user_token):
            async with api_client(services, refused) as client:
                answer = await client.get("/metrics")
            assert answer.status_code == 401, refused
            assert answer.headers["www-authenticate"] == "Bearer"
            assert answer.json()["code"] == "metrics_token"
        async with api_client(services, "scrape-me") as client:
            assert _samples((await client.get("/metrics")).text)[_key("importq_database_up")] == 1


async def test_a_metrics_token_beyond_ascii_opens_and_an_empty_one_is_none(
    database_url: str, tmp_path: Path
) -> None:
    """The header's bytes, as the client sent them, are compared with the token's UTF-8.
    IMPORTQ_METRICS_TOKEN= set empty leaves /metrics open, as unset does, rather than
    opening it to ``Bearer`` and nothing."""
    token = "grüße-令牌"
    settings = make_settings(database_url, tmp_path / "data", metrics_token=token)
    async with open_services(settings) as services, api_client(services, None) as client:
        sent = {b"Authorization": f"Bearer {token}".encode()}
        assert (await client.get("/metrics", headers=sent)).status_code == 200
        wrong = {b"Authorization": "Bearer grüße".encode()}
        assert (await client.get("/metrics", headers=wrong)).status_code == 401
    settings = make_settings(database_url, tmp_path / "data", metrics_token="")
    assert settings.metrics_token is None
    async with open_services(settings) as services, api_client(services, None) as client:
        assert (await client.get("/metrics")).status_code == 200


def test_processes_sharing_a_multiprocess_dir_count_together(
    database_url: str, tmp_path: Path
) -> None:
    """``serve --no-worker`` and a worker on one host, sharing PROMETHEUS_MULTIPROC_DIR:
    the API's /metrics counts the rows the worker's chunks did; the worker's own port
    answers the same counts, and its pool, behind the same token."""
    shared = tmp_path / "prometheus"
    shared.mkdir()
    env = {
        **os.environ,
        "IMPORTQ_DATABASE_URL": database_url,
        "IMPORTQ_DATA_DIR": str(tmp_path / "data"),
        "IMPORTQ_CHUNK_SIZE": "10",
        "IMPORTQ_METRICS_TOKEN": "scrape-me",
        "PROMETHEUS_MULTIPROC_DIR": str(shared),
    }
    metrics_port = free_port()
    scrape_headers = {"Authorization": "Bearer scrape-me"}
    with serving(env, tmp_path / "serve.log", "--no-worker") as (url, _):
        worker = start_worker(
            {**env, "IMPORTQ_METRICS_PORT": str(metrics_port)}, tmp_path / "w.log"
        )
        try:
            token = (tmp_path / "data" / "admin-token").read_text().strip()
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as api:
                posted = api.post("/api/v1/entrances/import-rows", json={"data": _rows()})
                assert posted.status_code == 202, posted.text
                batch_id = posted.json()["batchId"]
                deadline = time.monotonic() + 60
                while api.get(f"/api/v1/jobs/{batch_id}").json()["status"] != "completed":
                    assert worker.poll() is None, (tmp_path / "w.log").read_text()
                    assert time.monotonic() < deadline, "the batch did not complete"
                    time.sleep(0.1)
                assert api.get("/metrics").status_code == 401  # an API token is not the one
                served = _samples(api.get("/metrics", headers=scrape_headers).text)
            worker_url = f"http://127.0.0.1:{metrics_port}/metrics"
            assert httpx.get(worker_url).status_code == 401
            of_worker = _samples(httpx.get(worker_url, headers=scrape_headers).text)
        finally:
            stop_group(worker)
    counted = {"dataset": "entrances", "run": "import"}
    inserted = _key("importq_rows_total", outcome="inserted", **counted)
    failed = _key("importq_rows_total", outcome="failure", **counted)
    for samples in (served, of_worker):
        assert (samples[inserted], samples[failed]) == (27, 3)
    assert served[_key("importq_batches", dataset="entrances", status="completed")] == 1
    upload = {"route": IMPORT_ROUTE, "method": "POST", "status": "202"}
    assert served[_key("importq_http_request_duration_seconds_count", **upload)] == 1
    assert of_worker[_key("importq_db_pool_connections", pool="main", state="max")] > 0
    assert _key("importq_database_up") not in of_worker  # the API's to tell


class _Unwritable:
    """A metric whose file cannot be written, as under a PROMETHEUS_MULTIPROC_DIR gone,
    read-only or full: prometheus_client opens the file when a label set is first used."""

    def labels(self, *values: str) -> NoReturn:
        raise OSError(30, "Read-only file system", "/run/importq-metrics/counter_7.db")


async def test_a_metric_that_cannot_be_written_fails_none_of_the_work_it_counts(
    client: httpx.AsyncClient,
    worker: asyncio.Task[None],
    receiver: Receiver,
    services: Services,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every counting call fails: the upload is still answered 202 and kept, its chunks
    and its aggregation finish with no error, and its email and webhook are sent. The
    log says so once as a warning, then at debug."""
    for name in (
        "ROWS",
        "CHUNK_SECONDS",
        "STAGING_SECONDS",
        "STAGING_BYTES",
        "DELIVERIES",
        "RECOVERIES",
        "HTTP_SECONDS",
    ):
        monkeypatch.setattr(metrics, name, _Unwritable())
    monkeypatch.setattr(metrics, "_failures", itertools.count())
    caplog.set_level(logging.DEBUG, logger=metrics.__name__)
    posted = await client.post(
        "/api/v1/entrances/import-rows",
        params={"callbackUrl": receiver.url},
        content=csv_text(_rows()).encode(),
        headers={"Content-Type": "text/csv"},
    )
    assert posted.status_code == 202, posted.text
    batch_id = posted.json()["batchId"]
    job = await wait_for_batch(client, batch_id)
    assert (job["status"], job["lastError"]) == ("completed", None)
    assert job["result"]["summary"]["inserted"] == 27
    assert (services.settings.files_dir / "uploads" / batch_id / "upload.csv").is_file()

    async def delivered() -> bool:
        async with services.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT count(sent_at) FROM deliveries WHERE batch_id = %s", [batch_id]
            )
            row = await cursor.fetchone()
        return row is not None and row[0] == 2

    await until(delivered, seconds=30)
    said = [r for r in caplog.records if r.name == metrics.__name__]
    assert [r.levelno for r in said].count(logging.WARNING) == 1
    assert said[0].levelno == logging.WARNING and len(said) > 1
    assert "Read-only file system" in said[0].getMessage()


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_a_multiprocess_dir_that_is_no_folder_stops_the_start(
    command: str, database_url: str, tmp_path: Path
) -> None:
    """Refused at once, saying why, rather than started to lose every count."""
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for folder in (tmp_path / "missing", a_file):
        env = {
            **os.environ,
            "IMPORTQ_DATABASE_URL": database_url,
            "IMPORTQ_DATA_DIR": str(tmp_path / "data"),
            "PROMETHEUS_MULTIPROC_DIR": str(folder),
        }
        ended = run_importq(env, command, seconds=60)
        assert ended.returncode == 1, ended.stdout + ended.stderr
        assert f"PROMETHEUS_MULTIPROC_DIR={folder} is not a folder" in ended.stderr


def test_a_read_only_multiprocess_dir_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert metrics.multiprocess_dir_problem() is None

    def read_only(**_: object) -> NoReturn:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", read_only)
    assert metrics.multiprocess_dir_problem() == (
        f"PROMETHEUS_MULTIPROC_DIR={tmp_path} is not writable: Read-only file system"
    )
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    assert metrics.multiprocess_dir_problem() is None


def test_a_worker_whose_metrics_port_is_taken_stops_saying_so(
    database_url: str, tmp_path: Path
) -> None:
    """Two workers of a host given one IMPORTQ_METRICS_PORT: the second stops at once,
    naming the address (IMPORTQ_METRICS_HOST's) and the remedy, rather than a traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.2", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            **os.environ,
            "IMPORTQ_DATABASE_URL": database_url,
            "IMPORTQ_DATA_DIR": str(tmp_path / "data"),
            "IMPORTQ_METRICS_HOST": "127.0.0.2",
            "IMPORTQ_METRICS_PORT": str(port),
        }
        ended = run_importq(env, "worker", seconds=60)
    assert ended.returncode == 1, ended.stdout + ended.stderr
    assert f"importq: cannot serve the metrics on 127.0.0.2:{port}: Address already in use" in (
        ended.stderr
    )
    assert "IMPORTQ_METRICS_PORT per instance (/etc/importq/worker-<n>.env)" in ended.stderr
