"""Each csv-spectrum case imported through the API into PostgreSQL, row for row."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from conftest import make_settings
from csv_spectrum import SPECTRUM_CASES, spectrum_case
from helpers import publish_configured, summary, wait_for_batch
from importq.config import Settings
from importq.services import Services

# The datasets a spectrum case is imported into: one per case, every column optional
# text but the first. A dataset needs a dedup key and its key columns must be required
# (importq.rules.datasets: a valid row must have a whole key), so a dataset with no mandatory
# column cannot be declared; the first column is unique and non-empty in every case.


def _field(name: str) -> str:
    return "c_" + re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def spectrum_datasets(root: Path) -> str:
    parts = []
    for name in SPECTRUM_CASES:
        _, expected = spectrum_case(root, name)
        columns = list(expected[0])
        dataset = f"spectrum_{name}"
        parts.append(
            f"[datasets.{dataset}]\ntable = {json.dumps(dataset)}\n"
            f"dedup_key = [{json.dumps(columns[0])}]\n"
        )
        for index, column in enumerate(columns):
            parts.append(
                f"[[datasets.{dataset}.columns]]\nname = {json.dumps(column)}\n"
                f"field = {json.dumps(_field(column))}\nrequired = {str(index == 0).lower()}\n"
            )
    return "\n".join(parts)


@pytest.fixture
def spectrum_case_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def settings(database_url: str, tmp_path: Path, spectrum: Path) -> Settings:
    datasets_file = tmp_path / "datasets.toml"
    datasets_file.write_text(spectrum_datasets(spectrum), encoding="utf-8")
    return make_settings(database_url, tmp_path / "data", datasets_file=datasets_file)


@pytest.fixture
async def services(services: Services, spectrum_case_name: str) -> Services:
    await publish_configured(services)
    return services


async def _target_rows(
    services: Services, name: str, columns: list[str]
) -> list[tuple[int, list[str]]]:
    fields = ", ".join(f'"{_field(c)}"' for c in columns)
    query = f'SELECT imported_line, {fields} FROM "spectrum_{name}" ORDER BY imported_line'  # noqa: S608 (test names)
    async with services.pool.connection() as conn:
        cursor = await conn.execute(query)
        found = await cursor.fetchall()
    return [(row[0], [value or "" for value in row[1:]]) for row in found]


@pytest.mark.usefixtures("worker")
@pytest.mark.parametrize("spectrum_case_name", SPECTRUM_CASES, indirect=True)
async def test_spectrum_case_imports_through_the_api(
    client: httpx.AsyncClient, services: Services, spectrum: Path, spectrum_case_name: str
) -> None:
    name = spectrum_case_name
    data, expected = spectrum_case(spectrum, name)
    response = await client.post(
        f"/api/v1/spectrum_{name}/import-rows",
        content=data,
        headers={"Content-Type": "text/csv"},
    )
    assert response.status_code == 202, response.text
    assert response.json()["totalRows"] == len(expected)
    job = await wait_for_batch(client, response.json()["batchId"])
    assert job["status"] == "completed"
    assert job["result"]["summary"] == summary(len(expected), 0, 0)
    columns = list(expected[0])
    # Empty cells are stored as NULL (an empty value counts as missing): read back as "".
    assert await _target_rows(services, name, columns) == [
        (line, [row[c] for c in columns]) for line, row in enumerate(expected, start=2)
    ]
