"""Token lifecycle: named, expiring, revocable tokens; disabled users; admins manage users."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

from conftest import new_user
from helpers import api_client
from importq import accounts
from importq.services import Services


async def test_only_admins_manage_users_and_a_new_users_token_works(services: Services) -> None:
    _, admin_token = await new_user(services, "chief", "admin")
    _, user_token = await new_user(services, "plain")
    async with api_client(services, admin_token) as admin, api_client(services, user_token) as user:
        assert (await user.get("/api/v1/users")).json()["code"] == "forbidden"
        refused = await user.post("/api/v1/users", json={"name": "x"})
        assert refused.status_code == 403
        created = await admin.post("/api/v1/users", json={"name": "caver", "role": "moderator"})
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["user"]["role"] == "moderator"
        again = await admin.post("/api/v1/users", json={"name": "caver"})
        assert (again.status_code, again.json()["code"]) == (409, "user_exists")
        names = [u["name"] for u in (await admin.get("/api/v1/users")).json()]
        assert {"chief", "plain", "caver"} <= set(names)
    async with api_client(services, body["token"]["token"]) as caver:
        listed = (await caver.get("/api/v1/tokens")).json()
    assert [t["id"] for t in listed] == [body["token"]["id"]]
    assert "token" not in listed[0] and listed[0]["lastUsedAt"] is not None


async def test_a_revoked_token_is_refused_on_its_very_next_request(services: Services) -> None:
    _, admin_token = await new_user(services, "boss", "admin")
    _, first = await new_user(services, "owner")
    async with api_client(services, admin_token) as admin:
        issued = (await admin.post("/api/v1/users/owner/tokens", json={"name": "laptop"})).json()
    async with (
        api_client(services, issued["token"]) as laptop,
        api_client(services, first) as other,
    ):
        assert (await laptop.get("/api/v1/jobs")).status_code == 200
        mine = {t["id"]: t["name"] for t in (await other.get("/api/v1/tokens")).json()}
        assert mine[issued["id"]] == "laptop"
        assert (await other.delete(f"/api/v1/tokens/{issued['id']}")).status_code == 204
        assert (await other.delete(f"/api/v1/tokens/{issued['id']}")).status_code == 204
        refused = await laptop.get("/api/v1/jobs")
        assert (refused.status_code, refused.json()["code"]) == (401, "token_revoked")
        assert (await other.get("/api/v1/jobs")).status_code == 200
        # Another user's token cannot be revoked (nor told from a missing one).
        _, stranger = await new_user(services, "stranger")
        async with api_client(services, stranger) as outsider:
            theirs = (await other.get("/api/v1/tokens")).json()[0]["id"]
            assert (await outsider.delete(f"/api/v1/tokens/{theirs}")).status_code == 404
            missing = await outsider.delete(f"/api/v1/tokens/{uuid.uuid4()}")
            assert missing.json()["code"] == "unknown_token"


async def test_an_expired_token_and_a_disabled_users_are_refused(services: Services) -> None:
    _, admin_token = await new_user(services, "head", "admin")
    _, kept = await new_user(services, "leaver")
    async with api_client(services, admin_token) as admin:
        brief = (await admin.post("/api/v1/users/leaver/tokens", json={"expiresIn": 1})).json()
        for never in (0, 1e308, 11 * 365 * 24 * 3600):
            bad = await admin.post("/api/v1/users/leaver/tokens", json={"expiresIn": never})
            assert bad.status_code == 422, never
        unknown = await admin.post("/api/v1/users/nobody/tokens")
        assert (unknown.status_code, unknown.json()["code"]) == (404, "unknown_user")
    async with api_client(services, brief["token"]) as short:
        assert (await short.get("/api/v1/jobs")).status_code == 200
        await asyncio.sleep(1.2)
        expired = await short.get("/api/v1/jobs")
        assert (expired.status_code, expired.json()["code"]) == (401, "token_expired")
    async with services.pool.connection() as conn:
        assert await accounts.disable_user(conn, "leaver")
    async with api_client(services, kept) as leaver:
        disabled = await leaver.get("/api/v1/jobs")
        assert (disabled.status_code, disabled.json()["code"]) == (401, "user_disabled")


def test_the_cli_lists_revokes_and_disables(database_url: str, tmp_path: Path) -> None:
    env = {"IMPORTQ_DATABASE_URL": database_url, "IMPORTQ_DATA_DIR": str(tmp_path)}

    def importq(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "importq.cli", "users", *args],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    created = importq("create", "cli-user")
    assert created.returncode == 0, created.stderr
    issued = importq("token", "cli-user", "--label", "ci", "--expires-in", "90d")
    secret = issued.stdout.strip()
    token_id = issued.stderr.strip().rpartition(" ")[2]
    assert len(secret) > 30 and uuid.UUID(token_id)
    listed = importq("tokens", "cli-user").stdout
    assert token_id in listed and "ci" in listed and secret not in listed
    assert importq("revoke", token_id).returncode == 0
    assert "revoked" in importq("tokens", "cli-user").stdout
    assert importq("revoke", str(uuid.uuid4())).returncode == 1
    assert importq("disable", "cli-user").returncode == 0
    assert importq("disable", "nobody").returncode == 1
    for wrong in ("soon", "nan", "inf", "11000d"):
        assert importq("token", "cli-user", "--expires-in", wrong).returncode == 2
