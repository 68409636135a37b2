"""Test fixtures on real PostgreSQL.

The server is ``IMPORTQ_TEST_DATABASE_URL`` (any database on it; tests create their
own) or, by default, an embedded server under ``.cache/test-pg``. Each xdist worker
migrates one template database once; each test gets a fresh copy of it, so tests run in
parallel without seeing each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from psycopg import conninfo, sql

from azurite import azurite  # noqa: F401 (a fixture, for every test module)
from csv_spectrum import SPECTRUM, SPECTRUM_VERSION
from helpers import Receiver, api_client
from importq import accounts
from importq.config import Settings
from importq.db import embedded_database_url
from importq.migrate import migrate
from importq.operations import traces
from importq.rules.datasets import dataset_sources
from importq.services import Services, open_services
from importq.worker.tasks import run_worker

ROOT = Path(__file__).resolve().parents[1]


def _server_url() -> str:
    configured = os.environ.get("IMPORTQ_TEST_DATABASE_URL")
    if configured:
        return configured
    return embedded_database_url(ROOT / ".cache" / "test-pg")


def _with_dbname(url: str, name: str) -> str:
    params = conninfo.conninfo_to_dict(url)
    params["dbname"] = name
    return conninfo.make_conninfo(**params)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def server_url() -> str:
    return _server_url()


@pytest.fixture(scope="session")
def template_db(server_url: str, worker_id: str) -> Iterator[str]:
    """A migrated database for this xdist worker, copied for each test.

    The name is unique to this session, so two test runs on one server never share it.
    """
    name = f"importq_template_{worker_id}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    async def apply() -> None:
        async with await psycopg.AsyncConnection.connect(_with_dbname(server_url, name)) as conn:
            await migrate(conn, dataset_sources())

    asyncio.run(apply())
    yield name
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def database_url(server_url: str, template_db: str) -> Iterator[str]:
    name = f"importq_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template_db)
            )
        )
    yield _with_dbname(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(autouse=True)
def _csv_field_limit() -> Iterator[None]:
    """The csv module's field cap is process-wide, and the CSV reader sets it to the
    upload's cell limit: a test's small limit must not cut the reports a later test of
    the same xdist worker reads."""
    kept = csv.field_size_limit()
    yield
    csv.field_size_limit(kept)


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    """Tracing on for the test, its spans kept in memory (the SDK's exporter)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    traces.configure(provider)
    try:
        yield exporter
    finally:
        traces.configure(None)


def make_settings(database_url: str, data_dir: Path, **overrides: Any) -> Settings:
    """Settings for tests: small chunks, fast heartbeats and stall detection."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "data_dir": data_dir,
        "secret_key": "test-secret",
        "chunk_size": 10,
        "heartbeat_seconds": 0.5,
        "stalled_seconds": 3,
        "reconcile_cron": "* * * * * */1",
        "public_url": "http://importq.test",
        "webhook_allow_hosts": "127.0.0.1",  # the tests' webhook receivers are on loopback
        "azure_storage_connection_string": None,  # local storage unless a test says not
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url, tmp_path / "data")


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    async with open_services(settings, pool_size=60) as opened:
        yield opened


@pytest.fixture
async def worker(services: Services) -> AsyncIterator[asyncio.Task[None]]:
    """A queue worker running in the test's event loop."""
    task = asyncio.create_task(run_worker(services, concurrency=4))
    yield task
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.fixture
async def app_client(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the API (no token); the API uses the test's services."""
    async with api_client(services, None) as client:
        yield client


async def new_user(
    services: Services, name: str, role: str = "user", email: str | None = None, locale: str = "en"
) -> tuple[int, str]:
    async with services.pool.connection() as conn:
        user_id, issued = await accounts.create_user(
            conn, name, role=role, email=email or f"{name}@example.org", locale=locale
        )
    return user_id, issued.secret


@pytest.fixture
async def user_token(services: Services) -> str:
    return (await new_user(services, "alice"))[1]


@pytest.fixture
async def client(app_client: httpx.AsyncClient, user_token: str) -> httpx.AsyncClient:
    """An HTTP client authenticated as the ordinary user ``alice``."""
    app_client.headers["Authorization"] = f"Bearer {user_token}"
    return app_client


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A webhook receiver on loopback (see helpers.Receiver)."""
    found = Receiver()
    server = await asyncio.start_server(found._handle, "127.0.0.1", 0)
    found.port = server.sockets[0].getsockname()[1]
    async with server:
        yield found


@pytest.fixture(scope="session")
def spectrum() -> Path:
    """The csv-spectrum corpus; skips where npm could not install it."""
    if not (SPECTRUM / "package.json").is_file():
        if shutil.which("npm") is None:
            pytest.skip("npm is not installed, so scripts/test could not install csv-spectrum")
        pytest.fail(
            f"csv-spectrum is not installed in {SPECTRUM.parent}: run scripts/test, or "
            f"npm install --prefix .cache/node csv-spectrum@{SPECTRUM_VERSION}"
        )
    return SPECTRUM
