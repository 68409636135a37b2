"""``POST /api/v1/{dataset}/preview``: the header matched and the first rows judged, with
nothing staged."""

from __future__ import annotations

import httpx

from accounting import count
from helpers import csv_text, entrance, xlsx_bytes
from importq.api.preview import PARTIAL_BYTES
from importq.ingest.xlsx_reader import XLSX_TYPE
from importq.services import Services

LATITUDE = "  W3GEO:Latitude "  # matched as w3geo:latitude: case and spaces do not count


async def _preview(
    client: httpx.AsyncClient, body: bytes, content_type: str = "text/csv", **params: str
) -> httpx.Response:
    return await client.post(
        "/api/v1/entrances/preview",
        content=body,
        headers={"Content-Type": content_type},
        params=params,
    )


async def test_the_header_is_matched_and_each_refused_cell_named(
    client: httpx.AsyncClient, services: Services
) -> None:
    rows = [entrance(f"v{i}", colour="red") for i in range(30)]
    rows[1]["w3geo:latitude"] = "north"
    rows[2]["w3geo:longitude"] = "999"
    body = csv_text(rows).replace("w3geo:latitude", LATITUDE)
    answer = await _preview(client, body.encode())
    assert answer.status_code == 200, answer.text
    found = answer.json()
    header = found["header"]
    assert found["columns"][header.index(LATITUDE)] == "w3geo:latitude"
    assert found["columns"][header.index("colour")] is None
    assert found["unknown"] == ["colour"] and found["missing"] == [] and found["duplicated"] == []
    assert len(found["rows"]) == 20 and found["rows"][0]["line"] == 2
    latitude = str(header.index(LATITUDE))
    longitude = str(header.index("w3geo:longitude"))
    assert found["rows"][0]["problems"] == {}
    assert found["rows"][1]["problems"] == {latitude: 'w3geo:latitude: "north" is not a number'}
    assert found["rows"][2]["problems"] == {longitude: "w3geo:longitude: 999 is above 180"}
    assert await count(services, "SELECT count(*) FROM batches") == 0


async def test_a_missing_mandatory_column_is_named_and_each_row_says_so(
    client: httpx.AsyncClient,
) -> None:
    rows = [{k: v for k, v in entrance("m").items() if k != "id"}]
    found = (await _preview(client, csv_text(rows).encode())).json()
    assert found["missing"] == ["id"]
    assert found["rows"][0]["message"] == "id: missing"


async def test_the_beginning_of_a_file_is_enough(client: httpx.AsyncClient) -> None:
    """A client sends a file's first megabyte: the record cut at the end is left out,
    a quoted line feed or a UTF-16 or UTF-32 character is never split; a part is at most
    PARTIAL_BYTES."""
    text = csv_text([entrance(f"q{i}", **{"rdfs:label": "a\nb"}) for i in range(5)])
    cut = text.encode()[: len(text.encode()) - 7]
    found = (await _preview(client, cut, partial="true")).json()
    assert [row["line"] for row in found["rows"]] == [2, 3, 4, 5]
    assert found["rows"][0]["cells"][found["header"].index("rdfs:label")] == "a\nb"

    wide = text.encode("utf-16")
    found = (await _preview(client, wide[: len(wide) - 9], partial="true")).json()
    assert [row["line"] for row in found["rows"]] == [2, 3, 4, 5]
    wide32 = text.encode("utf-32")
    found = (await _preview(client, wide32[: len(wide32) - 6], partial="true")).json()
    assert [row["line"] for row in found["rows"]] == [2, 3, 4, 5]
    whole = await _preview(client, b'{"data": [{"id": "w"}]}', "application/json", partial="true")
    assert whole.status_code == 200 and whole.json()["rows"][0]["cells"] == ["w"]
    too_much = await _preview(client, b"id\n" + b"x\n" * PARTIAL_BYTES, partial="true")
    assert (too_much.status_code, too_much.json()["code"]) == (413, "too_large")


async def test_json_and_xlsx_are_previewed_whole(client: httpx.AsyncClient) -> None:
    found = (
        await _preview(
            client, b'{"data": [{"id": "j1", "w3geo:latitude": "x"}]}', "application/json"
        )
    ).json()
    assert found["header"] == ["id", "w3geo:latitude"]
    assert found["rows"][0]["problems"]["1"] == 'w3geo:latitude: "x" is not a number'

    row = entrance("x1")
    book = xlsx_bytes({"caves": [list(row), list(row.values())]})
    found = (await _preview(client, book, XLSX_TYPE)).json()
    assert found["rows"][0]["cells"][0] == "x1" and found["missing"] == []


async def test_a_preview_is_refused_as_an_upload_would_be(client: httpx.AsyncClient) -> None:
    assert (await _preview(client, b"id\n1\n", delimiter="colon")).status_code == 400
    assert (await _preview(client, b"id\n1\n", "image/png")).status_code == 415
    unknown = await client.post(
        "/api/v1/nope/preview", content=b"id\n", headers={"Content-Type": "text/csv"}
    )
    assert unknown.status_code == 404
