"""Upload limits: each refusal names the limit and its value, and leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from conftest import make_settings
from helpers import csv_text, entrance, post_rows
from importq.config import Settings
from importq.services import Services


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(
        database_url, tmp_path / "data", max_rows=3, max_columns=12, max_cell_chars=40
    )


async def _nothing_staged(services: Services) -> bool:
    async with services.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT (SELECT count(*) FROM batches) + (SELECT count(*) FROM staged_rows)"
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
    assert "13 columns" in body["detail"]
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
