"""What the service imports into, over the API: the datasets, their columns and rules,
and template files that import as they are downloaded."""

from __future__ import annotations

import httpx
import pytest

from helpers import running_worker, summary, wait_for_batch
from importq.ingest.xlsx_reader import XLSX_TYPE
from importq.rules.datasets import load_datasets
from importq.services import Services


async def test_the_list_names_each_dataset_with_who_may_import(
    client: httpx.AsyncClient,
) -> None:
    page = (await client.get("/api/v1/datasets")).json()
    assert page["total"] == 1 and page["page"] == 1
    assert page["items"] == [
        {
            "name": "entrances",
            "version": 1,
            "title": "Entrances",
            "importRole": "user",
            "modes": {"insert": "user", "upsert": "user", "update-only": "user"},
            "defaultMode": "insert",
        }
    ]


async def test_a_dataset_says_what_each_column_takes(client: httpx.AsyncClient) -> None:
    shown = (await client.get("/api/v1/datasets/entrances")).json()
    definition = load_datasets()["entrances"]
    assert [c["name"] for c in shown["columns"]] == [c.name for c in definition.columns]
    assert shown["dedupKey"] == ["id", "dct:rights/cc:attributionName"]
    columns = {c["name"]: c for c in shown["columns"]}
    assert columns["w3geo:latitude"] == {
        "name": "w3geo:latitude",
        "type": "float",
        "required": True,
        "requiredIf": None,
        "aliases": [],
        "rules": ["at least -90", "at most 90"],
        "example": "45.2",
    }
    creator = columns["karstlink:hasDescriptionDocument/dct:creator"]
    assert creator["requiredIf"] == "karstlink:hasDescriptionDocument/dct:title"
    assert creator["rules"] == [
        "mandatory when karstlink:hasDescriptionDocument/dct:title is given"
    ]
    assert columns["gn:countryCode"]["rules"] == ["two letters"]


async def test_an_unknown_dataset_is_404(client: httpx.AsyncClient) -> None:
    for path in ("", "/template.csv", "/template.xlsx"):
        answer = await client.get(f"/api/v1/datasets/caves{path}")
        assert (answer.status_code, answer.json()["code"]) == (404, "unknown_dataset")


@pytest.mark.parametrize(
    ("file", "media_type"), [("template.csv", "text/csv"), ("template.xlsx", XLSX_TYPE)]
)
async def test_a_template_imports_as_it_is_downloaded(
    client: httpx.AsyncClient, services: Services, file: str, media_type: str
) -> None:
    template = await client.get(f"/api/v1/datasets/entrances/{file}")
    assert template.status_code == 200
    assert template.headers["content-type"].startswith(media_type)
    assert (
        template.headers["content-disposition"]
        == f'attachment; filename="entrances.{file[-4:].lstrip(".")}"'
    )
    if file.endswith(".csv"):
        assert template.content.startswith(b"\xef\xbb\xbfid,rdf:type,")
    posted = await client.post(
        "/api/v1/entrances/import-rows",
        content=template.content,
        headers={"Content-Type": media_type},
    )
    assert posted.status_code == 202, posted.text
    async with running_worker(services):
        job = await wait_for_batch(client, posted.json()["batchId"])
    assert job["result"]["summary"] == summary(1, 0, 0)
