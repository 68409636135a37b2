"""The process's log lines as a collector reads them: ``importq serve`` with
``IMPORTQ_LOG_FORMAT=json`` writes one JSON object a line, its access log's lines carry
the request's id, and every answer names that id."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import httpx

from helpers import entrance, wait_for_batch
from importq.operations import logs
from processes import serving


def test_serve_writes_json_lines_that_name_the_request(database_url: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "IMPORTQ_DATABASE_URL": database_url,
        "IMPORTQ_DATA_DIR": str(tmp_path / "data"),
        "IMPORTQ_LOG_FORMAT": "json",
    }
    log = tmp_path / "serve.log"
    with serving(env, log) as (url, _):
        token = (tmp_path / "data" / "admin-token").read_text().strip()
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
            answer = client.post(
                "/api/v1/entrances/import-rows",
                json={"data": [entrance("log-1")]},
                headers={"X-Request-ID": "upload-42"},
            )
            assert answer.status_code == 202 and answer.headers["x-request-id"] == "upload-42"
            chosen = client.get("/health", headers={"X-Request-ID": "not one"})
            assert len(chosen.headers["x-request-id"]) == 32  # a new one, not the header
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert lines and all({"time", "level", "logger", "message"} <= set(e) for e in lines)
    access = [e for e in lines if e["logger"] == "uvicorn.access"]
    upload = [e for e in access if "/import-rows" in e["message"]]
    assert upload and upload[0]["request_id"] == "upload-42" and upload[0]["user"] == "admin"
    assert "?" not in upload[0]["message"].split('"')[1]  # the path without its query


async def test_an_answer_names_its_request(client: httpx.AsyncClient) -> None:
    posted = await client.post(
        "/api/v1/entrances/import-rows",
        json={"data": [entrance("r-1")]},
        headers={"X-Request-ID": "abc-123"},
    )
    assert posted.headers["x-request-id"] == "abc-123"
    assert len((await client.get("/api/v1/jobs")).headers["x-request-id"]) == 32
    assert await wait_for_batch(client, posted.json()["batchId"], until=("active", "completed"))


def test_a_json_line_says_what_it_is_about() -> None:
    record = logging.LogRecord("importq.x", logging.WARNING, __file__, 1, "chunk %s", (3,), None)
    batch = logs.batch_id.set("b-1")
    chunk = logs.chunk_no.set(3)
    try:
        logs.ContextFilter().filter(record)
    finally:
        logs.chunk_no.reset(chunk)
        logs.batch_id.reset(batch)
    entry = json.loads(logs.JsonFormatter().format(record))
    assert entry["message"] == "chunk 3" and entry["level"] == "warning"
    assert (entry["batch_id"], entry["chunk_no"]) == ("b-1", 3)
    assert "request_id" not in entry
