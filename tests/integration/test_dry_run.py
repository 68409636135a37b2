"""A dry run: the whole pipeline (row rules, duplicates in the file and against the
table, the table's own constraints) and nothing written to the target table; the
reports, notification, email and webhook say what an import would do."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from accounting import count
from helpers import download, entrance, imported, report_records, summary
from importq.services import Services

ROWS = [
    entrance("d1"),
    entrance("d2"),
    entrance("d1"),  # a duplicate in the file
    entrance("stored"),  # already in the table
    entrance("bad", latitude="95"),  # fails the row rules
    entrance("equator", latitude="0"),  # the table's own CHECK refuses it
]


async def _import(
    client: httpx.AsyncClient, rows: list[dict[str, str]], dry: bool
) -> dict[str, Any]:
    return await imported(client, rows, **({"dryRun": "true"} if dry else {}))


@pytest.mark.usefixtures("worker")
async def test_a_dry_run_reports_what_the_import_then_does_and_writes_nothing(
    client: httpx.AsyncClient, services: Services
) -> None:
    async with services.pool.connection() as conn:
        await conn.execute("ALTER TABLE entrances ADD CONSTRAINT no_equator CHECK (latitude <> 0)")
    await _import(client, [entrance("stored")], dry=False)
    before = await count(services, "SELECT count(*) FROM entrances")

    dry = await _import(client, ROWS, dry=True)
    assert dry["dryRun"] is True and dry["status"] == "completed"
    assert await count(services, "SELECT count(*) FROM entrances") == before
    real = await _import(client, ROWS, dry=False)
    assert real["dryRun"] is False
    assert dry["result"]["summary"] == real["result"]["summary"] == summary(2, 2, 2)
    # Same reports, line for line, but for the ids only a real import has.
    dry_rows, real_rows = (
        await report_records(client, dry, "success"),
        await report_records(client, real, "success"),
    )
    assert [r["targetId"] for r in dry_rows] == ["", ""]
    assert all(r["targetId"] for r in real_rows)
    assert [{**r, "targetId": ""} for r in real_rows] == dry_rows
    for kind in ("duplicates", "failures"):
        dry_report = await download(client, dry["result"]["reportUrls"][kind])
        assert dry_report == await download(client, real["result"]["reportUrls"][kind])

    notifications = (await client.get("/api/v1/notifications")).json()["items"]
    assert {n["batchId"]: n["payload"]["dryRun"] for n in notifications}[dry["batchId"]] is True
    subjects = [eml.read_bytes() for eml in services.settings.outbox_dir.glob("*.eml")]
    assert sum(b"Subject: Dry run: Entrances" in s for s in subjects) == 1


async def test_a_key_that_made_a_dry_run_does_not_make_an_import(
    client: httpx.AsyncClient,
) -> None:
    rows = {"data": [entrance("k1")]}
    key = {"Idempotency-Key": "upload-1"}
    first = await client.post(
        "/api/v1/entrances/import-rows", params={"dryRun": "true"}, json=rows, headers=key
    )
    assert first.status_code == 202
    again = await client.post("/api/v1/entrances/import-rows", json=rows, headers=key)
    assert (again.status_code, again.json()["code"]) == (422, "idempotency_key_reused")
