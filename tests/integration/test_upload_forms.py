"""Every upload form through the API: raw CSV/TSV/XLSX bodies and multipart files, with
the encoding, delimiter and sheet options; what the batch then reports."""

from __future__ import annotations

import httpx
import pytest

from helpers import HEADER, download, entrance, read_csv_report, summary, wait_for_batch, xlsx_bytes
from importq.services import Services

pytestmark = pytest.mark.usefixtures("worker")

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def _row(ident: str, latitude: object = 45.5) -> list[object]:
    values = entrance(ident)
    return [latitude if name == "w3geo:latitude" else values[name] for name in HEADER]


async def test_a_semicolon_windows_1252_csv_is_detected_and_imported(
    client: httpx.AsyncClient,
) -> None:
    lines = [
        ";".join(HEADER),
        ";".join(entrance("é1").values()),
        ";".join(entrance("€2", latitude="95").values()),
    ]
    body = ("\r\n".join(lines) + "\r\n").encode("cp1252")
    response = await client.post(
        "/api/v1/entrances/import-rows", content=body, headers={"Content-Type": "text/csv"}
    )
    assert response.status_code == 202, response.text
    job = await wait_for_batch(client, response.json()["batchId"])
    assert job["result"]["summary"] == summary(1, 0, 1)
    successes = read_csv_report(await download(client, job["result"]["reportUrls"]["success"]))
    assert successes[1][1] == "é1"
    failures = read_csv_report(await download(client, job["result"]["reportUrls"]["failures"]))
    assert failures[1][2] == "€2"


async def test_encoding_and_delimiter_can_be_given(client: httpx.AsyncClient) -> None:
    text = "|".join(HEADER) + "\n" + "|".join(entrance("ñ1").values()) + "\n"
    response = await client.post(
        "/api/v1/entrances/import-rows",
        content=text.encode("latin-1"),
        params={"encoding": "latin-1", "delimiter": "pipe"},
        headers={"Content-Type": "text/csv"},
    )
    assert response.status_code == 202, response.text
    job = await wait_for_batch(client, response.json()["batchId"])
    assert job["result"]["summary"]["successes"] == 1


@pytest.mark.parametrize(
    ("params", "code"),
    [({"encoding": "klingon"}, "unknown_encoding"), ({"delimiter": "#"}, "bad_delimiter")],
)
async def test_unusable_options_are_refused(
    client: httpx.AsyncClient, params: dict[str, str], code: str
) -> None:
    response = await client.post(
        "/api/v1/entrances/import-rows",
        content=b"a,b\n1,2\n",
        params=params,
        headers={"Content-Type": "text/csv"},
    )
    assert response.status_code == 400 and response.json()["code"] == code


async def test_a_raw_xlsx_body_imports_its_first_sheet(client: httpx.AsyncClient) -> None:
    body = xlsx_bytes(
        {
            "entrances": [HEADER, _row("x1"), [], _row("x2", latitude=91.5)],
            "other": [["id"], ["ignored"]],
        }
    )
    response = await client.post(
        "/api/v1/entrances/import-rows",
        content=body,
        params={"fileName": "caves.xlsx"},
        headers={"Content-Type": XLSX},
    )
    assert response.status_code == 202, response.text
    job = await wait_for_batch(client, response.json()["batchId"])
    assert job["format"] == "xlsx" and job["fileName"] == "caves.xlsx"
    failures = read_csv_report(await download(client, job["result"]["reportUrls"]["failures"]))
    # Sheet row numbers: header 1, x1 on 2, a blank row 3, x2 on 4.
    assert failures[1][:2] == ["4", "w3geo:latitude: 91.5 is above 90"]


async def test_a_multipart_xlsx_with_a_sheet_named(client: httpx.AsyncClient) -> None:
    body = xlsx_bytes({"notes": [["nothing here"]], "data": [HEADER, _row("s1"), _row("s2")]})
    response = await client.post(
        "/api/v1/entrances/import-rows",
        params={"sheet": "data"},
        files={"file": ("book.xlsx", body, XLSX)},
    )
    assert response.status_code == 202, response.text
    job = await wait_for_batch(client, response.json()["batchId"])
    assert job["result"]["summary"]["successes"] == 2 and job["fileName"] == "book.xlsx"

    unknown = await client.post(
        "/api/v1/entrances/import-rows",
        params={"sheet": "nope"},
        files={"file": ("book.xlsx", body, XLSX)},
    )
    assert unknown.status_code == 400
    assert unknown.json()["code"] == "unknown_sheet"
    assert unknown.json()["sheets"] == ["notes", "data"]


async def test_a_multipart_tsv(client: httpx.AsyncClient, services: Services) -> None:
    text = "\t".join(HEADER) + "\n" + "\t".join(entrance("t1").values()) + "\n"
    response = await client.post(
        "/api/v1/entrances/import-rows", files={"file": ("caves.tsv", text.encode(), "text/plain")}
    )
    assert response.status_code == 202, response.text
    job = await wait_for_batch(client, response.json()["batchId"])
    assert job["result"]["summary"]["successes"] == 1
    kept = services.settings.files_dir / "uploads" / job["batchId"] / "upload.csv"
    assert kept.read_bytes() == text.encode()  # multipart uploads are kept too


async def test_unknown_columns_are_ignored_and_listed_as_a_warning(
    client: httpx.AsyncClient,
) -> None:
    text = (
        ",".join([*HEADER, "colour", "Depth"])
        + "\n"
        + ",".join([*entrance("k1").values(), "red", "12"])
        + "\n"
    )
    response = await client.post(
        "/api/v1/entrances/import-rows", content=text.encode(), headers={"Content-Type": "text/csv"}
    )
    job = await wait_for_batch(client, response.json()["batchId"])
    assert job["warnings"] == ["Columns not in dataset entrances were ignored: colour, Depth."]
    assert job["result"]["summary"]["successes"] == 1


async def test_headers_match_trimmed_case_insensitively_and_ragged_rows_fail_alone(
    client: httpx.AsyncClient,
) -> None:
    header = [f"  {name.upper()} " if name == "id" else name for name in HEADER]
    good = list(entrance("h1").values())
    text = (
        "\n".join(
            [
                ",".join(header),
                ",".join(good),
                ",".join([*good[:-1]]),
                ",".join([*entrance("h3").values(), "x", "y"]),
            ]
        )
        + "\n"
    )
    response = await client.post(
        "/api/v1/entrances/import-rows", content=text.encode(), headers={"Content-Type": "text/csv"}
    )
    assert response.status_code == 202, response.text
    job = await wait_for_batch(client, response.json()["batchId"])
    failures = read_csv_report(await download(client, job["result"]["reportUrls"]["failures"]))
    assert [(r[0], r[1]) for r in failures[1:]] == [
        ("3", "expected 8 fields, found 7"),
        ("4", "expected 8 fields, found 10"),
    ]
    assert failures[0][2] == "  ID "  # the header exactly as uploaded
    assert job["result"]["summary"]["successes"] == 1
