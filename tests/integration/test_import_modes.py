"""Import modes: insert, upsert and update-only; what each does to a stored row, what the
reports and counters say, and two batches updating the same keys at once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from accounting import count
from conftest import make_settings, new_user
from helpers import (
    api_client,
    csv_text,
    entrance,
    imported,
    publish_configured,
    report_records,
    running_worker,
    summary,
    wait_for_batch,
)
from importq.config import Settings
from importq.services import Services


async def _import(
    client: httpx.AsyncClient,
    rows: list[dict[str, str]],
    mode: str | None = None,
    *,
    dry: bool = False,
    header: list[str] | None = None,
) -> dict[str, Any]:
    params = {"mode": mode} if mode else {}
    if dry:
        params["dryRun"] = "true"
    answer = await client.post(
        "/api/v1/entrances/import-rows",
        params=params,
        content=csv_text(rows, header).encode(),
        headers={"Content-Type": "text/csv"},
    )
    assert answer.status_code == 202, answer.text
    return await wait_for_batch(client, answer.json()["batchId"])


async def _stored(services: Services) -> dict[str, dict[str, Any]]:
    async with services.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT source_id, target_id, latitude, label, description FROM entrances"
        )
        return {
            row[0]: dict(
                zip(("target_id", "latitude", "label", "description"), row[1:], strict=True)
            )
            for row in await cursor.fetchall()
        }


STORED = [
    entrance("a", latitude="1", **{"rdfs:label": "A", "dct:description": "kept"}),
    entrance("b", latitude="2", **{"rdfs:label": "B"}),
    entrance("c", latitude="3", **{"rdfs:label": "C"}),
]


@pytest.mark.usefixtures("worker")
async def test_upsert_updates_stored_rows_inserts_new_ones_and_leaves_equal_ones(
    client: httpx.AsyncClient, services: Services
) -> None:
    await _import(client, STORED)
    before = await _stored(services)
    rows = [
        entrance("a", latitude="1.5", **{"rdfs:label": "A2"}),  # 2 updated: two columns
        entrance("b", latitude="2.0", **{"rdfs:label": "B"}),  # 3 unchanged: 2.0 is 2
        entrance("d", latitude="4", **{"rdfs:label": "D"}),  # 4 inserted
        entrance("a", latitude="9", **{"rdfs:label": "A3"}),  # 5 duplicate of line 2
        entrance("e", latitude="95"),  # 6 failure: the row rules
        entrance("c", latitude="3", **{"rdfs:label": ""}),  # 7 updated: emptied
    ]
    # dct:description is not in the file: the stored value stays.
    header = [*entrance("x"), "rdfs:label"]
    job = await _import(client, rows, "upsert", header=header)
    assert job["mode"] == "upsert" and job["status"] == "completed"
    assert job["result"]["summary"] == summary(4, 1, 1, updated=2, unchanged=1)
    progress = job["progress"]
    assert (progress["inserted"], progress["updated"], progress["unchanged"]) == (1, 2, 1)

    successes = await report_records(client, job, "success")
    assert [(r["line"], r["id"], r["outcome"], r["changedColumns"]) for r in successes] == [
        ("2", "a", "updated", "w3geo:latitude; rdfs:label"),
        ("3", "b", "unchanged", ""),
        ("4", "d", "inserted", ""),
        ("7", "c", "updated", "rdfs:label"),
    ]
    after = await _stored(services)
    # An update keeps the row (and its id); an unchanged row keeps its values.
    for key in ("a", "b", "c"):
        assert after[key]["target_id"] == before[key]["target_id"]
        assert {r["id"]: r["targetId"] for r in successes}[key] == str(before[key]["target_id"])
    assert after["a"] == {**before["a"], "latitude": 1.5, "label": "A2"}
    assert after["a"]["description"] == "kept"
    assert after["c"]["label"] is None  # an empty cell stores NULL
    assert after["b"] == before["b"]
    duplicates = await report_records(client, job, "duplicates")
    assert [(r["line"], r["message"]) for r in duplicates] == [("5", "duplicate of line 2")]


@pytest.mark.usefixtures("worker")
async def test_update_only_fails_new_keys_and_insert_keeps_stored_rows(
    client: httpx.AsyncClient, services: Services
) -> None:
    await _import(client, STORED)
    rows = [entrance("a", latitude="7"), entrance("z", latitude="8"), entrance("z")]
    job = await _import(client, rows, "update-only")
    assert job["result"]["summary"] == summary(1, 1, 1, updated=1)
    failures = await report_records(client, job, "failures")
    assert [(r["line"], r["message"], r["id"]) for r in failures] == [("3", "not found", "z")]
    assert [(r["line"], r["message"]) for r in await report_records(client, job, "duplicates")] == [
        ("4", "duplicate of line 3")
    ]
    assert (await _stored(services))["a"]["latitude"] == 7
    assert "z" not in await _stored(services)

    inserted = await _import(client, [entrance("a", latitude="6")], "insert")
    assert inserted["result"]["summary"] == summary(0, 1, 0)
    assert (await _stored(services))["a"]["latitude"] == 7


@pytest.mark.usefixtures("worker")
async def test_an_upsert_dry_run_reports_what_the_upsert_then_does(
    client: httpx.AsyncClient, services: Services
) -> None:
    async with services.pool.connection() as conn:
        await conn.execute("ALTER TABLE entrances ADD CONSTRAINT no_equator CHECK (latitude <> 0)")
    await _import(client, STORED)
    rows = [
        entrance("a", latitude="1.25"),  # updated
        entrance("b", latitude="0"),  # the table's CHECK refuses the update
        entrance("n", latitude="0"),  # the table's CHECK refuses the insert
        entrance("m"),  # inserted
        entrance("c", latitude="3"),  # unchanged
    ]
    before = await _stored(services)
    dry = await _import(client, rows, "upsert", dry=True)
    assert await _stored(services) == before
    real = await _import(client, rows, "upsert")
    assert dry["result"]["summary"] == real["result"]["summary"]
    assert real["result"]["summary"] == summary(3, 0, 2, updated=1, unchanged=1)
    refused = await report_records(client, real, "failures")
    assert [(r["line"], r["message"]) for r in refused] == [
        ("3", "the table refused the row: it breaks a rule of the table (no_equator)"),
        ("4", "the table refused the row: it breaks a rule of the table (no_equator)"),
    ]
    for kind in ("duplicates", "failures"):
        assert await report_records(client, dry, kind) == await report_records(client, real, kind)
    real_rows = await report_records(client, real, "success")
    assert [{**r, "targetId": ""} for r in real_rows] == await report_records(
        client, dry, "success"
    )


async def test_an_unknown_mode_is_refused_before_the_body_is_read(
    client: httpx.AsyncClient,
) -> None:
    answer = await client.post(
        "/api/v1/entrances/import-rows", params={"mode": "replace"}, json={"data": []}
    )
    assert answer.status_code == 422
    assert "mode" in answer.text


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    """The built-in datasets and ``caves``, whose upsert needs a moderator and whose
    update-only an admin."""
    datasets = tmp_path / "datasets.toml"
    datasets.write_text(
        '[datasets.caves]\ntable = "caves"\ndedup_key = ["id"]\ndefault_mode = "upsert"\n'
        'mode_roles = { upsert = "moderator", "update-only" = "admin" }\n'
        '[[datasets.caves.columns]]\nname = "id"\nfield = "id"\nrequired = true\n'
        # Fields named as importq's own bookkeeping columns are theirs to use.
        + "".join(
            f'[[datasets.caves.columns]]\nname = "{name}"\nfield = "{name}"\n'
            for name in ("line", "kind", "chunk_no", "stored", "changed_columns")
        ),
        encoding="utf-8",
    )
    return make_settings(database_url, tmp_path / "data", datasets_file=datasets)


@pytest.fixture
async def services(services: Services) -> Services:
    """conftest's services, with ``caves`` published."""
    await publish_configured(services)
    return services


async def test_a_mode_needs_the_role_the_dataset_gives_it(services: Services) -> None:
    user, moderator = (
        (await new_user(services, "u"))[1],
        (await new_user(services, "m", "moderator"))[1],
    )
    async with api_client(services, user) as as_user, api_client(services, moderator) as as_mod:
        described = (await as_user.get("/api/v1/datasets/caves")).json()
        assert described["defaultMode"] == "upsert"
        assert described["modes"] == {
            "insert": "user",
            "upsert": "moderator",
            "update-only": "admin",
        }
        for client, mode, status in (
            (as_user, None, 403),  # the default, upsert
            (as_user, "upsert", 403),
            (as_mod, "update-only", 403),
        ):
            answer = await client.post(
                "/api/v1/caves/import-rows",
                params={"mode": mode} if mode else {},
                json={"data": [{"id": "1"}]},
            )
            assert answer.status_code == status, answer.text
            assert answer.json()["code"] == "forbidden"
            assert "mode needs the" in answer.json()["detail"]


KEYS = 600


async def test_two_batches_upserting_the_same_keys_at_once_lose_nothing(
    client: httpx.AsyncClient, services: Services
) -> None:
    """Each key ends with one batch's value; no chunk fails (or deadlocks), and each
    batch counts every key once. The batches list the keys in opposite orders, and half
    the keys are new to both, so inserts race too."""
    await _import_stored(
        client, services, [entrance(f"k{i}", latitude="0.5") for i in range(0, KEYS, 2)]
    )
    first = [entrance(f"k{i}", latitude="1") for i in range(KEYS)]
    second = [entrance(f"k{i}", latitude="2") for i in reversed(range(KEYS))]
    ids = []
    for rows in (first, second):
        answer = await client.post(
            "/api/v1/entrances/import-rows", params={"mode": "upsert"}, json={"data": rows}
        )
        assert answer.status_code == 202, answer.text
        ids.append(answer.json()["batchId"])
    async with running_worker(services, concurrency=8):
        jobs = [await wait_for_batch(client, batch_id) for batch_id in ids]
    for job in jobs:
        assert job["status"] == "completed" and job["failedChunks"] == 0
        got = job["result"]["summary"]
        assert got["successes"] == KEYS and got["duplicates"] == got["failures"] == 0
        assert got["unchanged"] == 0
    # Each new key was inserted by one batch and updated by the other.
    assert sum(job["result"]["summary"]["inserted"] for job in jobs) == KEYS // 2
    assert sum(job["result"]["summary"]["updated"] for job in jobs) == KEYS + KEYS // 2
    stored = await _stored(services)
    assert len(stored) == KEYS
    assert {row["latitude"] for row in stored.values()} <= {1, 2}
    assert await count(services, "SELECT count(*) FROM chunks WHERE status <> 'done'") == 0


async def _import_stored(
    client: httpx.AsyncClient, services: Services, rows: list[dict[str, str]]
) -> None:
    async with running_worker(services):
        job = await _import(client, rows)
    assert job["result"]["summary"]["inserted"] == len(rows)


async def test_concurrent_upserts_run_in_parallel_workers(
    client: httpx.AsyncClient, services: Services
) -> None:
    """Ten batches upserting one overlapping set of keys, all at once."""
    rows = [entrance(f"p{i}", latitude=str(i % 7)) for i in range(200)]
    answers = await asyncio.gather(
        *(
            client.post(
                "/api/v1/entrances/import-rows",
                params={"mode": "upsert"},
                json={"data": rows[n * 10 :] + rows[: n * 10]},
            )
            for n in range(10)
        )
    )
    async with running_worker(services, concurrency=8):
        jobs = [await wait_for_batch(client, a.json()["batchId"]) for a in answers]
    assert all(job["failedChunks"] == 0 for job in jobs)
    assert sum(job["result"]["summary"]["inserted"] for job in jobs) == 200
    assert sum(job["result"]["summary"]["successes"] for job in jobs) == 2000
    assert await count(services, "SELECT count(*) FROM entrances") == 200


async def test_fields_named_as_importqs_columns_upsert_and_undo(services: Services) -> None:
    admin = (await new_user(services, "root", "admin"))[1]
    moderator = (await new_user(services, "moder", "moderator"))[1]
    fields = ("line", "kind", "chunk_no", "stored", "changed_columns")

    def cave(ident: str, value: str) -> dict[str, str]:
        return {"id": ident, **dict.fromkeys(fields, value)}

    async with api_client(services, admin) as client, running_worker(services):
        first = await imported(client, [cave("1", "a"), cave("2", "a")], "caves", mode="insert")
        assert first["result"]["summary"] == summary(2, 0, 0)
        second = await imported(client, [cave("1", "b"), cave("3", "b")], "caves", mode="upsert")
        assert second["result"]["summary"] == summary(2, 0, 0, updated=1)
        updated = await report_records(client, second, "success")
        assert updated[0]["changedColumns"] == "; ".join(fields)
        changed = await imported(client, [cave("1", "c")], "caves", mode="update-only")
        assert changed["result"]["summary"] == summary(1, 0, 0, updated=1)

        # A moderator sees every batch, but may not undo what only an admin may import.
        async with api_client(services, moderator) as as_moderator:
            refused = await as_moderator.post(f"/api/v1/jobs/{changed['batchId']}/undo")
            assert refused.status_code == 403, refused.text
        for job in (changed, second, first):
            answer = await client.post(f"/api/v1/jobs/{job['batchId']}/undo")
            assert answer.status_code == 202, answer.text
            undo = await wait_for_batch(client, answer.json()["batchId"])
            assert undo["status"] == "completed" and undo["result"]["summary"]["failures"] == 0
    assert await count(services, "SELECT count(*) FROM caves") == 0


@pytest.mark.usefixtures("worker")
async def test_a_value_another_unique_index_refuses_fails_its_row_alone(
    client: httpx.AsyncClient, services: Services
) -> None:
    await _import(client, STORED)
    async with services.pool.connection() as conn:
        await conn.execute("CREATE UNIQUE INDEX entrances_label ON entrances (label)")
    rows = [
        entrance("b", **{"rdfs:label": "A"}),  # a's label: the index refuses it
        entrance("c", **{"rdfs:label": "C2"}),
        entrance("n", **{"rdfs:label": "B"}),  # b's label (still), for a new row
    ]
    for mode, expected in (("upsert", summary(1, 0, 2, updated=1)), ("insert", summary(0, 2, 1))):
        job = await _import(client, rows, mode)
        assert job["status"] == "completed", job
        assert job["result"]["summary"] == expected
    refused = await report_records(
        client, job := await _import(client, rows, "update-only"), "failures"
    )
    assert {r["id"]: r["message"] for r in refused} == {
        "b": "the table refused the row: a stored row has the same value",
        "n": "not found",
    }
    assert job["status"] == "completed"
