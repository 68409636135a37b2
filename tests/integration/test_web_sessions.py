"""Signing in to the web pages: the session cookie, CSRF, and when a session ends.

The pages themselves are driven in a real browser by ``test_web_ui.py``; these pin the
rules at the HTTP level, where every way around them can be tried.
"""

from __future__ import annotations

import re
import uuid

import httpx
import pytest

from conftest import new_user
from helpers import api_client, entrance
from importq import accounts
from importq.api.sessions import COOKIE, SESSION_SECONDS, Session, seal
from importq.services import Services


def _form_csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found, "the form carries its CSRF token"
    return found.group(1)


def _cookie(value: str) -> dict[str, str]:
    return {"Cookie": f"{COOKIE}={value}"}


async def _sign_in(client: httpx.AsyncClient, **fields: str) -> httpx.Response:
    form = await client.get("/login")
    assert form.status_code == 200
    data = {"csrf": _form_csrf(form.text), "next": "/jobs", **fields}
    return await client.post("/login", data=data)


async def _page_csrf(client: httpx.AsyncClient) -> str:
    page = await client.get("/jobs")
    found = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', page.text)
    assert found
    return found.group(1)


async def test_a_page_sends_the_signed_out_to_sign_in_and_back(
    app_client: httpx.AsyncClient, user_token: str
) -> None:
    away = await app_client.get("/jobs?status=failed")
    assert away.status_code == 303
    assert away.headers["location"] == "/login?next=%2Fjobs%3Fstatus%3Dfailed"

    signed_in = await _sign_in(app_client, token=user_token)
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/jobs"
    cookie = signed_in.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
    page = await app_client.get("/jobs")
    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"  # Back after sign-out shows nothing
    assert 'lang="en" dir="ltr"' in page.text


async def test_a_wrong_token_or_password_or_form_is_refused(
    app_client: httpx.AsyncClient, services: Services
) -> None:
    assert (await _sign_in(app_client, token="nope")).status_code == 401
    await new_user(services, "bob")
    async with services.pool.connection() as conn:
        assert await accounts.set_password(conn, "bob", "correct horse battery")
    refused = await _sign_in(app_client, name="bob", password="wrong password!")
    assert refused.status_code == 401 and "The name or the password is wrong." in refused.text
    unknown = await _sign_in(app_client, name="nobody", password="correct horse battery")
    assert unknown.status_code == 401
    # A form posted from elsewhere has no matching token.
    forged = await app_client.post("/login", data={"csrf": "0" * 64, "name": "bob"})
    assert forged.status_code == 401 and "The form expired" in forged.text
    assert COOKIE not in app_client.cookies


async def test_a_password_session_has_a_token_of_its_own_that_signing_out_revokes(
    app_client: httpx.AsyncClient, services: Services
) -> None:
    await new_user(services, "carol")
    async with services.pool.connection() as conn:
        assert await accounts.set_password(conn, "carol", "a long passphrase")
    assert (
        await _sign_in(app_client, name="carol", password="a long passphrase")
    ).status_code == 303
    async with services.pool.connection() as conn:
        tokens = await accounts.list_tokens(conn, "carol")
    minted = [t for t in tokens if t["name"] == "web sign-in"]
    assert len(minted) == 1 and minted[0]["expires_at"] is not None
    assert (await app_client.get("/jobs")).status_code == 200

    csrf = await _page_csrf(app_client)
    out = await app_client.post("/logout", data={"csrf": csrf})
    assert out.status_code == 303 and out.headers["location"] == "/login"
    async with services.pool.connection() as conn:
        tokens = await accounts.list_tokens(conn, "carol")
    assert [t["revoked_at"] is not None for t in tokens if t["name"] == "web sign-in"] == [True]
    assert (await app_client.get("/jobs")).status_code == 303


async def test_a_session_ends_with_its_token_or_its_user(
    app_client: httpx.AsyncClient, services: Services
) -> None:
    _, token = await new_user(services, "dave")
    await _sign_in(app_client, token=token)
    assert (await app_client.get("/import")).status_code == 200
    async with services.pool.connection() as conn:
        assert await accounts.disable_user(conn, "dave")
    assert (await app_client.get("/import")).status_code == 303
    api = await app_client.get("/api/v1/jobs")
    assert (api.status_code, api.json()["code"]) == (401, "user_disabled")


async def test_a_forged_or_old_cookie_lets_no_one_in(
    app_client: httpx.AsyncClient, services: Services, user_token: str
) -> None:
    await _sign_in(app_client, token=user_token)
    value = app_client.cookies[COOKIE]
    payload, _, signature = value.partition(".")
    tampered = f"{payload}.{'0' * len(signature)}"
    app_client.cookies.clear()
    assert (await app_client.get("/jobs", headers=_cookie(tampered))).status_code == 303
    async with services.pool.connection() as conn:
        cursor = await conn.execute("SELECT id FROM api_tokens ORDER BY created_at LIMIT 1")
        row = await cursor.fetchone()
    assert row is not None
    old = seal(services.settings, Session(row[0], 1_000_000, False))
    assert (await app_client.get("/jobs", headers=_cookie(old))).status_code == 303
    fresh_but_unknown = seal(services.settings, Session(uuid.uuid4(), 2_000_000_000, False))
    assert (await app_client.get("/jobs", headers=_cookie(fresh_but_unknown))).status_code == 303
    assert SESSION_SECONDS == 12 * 3600


async def test_the_api_takes_the_cookie_and_wants_the_csrf_token_for_changes(
    app_client: httpx.AsyncClient, user_token: str
) -> None:
    await _sign_in(app_client, token=user_token)
    posted = await app_client.post("/api/v1/entrances/import-rows", json={"data": [entrance("w1")]})
    assert (posted.status_code, posted.json()["code"]) == (403, "csrf")
    csrf = await _page_csrf(app_client)
    posted = await app_client.post(
        "/api/v1/entrances/import-rows",
        json={"data": [entrance("w1")]},
        headers={"X-CSRF-Token": csrf},
    )
    assert posted.status_code == 202, posted.text
    job = await app_client.get(posted.json()["statusUrl"])
    assert job.status_code == 200
    page = await app_client.get(f"/jobs/{posted.json()['batchId']}")
    assert page.status_code == 200 and 'role="progressbar"' in page.text


@pytest.mark.parametrize(
    "target", ["//evil.example/x", "https://evil.example/", "/\\evil.example", "jobs"]
)
async def test_signing_in_never_sends_the_reader_off_the_site(
    app_client: httpx.AsyncClient, user_token: str, target: str
) -> None:
    form = await app_client.get("/login")
    answer = await app_client.post(
        "/login", data={"csrf": _form_csrf(form.text), "token": user_token, "next": target}
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/import"


async def test_someone_elses_job_page_is_refused(
    client: httpx.AsyncClient, services: Services
) -> None:
    posted = await client.post("/api/v1/entrances/import-rows", json={"data": [entrance("p")]})
    assert posted.status_code == 202
    async with api_client(services, None) as other:
        _, token = await new_user(services, "eve")
        await _sign_in(other, token=token)
        page = await other.get(f"/jobs/{posted.json()['batchId']}")
        assert page.status_code == 403
        assert (await other.get("/jobs/not-a-batch")).status_code == 404


async def test_the_jobs_page_filters_and_keeps_its_filters_across_pages(
    app_client: httpx.AsyncClient, services: Services
) -> None:
    _, token = await new_user(services, "pager", "moderator")
    async with api_client(services, token) as api:
        for i in range(27):
            assert (
                await api.post("/api/v1/entrances/import-rows", json={"data": [entrance(f"j{i}")]})
            ).status_code == 202
    await _sign_in(app_client, token=token)
    page = await app_client.get("/jobs?status=active&initiator=pager&since=2000-01-01&page=1")
    assert page.status_code == 200
    assert page.text.count('<th scope="row"><a href="/jobs/') == 25
    assert 'href="?page=2&amp;status=active&amp;initiator=pager&amp;since=2000-01-01"' in page.text
    assert 'id="filter-initiator"' in page.text  # staff may filter by user
    none = await app_client.get("/jobs?initiator=nobody&since=not-a-day")
    assert none.status_code == 200 and "No jobs match these filters." in none.text


async def test_a_new_password_ends_the_sessions_the_old_one_opened(
    app_client: httpx.AsyncClient, services: Services
) -> None:
    _, token = await new_user(services, "frank")
    async with services.pool.connection() as conn:
        assert await accounts.set_password(conn, "frank", "the first passphrase")
    await _sign_in(app_client, name="frank", password="the first passphrase")
    assert (await app_client.get("/jobs")).status_code == 200
    async with services.pool.connection() as conn:
        assert await accounts.set_password(conn, "frank", None)
    assert (await app_client.get("/jobs")).status_code == 303
    # The user's own API tokens are theirs to revoke: a password change leaves them be.
    async with api_client(services, token) as api:
        assert (await api.get("/api/v1/jobs")).status_code == 200


async def test_another_site_cannot_sign_anyone_out(
    app_client: httpx.AsyncClient, user_token: str
) -> None:
    await _sign_in(app_client, token=user_token)
    forged = await app_client.post("/logout", data={"csrf": "0" * 64})
    assert forged.status_code == 303 and forged.headers["location"] == "/jobs"
    assert "set-cookie" not in forged.headers
    assert (await app_client.get("/jobs")).status_code == 200
