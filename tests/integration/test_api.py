"""The HTTP contract (docs/architecture.md, "HTTP contract"), pinned route by route.

Real PostgreSQL, real queue; a worker runs only in the tests that need batches to
finish. Every test here runs with two extra datasets (``caves``, importable by any user,
and ``vault``, admin only) besides the built-in ``entrances``.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import httpx
import pytest
from psycopg import sql

from conftest import make_settings, new_user
from helpers import (
    BASE_URL,
    api_client,
    csv_text,
    download,
    entrance,
    post_rows,
    publish_configured,
    read_csv_report,
    running_worker,
    summary,
    wait_for_batch,
)
from importq import accounts
from importq.config import Settings
from importq.ingest.staged_table import SCHEMA, table_name
from importq.services import Services

EXTRA_DATASETS = """
[datasets.caves]
label = "Caves"
table = "caves"
dedup_key = ["name"]

[[datasets.caves.columns]]
name = "name"
field = "name"
required = true

[[datasets.caves.columns]]
name = "depth"
field = "depth"
type = "int"

[datasets.vault]
label = "Vault"
table = "vault_items"
import_role = "admin"
dedup_key = ["code"]

[[datasets.vault.columns]]
name = "code"
field = "code"
required = true
"""

JOB_KEYS = {
    "batchId",
    "type",
    "dataset",
    "status",
    "progress",
    "result",
    "createdAt",
    "updatedAt",
    "completedAt",
}
JOB_EXTRA_KEYS = {
    "warnings",
    "lastError",
    "reportsExpireAt",
    "format",
    "fileName",
    "failedChunks",
    "cancelledAt",
    "dryRun",
    "mode",
    "onError",
    "abortedAt",
    "undoOf",
    "undoneBy",
    "datasetVersion",
    "rerunOf",
    "mapping",
    "decimal",
    "dateFormat",
}
PROGRESS_KEYS = {
    "totalChunks",
    "completedChunks",
    "totalRows",
    "processedRows",
    "successes",
    "duplicates",
    "failures",
    "inserted",
    "updated",
    "unchanged",
    "deleted",
    "restored",
}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Extra settings; a test overrides it with ``pytest.mark.parametrize``."""
    return {}


@pytest.fixture
def settings(database_url: str, tmp_path: Path, settings_overrides: dict[str, Any]) -> Settings:
    datasets_file = tmp_path / "datasets.toml"
    datasets_file.write_text(EXTRA_DATASETS, encoding="utf-8")
    return make_settings(
        database_url, tmp_path / "data", datasets_file=datasets_file, **settings_overrides
    )


@pytest.fixture
async def services(services: Services) -> Services:
    """conftest's services, with the extra datasets published.

    The template database was migrated with the built-in datasets only, as
    ``importq migrate`` would have been before the datasets file was added.
    """
    await publish_configured(services)
    return services


@contextlib.asynccontextmanager
async def user_client(
    services: Services, name: str, role: str = "user"
) -> AsyncIterator[httpx.AsyncClient]:
    _, token = await new_user(services, name, role)
    async with api_client(services, token) as client:
        yield client


async def count_rows(services: Services, table: str) -> int:
    async with services.pool.connection() as conn:
        cursor = await conn.execute(f"SELECT count(*) FROM {table}")  # noqa: S608 (fixed names)
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


def batch_tables(batch_id: str) -> list[str]:
    """The tables of one batch: its staged rows and its row results."""
    return sorted([table_name(uuid.UUID(batch_id)), f"r_{uuid.UUID(batch_id).hex}"])


async def staged_tables(services: Services) -> list[str]:
    """The staged tables (one per staged batch), by name."""
    async with services.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY tablename", (SCHEMA,)
        )
        return [name for (name,) in await cursor.fetchall()]


async def count_staged_rows(services: Services, batch_id: str) -> int:
    """The rows in a batch's staged table."""
    table = sql.Identifier(SCHEMA, table_name(uuid.UUID(batch_id)))
    async with services.pool.connection() as conn:
        cursor = await conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table))
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def is_utc_timestamp(value: Any) -> bool:
    if not isinstance(value, str) or not value.endswith("Z"):
        return False
    moment = datetime.fromisoformat(value.removesuffix("Z") + "+00:00")
    return moment.utcoffset() == timedelta(0)


async def post_csv(
    client: httpx.AsyncClient, body: str | bytes, dataset: str = "entrances"
) -> httpx.Response:
    content = body.encode() if isinstance(body, str) else body
    return await client.post(
        f"/api/v1/{dataset}/import-rows", content=content, headers={"Content-Type": "text/csv"}
    )


def storage_path(url: str) -> str:
    """The storage path of a local report link."""
    return unquote(urlsplit(url).path.removeprefix("/files/"))


# ------------------------------------------------------------- POST …/import-rows: 202


async def test_accepted_body_has_exactly_batch_id_totals_and_status_url(
    client: httpx.AsyncClient,
) -> None:
    response = await post_rows(client, [entrance(f"r{i}") for i in range(25)])
    assert response.status_code == 202, response.text
    body = response.json()
    assert set(body) == {"batchId", "totalRows", "totalChunks", "statusUrl"}
    assert body["totalRows"] == 25
    assert body["totalChunks"] == 3  # chunk_size 10, one key per row
    assert body["statusUrl"] == f"/api/v1/jobs/{body['batchId']}"
    assert (await client.get(body["statusUrl"])).status_code == 200


async def test_csv_body_and_multipart_file_are_accepted(client: httpx.AsyncClient) -> None:
    rows = [entrance("c1"), entrance("c2")]
    raw = await post_csv(client, csv_text(rows))
    assert raw.status_code == 202, raw.text
    multipart = await client.post(
        "/api/v1/entrances/import-rows",
        files={"file": ("caves.tsv", csv_text(rows).replace(",", "\t").encode(), "text/plain")},
    )
    assert multipart.status_code == 202, multipart.text
    job = (await client.get(multipart.json()["statusUrl"])).json()
    assert job["fileName"] == "caves.tsv" and job["progress"]["totalRows"] == 2


# ------------------------------------------------------------- POST …/import-rows: 4xx


async def test_empty_data_list_is_400_empty_data(client: httpx.AsyncClient) -> None:
    assert_error(await post_rows(client, []), 400, "empty_data")


async def test_csv_with_only_a_header_is_400_empty_data(client: httpx.AsyncClient) -> None:
    header_only = csv_text([entrance("x")]).split("\r\n")[0] + "\r\n"
    assert_error(await post_csv(client, header_only), 400, "empty_data")


async def test_missing_mandatory_columns_are_400_and_named(client: httpx.AsyncClient) -> None:
    row = entrance("m1")
    del row["gn:countryCode"], row["w3geo:longitude"]
    body = assert_error(await post_rows(client, [row]), 400, "missing_columns")
    assert body["columns"] == ["gn:countryCode", "w3geo:longitude"]
    assert "gn:countryCode" in body["detail"] and "w3geo:longitude" in body["detail"]


async def test_duplicate_header_in_csv_body_is_400_duplicate_header(
    client: httpx.AsyncClient,
) -> None:
    text = csv_text([entrance("d1")])
    header, data = text.split("\r\n")[:2]
    body = assert_error(
        await post_csv(client, f"{header},ID\r\n{data},again\r\n"), 400, "duplicate_header"
    )
    assert body["columns"] == ["ID"]


async def test_malformed_json_is_400_bad_json(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/entrances/import-rows",
        content=b'{"data": [{"id": "x",}',
        headers={"Content-Type": "application/json"},
    )
    assert_error(response, 400, "bad_json")


@pytest.mark.parametrize(
    "body",
    [[{"id": "x"}], {"rows": [{"id": "x"}]}, {"data": {"id": "x"}}, {"data": "x"}, "data", 42],
    ids=["list", "other-key", "data-object", "data-string", "string", "number"],
)
async def test_body_that_is_not_an_object_with_a_data_list_is_400_bad_json(
    client: httpx.AsyncClient, body: Any
) -> None:
    response = await client.post("/api/v1/entrances/import-rows", json=body)
    assert_error(response, 400, "bad_json")


async def test_a_refused_upload_leaves_no_spool_file_open(
    client: httpx.AsyncClient, services: Services
) -> None:
    """A body is spooled to a file with no name, gone once closed: every refusal after
    it arrived closes it, so its disk space comes back at once."""
    spool = services.settings.spool_dir

    def spools_open() -> list[str]:
        """The files this process has open in the spool directory."""
        targets = []
        for descriptor in Path("/proc/self/fd").iterdir():
            with contextlib.suppress(OSError):  # closed meanwhile
                targets.append(str(descriptor.readlink()))
        return [target for target in targets if target.startswith(str(spool))]

    headers = {"Content-Type": "application/json"}
    refused = [
        await client.post("/api/v1/entrances/import-rows", content=b'{"data": [', headers=headers),
        await client.post("/api/v1/entrances/import-rows", json={"data": []}),
        await post_csv(client, "id,label\r\nx,y\r\n"),  # mandatory columns missing
        await client.post(
            "/api/v1/entrances/import-rows",
            params={"callbackUrl": "ftp://example.org/"},
            json={"data": [entrance("spooled")]},
        ),
    ]
    assert [r.status_code for r in refused] == [400] * 4
    assert spool.is_dir() and spools_open() == []


async def test_no_authorization_header_is_401(app_client: httpx.AsyncClient) -> None:
    response = await post_rows(app_client, [entrance("a1")])
    body = assert_error(response, 401, "unauthenticated")
    assert set(body) == {"detail", "code"}


@pytest.mark.parametrize(
    "authorization", ["Bearer not-a-token", "Basic YWxpY2U6c2VjcmV0", "Bearer "]
)
async def test_bad_token_is_401(
    app_client: httpx.AsyncClient, user_token: str, authorization: str
) -> None:
    response = await app_client.post(
        "/api/v1/entrances/import-rows",
        json={"data": [entrance("a1")]},
        headers={"Authorization": authorization},
    )
    assert response.status_code == 401, response.text
    body = response.json()
    assert set(body) == {"detail", "code"} and body["code"] in {"invalid_token", "unauthenticated"}


@pytest.mark.parametrize(
    "path", ["/api/v1/jobs", "/api/v1/notifications", "/api/v1/jobs/not-even-a-uuid"]
)
async def test_every_api_route_needs_a_token(app_client: httpx.AsyncClient, path: str) -> None:
    assert_error(await app_client.get(path), 401, "unauthenticated")


@pytest.mark.parametrize("role", ["user", "moderator"])
async def test_dataset_needing_a_higher_role_is_403(services: Services, role: str) -> None:
    async with user_client(services, "carol", role) as carol:
        response = await carol.post("/api/v1/vault/import-rows", json={"data": [{"code": "v1"}]})
    body = assert_error(response, 403, "forbidden")
    assert "admin" in body["detail"]
    assert await count_rows(services, "batches") == 0


async def test_dataset_needing_admin_accepts_an_admin(services: Services) -> None:
    async with user_client(services, "root", "admin") as admin:
        response = await admin.post("/api/v1/vault/import-rows", json={"data": [{"code": "v1"}]})
    assert response.status_code == 202, response.text


async def test_unknown_dataset_is_404(client: httpx.AsyncClient) -> None:
    body = assert_error(
        await post_rows(client, [entrance("u1")], "caverns"), 404, "unknown_dataset"
    )
    assert "caverns" in body["detail"]


@pytest.mark.parametrize("settings_overrides", [{"max_upload_bytes": 2000}])
async def test_body_over_max_upload_bytes_is_413_with_limit(client: httpx.AsyncClient) -> None:
    rows = [entrance(f"big{i}") for i in range(30)]
    body = assert_error(await post_rows(client, rows), 413, "too_large")
    assert body["limit"] == 2000


@pytest.mark.parametrize("settings_overrides", [{"max_upload_bytes": 2000}])
async def test_streamed_body_over_max_upload_bytes_is_413(
    client: httpx.AsyncClient, services: Services
) -> None:
    """No Content-Length: the limit is enforced while the body arrives."""
    text = csv_text([entrance(f"big{i}") for i in range(30)]).encode()

    async def parts() -> AsyncIterator[bytes]:
        for start in range(0, len(text), 500):
            yield text[start : start + 500]

    response = await client.post(
        "/api/v1/entrances/import-rows", content=parts(), headers={"Content-Type": "text/csv"}
    )
    assert response.request.headers.get("content-length") is None
    body = assert_error(response, 413, "too_large")
    assert body["limit"] == 2000
    assert await count_rows(services, "batches") == 0


@pytest.mark.parametrize("content_type", ["application/xml", "text/html", None])
async def test_unsupported_content_type_is_415(
    client: httpx.AsyncClient, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = await client.post(
        "/api/v1/entrances/import-rows", content=b"<data><row id='1'/></data>", headers=headers
    )
    assert_error(response, 415, "unsupported_type")


async def test_multipart_file_of_an_unsupported_type_is_415(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/entrances/import-rows",
        files={"file": ("caves.pdf", b"%PDF-1.4", "application/pdf")},
    )
    assert_error(response, 415, "unsupported_type")


MULTIPART = "multipart/form-data; boundary=b0"


def _part(name: str, filename: str | None, data: bytes) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--b0\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (_part("note", None, b"hello") + b"--b0--\r\n", "missing_file"),
        (_part("file", None, b"id,x\n1,2\n") + b"--b0--\r\n", "missing_file"),
        (_part("file", "a.csv", b"a,b\n1,2\n") * 2 + b"--b0--\r\n", "too_many_files"),
        (_part("file", "a.csv", b"a,b\n1,2\n"), "bad_multipart"),  # no closing boundary
        (b"no boundary at all", "bad_multipart"),
    ],
)
async def test_a_multipart_body_without_exactly_one_whole_file_is_400(
    client: httpx.AsyncClient, body: bytes, code: str
) -> None:
    response = await client.post(
        "/api/v1/entrances/import-rows", content=body, headers={"Content-Type": MULTIPART}
    )
    assert_error(response, 400, code)


async def test_a_file_name_outside_ascii_is_taken_from_filename_star(
    client: httpx.AsyncClient,
) -> None:
    text = csv_text([entrance("n1")]).encode()
    head = (
        '--b0\r\nContent-Disposition: form-data; name="file"; filename="caves.csv"; '
        "filename*=UTF-8''grottes%20%C3%A9t%C3%A9.csv\r\n\r\n"
    )
    response = await client.post(
        "/api/v1/entrances/import-rows",
        content=head.encode() + text + b"\r\n--b0--\r\n",
        headers={"Content-Type": MULTIPART},
    )
    assert response.status_code == 202, response.text
    job = (await client.get(response.json()["statusUrl"])).json()
    assert job["fileName"] == "grottes été.csv"


async def test_a_file_name_is_cleaned_not_refused(client: httpx.AsyncClient) -> None:
    """Control characters and line separators go, the length is capped with the
    extension kept, and the upload is taken."""
    name = "caves\r\nBcc: everyone@example.org\u2028\u202e\u200b" + "x" * 400 + ".csv"
    response = await client.post(
        "/api/v1/entrances/import-rows",
        params={"fileName": name},
        json={"data": [entrance("f1")]},
    )
    assert response.status_code == 202, response.text
    shown = (await client.get(response.json()["statusUrl"])).json()["fileName"]
    assert shown.startswith("cavesBcc: everyone@example.orgxxx") and shown.endswith("x.csv")
    assert len(shown) == 255
    blank = await client.post(
        "/api/v1/entrances/import-rows",
        params={"fileName": "\n\t"},
        json={"data": [entrance("f2")]},
    )
    assert (await client.get(blank.json()["statusUrl"])).json()["fileName"] is None


@pytest.mark.parametrize("path", ["/api/v1/jobs", "/api/v1/notifications"])
async def test_a_page_past_any_list_is_refused_not_a_crash(
    client: httpx.AsyncClient, path: str
) -> None:
    for page in (10**12, 2**63):
        response = await client.get(path, params={"page": page})
        assert_error(response, 422, "invalid_request")
    assert (await client.get(path, params={"page": 1_000_000})).status_code == 200


async def test_answers_carry_the_security_headers(
    client: httpx.AsyncClient, app_client: httpx.AsyncClient
) -> None:
    api = await client.get("/api/v1/jobs")
    health = await app_client.get("/health/live")
    for response in (api, health):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
    assert api.headers["cache-control"] == "no-store"
    assert "cache-control" not in health.headers
    assert "strict-transport-security" not in api.headers  # the public URL is http


@pytest.mark.parametrize("settings_overrides", [{"public_url": "https://imports.example"}])
async def test_an_https_service_asks_browsers_to_stay_on_https(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/api/v1/jobs")
    assert response.headers["strict-transport-security"] == "max-age=31536000"


@pytest.mark.parametrize("settings_overrides", [{"rate_limit": 2}])
async def test_a_user_past_their_uploads_a_minute_gets_429(
    client: httpx.AsyncClient, app_client: httpx.AsyncClient, services: Services
) -> None:
    for n in range(2):
        assert (await post_rows(client, [entrance(f"rl{n}")])).status_code == 202
    refused = await post_rows(client, [entrance("rl2")])
    assert_error(refused, 429, "rate_limited")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # Another token of the same user (a second sign-in, say) shares the count.
    async with services.pool.connection() as conn:
        second = await accounts.token_for_existing(conn, "alice")
    assert second is not None
    app_client.headers["Authorization"] = f"Bearer {second.secret}"
    assert_error(await post_rows(app_client, [entrance("rl3")]), 429, "rate_limited")
    _, other = await new_user(services, "another-uploader")
    app_client.headers["Authorization"] = f"Bearer {other}"
    assert (await post_rows(app_client, [entrance("rl3")])).status_code == 202


@pytest.mark.parametrize("settings_overrides", [{"cors_origins": "https://app.example/"}])
async def test_only_the_origins_named_may_call_the_api_from_a_page(
    app_client: httpx.AsyncClient,
) -> None:
    preflight = {"Access-Control-Request-Method": "POST"}
    allowed = await app_client.options(
        "/api/v1/jobs", headers={"Origin": "https://app.example", **preflight}
    )
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    other = await app_client.options(
        "/api/v1/jobs", headers={"Origin": "https://evil.example", **preflight}
    )
    assert "access-control-allow-origin" not in other.headers


async def test_no_page_elsewhere_may_call_the_api_by_default(
    app_client: httpx.AsyncClient,
) -> None:
    response = await app_client.get("/health/live", headers={"Origin": "https://app.example"})
    assert "access-control-allow-origin" not in response.headers


async def test_other_multipart_fields_are_ignored(client: httpx.AsyncClient) -> None:
    text = csv_text([entrance("m1")]).encode()
    body = _part("note", None, b"x" * 1000) + _part("file", "a.csv", text) + b"--b0--\r\n"
    response = await client.post(
        "/api/v1/entrances/import-rows", content=body, headers={"Content-Type": MULTIPART}
    )
    assert response.status_code == 202, response.text
    assert response.json()["totalRows"] == 1


@pytest.mark.parametrize("settings_overrides", [{"max_upload_bytes": 50_000}])
async def test_refused_requests_create_nothing(
    client: httpx.AsyncClient, app_client: httpx.AsyncClient, services: Services
) -> None:
    good = entrance("n1")
    missing = {k: v for k, v in good.items() if k != "id"}
    text = csv_text([good])
    header = text.split("\r\n")[0]
    # Bad bytes far past the first 8 KiB block, where a decoder reading ahead meets them.
    long_csv = csv_text([entrance(f"n{i}") for i in range(300)]).encode() + b"x\xff\xfe,y\r\n"
    assert len(long_csv) < 50_000
    refusals = [
        (await post_rows(client, []), 400),
        (await post_rows(client, [missing]), 400),
        (await post_csv(client, header + "\r\n"), 400),  # refused inside the staging transaction
        (await post_csv(client, f"{header},id\r\n"), 400),
        (await post_csv(client, long_csv), 400),
        (await post_rows(client, [good], "caverns"), 404),
        (await post_rows(client, [good], "vault"), 403),
        (await post_rows(client, [entrance(f"n{i}") for i in range(300)]), 413),
        (
            await client.post(
                "/api/v1/entrances/import-rows",
                content=b"{not json",
                headers={"Content-Type": "application/json"},
            ),
            400,
        ),
        (
            await client.post(
                "/api/v1/entrances/import-rows",
                content=b"<x/>",
                headers={"Content-Type": "application/xml"},
            ),
            415,
        ),
    ]
    app_client.headers.pop("Authorization")
    refusals.append((await post_rows(app_client, [good]), 401))
    assert [r.status_code for r, _ in refusals] == [status for _, status in refusals]
    assert refusals[4][0].json()["code"] == "bad_encoding"
    for table in ("batches", "chunks", "procrastinate_jobs"):
        assert await count_rows(services, table) == 0, table
    assert await staged_tables(services) == []


@pytest.mark.parametrize("good_rows", [3, 300])
async def test_bad_encoding_is_400_naming_the_line_of_the_bad_byte(
    client: httpx.AsyncClient, services: Services, good_rows: int
) -> None:
    body = csv_text([entrance(f"b{i}") for i in range(good_rows)]).encode()
    body += b"Gouffre \xff,x\r\n"  # the record after the header and the good rows
    refusal = assert_error(await post_csv(client, body), 400, "bad_encoding")
    assert await count_rows(services, "batches") == 0
    assert refusal["line"] == good_rows + 2, refusal


# ------------------------------------------------------------------ Idempotency-Key


async def test_same_idempotency_key_returns_the_same_batch(
    client: httpx.AsyncClient, services: Services
) -> None:
    rows = {"data": [entrance("i1"), entrance("i2")]}
    headers = {"Idempotency-Key": "upload-2024-001"}
    first = await client.post("/api/v1/entrances/import-rows", json=rows, headers=headers)
    second = await client.post("/api/v1/entrances/import-rows", json=rows, headers=headers)
    assert first.status_code == second.status_code == 202, second.text
    assert first.json() == second.json()
    assert await count_rows(services, "batches") == 1
    batch_id = first.json()["batchId"]
    assert await staged_tables(services) == batch_tables(batch_id)
    assert await count_staged_rows(services, batch_id) == 2

    other = await client.post(
        "/api/v1/entrances/import-rows", json=rows, headers={"Idempotency-Key": "upload-2024-002"}
    )
    assert other.json()["batchId"] != first.json()["batchId"]


async def test_concurrent_posts_with_the_same_idempotency_key_make_one_batch(
    client: httpx.AsyncClient, services: Services
) -> None:
    rows = {"data": [entrance(f"i{i}") for i in range(40)]}
    headers = {"Idempotency-Key": "same-at-once"}
    responses = await asyncio.gather(
        *(
            client.post("/api/v1/entrances/import-rows", json=rows, headers=headers)
            for _ in range(5)
        )
    )
    assert [r.status_code for r in responses] == [202] * 5, [r.text for r in responses]
    assert len({r.json()["batchId"] for r in responses}) == 1
    assert await count_rows(services, "batches") == 1
    batch_id = responses[0].json()["batchId"]
    assert await staged_tables(services) == batch_tables(batch_id)
    assert await count_staged_rows(services, batch_id) == 40


async def test_an_idempotency_key_reused_for_a_different_upload_is_422(
    client: httpx.AsyncClient, services: Services
) -> None:
    headers = {"Idempotency-Key": "upload-2024-003", "Content-Type": "text/csv"}
    body = csv_text([entrance("k1"), entrance("k2")]).encode()
    first = await client.post("/api/v1/entrances/import-rows", content=body, headers=headers)
    assert first.status_code == 202, first.text
    batch_id = first.json()["batchId"]
    # The same bytes again, then once with its file name given: a retry, then not one.
    again = await client.post("/api/v1/entrances/import-rows", content=body, headers=headers)
    assert again.json() == first.json()
    for changed, params in ((body.replace(b"k2", b"k3"), {}), (body, {"fileName": "x.csv"})):
        response = await client.post(
            "/api/v1/entrances/import-rows", content=changed, headers=headers, params=params
        )
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "idempotency_key_reused"
        assert response.json()["batchId"] == batch_id
        assert batch_id in response.json()["detail"]
    assert await count_rows(services, "batches") == 1


async def test_idempotency_keys_belong_to_one_user(
    client: httpx.AsyncClient, services: Services
) -> None:
    rows = {"data": [entrance("i1")]}
    headers = {"Idempotency-Key": "shared-key"}
    mine = await client.post("/api/v1/entrances/import-rows", json=rows, headers=headers)
    async with user_client(services, "bob") as bob:
        theirs = await bob.post("/api/v1/entrances/import-rows", json=rows, headers=headers)
    assert theirs.status_code == 202, theirs.text
    assert theirs.json()["batchId"] != mine.json()["batchId"]


# ------------------------------------------------------------------------ JSON rows


@pytest.mark.usefixtures("worker")
async def test_json_rows_missing_a_mandatory_value_or_with_nested_values_fail(
    client: httpx.AsyncClient,
) -> None:
    missing = entrance("j2")
    del missing["gn:countryCode"]
    rows: list[dict[str, Any]] = [
        entrance("j1"),  # 2 success
        missing,  # 3 failure
        {**entrance("j3"), "w3geo:longitude": None},  # 4 failure: null is an empty cell
        {**entrance("j4"), "dct:rights/karstlink:licenseType": {"code": "CC-BY"}},  # 5
        {**entrance("j5"), "gn:countryCode": ["FR", "BE"]},  # 6
        entrance("j6"),  # 7 success
    ]
    response = await client.post("/api/v1/entrances/import-rows", json={"data": rows})
    assert response.status_code == 202, response.text
    job = await wait_for_batch(client, response.json()["batchId"])
    assert job["result"]["summary"] == summary(2, 0, 4)
    failures = read_csv_report(await download(client, job["result"]["reportUrls"]["failures"]))
    assert [(r[0], r[1]) for r in failures[1:]] == [
        ("3", "gn:countryCode: missing"),
        ("4", "w3geo:longitude: missing"),
        ("5", "dct:rights/karstlink:licenseType: nested values are not accepted"),
        ("6", "gn:countryCode: nested values are not accepted"),
    ]


@pytest.mark.usefixtures("worker")
async def test_json_rows_may_leave_out_optional_keys_and_order_them_freely(
    client: httpx.AsyncClient,
) -> None:
    # The header is every key the rows hold, in the order each first appears: a key
    # only a later row has is a column too, and a row without an optional key is whole.
    first = entrance("o1")  # no label
    second = dict(reversed(list(entrance("o2", **{"rdfs:label": "Grotte"}).items())))
    third = entrance("o3", **{"gn:alternateName": "Grotte de la Cascade"})
    response = await client.post(
        "/api/v1/entrances/import-rows", json={"data": [first, second, third]}
    )
    assert response.status_code == 202, response.text
    job = await wait_for_batch(client, response.json()["batchId"])
    assert job["result"]["summary"] == summary(3, 0, 0)
    assert job["warnings"] == []


@pytest.mark.usefixtures("worker")
async def test_json_numbers_and_booleans_become_text(
    client: httpx.AsyncClient, services: Services
) -> None:
    rows = [
        {**entrance("x"), "id": 1234, "w3geo:latitude": 45.5, "w3geo:longitude": -3},
        {**entrance("y"), "id": True, "w3geo:latitude": 0, "w3geo:longitude": 1e2},
        {**entrance("z"), "id": False, "w3geo:latitude": -12.25, "w3geo:longitude": 7},
    ]
    response = await client.post("/api/v1/entrances/import-rows", json={"data": rows})
    assert response.status_code == 202, response.text
    job = await wait_for_batch(client, response.json()["batchId"])
    assert job["result"]["summary"] == summary(3, 0, 0)
    async with services.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT source_id, latitude, longitude FROM entrances ORDER BY imported_line"
        )
        assert await cursor.fetchall() == [
            ("1234", 45.5, -3.0),
            ("true", 0.0, 100.0),
            ("false", -12.25, 7.0),
        ]
    successes = read_csv_report(await download(client, job["result"]["reportUrls"]["success"]))
    assert [r[1] for r in successes[1:]] == ["1234", "true", "false"]


async def test_a_json_upload_is_a_csv_import_job_of_format_json(
    client: httpx.AsyncClient,
) -> None:
    response = await post_rows(client, [entrance("f1")])
    job = (await client.get(response.json()["statusUrl"])).json()
    assert job["type"] == "csv-import" and job["format"] == "json"


# ---------------------------------------------------------------- GET /api/v1/jobs/{id}


async def test_job_has_the_contract_fields_while_active(client: httpx.AsyncClient) -> None:
    accepted = (await post_rows(client, [entrance(f"s{i}") for i in range(12)])).json()
    response = await client.get(f"/api/v1/jobs/{accepted['batchId']}")
    assert response.status_code == 200, response.text
    job = response.json()
    assert set(job) >= JOB_KEYS, JOB_KEYS - set(job)
    assert set(job) - JOB_KEYS <= JOB_EXTRA_KEYS
    assert job["batchId"] == accepted["batchId"]
    assert job["type"] == "csv-import"
    assert job["dataset"] == "entrances"
    assert job["status"] == "active"  # no worker in this test
    assert set(job["progress"]) == PROGRESS_KEYS
    assert job["progress"] == {
        "totalChunks": accepted["totalChunks"],
        "completedChunks": 0,
        "totalRows": 12,
        "processedRows": 0,
        **summary(0, 0, 0),
    }
    assert job["result"] is None
    assert job["completedAt"] is None
    assert is_utc_timestamp(job["createdAt"]) and is_utc_timestamp(job["updatedAt"])


@pytest.mark.usefixtures("worker")
async def test_finished_job_has_report_urls_and_summary(client: httpx.AsyncClient) -> None:
    rows = [entrance("f1"), entrance("f2", latitude="100"), entrance("f1")]
    batch_id = (await post_rows(client, rows)).json()["batchId"]
    job = await wait_for_batch(client, batch_id)
    assert job["status"] == "completed"
    assert set(job) >= JOB_KEYS
    assert set(job["result"]) == {"reportUrls", "summary"}
    urls = job["result"]["reportUrls"]
    assert set(urls) == {"success", "duplicates", "failures"}
    assert all(
        isinstance(url, str) and url.startswith(f"{BASE_URL}/files/") for url in urls.values()
    )
    assert job["result"]["summary"] == summary(1, 1, 1)
    progress = job["progress"]
    assert progress["completedChunks"] == progress["totalChunks"]
    assert progress["processedRows"] == progress["totalRows"] == 3
    for key in ("createdAt", "updatedAt", "completedAt", "reportsExpireAt"):
        assert is_utc_timestamp(job[key]), (key, job[key])


@pytest.mark.usefixtures("worker")
async def test_report_url_of_an_empty_report_is_null(client: httpx.AsyncClient) -> None:
    batch_id = (await post_rows(client, [entrance("e1")])).json()["batchId"]
    job = await wait_for_batch(client, batch_id)
    urls = job["result"]["reportUrls"]
    assert urls["success"] is not None
    assert urls["duplicates"] is None and urls["failures"] is None


async def test_another_users_job_is_403(client: httpx.AsyncClient, services: Services) -> None:
    batch_id = (await post_rows(client, [entrance("p1")])).json()["batchId"]
    async with user_client(services, "bob") as bob:
        assert_error(await bob.get(f"/api/v1/jobs/{batch_id}"), 403, "forbidden")


@pytest.mark.parametrize("role", ["moderator", "admin"])
async def test_moderators_and_admins_read_any_job(
    client: httpx.AsyncClient, services: Services, role: str
) -> None:
    batch_id = (await post_rows(client, [entrance("p1")])).json()["batchId"]
    async with user_client(services, "staff", role) as staff:
        response = await staff.get(f"/api/v1/jobs/{batch_id}")
    assert response.status_code == 200, response.text
    assert response.json()["batchId"] == batch_id


async def test_unknown_job_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/jobs/00000000-0000-4000-8000-000000000000")
    assert_error(response, 404, "not_found")


@pytest.mark.parametrize("raw_id", ["not-a-uuid", "123", "0000-0000"])
async def test_job_id_that_is_not_a_uuid_is_404(client: httpx.AsyncClient, raw_id: str) -> None:
    assert_error(await client.get(f"/api/v1/jobs/{raw_id}"), 404, "not_found")


# --------------------------------------------------------------------- GET /api/v1/jobs


async def test_job_list_envelope(client: httpx.AsyncClient) -> None:
    await post_rows(client, [entrance("l1")])
    body = (await client.get("/api/v1/jobs")).json()
    assert set(body) == {"items", "total", "page", "pageSize"}
    assert body["total"] == 1 and body["page"] == 1 and body["pageSize"] == 50
    (item,) = body["items"]
    assert set(item) >= JOB_KEYS


async def test_users_list_their_own_jobs_and_moderators_list_all(
    client: httpx.AsyncClient, services: Services
) -> None:
    mine = (await post_rows(client, [entrance("o1")])).json()["batchId"]
    async with user_client(services, "bob") as bob:
        theirs = (await post_rows(bob, [entrance("o2")])).json()["batchId"]
        bob_list = (await bob.get("/api/v1/jobs")).json()
    alice_list = (await client.get("/api/v1/jobs")).json()
    assert [j["batchId"] for j in alice_list["items"]] == [mine] and alice_list["total"] == 1
    assert [j["batchId"] for j in bob_list["items"]] == [theirs] and bob_list["total"] == 1
    for role in ("moderator", "admin"):
        async with user_client(services, f"staff-{role}", role) as staff:
            every = (await staff.get("/api/v1/jobs")).json()
        assert {j["batchId"] for j in every["items"]} == {mine, theirs} and every["total"] == 2


async def test_job_list_is_newest_first(client: httpx.AsyncClient) -> None:
    ids = [(await post_rows(client, [entrance(f"o{i}")])).json()["batchId"] for i in range(3)]
    body = (await client.get("/api/v1/jobs")).json()
    assert [j["batchId"] for j in body["items"]] == ids[::-1]


async def test_job_list_filters_by_status_and_dataset(
    client: httpx.AsyncClient, services: Services
) -> None:
    async with running_worker(services):
        done = (await post_rows(client, [entrance("s1")])).json()["batchId"]
        await wait_for_batch(client, done)
    active = (await post_rows(client, [entrance("s2")])).json()["batchId"]
    caves = (await post_rows(client, [{"name": "Gouffre"}], "caves")).json()["batchId"]

    async def listed(query: dict[str, str]) -> list[str]:
        body = (await client.get(f"/api/v1/jobs?{urlencode(query)}")).json()
        assert body["total"] == len(body["items"])
        return [j["batchId"] for j in body["items"]]

    assert await listed({"status": "completed"}) == [done]
    assert await listed({"status": "active"}) == [caves, active]
    assert await listed({"dataset": "caves"}) == [caves]
    assert await listed({"dataset": "entrances"}) == [active, done]
    assert await listed({"dataset": "entrances", "status": "active"}) == [active]
    assert await listed({"status": "failed"}) == []


async def test_job_list_filters_by_initiator_and_day(
    client: httpx.AsyncClient, services: Services
) -> None:
    mine = (await post_rows(client, [entrance("d1")])).json()["batchId"]
    async with user_client(services, "bob") as bob:
        theirs = (await post_rows(bob, [entrance("d2")])).json()["batchId"]
        assert_error(await bob.get("/api/v1/jobs?initiator=alice"), 403, "forbidden")
        assert (await bob.get("/api/v1/jobs?initiator=bob")).json()["total"] == 1
    async with services.pool.connection() as conn:
        await conn.execute(
            "UPDATE batches SET created_at = '2026-03-01 23:30+00' WHERE id = %s", (mine,)
        )
    async with user_client(services, "mod", "moderator") as staff:

        async def listed(query: str) -> list[str]:
            body = (await staff.get(f"/api/v1/jobs?{query}")).json()
            return [j["batchId"] for j in body["items"]]

        assert await listed("initiator=bob") == [theirs]
        assert await listed("initiator=alice") == [mine]
        assert await listed("initiator=nobody") == []
        # Days are UTC days, both ends included.
        assert await listed("since=2026-03-01&until=2026-03-01") == [mine]
        assert await listed("until=2026-02-28") == []
        assert await listed("since=2026-03-02") == [theirs]
        for wrong in ("March", "0", "2026-02-31"):
            assert_error(await staff.get(f"/api/v1/jobs?since={wrong}"), 422, "invalid_request")


async def test_job_list_pages(client: httpx.AsyncClient) -> None:
    ids = [(await post_rows(client, [entrance(f"g{i}")])).json()["batchId"] for i in range(3)]
    body = (await client.get("/api/v1/jobs?pageSize=1&page=2")).json()
    assert body["page"] == 2 and body["pageSize"] == 1 and body["total"] == 3
    assert [j["batchId"] for j in body["items"]] == [ids[1]]
    past_the_end = (await client.get("/api/v1/jobs?pageSize=2&page=3")).json()
    assert past_the_end["items"] == [] and past_the_end["total"] == 3


# ------------------------------------------------------ POST /api/v1/jobs/{id}/report-links


@pytest.mark.usefixtures("worker")
async def test_report_links_gives_fresh_links_to_those_who_may_read_the_job(
    client: httpx.AsyncClient, services: Services
) -> None:
    rows = [entrance("r1"), entrance("r2", latitude="north")]
    batch_id = (await post_rows(client, rows)).json()["batchId"]
    await wait_for_batch(client, batch_id)
    response = await client.post(f"/api/v1/jobs/{batch_id}/report-links")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"reportUrls", "expiresAt"} and is_utc_timestamp(body["expiresAt"])
    assert set(body["reportUrls"]) == {"success", "duplicates", "failures"}
    assert body["reportUrls"]["duplicates"] is None
    report = read_csv_report(await download(client, body["reportUrls"]["failures"]))
    assert report[1][0] == "3"
    async with user_client(services, "bob") as bob:
        refused = await bob.post(f"/api/v1/jobs/{batch_id}/report-links")
    assert_error(refused, 403, "forbidden")


# -------------------------------------------------------------------- notifications


async def finished_batches(client: httpx.AsyncClient, count: int, prefix: str) -> list[str]:
    """Post ``count`` one-row batches, each once the one before has finished, so that
    they finish in the order they were posted (needs a worker)."""
    ids = []
    for i in range(count):
        response = await post_rows(client, [entrance(f"{prefix}{i}")])
        ids.append(response.json()["batchId"])
        await wait_for_batch(client, ids[-1])
    return ids


@pytest.mark.usefixtures("worker")
async def test_notifications_list_unread_filter_and_read_marks(client: httpx.AsyncClient) -> None:
    first, second = await finished_batches(client, 2, "alice")

    listing = await client.get("/api/v1/notifications")
    assert listing.status_code == 200, listing.text
    body = listing.json()
    assert set(body) == {"items", "total", "page", "pageSize", "unreadCount"}
    assert body["total"] == 2 and body["unreadCount"] == 2
    assert body["page"] == 1 and body["pageSize"] == 50
    assert [n["batchId"] for n in body["items"]] == [second, first]  # newest first
    item = body["items"][1]
    assert {"id", "type", "batchId", "payload", "createdAt", "readAt"} <= set(item)
    assert item["type"] == "IMPORT_COMPLETE" and item["readAt"] is None
    assert is_utc_timestamp(item["createdAt"])

    read = await client.post(f"/api/v1/notifications/{item['id']}/read")
    assert read.status_code == 204 and read.content == b""

    unread = (await client.get("/api/v1/notifications?unread=true")).json()
    assert [n["batchId"] for n in unread["items"]] == [second]
    assert unread["total"] == 1 and unread["unreadCount"] == 1
    everything = (await client.get("/api/v1/notifications")).json()
    assert everything["total"] == 2 and everything["unreadCount"] == 1
    assert is_utc_timestamp(everything["items"][1]["readAt"])

    paged = (await client.get("/api/v1/notifications?pageSize=1&page=2")).json()
    assert [n["batchId"] for n in paged["items"]] == [first] and paged["total"] == 2

    read_all = await client.post("/api/v1/notifications/read-all")
    assert read_all.status_code == 204
    after = (await client.get("/api/v1/notifications?unread=true")).json()
    assert after["items"] == [] and after["total"] == 0 and after["unreadCount"] == 0


@pytest.mark.usefixtures("worker")
async def test_another_users_notification_cannot_be_marked_read(
    client: httpx.AsyncClient, services: Services
) -> None:
    async with user_client(services, "bob") as bob:
        await finished_batches(bob, 1, "bob")
        (theirs,) = (await bob.get("/api/v1/notifications")).json()["items"]

        response = await client.post(f"/api/v1/notifications/{theirs['id']}/read")
        assert_error(response, 404, "not_found")
        assert (await client.post("/api/v1/notifications/read-all")).status_code == 204
        assert (await client.get("/api/v1/notifications")).json()["total"] == 0

        after = (await bob.get("/api/v1/notifications")).json()
        assert after["unreadCount"] == 1 and after["items"][0]["readAt"] is None


async def test_unknown_notification_is_404(client: httpx.AsyncClient) -> None:
    assert_error(await client.post("/api/v1/notifications/999999/read"), 404, "not_found")


# ---------------------------------------------------------------------------- health


async def test_health_is_ok_with_every_component_ok(app_client: httpx.AsyncClient) -> None:
    response = await app_client.get("/health")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "status": "ok",
        "components": {"database": "ok", "queue": "ok", "storage": "ok", "email": "ok"},
    }


async def test_live_and_ready_answer_a_load_balancer(app_client: httpx.AsyncClient) -> None:
    live = await app_client.get("/health/live")
    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    ready = await app_client.get("/health/ready")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready", "reason": None})


async def test_not_ready_while_a_migration_is_missing(
    app_client: httpx.AsyncClient, services: Services
) -> None:
    async with services.pool.connection() as conn:
        await conn.execute("DELETE FROM importq_migrations WHERE name LIKE '0007%%'")
    ready = await app_client.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json()["status"] == "not_ready"
    assert ready.json()["reason"].startswith("migrations not applied: 0007_")
    assert (await app_client.get("/health/live")).status_code == 200


async def test_a_stopping_service_refuses_uploads_but_still_answers_reads(
    client: httpx.AsyncClient,
) -> None:
    accepted = await post_rows(client, [entrance("s1")])
    assert accepted.status_code == 202
    await client._transport.app.state.drain()  # type: ignore[attr-defined]
    refused = await post_rows(client, [entrance("s2")])
    assert_error(refused, 503, "shutting_down")
    assert refused.headers["retry-after"] == "5"
    ready = await client.get("/health/ready")
    assert (ready.status_code, ready.json()["reason"]) == (503, "stopping")
    status = await client.get(f"/api/v1/jobs/{accepted.json()['batchId']}")
    assert status.status_code == 200


# ---------------------------------------------------------------- local report links


@pytest.fixture
async def failures_url(client: httpx.AsyncClient, worker: asyncio.Task[None]) -> tuple[str, str]:
    """A finished batch's id and the link to its failures report."""
    rows = [entrance("k1"), entrance("k2", latitude="north")]
    batch_id = (await post_rows(client, rows)).json()["batchId"]
    job = await wait_for_batch(client, batch_id)
    url: str = job["result"]["reportUrls"]["failures"]
    return batch_id, url


async def test_valid_report_link_downloads_as_an_attachment_without_a_token(
    services: Services, failures_url: tuple[str, str]
) -> None:
    batch_id, url = failures_url
    async with api_client(services, None) as anonymous:
        response = await anonymous.get(url.removeprefix(BASE_URL))
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"] == (
        f'attachment; filename="entrances-{batch_id}-failures.csv"'
    )
    assert response.headers["content-type"].startswith("text/csv")
    report = read_csv_report(response.content)
    assert report[1][:2] == ["3", 'w3geo:latitude: "north" is not a number']


async def test_head_on_a_report_link_answers_like_get_without_the_body(
    services: Services, failures_url: tuple[str, str]
) -> None:
    _, url = failures_url
    async with api_client(services, None) as anonymous:
        got = await anonymous.get(url.removeprefix(BASE_URL))
        head = await anonymous.head(url.removeprefix(BASE_URL))
    assert head.status_code == 200
    assert head.content == b""
    for name in ("content-type", "content-length", "content-disposition"):
        assert head.headers[name] == got.headers[name]


async def test_a_report_link_is_served_while_the_database_is_away(
    services: Services, failures_url: tuple[str, str]
) -> None:
    _, url = failures_url
    services.outage._back.clear()  # as the outage watch does once it confirms one
    try:
        async with api_client(services, None) as anonymous:
            assert (await anonymous.get(url.removeprefix(BASE_URL))).status_code == 200
            away = await anonymous.get("/api/v1/jobs")
        assert away.status_code == 503
    finally:
        services.outage._back.set()


async def test_report_link_with_a_tampered_signature_is_403(
    services: Services, failures_url: tuple[str, str]
) -> None:
    _, url = failures_url
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    signature = query["signature"]
    tampered = [
        {**query, "signature": signature[:-1] + ("0" if signature[-1] != "0" else "1")},
        {**query, "expires": str(int(query["expires"]) + 3600)},
        {**query, "name": "something-else.csv"},
    ]
    async with api_client(services, None) as anonymous:
        for changed in tampered:
            response = await anonymous.get(f"{parts.path}?{urlencode(changed)}")
            assert_error(response, 403, "link_invalid")
        other_path = parts.path.replace("failures.csv", "success.csv")
        assert_error(await anonymous.get(f"{other_path}?{parts.query}"), 403, "link_invalid")


async def test_expired_report_link_is_403(
    services: Services, failures_url: tuple[str, str]
) -> None:
    batch_id, url = failures_url
    path = storage_path(url)
    name = f"entrances-{batch_id}-failures.csv"
    expired = services.storage.link(
        path, download_name=name, expires_at=datetime.now(UTC) - timedelta(minutes=1)
    )
    fresh = services.storage.link(
        path, download_name=name, expires_at=datetime.now(UTC) + timedelta(minutes=5)
    )
    async with api_client(services, None) as anonymous:
        assert_error(await anonymous.get(expired.removeprefix(BASE_URL)), 403, "link_invalid")
        assert (await anonymous.get(fresh.removeprefix(BASE_URL))).status_code == 200
