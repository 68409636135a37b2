"""What the OpenAPI document promises, case by case: the answers the fuzz run of
``test_openapi_fuzz.py`` relies on, each pinned with the request that showed it."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from conftest import new_user
from helpers import api_client, entrance, wait_for_batch
from importq import accounts
from importq.services import Services


def _refused(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    return body


async def test_a_method_a_path_lacks_is_405_with_every_method_it_has(
    client: httpx.AsyncClient,
) -> None:
    # Two routes share the path: GET lists users, POST creates one.
    response = await client.request("TRACE", "/api/v1/users")
    _refused(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "GET, POST"
    response = await client.delete("/files/reports/x/failures.csv")
    assert response.headers["allow"] == "GET, HEAD"
    response = await client.post("/openapi.json")  # the app's own route
    assert response.headers["allow"] == "GET, HEAD"


async def test_malformed_json_is_400_bad_json_on_every_route(
    services: Services, client: httpx.AsyncClient
) -> None:
    _, admin = await new_user(services, "boss", "admin")
    async with api_client(services, admin) as as_admin:
        for body in (b"{", b"\xff\xfe{", b"[1,"):
            for path in ("/api/v1/users", "/api/v1/users/boss/tokens"):
                response = await as_admin.post(
                    path, content=body, headers={"Content-Type": "application/json"}
                )
                assert "not valid JSON" in _refused(response, 400, "bad_json")["detail"]
    response = await client.post(
        "/api/v1/entrances/import-rows", content=b"{", headers={"Content-Type": "application/json"}
    )
    _refused(response, 400, "bad_json")


async def test_a_well_formed_body_that_does_not_fit_is_422_with_a_readable_detail(
    services: Services,
) -> None:
    _, admin = await new_user(services, "chief", "admin")
    async with api_client(services, admin) as as_admin:
        response = await as_admin.post("/api/v1/users", json={"name": "two words"})
    body = _refused(response, 422, "invalid_request")
    assert body["detail"].startswith("body.name: String should match pattern")


async def test_the_202_points_at_the_batch_in_location(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/entrances/import-rows", json={"data": [entrance("located")]}
    )
    assert response.status_code == 202
    assert response.headers["location"] == response.json()["statusUrl"]


@pytest.mark.parametrize(
    "url",
    [
        "ftp://hooks.example.org/",
        "http://",
        "http://hooks.example.org:65536/",
        "http://[::1]/",
        "http://hooks example.org/",
        "http://hooks.example.org/a b",
    ],
)
async def test_a_callback_url_outside_the_documented_pattern_is_400(
    client: httpx.AsyncClient, url: str
) -> None:
    response = await client.post(
        "/api/v1/entrances/import-rows",
        params={"callbackUrl": url},
        json={"data": [entrance("hooked")]},
    )
    assert "http(s) URL" in _refused(response, 400, "bad_callback_url")["detail"]


@pytest.mark.usefixtures("worker")
async def test_unknown_and_blank_header_names_are_ignored_even_twice(
    client: httpx.AsyncClient,
) -> None:
    """Only a dataset column named twice is ambiguous: others are dropped, and listed."""
    row = entrance("spare-columns")
    header = ",".join([*row, "note", "NOTE", "", ""])
    body = f"{header}\r\n{','.join([*row.values(), 'a', 'b', '', ''])}\r\n"
    response = await client.post(
        "/api/v1/entrances/import-rows", content=body, headers={"Content-Type": "text/csv"}
    )
    assert response.status_code == 202, response.text
    job = await wait_for_batch(client, response.json()["batchId"])
    assert job["progress"]["successes"] == 1
    assert job["warnings"] == ["Columns not in dataset entrances were ignored: note, NOTE."]


@pytest.mark.usefixtures("worker")
async def test_json_keys_postgresql_cannot_store_are_cleaned_not_a_500(
    client: httpx.AsyncClient,
) -> None:
    """A NUL or a lone surrogate in a key (JSON allows both) names an unknown column."""
    row = json.dumps(entrance("odd-keys"))[:-1] + ', "a\\u0000b": 1, "c\\ud805": {"x": 1}}'
    response = await client.post(
        "/api/v1/entrances/import-rows",
        content=f'{{"data": [{row}]}}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 202, response.text
    job = await wait_for_batch(client, response.json()["batchId"])
    assert job["progress"]["failures"] == 1  # the nested value fails the row
    assert job["warnings"] == ["Columns not in dataset entrances were ignored: ab, c?."]


async def test_a_tampered_link_with_non_ascii_characters_is_403(
    app_client: httpx.AsyncClient,
) -> None:
    response = await app_client.get(
        "/files/reports/x/failures.csv", params={"expires": 1, "name": "a", "signature": "é"}
    )
    _refused(response, 403, "link_invalid")


async def test_a_name_a_user_cannot_have_is_refused_by_the_cli_rule_too(
    services: Services,
) -> None:
    async with services.pool.connection() as conn:
        for name in ("two words", "a/b", "tab\there", "", "x" * 101, "..", "root\u00ad", "josé"):
            with pytest.raises(accounts.BadUserName):
                await accounts.create_user(conn, name)
        _, issued = await accounts.create_user(conn, "jose.m+caves@club-42")
    assert issued.secret
