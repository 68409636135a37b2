"""Job events (``GET /api/v1/jobs/{id}/events``), as clients get them: real
``importq serve`` processes over HTTP, two of them on one database so that a change made
by one reaches a stream on the other through PostgreSQL's LISTEN/NOTIFY."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from helpers import csv_text, entrance
from processes import free_port, serving, start_serve, wait_healthy

Event = tuple[int, dict[str, Any]]


def _env(database_url: str, data_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "IMPORTQ_DATABASE_URL": database_url,
        "IMPORTQ_DATA_DIR": str(data_dir),
        "IMPORTQ_CHUNK_SIZE": "5",
        "IMPORTQ_EVENTS_KEEP_ALIVE": "0.3",
    }


@pytest.fixture
def token(database_url: str, tmp_path: Path) -> str:
    created = subprocess.run(
        [sys.executable, "-m", "importq.cli", "users", "create", "watcher"],
        env=_env(database_url, tmp_path / "cli"),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return created.stdout.strip()


def _stream(url: str, token: str, batch_id: str, last: int | None = None) -> Iterator[Any]:
    """The stream's events as (revision, job) and its comments as strings, as they come."""
    headers = {"Authorization": f"Bearer {token}"}
    if last is not None:
        headers["Last-Event-ID"] = str(last)
    with httpx.stream(
        "GET", f"{url}/api/v1/jobs/{batch_id}/events", headers=headers, timeout=60
    ) as answer:
        assert answer.status_code == 200, answer.read()
        assert answer.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        for line in answer.iter_lines():
            if line.startswith(":"):
                yield line
            elif line:
                name, _, value = line.partition(": ")
                fields[name] = value
            elif fields:
                assert fields["event"] == "job"
                yield int(fields["id"]), json.loads(fields["data"])
                fields = {}


def _post(url: str, token: str, rows: int) -> str:
    body = csv_text([entrance(f"e{i}") for i in range(rows)])
    answer = httpx.post(
        f"{url}/api/v1/entrances/import-rows",
        content=body.encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "text/csv"},
        timeout=60,
    )
    assert answer.status_code == 202, answer.text
    return str(answer.json()["batchId"])


def test_a_stream_on_one_process_follows_a_batch_another_runs(
    database_url: str, tmp_path: Path, token: str
) -> None:
    # Each insert statement sleeps: the batch takes seconds, the stream sees it move.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_sleep(0.2); RETURN NULL; END $$"
        )
        conn.execute(
            "CREATE TRIGGER slow BEFORE INSERT ON entrances "
            "FOR EACH STATEMENT EXECUTE FUNCTION slow_insert()"
        )
    with (
        serving(_env(database_url, tmp_path / "a"), tmp_path / "a.log") as (first, _),
        serving(_env(database_url, tmp_path / "b"), tmp_path / "b.log") as (second, _),
    ):
        batch_id = _post(first, token, 60)
        stream = _stream(second, token, batch_id)
        seen = [next(stream)]  # the first event comes at once
        # While the batch's row is locked nothing of it changes: keep-alives come.
        with psycopg.connect(database_url) as holder:
            holder.execute("SELECT FROM batches WHERE id = %s FOR UPDATE", (batch_id,))
            while (item := next(stream)) != ": keep-alive":
                seen.append(item)
            holder.rollback()
        seen += list(stream)
        events: list[Event] = [e for e in seen if isinstance(e, tuple)]
        revisions = [revision for revision, _ in events]
        assert revisions == sorted(set(revisions))  # increasing, no repeats
        assert len(events) >= 3, seen  # the first at once, progress, the end
        processed = [job["progress"]["processedRows"] for _, job in events]
        assert processed == sorted(processed) and processed[-1] == 60
        assert events[-1][1]["status"] == "completed"

        # Resuming: from the last event, nothing new (204, EventSource stops); from an
        # earlier one, the batch as it is now, at once, and the end.
        resumed = httpx.get(
            f"{second}/api/v1/jobs/{batch_id}/events",
            headers={"Authorization": f"Bearer {token}", "Last-Event-ID": str(revisions[-1])},
        )
        assert resumed.status_code == 204
        again = [e for e in _stream(first, token, batch_id, revisions[0]) if isinstance(e, tuple)]
        assert again == [events[-1]]


def test_a_stopping_service_ends_its_streams(database_url: str, tmp_path: Path, token: str) -> None:
    """SIGTERM: the drain ends every open stream (uvicorn need not wait for them), and
    the client resumes elsewhere with Last-Event-ID."""
    env = {**_env(database_url, tmp_path / "s"), "IMPORTQ_SHUTDOWN_SECONDS": "2"}
    port = free_port()
    process = start_serve(env, tmp_path / "s.log", port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(process, url, tmp_path / "s.log")
        with psycopg.connect(database_url) as holder:
            # Nothing is written for the next batch until this lock goes: it stays active.
            holder.execute("LOCK TABLE entrances IN SHARE MODE")
            batch_id = _post(url, token, 10)
            stream = _stream(url, token, batch_id)
            first = next(stream)
            assert isinstance(first, tuple) and first[1]["status"] == "active"
            process.send_signal(signal.SIGTERM)
            rest = list(stream)  # ends, although the batch does not
            holder.rollback()
        assert all(isinstance(item, str) for item in rest)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_a_stream_ends_once_its_token_is_revoked(
    database_url: str, tmp_path: Path, token: str
) -> None:
    """Checked again at each keep-alive: a revoked token's stream ends, as its next
    request would be refused, though the batch goes on."""
    with serving(_env(database_url, tmp_path / "r"), tmp_path / "r.log") as (url, _):
        with psycopg.connect(database_url) as holder:
            holder.execute("LOCK TABLE entrances IN SHARE MODE")  # the batch stays active
            batch_id = _post(url, token, 10)
            stream = _stream(url, token, batch_id)
            first = next(stream)
            assert isinstance(first, tuple) and first[1]["status"] == "active"
            assert next(stream) == ": keep-alive"
            with psycopg.connect(database_url, autocommit=True) as admin:
                admin.execute("UPDATE api_tokens SET revoked_at = now()")
            rest = list(stream)  # ends within a keep-alive
            holder.rollback()
        assert all(item == ": keep-alive" for item in rest) and len(rest) <= 1
