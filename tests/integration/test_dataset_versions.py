"""Datasets as versioned data: publishing a version, rerunning an earlier batch under it
and comparing the runs, a saved header mapping, and local number and date formats,
through the API, with a worker and real PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest

from conftest import new_user
from helpers import (
    api_client,
    download,
    entrance,
    imported,
    read_csv_report,
    report_records,
    summary,
    until,
    wait_for_batch,
    xlsx_bytes,
)
from importq.services import Services

pytestmark = pytest.mark.usefixtures("worker")

NOT_TWO_LETTERS = 'gn:countryCode: "FRA" is not two letters'
# An export whose headers are its own, in French, with semicolons and decimal commas.
HEADER = ["Ident", "Type", "Auteur", "Licence", "Pays", "Lat", "Lon", "Langue", "Prof", "Créé"]
MAPPING = {
    "Ident": "id",
    "Type": "rdf:type",
    "Auteur": "dct:rights/cc:attributionName",
    "Licence": "dct:rights/karstlink:licenseType",
    "Pays": "gn:countryCode",
    "Lat": "w3geo:latitude",
    "Lon": "w3geo:longitude",
    "Langue": "rdfs:label/dc:language",
    "Prof": "karstlink:depth",
    "Créé": "dct:created",
}


def _export(*rows: tuple[str, str, str, str, str, str]) -> str:
    """A semicolon CSV of the export: (id, country, lat, lon, depth, created) a row."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter=";", lineterminator="\r\n")
    writer.writerow(HEADER)
    for ident, country, lat, lon, depth, day in rows:
        kind = "karstlink:UndergroundCavity"
        writer.writerow([ident, kind, "FFS", "CC-BY", country, lat, lon, "fra", depth, day])
    return out.getvalue()


async def _publish_v2(services: Services) -> dict[str, Any]:
    """Version 2 of entrances, by an admin through the API, from the JSON the GET gives:
    a country code may have three letters, and two new columns (a depth with a decimal
    comma, a creation date)."""
    admin = (await new_user(services, "root", "admin"))[1]
    async with api_client(services, admin) as as_admin:
        described = (await as_admin.get("/api/v1/datasets/entrances")).json()
        assert described["version"] == 1
        definition = described["definition"]
        for column in definition["columns"]:
            if column["name"] == "gn:countryCode":
                column["pattern"] = "[A-Za-z]{2,3}"
                column["pattern_description"] = "two or three letters"
        definition["columns"] += [
            {"name": "karstlink:depth", "field": "depth", "type": "float", "decimal": "comma"},
            {"name": "dct:created", "field": "created", "type": "date"},
        ]
        answer = await as_admin.post("/api/v1/datasets/entrances/versions", json=described)
        assert answer.status_code == 201, answer.text
        done: dict[str, Any] = answer.json()
    return done


async def _post_csv(client: httpx.AsyncClient, text: str, **params: str) -> httpx.Response:
    return await client.post(
        "/api/v1/entrances/import-rows",
        content=text.encode(),
        headers={"Content-Type": "text/csv"},
        params={"delimiter": "semicolon", **params},
    )


async def test_a_rule_change_is_checked_on_an_earlier_batch_then_a_mapped_export_imports(
    services: Services, client: httpx.AsyncClient
) -> None:
    rows = [
        entrance("ok-1"),
        entrance("ok-2"),
        entrance("fra-1", country="FRA"),  # only the country code: v2 frees it
        entrance("fra-2", country="FRA"),
        entrance("both", country="FRA", latitude="95"),  # the latitude still fails
        entrance("lat", latitude="95"),
    ]
    first = await imported(client, rows)
    assert first["datasetVersion"] == 1 and first["result"]["summary"] == summary(2, 0, 4)

    done = await _publish_v2(services)
    assert done["dataset"]["version"] == 2 and done["created"]
    # A new mandatory column: the rows stored have no value for it.
    definition = done["dataset"]["definition"]
    definition["columns"].append({"name": "x", "field": "x", "required": True})
    async with api_client(services, (await new_user(services, "chief", "admin"))[1]) as admin:
        refused = await admin.post("/api/v1/datasets/entrances/versions", json=definition)
    assert (refused.status_code, refused.json()["code"]) == (409, "incompatible")
    assert "column x is mandatory and stored rows have no value" in refused.json()["detail"]
    assert done["changes"] == [
        "added column depth (double precision)",
        "added column created (date)",
    ]
    old = (await client.get("/api/v1/datasets/entrances", params={"version": 1})).json()
    country = next(c for c in old["columns"] if c["name"] == "gn:countryCode")
    assert old["version"] == 1 and country["rules"] == ["two letters"]

    # The earlier batch's upload, under version 2, as a dry run.
    rerun = await client.post(f"/api/v1/jobs/{first['batchId']}/rerun", params={"version": 2})
    assert rerun.status_code == 202, rerun.text
    second = await wait_for_batch(client, rerun.json()["batchId"])
    assert (second["datasetVersion"], second["dryRun"], second["rerunOf"]) == (
        2,
        True,
        first["batchId"],
    )
    # It does not see the rows the first batch inserted as stored.
    assert second["result"]["summary"] == summary(4, 0, 2)
    compared = await client.get(f"/api/v1/jobs/{first['batchId']}/compare/{second['batchId']}")
    assert compared.status_code == 200, compared.text
    assert compared.json()["moved"] == {"failure->inserted": 2}
    header, *moved = read_csv_report(await download(client, compared.json()["url"]))
    assert header == ["line", "outcome", "message", "outcome after", "message after"]
    assert moved == [
        ["4", "failure", NOT_TWO_LETTERS, "inserted", ""],
        ["5", "failure", NOT_TWO_LETTERS, "inserted", ""],
    ]
    async with services.pool.connection() as conn:
        cursor = await conn.execute("SELECT count(*) FROM entrances")
        assert await cursor.fetchone() == (2,)  # the dry run wrote nothing

    # An export that names no column as the dataset does: a saved mapping reads it.
    export = _export(
        ("m-1", "FR", "45,123", "5,75", "1 234,5", "03/04/2026"),
        ("m-2", "FRA", "-12,5", "0.5", "", ""),
        ("m-3", "FR", "95,5", "5", "", ""),
        ("m-4", "FR", "45", "5", "", "31/02/2026"),
    )
    bare = await _post_csv(client, export)
    assert (bare.status_code, bare.json()["code"]) == (400, "missing_columns")
    unknown = await _post_csv(client, export, mapping='{"Lat": "latitude"}')
    assert (unknown.status_code, unknown.json()["code"]) == (400, "bad_reading")
    saved = await client.put(
        "/api/v1/mappings/mon-export",
        json={"dataset": "entrances", "mapping": MAPPING, "header": HEADER},
    )
    assert saved.status_code == 200, saved.text
    offered = await client.post(
        "/api/v1/entrances/preview",
        content=export.encode(),
        headers={"Content-Type": "text/csv"},
        params={"delimiter": "semicolon", "decimal": "comma", "dateFormat": "DD/MM/YYYY"},
    )
    assert offered.status_code == 200, offered.text
    preview = offered.json()
    assert (preview["mappingName"], preview["missing"]) == ("mon-export", [])
    assert preview["columns"] == [MAPPING[name] for name in HEADER]
    assert [sorted(row["problems"]) for row in preview["rows"]] == [[], [], ["5"], ["9"]]
    listed = (await client.get("/api/v1/mappings", params={"dataset": "entrances"})).json()
    assert [m["name"] for m in listed["items"]] == ["mon-export"]

    answer = await _post_csv(
        client, export, mapping="mon-export", decimal="comma", dateFormat="dd/mm/yyyy"
    )
    assert answer.status_code == 202, answer.text
    third = await wait_for_batch(client, answer.json()["batchId"])
    assert third["result"]["summary"] == summary(2, 0, 2)
    assert (third["datasetVersion"], third["mapping"], third["decimal"]) == (2, MAPPING, "comma")
    assert third["dateFormat"] == "DD/MM/YYYY"
    async with services.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT source_id, country_code, latitude, longitude, depth, created FROM entrances"
            " WHERE source_id LIKE 'm-%' ORDER BY source_id"
        )
        stored = await cursor.fetchall()
    assert stored == [
        ("m-1", "FR", 45.123, 5.75, 1234.5, date(2026, 4, 3)),
        ("m-2", "FRA", -12.5, 0.5, None, None),
    ]
    successes = await report_records(client, third, "success")
    assert [(r["line"], r["w3geo:latitude"]) for r in successes] == [
        ("2", "45,123"),
        ("3", "-12,5"),
    ]
    failures = await report_records(client, third, "failures")
    assert [(r["line"], r["message"], r["Lat"]) for r in failures] == [
        ("4", "w3geo:latitude: 95,5 is above 90", "95,5"),
        ("5", 'dct:created: "31/02/2026" is not a date (DD/MM/YYYY)', "45"),
    ]


async def test_a_date_with_no_declared_format_is_never_guessed(
    services: Services, client: httpx.AsyncClient
) -> None:
    await _publish_v2(services)
    export = _export(
        ("d-1", "FR", "45", "5", "", "03/04/2026"),
        ("d-2", "FR", "45", "5", "", "25/04/2026"),
        ("d-3", "FR", "45", "5", "", "2026-04-25"),
    )
    answer = await _post_csv(client, export, mapping=json.dumps(MAPPING))
    job = await wait_for_batch(client, answer.json()["batchId"])
    assert job["result"]["summary"] == summary(1, 0, 2)
    failures = await report_records(client, job, "failures")
    assert [r["message"] for r in failures] == [
        'dct:created: "03/04/2026" is ambiguous (3 April or 4 March): write YYYY-MM-DD or '
        "declare the date format",
        'dct:created: "25/04/2026" is not a date (YYYY-MM-DD): write YYYY-MM-DD or declare '
        "the date format",
    ]


async def test_xlsx_numbers_and_dates_come_from_their_cells_and_a_text_code_stays_text(
    services: Services, client: httpx.AsyncClient
) -> None:
    """With a decimal comma and a day-first format asked for, a workbook's number and
    date cells are read from their types (never their display), and a code written as
    text keeps its leading zero."""
    await _publish_v2(services)
    header = [*entrance("x"), "karstlink:depth", "dct:created"]
    row: list[object] = list(entrance("0123").values())
    row[header.index("w3geo:latitude")] = 45.125
    row += [1234.5, date(2026, 4, 3)]
    body = xlsx_bytes({"Entrées": [header, row]})
    answer = await client.post(
        "/api/v1/entrances/import-rows",
        content=body,
        headers={
            "Content-Type": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
        },
        params={"decimal": "comma", "dateFormat": "MM/DD/YYYY"},
    )
    assert answer.status_code == 202, answer.text
    job = await wait_for_batch(client, answer.json()["batchId"])
    assert job["result"]["summary"] == summary(1, 0, 0)
    async with services.pool.connection() as conn:
        cursor = await conn.execute("SELECT source_id, latitude, depth, created FROM entrances")
        assert await cursor.fetchall() == [("0123", 45.125, 1234.5, date(2026, 4, 3))]


async def test_a_rerun_and_a_comparison_after_the_purge_are_expired(
    services: Services, client: httpx.AsyncClient
) -> None:
    first = await imported(client, [entrance("p-1")])
    rerun = await client.post(f"/api/v1/jobs/{first['batchId']}/rerun")
    second = await wait_for_batch(client, rerun.json()["batchId"])
    assert second["datasetVersion"] == 1 and second["result"]["summary"] == summary(1, 0, 0)
    async with services.pool.connection() as conn:
        await conn.execute(
            "UPDATE batches SET completed_at = %s WHERE id = %s",
            (
                datetime.now(UTC) - timedelta(days=services.settings.retention_days + 1),
                first["batchId"],
            ),
        )

    async def purged() -> bool:
        async with services.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT purged_at IS NOT NULL FROM batches WHERE id = %s", (first["batchId"],)
            )
            return bool((await cursor.fetchone() or (False,))[0])

    await until(purged)  # by the reconcile the worker's scheduler runs
    for answer in (
        await client.post(f"/api/v1/jobs/{first['batchId']}/rerun"),
        await client.get(f"/api/v1/jobs/{first['batchId']}/compare/{second['batchId']}"),
    ):
        assert (answer.status_code, answer.json()["code"]) == (409, "expired")
    other = await imported(client, [entrance("p-2")])
    unrelated = await client.get(f"/api/v1/jobs/{second['batchId']}/compare/{other['batchId']}")
    assert (unrelated.status_code, unrelated.json()["code"]) == (409, "not_comparable")
