"""A big batch's reports, read in parts: ranges of lines, each on a connection of its own.

The later parts' files are appended to the first's. The reports must be those one query
writes, byte for byte: one BOM and one header a file, every line once, in line order.
"""

from __future__ import annotations

import itertools
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from accounting import assert_reports_account_for_every_row, report_rows
from conftest import make_settings
from helpers import csv_text, download, entrance, running_worker, wait_for_batch
from importq.config import Settings
from importq.pipeline import aggregation, batches
from importq.pipeline.aggregation import Lines, report_parts
from importq.pipeline.chunk_processing import CANCELLED, process_chunk
from importq.pipeline.reports import BLOCK_LINES
from importq.services import Services

ROWS = 13_000  # four blocks of lines: three parts with rows in each


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url, tmp_path / "data", chunk_size=1_000)


def _rows() -> list[dict[str, str]]:
    """Valid rows, some failing (a latitude out of range, a formula, a quoted comma) and
    some repeating an earlier key."""
    rows = []
    for n in range(ROWS):
        row = entrance(f"e{n % 12_500}", latitude="-91" if n % 97 == 0 else f"-{n % 89}.5")
        row["rdfs:label"] = "=cmd" if n % 13 == 0 else f"Entrance {n}, with a comma"
        rows.append(row)
    return rows


@given(st.integers(1, 5_000_000), st.integers(1, 8))
def test_parts_cover_every_line_once_and_cut_at_blocks(total: int, count: int) -> None:
    parts = report_parts(total, count)
    assert parts[0].first == 0 and parts[-1].end is None
    assert all(a.end == b.first for a, b in itertools.pairwise(parts))
    assert all(p.first % BLOCK_LINES == 0 and p.first < (p.end or p.first + 1) for p in parts)
    assert len(parts) <= count


async def test_a_big_cancelled_batch_is_reported_in_parts_as_in_one(
    client: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Half the chunks run, then a cancel: the aggregation reads the reports in parts
    (the successes, duplicates and failures the chunks stored, and the cancelled chunks'
    failures made from their staged rows). Written again in one part, they are the same."""
    response = await client.post(
        "/api/v1/entrances/import-rows",
        content=csv_text(_rows()),
        headers={"Content-Type": "text/csv"},
    )
    assert response.status_code == 202, response.text
    batch_id = uuid.UUID(response.json()["batchId"])
    async with services.pool.connection() as conn:
        total_chunks = (await batches.get_batch(conn, batch_id) or {})["total_chunks"]
        for chunk_no in range(total_chunks // 2):
            await process_chunk(conn, services.queue, services.datasets, batch_id, chunk_no)
    assert (await client.post(f"/api/v1/jobs/{batch_id}/cancel")).status_code == 202

    parts: list[Lines] = []
    write_part = aggregation._write_part

    async def recorded(*args: Any) -> tuple[int, int]:
        parts.append(args[4])
        return await write_part(*args)

    monkeypatch.setattr(aggregation, "_write_part", recorded)
    monkeypatch.setattr(aggregation, "PARTS_FROM_ROWS", ROWS)
    async with running_worker(services):
        job = await wait_for_batch(client, str(batch_id), until=("cancelled",))
    assert parts == [Lines(0, 4_096), Lines(4_096, 8_192), Lines(8_192, None)]

    await assert_reports_account_for_every_row(client, job, total=ROWS)
    reports = await report_rows(client, job)
    assert all(reports.values())
    for rows in reports.values():
        lines = [int(row[0]) for row in rows]
        assert lines == sorted(lines)
    assert CANCELLED in {row[1] for row in reports["failures"]}
    stored = {}
    for kind, url in job["result"]["reportUrls"].items():
        stored[kind] = await download(client, url)
        assert stored[kind].count(b"\xef\xbb\xbf") == 1 and stored[kind].startswith(b"\xef\xbb")

    # The same batch's reports written again, in one part.
    monkeypatch.setattr(aggregation, "PARTS_FROM_ROWS", ROWS + 1)
    async with services.pool.connection() as conn:
        batch = await batches.get_batch(conn, batch_id)
        assert batch is not None
        dataset = await services.datasets.judging(conn, batch)
    directory = services.settings.data_dir / "one-part"
    directory.mkdir()
    parts.clear()
    written = await aggregation._write_reports(services, batch, dataset, directory)
    assert parts == [Lines(0, None)]
    assert {kind: path.read_bytes() for kind, path in written.items()} == stored
