"""What publishing a version does to the table, to batches judged by older versions, and
to the definitions, mappings and reruns that outlive a version."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import httpx
import pytest

from conftest import new_user
from helpers import (
    accepted_rows,
    api_client,
    entrance,
    imported_by_a_worker,
    published,
    report_records,
    running_worker,
    summary,
    wait_for_batch,
)
from importq.errors import Refusal
from importq.pipeline.dataset_versions import publish
from importq.rules.datasets import Dataset, DatasetError, build_dataset, parse_datasets
from importq.services import Services

CAVES = """
[datasets.caves]
dedup_key = ["id"]
[[datasets.caves.columns]]
name = "id"
field = "id"
required = true
[[datasets.caves.columns]]
name = "found"
field = "found"
[[datasets.caves.columns]]
name = "depth"
field = "depth"
"""


def _caves() -> Dataset:
    return parse_datasets(CAVES)["caves"]


def _with(dataset: Dataset, **changed: dict[str, Any] | None) -> dict[str, Any]:
    """The definition with some columns' keys changed, by column name (None: dropped)."""
    definition: dict[str, Any] = json.loads(json.dumps(dataset.definition))
    columns = []
    for column in definition["columns"]:
        change = changed.get(column["name"], {})
        if change is not None:
            columns.append({**column, **change})
    definition["columns"] = columns
    return definition


async def _refusal(services: Services, definition: dict[str, Any], name: str = "caves") -> str:
    async with services.pool.connection() as conn:
        with pytest.raises(Refusal) as refused:
            await publish(conn, name, definition)
    assert refused.value.code == "incompatible", refused.value.detail
    return refused.value.detail


async def test_publishing_migrates_a_type_only_when_every_stored_value_fits(
    services: Services, client: httpx.AsyncClient
) -> None:
    caves = await published(services, _caves())
    assert caves.version == 1
    rows = [{"id": "a", "depth": "12"}, {"id": "b", "depth": "x"}]
    await imported_by_a_worker(client, services, rows, dataset="caves")
    as_int = _with(caves, depth={"type": "int"})
    detail = await _refusal(services, as_int)
    assert "depth cannot become bigint: a stored value does not fit" in detail
    async with services.pool.connection() as conn:
        await conn.execute("DELETE FROM caves WHERE id = 'b'")
        await conn.commit()
        done = await publish(conn, "caves", as_int)
        assert (done.dataset.version, done.changes) == (2, ["column depth is now bigint"])
        again = await publish(conn, "caves", as_int)
        assert (again.created, again.dataset.version) == (False, 2)
        cursor = await conn.execute("SELECT depth FROM caves")
        assert await cursor.fetchall() == [(12,)]
    detail = await _refusal(services, {**as_int, "table": "other_caves"})
    assert "the table cannot change" in detail
    # A new dataset never writes into another's table, nor into importq's own.
    for table, reason in (
        ("caves", "table caves is dataset caves's"),
        ("users", "table 'users' of dataset 'pits' lacks columns"),
    ):
        assert reason in await _refusal(services, {**caves.definition, "table": table}, "pits")
    job = await imported_by_a_worker(
        client, services, [{"id": "c", "depth": "7.5"}], dataset="caves"
    )
    assert job["datasetVersion"] == 2 and job["result"]["summary"] == summary(0, 0, 1)


async def test_a_type_change_reads_stored_values_as_an_upload_would(
    services: Services, client: httpx.AsyncClient
) -> None:
    """A stored ambiguous date or a word is not guessed into a date; once every value
    reads, the column changes type, with the value the rules read."""
    caves = await published(services, _caves())
    rows = [{"id": "a", "found": "03/04/2026"}, {"id": "b", "found": "yesterday"}]
    await imported_by_a_worker(client, services, rows, dataset="caves")
    detail = await _refusal(services, _with(caves, found={"type": "date"}))
    assert '"03/04/2026" is ambiguous' in detail
    async with services.pool.connection() as conn:
        await conn.execute("UPDATE caves SET found = NULL WHERE id = 'b'")
        await conn.commit()
        done = await publish(
            conn, "caves", _with(caves, found={"type": "date", "formats": ["DD/MM/YYYY"]})
        )
        assert done.changes == ["column found is now date"]
        cursor = await conn.execute("SELECT found FROM caves WHERE id = 'a'")
        assert await cursor.fetchone() == (date(2026, 4, 3),)


async def test_a_column_dropped_then_named_again_meets_the_table_as_it_is(
    services: Services, client: httpx.AsyncClient
) -> None:
    caves = await published(services, _caves())
    await imported_by_a_worker(client, services, [{"id": "a", "depth": "12"}], dataset="caves")
    async with services.pool.connection() as conn:
        dropped = await publish(conn, "caves", _with(caves, depth=None))
        assert (dropped.dataset.version, dropped.changes) == (2, [])
    # Named again with another type: the table's text column is checked and retyped.
    async with services.pool.connection() as conn:
        back = await publish(conn, "caves", _with(caves, depth={"type": "int"}))
        assert back.changes == ["column depth is now bigint"]
    # Mandatory now: a stored row lacks a value ("found" was never filled).
    detail = await _refusal(services, _with(caves, found={"required": True}, depth={"type": "int"}))
    assert "column found is mandatory and stored rows have no value for it" in detail
    job = await imported_by_a_worker(client, services, [{"id": "b", "depth": "7"}], dataset="caves")
    assert job["datasetVersion"] == 3 and job["result"]["summary"] == summary(1, 0, 0)


async def test_a_batch_of_a_version_whose_types_the_table_lost_is_not_run_again(
    services: Services, client: httpx.AsyncClient
) -> None:
    caves = await published(services, _caves())
    first = await imported_by_a_worker(
        client, services, [{"id": "a", "depth": "12"}], dataset="caves"
    )
    async with services.pool.connection() as conn:
        await publish(conn, "caves", _with(caves, depth={"type": "int"}))
    undo = await client.post(f"/api/v1/jobs/{first['batchId']}/undo")
    assert (undo.status_code, undo.json()["code"]) == (409, "outdated")
    assert "depth is bigint, not text" in undo.json()["detail"]
    rerun = await client.post(f"/api/v1/jobs/{first['batchId']}/rerun", params={"version": 1})
    assert (rerun.status_code, rerun.json()["code"]) == (409, "outdated")
    current = await client.post(f"/api/v1/jobs/{first['batchId']}/rerun")
    assert current.status_code == 202, current.text
    async with running_worker(services):
        again = await wait_for_batch(client, current.json()["batchId"])
    assert again["datasetVersion"] == 2 and again["result"]["summary"] == summary(1, 0, 0)


async def test_an_update_batch_staged_before_a_new_column_still_updates(
    services: Services, client: httpx.AsyncClient
) -> None:
    """Its undo log was made with the table's columns of then; the new column is not
    among them."""
    await imported_by_a_worker(client, services, [entrance("u-1")])
    staged = await accepted_rows(
        client, [entrance("u-1", latitude="46.5"), entrance("u-2")], mode="upsert"
    )
    admin = (await new_user(services, "root", "admin"))[1]
    async with api_client(services, admin) as as_admin:
        described = (await as_admin.get("/api/v1/datasets/entrances")).json()
        described["definition"]["columns"].append({"name": "depth", "field": "depth"})
        answer = await as_admin.post("/api/v1/datasets/entrances/versions", json=described)
        assert answer.status_code == 201, answer.text
    async with running_worker(services):
        job = await wait_for_batch(client, staged["batchId"])
        assert job["result"]["summary"] == summary(2, 0, 0, updated=1)
        undo = await client.post(f"/api/v1/jobs/{staged['batchId']}/undo")
        assert undo.status_code == 202, undo.text
        undone = await wait_for_batch(client, undo.json()["batchId"])
    assert undone["result"]["summary"] == summary(2, 0, 0, deleted=1, restored=1)


def test_definitions_are_checked_key_by_key() -> None:
    """A definition may come from any JSON body: each key's value is checked."""
    base = _caves().definition
    key = {"name": "id", "field": "id", "required": True}
    for changed, said in (
        ({"label": 5}, "label must be a string"),
        ({"columns": [{**key, "required": "false"}]}, "required must be true or false"),
        ({"columns": [{**key, "min": "5"}]}, "min must be a number"),
        ({"columns": [key, {"name": "at", "field": "imported_at"}]}, "not a usable SQL"),
        (
            {"columns": [{**key, "type": "date", "formats": ["DD/MM/YYYY"]}]},
            "dedup_key columns are read in one form only",
        ),
    ):
        with pytest.raises(DatasetError, match=said):
            build_dataset("caves", {**base, **changed})


async def test_saved_and_earlier_mappings_outlive_a_dropped_column_and_reruns_chain(
    services: Services, client: httpx.AsyncClient
) -> None:
    caves = await published(services, _caves())
    mapping = {"Ident": "id", "Depth": "depth"}
    saved = await client.put(
        "/api/v1/mappings/export", json={"dataset": "caves", "mapping": mapping}
    )
    assert saved.status_code == 200, saved.text
    first = await imported_by_a_worker(
        client,
        services,
        [{"Ident": "a", "Depth": "1"}],
        dataset="caves",
        mapping="export",
        dryRun="true",
    )
    async with services.pool.connection() as conn:
        await publish(conn, "caves", _with(caves, depth=None))
    # The saved mapping still reads the file: the dropped column's header is unknown.
    preview = await client.post(
        "/api/v1/caves/preview", json={"data": [{"Ident": "b", "Depth": "2"}]}
    )
    assert preview.status_code == 200, preview.text
    assert (preview.json()["mappingName"], preview.json()["unknown"]) == ("export", ["Depth"])
    # A real rerun, then a dry rerun of it: no run of the upload sees the rows another
    # run of it inserted.
    real = await client.post(f"/api/v1/jobs/{first['batchId']}/rerun", params={"dryRun": "false"})
    assert real.status_code == 202, real.text
    async with running_worker(services):
        second = await wait_for_batch(client, real.json()["batchId"])
        dry = await client.post(f"/api/v1/jobs/{second['batchId']}/rerun")
        third = await wait_for_batch(client, dry.json()["batchId"])
    assert second["result"]["summary"] == summary(1, 0, 0)
    assert second["mapping"] == {"Ident": "id"}
    assert third["result"]["summary"] == summary(1, 0, 0) and third["dryRun"]
    compared = await client.get(f"/api/v1/jobs/{second['batchId']}/compare/{third['batchId']}")
    assert compared.json()["moved"] == {}


async def test_bad_mappings_are_refused_and_a_webhook_address_is_for_admins(
    services: Services, client: httpx.AsyncClient
) -> None:
    for mapping in ('{"a\\u0000": "id"}', '{"Lat": "id", "LAT": "id"}', '{"": "id"}'):
        answer = await client.post(
            "/api/v1/entrances/import-rows", params={"mapping": mapping}, json={"data": [{}]}
        )
        assert (answer.status_code, answer.json()["code"]) == (400, "bad_mapping"), mapping
    unknown = await client.post(
        "/api/v1/entrances/import-rows", params={"mapping": "nothing"}, json={"data": [{}]}
    )
    assert (unknown.status_code, unknown.json()["code"]) == (404, "unknown_mapping")
    hook = "https://hooks.test/x?token=secret"
    with_hook = CAVES.replace("[datasets.caves]", f'[datasets.caves]\ncallback_url = "{hook}"')
    await published(services, parse_datasets(with_hook)["caves"])
    seen = (await client.get("/api/v1/datasets/caves")).json()["definition"]
    assert "callback_url" not in seen
    admin = (await new_user(services, "root", "admin"))[1]
    async with api_client(services, admin) as as_admin:
        told = (await as_admin.get("/api/v1/datasets/caves")).json()["definition"]
    assert told["callback_url"] == hook


async def test_a_failure_report_keeps_a_negative_decimal_comma_as_a_number(
    services: Services, client: httpx.AsyncClient
) -> None:
    rows = [entrance("n-1", latitude="-95,5"), entrance("n-2", latitude="=1+1")]
    job = await imported_by_a_worker(client, services, rows, decimal="comma")
    failures = await report_records(client, job, "failures")
    assert [r["w3geo:latitude"] for r in failures] == ["-95,5", "'=1+1"]


async def test_a_rerun_of_an_upload_storage_lost_says_so(
    services: Services, client: httpx.AsyncClient
) -> None:
    first = await imported_by_a_worker(client, services, [entrance("l-1")])
    await services.storage.delete_prefix(f"uploads/{first['batchId']}")
    answer = await client.post(f"/api/v1/jobs/{first['batchId']}/rerun")
    assert (answer.status_code, answer.json()["code"]) == (409, "no_upload")
