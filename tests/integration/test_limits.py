"""Upload limits: each refusal names the limit and its value, and leaves nothing behind."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import make_settings, new_user
from helpers import api_client, csv_text, entrance, post_rows
from importq.config import Settings
from importq.ingest.staged_table import SCHEMA
from importq.services import Services, open_services


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(
        database_url, tmp_path / "data", max_rows=3, max_columns=12, max_cell_chars=40
    )


async def _nothing_staged(services: Services) -> bool:
    """No batch, and no staged table (one is created per batch staged)."""
    async with services.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT (SELECT count(*) FROM batches)"
            " + (SELECT count(*) FROM pg_tables WHERE schemaname = %s)",
            (SCHEMA,),
        )
        row = await cursor.fetchone()
    return row is not None and row[0] == 0


async def _post_csv(client: httpx.AsyncClient, text: str) -> httpx.Response:
    return await client.post(
        "/api/v1/entrances/import-rows", content=text.encode(), headers={"Content-Type": "text/csv"}
    )


async def test_rows_past_the_limit_are_refused(
    client: httpx.AsyncClient, services: Services
) -> None:
    for response in (
        await post_rows(client, [entrance(f"r{i}") for i in range(4)]),
        await _post_csv(client, csv_text([entrance(f"r{i}") for i in range(4)])),
    ):
        assert response.status_code == 413
        assert response.json() == {
            "detail": "The upload has more than 3 data rows, the limit.",
            "code": "too_many_rows",
            "limit": 3,
        }
    assert await _nothing_staged(services)
    assert (await post_rows(client, [entrance(f"r{i}") for i in range(3)])).status_code == 202


async def test_a_header_wider_than_the_limit_is_refused(
    client: httpx.AsyncClient, services: Services
) -> None:
    row = entrance("w1", **{f"extra{i}": "x" for i in range(5)})
    response = await _post_csv(client, csv_text([row]))
    assert response.status_code == 413
    body = response.json()
    assert body["code"] == "too_many_columns" and body["limit"] == 12
    assert body["line"] == 1 and "more than 12 fields" in body["detail"]
    assert await _nothing_staged(services)


async def test_a_cell_longer_than_the_limit_is_refused_with_its_line(
    client: httpx.AsyncClient,
    services: Services,
) -> None:
    rows = [entrance("c1", **{"rdfs:label": "ok"}), entrance("c2", **{"rdfs:label": "x" * 41})]
    for response in (await post_rows(client, rows), await _post_csv(client, csv_text(rows))):
        assert response.status_code == 413, response.text
        body = response.json()
        assert body["code"] == "cell_too_long" and body["limit"] == 40 and body["line"] == 3
    assert await _nothing_staged(services)


async def test_a_cell_at_the_limit_in_characters_is_accepted_whatever_its_bytes(
    client: httpx.AsyncClient,
) -> None:
    """40 characters of two bytes each: the byte length is over the limit, the length
    is not (PostgreSQL's CSV reader stages it, its CHECK counts characters)."""
    row = entrance("wide", **{"rdfs:label": "é" * 40})
    response = await _post_csv(client, csv_text([row]))
    assert response.status_code == 202, response.text


BOUNDARY = "importq-limit"


def _body(form: str, rows: list[dict[str, str]], extra: bytes = b"") -> tuple[bytes, str]:
    """An upload of ``rows`` in ``form``, ``extra`` bytes longer, and its Content-Type."""
    if form == "json":
        return json.dumps({"data": rows}).encode() + extra, "application/json"
    text = csv_text(rows).encode() + extra
    if form == "csv":
        return text, "text/csv"
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="r.csv"\r\n'
        "Content-Type: text/csv\r\n\r\n"
    )
    body = head.encode() + text + f"\r\n--{BOUNDARY}--\r\n".encode()
    return body, f"multipart/form-data; boundary={BOUNDARY}"


def _open_spools(spool_dir: Path) -> int:
    """How many files this process holds open in the spool directory."""
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if str(spool_dir) in os.path.realpath(fd))


@pytest.mark.parametrize("form", ["csv", "json", "multipart"])
@pytest.mark.parametrize("streamed", [False, True])
async def test_a_body_one_byte_over_the_limit_is_refused_and_one_at_it_accepted(
    database_url: str,
    tmp_path: Path,
    form: str,
    streamed: bool,
) -> None:
    """Every form of body counts against the one byte limit as it arrives, sent whole
    or chunked (without a Content-Length); a refused body's spool is closed."""
    rows = [entrance("edge")]
    body, content_type = _body(form, rows)
    over, _ = _body(form, rows, extra=b" ")
    settings = make_settings(database_url, tmp_path / "edge", max_upload_bytes=len(body))

    async def parts(data: bytes) -> Any:
        yield data[: len(data) // 2]
        yield data[len(data) // 2 :]

    async with open_services(settings) as services:
        _, token = await new_user(services, "edge")
        async with api_client(services, token) as client:
            client.headers["Content-Type"] = content_type
            refused = await client.post(
                "/api/v1/entrances/import-rows", content=parts(over) if streamed else over
            )
            assert _open_spools(settings.spool_dir) == 0
            accepted = await client.post(
                "/api/v1/entrances/import-rows", content=parts(body) if streamed else body
            )
        assert refused.status_code == 413 and refused.json()["limit"] == len(body)
        assert accepted.status_code == 202, accepted.text
