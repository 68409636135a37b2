"""An XLSX upload stages the same rows whether it is read in a thread or by a process of
its own, and the process's refusals reach the client as the thread's do."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from psycopg import sql

from conftest import make_settings, new_user
from helpers import HEADER, xlsx_bytes
from importq.api import imports
from importq.config import Settings
from importq.ingest import xlsx_process
from importq.ingest.chunk_bounds import ChunkSizing
from importq.ingest.limits import UploadLimits
from importq.ingest.parsed_upload import ParsedUpload, within_limits
from importq.ingest.staged_table import StagedTable
from importq.ingest.staging import BatchRequest, stage_batch
from importq.ingest.xlsx_process import read_xlsx_in_process
from importq.ingest.xlsx_reader import XLSX_TYPE, read_xlsx
from importq.rules.datasets import load_datasets
from importq.services import Services

ENTRANCES = load_datasets()["entrances"]
LIMITS = UploadLimits()


def _entrance(ident: str, **cells: Any) -> list[Any]:
    values: dict[str, Any] = {name: None for name in HEADER}
    values.update({"id": ident, "rdf:type": "Cave", "gn:countryCode": "FR"})
    values.update({"w3geo:latitude": 45.5, "w3geo:longitude": 5.25, **cells})
    return [values[name] for name in HEADER]


def _hand_made_sheet(path: Path) -> Path:
    """A workbook openpyxl wrote, its sheet replaced: a NUL escape in a text, and a row
    missing from the XML."""
    path.write_bytes(xlsx_bytes({"data": [HEADER, _entrance("h1")]}))
    cells = "".join(
        f'<c r="{chr(65 + n)}{{row}}" t="inlineStr"><is><t>{{{n}}}</t></is></c>'
        for n in range(len(HEADER))
    )
    rows = [
        cells.replace("{row}", "1").format(*HEADER),
        cells.replace("{row}", "2").format("n1", "Cave", "a_x0000_b", "", "FR", "45", "5", ""),
        cells.replace("{row}", "4").format("n2", "Cave", "", "", "FR", "-45.5", "5", "fra"),
    ]
    sheet = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
        "<sheetData>"
        + "".join(
            f'<row r="{number}">{row}</row>' for number, row in zip((1, 2, 4), rows, strict=True)
        )
        + "</sheetData></worksheet>"
    )
    copy = path.with_suffix(".hand.xlsx")
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(copy, "w") as target:
        for member in source.infolist():
            data = source.read(member)
            if member.filename == "xl/worksheets/sheet1.xml":
                data = sheet.encode()
            target.writestr(member, data)
    return copy


WORKBOOKS: dict[str, Any] = {
    "plain": lambda path: path.write_bytes(
        xlsx_bytes({"entrances": [HEADER, *(_entrance(f"p{n}") for n in range(50))]})
    ),
    "types": lambda path: path.write_bytes(
        xlsx_bytes(
            {
                "data": [
                    HEADER,
                    _entrance("t1", **{"dct:rights/cc:attributionName": dt.date(2024, 1, 15)}),
                    _entrance("t2", **{"dct:rights/cc:attributionName": dt.datetime(2024, 2, 1)}),
                    _entrance("t3", **{"rdfs:label/dc:language": True}),
                    _entrance("t4", **{"w3geo:latitude": 0.1 + 0.2, "w3geo:longitude": 10**7}),
                    [],
                    _entrance("t1", **{"dct:rights/cc:attributionName": dt.time(8, 15)}),
                    ["short"],
                    [*_entrance("ragged"), None, "beyond"],
                ]
            }
        )
    ),
    "header after blank rows": lambda path: path.write_bytes(
        xlsx_bytes({"data": [[], [None, None], HEADER, _entrance("s1")], "more": [["other"]]})
    ),
}


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url, tmp_path, max_cell_chars=40)


async def _staged_rows(services: Services, upload: ParsedUpload, user_id: int) -> list[Any]:
    request = BatchRequest(dataset=ENTRANCES, initiator_id=user_id, format="xlsx")
    async with services.pool.connection() as conn:
        staged = await stage_batch(
            conn,
            request,
            within_limits(upload, LIMITS),
            sizing=ChunkSizing(10, services.settings.max_chunks),
            defer_chunks=services.queue.defer_chunks,
        )
        table = StagedTable.of(staged.batch_id, ENTRANCES, upload.header)
        cursor = await conn.execute(sql.SQL("SELECT * FROM {} ORDER BY line").format(table.name))
        return await cursor.fetchall()


@pytest.mark.parametrize("workbook", [*WORKBOOKS, "hand-made"])
async def test_both_readings_stage_the_same_rows(
    services: Services, tmp_path: Path, workbook: str
) -> None:
    path = tmp_path / "book.xlsx"
    if workbook == "hand-made":
        path = _hand_made_sheet(path)
    else:
        WORKBOOKS[workbook](path)
    user_id = (await new_user(services, "stager"))[0]
    with path.open("rb") as binary:
        in_thread = await _staged_rows(services, read_xlsx(binary, limits=LIMITS), user_id)
    async with contextlib.AsyncExitStack() as closed:
        binary = closed.enter_context(path.open("rb"))
        upload = await read_xlsx_in_process(binary, sheet=None, limits=LIMITS, closed=closed)
        assert upload is not None
        in_child = await _staged_rows(services, upload, user_id)
    assert in_child == in_thread and len(in_child) > 0


async def test_a_refusal_of_the_reading_process_reaches_the_client(
    client: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    long = "x" * (services.settings.max_cell_chars + 1)
    body = xlsx_bytes({"data": [HEADER, _entrance("r1"), _entrance("r2"), _entrance(long)]})
    answers = []
    for process_bytes in (1 << 40, 0):  # in a thread, then in a process of its own
        monkeypatch.setattr(xlsx_process, "PROCESS_BYTES", process_bytes)
        answer = await client.post(
            "/api/v1/entrances/import-rows", content=body, headers={"content-type": XLSX_TYPE}
        )
        answers.append((answer.status_code, answer.json()))
    assert answers[0] == answers[1]
    assert answers[0][0] == 413 and answers[0][1]["code"] == "cell_too_long"
    assert answers[0][1]["line"] == 4
    async with services.pool.connection() as conn:
        cursor = await conn.execute("SELECT count(*) FROM batches")
        assert await cursor.fetchone() == (0,)


async def test_a_big_upload_read_by_a_process_completes(
    client: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(xlsx_process, "PROCESS_BYTES", 0)
    body = xlsx_bytes({"data": [HEADER, *(_entrance(f"b{n}") for n in range(300))]})
    answer = await client.post(
        "/api/v1/entrances/import-rows", content=body, headers={"content-type": XLSX_TYPE}
    )
    assert answer.status_code == 202, answer.text
    assert answer.json()["totalRows"] == 300


async def test_an_upload_finding_no_child_free_is_read_in_process(
    client: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(xlsx_process, "PROCESS_BYTES", 0)
    monkeypatch.setattr(xlsx_process, "MAX_CHILDREN", 1)
    # Which reading each upload got: a child's upload, or None (no child free).
    readings: list[str] = []

    async def read_xlsx_in_process_seen(*args: Any, **options: Any) -> ParsedUpload | None:
        upload = await read_xlsx_in_process(*args, **options)
        readings.append("in process" if upload is None else "child")
        return upload

    monkeypatch.setattr(imports, "read_xlsx_in_process", read_xlsx_in_process_seen)

    async def send(prefix: str, count: int) -> httpx.Response:
        body = xlsx_bytes({"data": [HEADER, *(_entrance(f"{prefix}{n}") for n in range(count))]})
        return await client.post(
            "/api/v1/entrances/import-rows", content=body, headers={"content-type": XLSX_TYPE}
        )

    # The first to be read holds the one child while the other is read.
    answers = await asyncio.gather(send("a", 300), send("b", 200))
    assert sorted(readings) == ["child", "in process"]
    for answer, prefix, count in zip(answers, "ab", (300, 200), strict=True):
        assert answer.status_code == 202, answer.text
        assert answer.json()["totalRows"] == count
        table = StagedTable.of(uuid.UUID(answer.json()["batchId"]), ENTRANCES, HEADER)
        async with services.pool.connection() as conn:
            cursor = await conn.execute(
                sql.SQL("SELECT line, problem, c0 FROM {} ORDER BY line").format(table.name)
            )
            staged = await cursor.fetchall()
        assert staged == [(n + 2, None, f"{prefix}{n}") for n in range(count)]
    # Both ended: the child's place is free again.
    readings.clear()
    assert (await send("c", 10)).status_code == 202
    assert readings == ["child"]
