"""Who may call what: every route of the OpenAPI document × every kind of caller.

A route missing from ``MATRIX`` fails the test, so none ships without its row.
"""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

from conftest import new_user
from helpers import api_client, entrance, running_worker, wait_for_batch
from importq import accounts
from importq.api.app import create_app
from importq.rules.datasets import load_datasets
from importq.services import Services

ACTORS = ("anonymous", "owner", "other", "moderator", "admin", "revoked", "expired", "disabled")
# The statuses of the actors above, in order; "ok" stands for the route's success.
EVERYONE = "ok ok ok ok ok ok ok ok"
SIGNED_IN = "401 ok ok ok ok 401 401 401"
OWNER_AND_STAFF = "401 ok 403 ok ok 401 401 401"
ADMINS = "401 403 403 403 ok 401 401 401"

ENTRANCES = load_datasets()["entrances"].definition
MAPPING = {"dataset": "entrances", "mapping": {"Lat": "w3geo:latitude"}}

# (method, path, JSON body or None, statuses, the success status)
MATRIX: list[tuple[str, str, Any, str, int]] = [
    ("POST", "/api/v1/entrances/import-rows", {"data": [{}]}, SIGNED_IN, 202),
    ("POST", "/api/v1/entrances/preview", {"data": [{}]}, SIGNED_IN, 200),
    ("GET", "/api/v1/jobs/{batch}", None, OWNER_AND_STAFF, 200),
    ("GET", "/api/v1/jobs", None, SIGNED_IN, 200),
    # The batch has no reports yet: those who may see it are told so.
    ("POST", "/api/v1/jobs/{batch}/report-links", None, OWNER_AND_STAFF, 409),
    # A finished batch's events: one, and the end (an active one's stream stays open).
    ("GET", "/api/v1/jobs/{done}/events", None, OWNER_AND_STAFF, 200),
    # Cancelling again is fine: those who may see the batch all get 202.
    ("POST", "/api/v1/jobs/{batch}/cancel", None, OWNER_AND_STAFF, 202),
    # The batch has not ended: those who may see it are told it cannot be undone yet.
    ("POST", "/api/v1/jobs/{batch}/undo", None, OWNER_AND_STAFF, 409),
    # A finished batch's upload, run again as a dry run: a new batch for each who may.
    ("POST", "/api/v1/jobs/{done}/rerun", None, OWNER_AND_STAFF, 202),
    # A run compared with itself: nothing moved.
    ("GET", "/api/v1/jobs/{done}/compare/{done}", None, OWNER_AND_STAFF, 200),
    ("GET", "/api/v1/datasets", None, SIGNED_IN, 200),
    # The current definition again: nothing is published, and admins are told so.
    ("POST", "/api/v1/datasets/entrances/versions", ENTRANCES, ADMINS, 200),
    ("GET", "/api/v1/mappings", None, SIGNED_IN, 200),
    ("PUT", "/api/v1/mappings/mine", MAPPING, SIGNED_IN, 200),
    ("DELETE", "/api/v1/mappings/{missing}", None, SIGNED_IN, 404),
    ("GET", "/api/v1/datasets/entrances", None, SIGNED_IN, 200),
    ("GET", "/api/v1/datasets/entrances/template.csv", None, SIGNED_IN, 200),
    ("GET", "/api/v1/datasets/entrances/template.xlsx", None, SIGNED_IN, 200),
    ("GET", "/api/v1/notifications", None, SIGNED_IN, 200),
    ("POST", "/api/v1/notifications/{missing}/read", None, SIGNED_IN, 404),
    ("POST", "/api/v1/notifications/read-all", None, SIGNED_IN, 204),
    ("GET", "/api/v1/users", None, ADMINS, 200),
    ("GET", "/api/v1/admin/jobs", None, ADMINS, 200),
    ("POST", "/api/v1/admin/jobs/{missing}/retry", None, ADMINS, 404),
    # The batch's chunk job has never failed: nothing of it is run again.
    ("POST", "/api/v1/admin/batches/{batch}/retry", None, ADMINS, 202),
    ("GET", "/api/v1/admin/batches/stuck", None, ADMINS, 200),
    ("POST", "/api/v1/users", {"name": "{fresh}"}, ADMINS, 201),
    ("POST", "/api/v1/users/owner/tokens", None, ADMINS, 201),
    ("GET", "/api/v1/tokens", None, SIGNED_IN, 200),
    # Keys are shared by default: no user reads the one key (per-user keys: test_webhooks).
    ("GET", "/api/v1/webhook-secret", None, SIGNED_IN, 409),
    # The owner's spare token: its owner and admins revoke it, others do not find it.
    ("DELETE", "/api/v1/tokens/{spare}", None, "401 ok 404 404 ok 401 401 401", 204),
    # A link with a wrong signature is refused to everyone alike: no token is looked at.
    ("GET", "/files/reports/x/failures.csv?expires=1&name=a&signature=b", None, EVERYONE, 403),
    ("HEAD", "/files/reports/x/failures.csv?expires=1&name=a&signature=b", None, EVERYONE, 403),
    ("GET", "/health", None, EVERYONE, 200),
    ("GET", "/health/live", None, EVERYONE, 200),
    ("GET", "/health/ready", None, EVERYONE, 200),
    # Open while IMPORTQ_METRICS_TOKEN is unset (with it: test_metrics).
    ("GET", "/metrics", None, EVERYONE, 200),
]


def _route(method: str, path: str) -> tuple[str, str]:
    """The OpenAPI document's name of a route: its method and its path template."""
    template = path.split("?")[0]
    for concrete, placeholder in (
        ("/compare/{done}", "/compare/{other_id}"),
        ("/admin/jobs/{missing}", "/admin/jobs/{job_id}"),
        ("/admin/batches/{batch}", "/admin/batches/{batch_id}"),
        ("/mappings/mine", "/mappings/{name}"),
        ("/mappings/{missing}", "/mappings/{name}"),
        ("/jobs/{batch}", "/jobs/{batch_id}"),
        ("/jobs/{done}", "/jobs/{batch_id}"),
        ("/notifications/{missing}", "/notifications/{notification_id}"),
        ("/tokens/{spare}", "/tokens/{token_id}"),
        ("/users/owner/", "/users/{name}/"),
        ("/datasets/entrances", "/datasets/{name}"),
        ("/files/reports/x/failures.csv", "/files/{path}"),
    ):
        template = template.replace(concrete, placeholder)
    return method.lower(), template


def test_every_route_has_its_row(services: Services) -> None:
    document = create_app(services.settings).openapi()
    routes = {(m, p) for p, operations in document["paths"].items() for m in operations}
    assert routes == {_route(method, path) for method, path, *_ in MATRIX}


async def test_each_caller_gets_what_its_row_says(services: Services) -> None:
    _, owner = await new_user(services, "owner")
    _, other = await new_user(services, "other")
    _, moderator = await new_user(services, "moderator", "moderator")
    _, admin = await new_user(services, "admin", "admin")
    _, leaver = await new_user(services, "leaver", "admin")  # an admin, then disabled
    async with services.pool.connection() as conn:
        spare = await accounts.token_for_existing(conn, "owner")
        revoked = await accounts.token_for_existing(conn, "owner")
        expired = await accounts.token_for_existing(conn, "owner", expires_in=0.5)
        assert spare and revoked and expired
        await accounts.revoke_token(conn, revoked.id, owner_id=None)
        assert await accounts.disable_user(conn, "leaver")
    await asyncio.sleep(0.6)
    tokens = {
        "anonymous": None,
        "owner": owner,
        "other": other,
        "moderator": moderator,
        "admin": admin,
        "revoked": revoked.secret,
        "expired": expired.secret,
        "disabled": leaver,
    }
    async with api_client(services, owner) as client:
        finished = await client.post(
            "/api/v1/entrances/import-rows", json={"data": [entrance("authz-done")]}
        )
        async with running_worker(services):
            done = (await wait_for_batch(client, finished.json()["batchId"]))["batchId"]
        # With no worker: it stays active.
        posted = await client.post(
            "/api/v1/entrances/import-rows", json={"data": [entrance("authz")]}
        )
        batch = posted.json()["batchId"]
    values = {"batch": batch, "done": done, "missing": "999999999", "spare": str(spare.id)}
    wrong: list[str] = []
    for method, path, body, statuses, success in MATRIX:
        for actor, expected in zip(ACTORS, statuses.split(), strict=True):
            concrete = path.format(**values, fresh=f"new-{actor}")
            sent = None if body is None else _filled(body, actor)
            async with api_client(services, tokens[actor]) as client:
                response = await client.request(method, concrete, json=sent)
            want = success if expected == "ok" else int(expected)
            if response.status_code != want:
                wrong.append(f"{method} {concrete} as {actor}: {response.status_code}, not {want}")
    assert wrong == []


def _filled(body: Any, actor: str) -> Any:
    if body == {"data": [{}]}:
        return {"data": [entrance(f"by-{actor}")]}
    return {"name": f"new-{actor}"} if body == {"name": "{fresh}"} else body


async def test_health_tells_why_only_to_an_admin_whose_token_still_works(
    services: Services,
) -> None:
    """A revoked admin token, or a disabled admin's, sees /health as anyone does."""
    _, admin = await new_user(services, "watcher", "admin")
    async with services.pool.connection() as conn:
        spare = await accounts.token_for_existing(conn, "watcher")
        assert spare is not None
        await accounts.revoke_token(conn, spare.id, owner_id=None)
    files = services.settings.files_dir  # storage: failing, with a reason
    shutil.rmtree(files, ignore_errors=True)
    files.parent.mkdir(parents=True, exist_ok=True)
    files.write_text("not a directory")
    try:
        seen = {}
        for who, token in (("admin", admin), ("revoked", spare.secret), ("anonymous", None)):
            async with api_client(services, token) as client:
                seen[who] = (await client.get("/health")).json()["components"]["storage"]
    finally:
        files.unlink()
    assert seen["admin"].startswith("error: ")
    assert seen["revoked"] == seen["anonymous"] == "failing"
