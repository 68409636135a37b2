"""Shared test helpers: entrance rows, CSV text, API clients, waiting for a batch."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx
from psycopg import AsyncConnection, sql

from importq.ingest.json_rows import read_json_rows
from importq.ingest.parsed_upload import ParsedUpload
from importq.ingest.staged_table import results_table
from importq.pipeline.dataset_versions import publish, publish_files
from importq.rules.datasets import Dataset, dataset_sources

if TYPE_CHECKING:
    from importq.services import Services

HEADER = [
    "id",
    "rdf:type",
    "dct:rights/cc:attributionName",
    "dct:rights/karstlink:licenseType",
    "gn:countryCode",
    "w3geo:latitude",
    "w3geo:longitude",
    "rdfs:label/dc:language",
]


def entrance(
    ident: str,
    *,
    author: str = "FFS",
    latitude: str = "45.5",
    longitude: str = "5.25",
    country: str = "FR",
    **extra: str,
) -> dict[str, str]:
    row = {
        "id": ident,
        "rdf:type": "karstlink:UndergroundCavity",
        "dct:rights/cc:attributionName": author,
        "dct:rights/karstlink:licenseType": "CC-BY-SA",
        "gn:countryCode": country,
        "w3geo:latitude": latitude,
        "w3geo:longitude": longitude,
        "rdfs:label/dc:language": "fra",
    }
    row.update(extra)
    return row


@contextlib.asynccontextmanager
async def running_worker(services: Services, concurrency: int = 4) -> AsyncIterator[None]:
    """A queue worker for part of a test (the ``worker`` fixture lasts the whole test)."""
    from importq.worker.tasks import run_worker

    task = asyncio.create_task(run_worker(services, concurrency=concurrency))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def json_upload(rows: list[Any]) -> ParsedUpload:
    """``rows`` read as the body ``{"data": rows}`` is."""
    return read_json_rows(io.BytesIO(json.dumps({"data": rows}).encode()))


def csv_text(rows: list[dict[str, str]], header: list[str] | None = None) -> str:
    out = io.StringIO()
    columns = header or list(rows[0])
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def xlsx_bytes(sheets: Mapping[str, Sequence[Sequence[object]]]) -> bytes:
    """A workbook with these sheets, in order, each with these rows."""
    from openpyxl import Workbook  # type: ignore[import-untyped]

    book = Workbook()
    book.remove(book.active)
    for title, rows in sheets.items():
        sheet = book.create_sheet(title)
        for row in rows:
            sheet.append(row)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def read_csv_report(raw: bytes) -> list[list[str]]:
    assert raw.startswith(b"\xef\xbb\xbf"), "reports start with a UTF-8 BOM"
    text = raw.decode("utf-8-sig")
    return list(csv.reader(io.StringIO(text, newline="")))


async def until(condition: Callable[[], Awaitable[Any]], seconds: float = 60) -> None:
    """Wait until ``condition()`` holds, checking every 50 ms; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not await condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.05)


async def wait_for_batch(
    client: httpx.AsyncClient,
    batch_id: str,
    *,
    until: tuple[str, ...] = ("completed", "failed", "cancelled"),
    seconds: float = 60,
) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        response = await client.get(f"/api/v1/jobs/{batch_id}")
        response.raise_for_status()
        job: dict[str, Any] = response.json()
        if job["status"] in until:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch_id} still {job['status']}: {job}")
        await asyncio.sleep(0.1)


async def post_rows(
    client: httpx.AsyncClient,
    rows: list[dict[str, str]],
    dataset: str = "entrances",
    **params: str,
) -> httpx.Response:
    return await client.post(f"/api/v1/{dataset}/import-rows", params=params, json={"data": rows})


async def accepted_rows(
    client: httpx.AsyncClient,
    rows: list[dict[str, str]],
    dataset: str = "entrances",
    **params: str,
) -> dict[str, Any]:
    """POST the rows as JSON with the query ``params``; the 202's body."""
    answer = await post_rows(client, rows, dataset, **params)
    assert answer.status_code == 202, answer.text
    return dict(answer.json())


async def imported(
    client: httpx.AsyncClient,
    rows: list[dict[str, str]],
    dataset: str = "entrances",
    **params: str,
) -> dict[str, Any]:
    """POST the rows (202), then wait for the batch to end (a worker must run); its job."""
    accepted = await accepted_rows(client, rows, dataset, **params)
    return await wait_for_batch(client, accepted["batchId"])


async def imported_by_a_worker(
    client: httpx.AsyncClient, services: Services, rows: list[dict[str, str]], **params: str
) -> dict[str, Any]:
    """As :func:`imported` into entrances, a worker running only once the rows are in."""
    accepted = await accepted_rows(client, rows, **params)
    async with running_worker(services):
        return await wait_for_batch(client, accepted["batchId"])


async def report_records(
    client: httpx.AsyncClient, job: dict[str, Any], kind: str
) -> list[dict[str, str]]:
    """A finished job's ``kind`` report (success, duplicates, failures), a dict a line by
    its header; no lines when the report was not written."""
    url = job["result"]["reportUrls"][kind]
    if url is None:
        return []
    header, *rows = read_csv_report(await download(client, url))
    return [dict(zip(header, row, strict=True)) for row in rows]


async def download(client: httpx.AsyncClient, url: str) -> bytes:
    response = await client.get(url.removeprefix("http://importq.test"))
    response.raise_for_status()
    return response.content


class Receiver:
    """A minimal HTTP server on loopback that answers with the given statuses in turn.

    ``answers`` are whole raw answers, used before the statuses, in turn. With
    ``trickle`` set, an answer is written one byte every ``trickle`` seconds.
    """

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.answers: list[bytes] = []
        self.trickle = 0.0
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")[1:]
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines if x)
        }
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.requests.append((headers, body))
        status = self.statuses.pop(0) if self.statuses else 200
        answer = (
            self.answers.pop(0)
            if self.answers
            else (f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
        )
        # The client may hang up first: a cut-off answer is what some tests are after.
        with contextlib.suppress(ConnectionError):
            pieces = [answer[i : i + 1] for i in range(len(answer))] if self.trickle else [answer]
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(self.trickle)
            writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/import"


BASE_URL = "http://importq.test"


@contextlib.asynccontextmanager
async def api_client(services: Services, token: str | None) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the API of ``services``, with ``token`` (or none)."""
    from importq.api.app import create_app

    app = create_app(services.settings)
    app.state.services = services
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=BASE_URL, headers=headers
    ) as client:
        yield client


async def row_results(conn: AsyncConnection[Any], batch_id: uuid.UUID) -> list[tuple[Any, ...]]:
    """A batch's row results as (line, outcome, message), in line order."""
    cursor = await conn.execute(
        sql.SQL(
            "SELECT line, outcome, message FROM {}, unnest(lines, messages) AS r(line, message)"
            " ORDER BY line"
        ).format(results_table(batch_id))
    )
    return await cursor.fetchall()


def quoted_entrances() -> list[dict[str, str]]:
    """Quoted line feeds and doubled quotes on both sides of the middle, a key repeated
    across it, a failure in each half."""
    rows = []
    for i in range(60):
        extra = {"rdfs:label": f'Entrance "{i}"\nsecond line' if i % 7 == 0 else f"E{i}"}
        rows.append(entrance(f"p{i}", **extra))
    rows[5]["w3geo:latitude"] = "north"
    rows[50]["w3geo:longitude"] = "999"
    rows.append(entrance("p3", author="FFS"))  # a duplicate of line 5, in the second half
    return rows


def summary(
    successes: int,
    duplicates: int,
    failures: int,
    *,
    updated: int = 0,
    unchanged: int = 0,
    deleted: int = 0,
    restored: int = 0,
) -> dict[str, int]:
    """A job's ``summary``: the successes not updated, unchanged, deleted or restored
    were inserted."""
    return {
        "successes": successes,
        "duplicates": duplicates,
        "failures": failures,
        "inserted": successes - updated - unchanged - deleted - restored,
        "updated": updated,
        "unchanged": unchanged,
        "deleted": deleted,
        "restored": restored,
    }


async def published(services: Services, dataset: Dataset) -> Dataset:
    """``dataset``'s definition published as its next version (unchanged when it is the
    current one): how a test's own dataset, or its target table, reaches the database."""
    async with services.pool.connection() as conn:
        return (await publish(conn, dataset.name, dataset.definition)).dataset


async def publish_configured(services: Services) -> None:
    """Publish the datasets of the settings' datasets file, as ``importq migrate`` does:
    the template database was migrated with the built-in datasets alone."""
    async with services.pool.connection() as conn:
        await publish_files(conn, dataset_sources(services.settings.datasets_file))


async def judging(services: Services, batch: Mapping[str, Any]) -> Dataset:
    """The definition that judges ``batch`` (a batch row)."""
    async with services.pool.connection() as conn:
        return await services.datasets.judging(conn, batch)
