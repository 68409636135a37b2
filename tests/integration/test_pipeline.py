"""The import pipeline end to end on real PostgreSQL, with a real queue worker."""

from __future__ import annotations

import asyncio
import email
import json
import uuid
from email import policy

import httpx
import pytest

from helpers import (
    csv_text,
    download,
    entrance,
    post_rows,
    read_csv_report,
    summary,
    wait_for_batch,
)
from importq import accounts
from importq.ingest.staged_table import SCHEMA, table_name
from importq.services import Services

pytestmark = pytest.mark.usefixtures("worker")


async def test_rows_end_in_the_right_reports(client: httpx.AsyncClient, services: Services) -> None:
    rows = [
        entrance("a1"),  # 2 success
        entrance("a2", latitude="91"),  # 3 failure
        entrance("a1"),  # 4 duplicate of line 2
        entrance("a3", country="FRA"),  # 5 failure
        entrance("a3"),  # 6 success: the failed row did not claim the key
        entrance("a1", author="Other"),  # 7 success: the key includes the author
        entrance("a4", latitude="=1+1"),  # 8 failure, formula neutralised in the report
        entrance("a3", latitude="-12.5"),  # 9 duplicate of line 6
    ]
    response = await post_rows(client, rows)
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["totalRows"] == 8
    assert accepted["statusUrl"] == f"/api/v1/jobs/{accepted['batchId']}"

    job = await wait_for_batch(client, accepted["batchId"])
    assert job["status"] == "completed"
    assert job["result"]["summary"] == summary(3, 2, 3)
    assert job["progress"]["processedRows"] == 8
    assert job["progress"]["completedChunks"] == job["progress"]["totalChunks"]

    urls = job["result"]["reportUrls"]
    successes = read_csv_report(await download(client, urls["success"]))
    assert successes[0] == [
        "line",
        "id",
        "dct:rights/cc:attributionName",
        "targetId",
        "outcome",
        "changedColumns",
        "w3geo:latitude",
        "w3geo:longitude",
    ]
    assert [(r[0], r[1], r[2], r[4], r[5]) for r in successes[1:]] == [
        ("2", "a1", "FFS", "inserted", ""),
        ("6", "a3", "FFS", "inserted", ""),
        ("7", "a1", "Other", "inserted", ""),
    ]
    assert all(r[3].isdigit() for r in successes[1:])

    failures = read_csv_report(await download(client, urls["failures"]))
    assert failures[0][:3] == ["line", "message", "id"]
    assert [(r[0], r[1]) for r in failures[1:]] == [
        ("3", "w3geo:latitude: 91 is above 90"),
        ("5", 'gn:countryCode: "FRA" is not two letters'),
        ("8", 'w3geo:latitude: "=1+1" is not a number'),
    ]
    latitude = failures[0].index("w3geo:latitude")
    assert failures[3][latitude] == "'=1+1"

    duplicates = read_csv_report(await download(client, urls["duplicates"]))
    assert [(r[0], r[1]) for r in duplicates[1:]] == [
        ("4", "duplicate of line 2"),
        ("9", "duplicate of line 6"),
    ]
    assert duplicates[2][duplicates[0].index("w3geo:latitude")] == "-12.5"

    async with services.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT source_id, attribution_name, latitude FROM entrances ORDER BY imported_line"
        )
        assert await cursor.fetchall() == [
            ("a1", "FFS", 45.5),
            ("a3", "FFS", 45.5),
            ("a1", "Other", 45.5),
        ]


async def test_report_files_use_crlf_and_quote_per_rfc4180(client: httpx.AsyncClient) -> None:
    rows = [entrance("q1", **{"rdfs:label": 'Grotte "du" Loup, sud'}), entrance("q2", latitude="x")]
    job = await wait_for_batch(client, (await post_rows(client, rows)).json()["batchId"])
    raw = await download(client, job["result"]["reportUrls"]["failures"])
    assert raw.count(b"\r\n") == 2 and b"\n" not in raw.replace(b"\r\n", b"")
    assert job["result"]["reportUrls"]["duplicates"] is None


async def test_keys_already_in_the_table_are_duplicates_across_batches(
    client: httpx.AsyncClient,
) -> None:
    first = await post_rows(client, [entrance("k1"), entrance("k2")])
    await wait_for_batch(client, first.json()["batchId"])
    second = await post_rows(client, [entrance("k2"), entrance("k3"), entrance(" k1 ")])
    job = await wait_for_batch(client, second.json()["batchId"])
    assert job["result"]["summary"] == summary(1, 2, 0)
    duplicates = read_csv_report(await download(client, job["result"]["reportUrls"]["duplicates"]))
    assert [(r[0], r[1]) for r in duplicates[1:]] == [
        ("2", "already exists"),
        ("4", "already exists"),
    ]


async def test_conditional_columns_are_required_together(client: httpx.AsyncClient) -> None:
    title = "karstlink:hasDescriptionDocument/dct:title"
    rows = [
        entrance(
            "c1",
            **{
                title: "Topo",
                "karstlink:hasDescriptionDocument/dct:creator": "",
                "karstlink:hasDescriptionDocument/dc:language": "fra",
            },
        ),
        entrance(
            "c2",
            **{
                title: "",
                "karstlink:hasDescriptionDocument/dct:creator": "",
                "karstlink:hasDescriptionDocument/dc:language": "",
            },
        ),
    ]
    job = await wait_for_batch(client, (await post_rows(client, rows)).json()["batchId"])
    failures = read_csv_report(await download(client, job["result"]["reportUrls"]["failures"]))
    assert [(r[0], r[1]) for r in failures[1:]] == [
        ("2", f"karstlink:hasDescriptionDocument/dct:creator: missing (required with {title})")
    ]


async def test_whitespace_only_values_count_as_missing(client: httpx.AsyncClient) -> None:
    rows = [entrance("w1", **{"gn:countryCode": "   "})]
    job = await wait_for_batch(client, (await post_rows(client, rows)).json()["batchId"])
    failures = read_csv_report(await download(client, job["result"]["reportUrls"]["failures"]))
    assert failures[1][1] == "gn:countryCode: missing"


async def test_csv_body_lines_follow_spreadsheet_rows(client: httpx.AsyncClient) -> None:
    rows = [entrance("m1", **{"rdfs:label": "two\nlines"}), entrance("m2", latitude="200")]
    body = csv_text(rows)
    lines = body.split("\r\n")
    body = "\r\n".join([lines[0], lines[1], "", lines[2], ""])  # a blank record, then row 4
    response = await client.post(
        "/api/v1/entrances/import-rows", content=body.encode(), headers={"Content-Type": "text/csv"}
    )
    assert response.status_code == 202, response.text
    job = await wait_for_batch(client, response.json()["batchId"])
    failures = read_csv_report(await download(client, job["result"]["reportUrls"]["failures"]))
    # header = 1, the two-line record = 2, the blank record = 3, the bad row = 4
    assert failures[1][:2] == ["4", "w3geo:latitude: 200 is above 90"]
    successes = read_csv_report(await download(client, job["result"]["reportUrls"]["success"]))
    assert successes[1][:2] == ["2", "m1"]


async def test_blank_lines_before_the_header_count_and_are_not_data(
    client: httpx.AsyncClient,
) -> None:
    body = "\n" + csv_text([entrance("b1"), entrance("b2", latitude="200")]).replace("\r\n", "\n")
    response = await client.post(
        "/api/v1/entrances/import-rows", content=body.encode(), headers={"Content-Type": "text/csv"}
    )
    assert response.status_code == 202, response.text
    assert response.json()["totalRows"] == 2
    job = await wait_for_batch(client, response.json()["batchId"])
    assert job["result"]["summary"] == summary(1, 0, 1)
    # blank = 1, header = 2, rows = 3 and 4
    successes = read_csv_report(await download(client, job["result"]["reportUrls"]["success"]))
    assert successes[1][:2] == ["3", "b1"]
    failures = read_csv_report(await download(client, job["result"]["reportUrls"]["failures"]))
    assert failures[1][:2] == ["4", "w3geo:latitude: 200 is above 90"]


async def test_completion_creates_notification_and_email(
    client: httpx.AsyncClient,
    services: Services,
) -> None:
    response = await post_rows(client, [entrance("n1"), entrance("n2", latitude="-100")])
    batch_id = response.json()["batchId"]
    job = await wait_for_batch(client, batch_id)

    notifications = (await client.get("/api/v1/notifications")).json()
    assert notifications["total"] == 1 and notifications["unreadCount"] == 1
    item = notifications["items"][0]
    assert item["type"] == "IMPORT_COMPLETE" and item["batchId"] == batch_id
    assert item["payload"]["summary"] == job["result"]["summary"]

    outbox = services.settings.outbox_dir
    for _ in range(100):
        if list(outbox.glob("*.eml")):
            break
        await asyncio.sleep(0.05)
    files = list(outbox.glob("*.eml"))
    assert len(files) == 1
    message = email.message_from_bytes(files[0].read_bytes(), policy=policy.default)
    assert message["To"] == "alice@example.org"
    assert message["Subject"] == "Import complete: Entrances"
    assert message["Message-ID"] == f"<import-{batch_id}@importq>"
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Imported: 1" in text and "Failures: 1" in text
    assert job["result"]["reportUrls"]["failures"] in text.replace("=\n", "")
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert 'dir="ltr"' in html


async def test_values_postgresql_cannot_store_fail_their_row_alone(
    client: httpx.AsyncClient,
) -> None:
    rows = [
        entrance("u1", **{"rdfs:label": "nul\x00byte"}),
        entrance("u2", **{"rdfs:label": "lone \ud800 surrogate"}),
        entrance("u3"),
    ]
    body = json.dumps({"data": rows}).encode()  # json escapes keep the surrogate
    response = await client.post(
        "/api/v1/entrances/import-rows", content=body, headers={"Content-Type": "application/json"}
    )
    job = await wait_for_batch(client, response.json()["batchId"])
    failures = read_csv_report(await download(client, job["result"]["reportUrls"]["failures"]))
    assert [(r[0], r[1]) for r in failures[1:]] == [
        ("2", "a value contains a NUL character"),
        ("3", "a value is not valid Unicode text"),
    ]
    assert job["result"]["summary"]["successes"] == 1


async def test_a_row_the_database_refuses_fails_alone(
    client: httpx.AsyncClient,
    services: Services,
) -> None:
    async with services.pool.connection() as conn:
        await conn.execute("ALTER TABLE entrances ADD CONSTRAINT no_equator CHECK (latitude <> 0)")
    rows = [entrance("d1"), entrance("d2", latitude="0"), entrance("d3"), entrance("d1")]
    job = await wait_for_batch(client, (await post_rows(client, rows)).json()["batchId"])
    assert job["result"]["summary"] == summary(2, 1, 1)
    failures = read_csv_report(await download(client, job["result"]["reportUrls"]["failures"]))
    assert failures[1][:2] == [
        "3",
        "the table refused the row: it breaks a rule of the table (no_equator)",
    ]


async def test_a_refusal_names_the_column_by_its_header_not_the_table(
    client: httpx.AsyncClient,
    services: Services,
) -> None:
    """PostgreSQL's own words name the table and its columns; the report uses the
    dataset's."""
    async with services.pool.connection() as conn:
        await conn.execute("ALTER TABLE entrances ALTER COLUMN altitude SET NOT NULL")
    rows = [entrance("h1", **{"w3geo:altitude": "1200"}), entrance("h2")]
    job = await wait_for_batch(client, (await post_rows(client, rows)).json()["batchId"])
    failures = read_csv_report(await download(client, job["result"]["reportUrls"]["failures"]))
    assert failures[1][:2] == ["3", "the table refused the row: w3geo:altitude needs a value"]


async def test_rows_the_database_refuses_among_many_fail_and_the_next_of_their_key_wins(
    client: httpx.AsyncClient,
    services: Services,
) -> None:
    """Refused rows are tracked down by halving groups of rows: adjacent ones, a lone one
    far off, and a later row of a refused row's key, which is then the key's first."""
    async with services.pool.connection() as conn:
        await conn.execute("ALTER TABLE entrances ADD CONSTRAINT no_equator CHECK (latitude <> 0)")
    rows = [entrance(f"m{n}") for n in range(60)]
    for n in (5, 6, 40):
        rows[n] = entrance(f"m{n}", latitude="0")
    rows.append(entrance("m40"))  # line 62: m40 again, valid this time
    job = await wait_for_batch(client, (await post_rows(client, rows)).json()["batchId"])
    assert job["result"]["summary"] == summary(58, 0, 3)
    failures = read_csv_report(await download(client, job["result"]["reportUrls"]["failures"]))
    assert [row[0] for row in failures[1:]] == ["7", "8", "42"]
    assert all("no_equator" in row[1] for row in failures[1:])
    successes = read_csv_report(await download(client, job["result"]["reportUrls"]["success"]))
    assert "62" in [row[0] for row in successes[1:]]


async def test_a_later_row_of_a_key_stays_its_duplicate_when_other_rows_are_refused(
    client: httpx.AsyncClient,
    services: Services,
) -> None:
    """Only the rows to be inserted are probed: a duplicate the table would refuse is a
    duplicate still; and when a key's first row is refused, its next one is probed in
    turn, refused too, and the third is stored."""
    async with services.pool.connection() as conn:
        await conn.execute("ALTER TABLE entrances ADD CONSTRAINT no_equator CHECK (latitude <> 0)")
    rows = [
        entrance("p1"),
        entrance("p1", latitude="0"),  # line 3: duplicate of line 2
        entrance("p2", latitude="0"),  # line 4: refused
        entrance("p3", latitude="0"),  # line 5: refused
        entrance("p3", latitude="0"),  # line 6: refused, once line 5 is
        entrance("p3"),  # line 7: stored
    ]
    job = await wait_for_batch(client, (await post_rows(client, rows)).json()["batchId"])
    assert job["result"]["summary"] == summary(2, 1, 3)
    duplicates = read_csv_report(await download(client, job["result"]["reportUrls"]["duplicates"]))
    assert [(row[0], row[1]) for row in duplicates[1:]] == [("3", "duplicate of line 2")]
    failures = read_csv_report(await download(client, job["result"]["reportUrls"]["failures"]))
    assert [row[0] for row in failures[1:]] == ["4", "5", "6"]


@pytest.mark.parametrize(("user_locale", "expected"), [(None, "de"), ("fr", "fr")])
async def test_the_email_speaks_the_users_locale_else_the_uploads_accept_language(
    app_client: httpx.AsyncClient,
    services: Services,
    user_locale: str | None,
    expected: str,
) -> None:
    async with services.pool.connection() as conn:
        _, issued = await accounts.create_user(
            conn, "polyglot", email="p@example.org", locale=user_locale
        )
    token = issued.secret
    response = await app_client.post(
        "/api/v1/entrances/import-rows",
        json={"data": [entrance("l1")]},
        headers={"Authorization": f"Bearer {token}", "Accept-Language": "de-CH, en;q=0.5"},
    )
    app_client.headers["Authorization"] = f"Bearer {token}"
    await wait_for_batch(app_client, response.json()["batchId"])
    for _ in range(100):
        files = list(services.settings.outbox_dir.glob("*.eml"))
        if files:
            break
        await asyncio.sleep(0.05)
    message = email.message_from_bytes(files[0].read_bytes(), policy=policy.default)
    assert message["Content-Language"] == expected


async def test_the_upload_is_kept_and_everything_stored_is_purged_after_retention(
    client: httpx.AsyncClient,
    services: Services,
) -> None:
    from importq.pipeline.recovery import reconcile

    body = csv_text([entrance("p1"), entrance("p2", latitude="x")]).encode()
    response = await client.post(
        "/api/v1/entrances/import-rows", content=body, headers={"Content-Type": "text/csv"}
    )
    batch_id = response.json()["batchId"]
    job = await wait_for_batch(client, batch_id)
    kept = services.settings.files_dir / "uploads" / batch_id / "upload.csv"
    assert kept.read_bytes() == body
    reports = services.settings.files_dir / "reports" / batch_id
    assert sorted(p.name for p in reports.iterdir()) == ["failures.csv", "successes.csv"]
    notification = (await client.get("/api/v1/notifications")).json()["items"][0]
    assert notification["payload"]["reportUrls"] == job["result"]["reportUrls"]

    staged_table = f"{SCHEMA}.{table_name(uuid.UUID(batch_id))}"

    async def staged_table_exists() -> bool:
        async with services.pool.connection() as conn:
            cursor = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (staged_table,))
            row = await cursor.fetchone()
        return row == (True,)

    await reconcile(services)  # within retention: nothing goes
    assert kept.exists() and reports.exists()
    assert await staged_table_exists()

    async with services.pool.connection() as conn:
        await conn.execute(
            "UPDATE batches SET completed_at = now() - interval '40 days' WHERE id = %s",
            (batch_id,),
        )
    await reconcile(services)
    assert not kept.parent.exists() and not reports.exists()
    refreshed = await client.post(f"/api/v1/jobs/{batch_id}/report-links")
    assert refreshed.status_code == 409 and refreshed.json()["code"] == "no_reports"
    assert not await staged_table_exists()
