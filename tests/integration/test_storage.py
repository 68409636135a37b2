"""Both storage backends behave the same: every test here that takes ``storage_backend``
runs once on local storage and once on Azure Blob storage (Azurite, started by this
module from ``.cache/node``, where ``scripts/test`` installs it).

What "the same" means: each report downloaded through its link is byte for byte the
file the report writer produces for the batch (recomputed from the database, so the
check does not depend on the order in which chunks took their target ids), the parsed
reports are identical for both backends, links expire and are refreshed the same way,
and ``/health`` reports storage as its own component. The storage-outage test runs on
Azure only: it stops and restarts the emulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import gzip
import io
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email import policy
from pathlib import Path
from typing import IO, Any, cast

import httpx
import pytest
from azure.storage.blob.aio import BlobServiceClient

from azurite import Azurite
from conftest import make_settings, new_user
from helpers import (
    BASE_URL,
    api_client,
    entrance,
    judging,
    post_rows,
    read_csv_report,
    summary,
    wait_for_batch,
)
from importq.api.request_body import spool_file
from importq.config import Settings
from importq.pipeline import batches
from importq.pipeline.aggregation import _write_reports, download_name, report_path
from importq.pipeline.recovery import reconcile
from importq.services import Services
from importq.storage.local import LocalStorage
from importq.worker.tasks import run_worker

CSV_TYPE = "text/csv; charset=utf-8"


# The Azure SDK hands aiohttp each block of an upload as bytes, and aiohttp warns of any
# body over 1 MiB. importq's blocks are 4 MiB (importq.storage.azure.BLOCK_SIZE) because
# 1 MiB blocks would take four times the requests; writing 4 MiB is quick.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Sending a large body directly with raw bytes:ResourceWarning"
)


@contextlib.asynccontextmanager
async def stopped(server: Azurite, *, keep_blobs: bool = False) -> AsyncIterator[None]:
    """Azurite down for the block; up again (same port, same location) after it."""
    await asyncio.to_thread(server.stop, keep_blobs=keep_blobs)
    try:
        yield
    finally:
        if not server.running:
            await asyncio.to_thread(server.start)


# ----------------------------------------------------------------- both backends


@pytest.fixture(params=["local", "azure"])
def storage_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


@pytest.fixture
def settings(
    database_url: str, tmp_path: Path, storage_backend: str, request: pytest.FixtureRequest
) -> Settings:
    """Local storage, or Azurite with a container of the test's own."""
    overrides: dict[str, Any] = {"azure_storage_connection_string": None}
    if storage_backend == "azure":
        server: Azurite = request.getfixturevalue("azurite")
        overrides = {
            "azure_storage_connection_string": server.connection_string,
            "azure_container": f"test-{uuid.uuid4().hex}",
        }
    return make_settings(database_url, tmp_path / "data", **overrides)


@pytest.fixture
async def anonymous(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    """A client with no token: what a person holding a link has."""
    async with api_client(services, None) as client:
        yield client


@pytest.fixture
async def admin(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    """A client with an admin's token: /health tells it why a component fails."""
    _, token = await new_user(services, "storage-admin", "admin")
    async with api_client(services, token) as client:
        yield client


async def fetch(anonymous: httpx.AsyncClient, url: str) -> httpx.Response:
    """GET a report link: local links through the API, SAS links straight from storage."""
    if url.startswith(f"{BASE_URL}/"):
        return await anonymous.get(url.removeprefix(BASE_URL))
    async with httpx.AsyncClient(timeout=30) as plain:
        return await plain.get(url)


async def written_reports(services: Services, batch_id: str) -> dict[str, bytes]:
    """The reports the report writer makes for a finished batch, recomputed now."""
    async with services.pool.connection() as conn:
        batch = await batches.get_batch(conn, uuid.UUID(batch_id))
    assert batch is not None
    with tempfile.TemporaryDirectory() as directory:
        files = await _write_reports(
            services, batch, await judging(services, batch), Path(directory)
        )
        return {kind: file.read_bytes() for kind, file in files.items()}


async def outbox_messages(services: Services, count: int, seconds: float = 30) -> list[Path]:
    """The outbox's .eml files once there are ``count`` (or the deadline passed)."""
    deadline = time.monotonic() + seconds
    while True:
        files = sorted(services.settings.outbox_dir.glob("*.eml"))
        if len(files) >= count or time.monotonic() > deadline:
            return files
        await asyncio.sleep(0.1)


ROWS = [
    entrance("s1", **{"rdfs:label": "Puits"}),  # 2 success
    entrance("s2", latitude="91", **{"rdfs:label": ""}),  # 3 failure
    entrance("s1", **{"rdfs:label": "Puits bis"}),  # 4 duplicate of line 2
    entrance("s3", **{"rdfs:label": 'Grotte "du" Loup, sud'}),  # 5 success, quoted
    entrance("s4", latitude="=1+1", **{"rdfs:label": ""}),  # 6 failure, formula
    entrance("s5", **{"rdfs:label": "Gouffre Berger — été"}),  # 7 success, non-ASCII
]


async def test_reports_download_through_their_links_byte_for_byte(
    client: httpx.AsyncClient,
    anonymous: httpx.AsyncClient,
    services: Services,
    worker: asyncio.Task[None],
    storage_backend: str,
) -> None:
    response = await post_rows(client, ROWS)
    assert response.status_code == 202, response.text
    batch_id = response.json()["batchId"]
    job = await wait_for_batch(client, batch_id)
    assert job["status"] == "completed"
    assert job["result"]["summary"] == summary(3, 1, 2)

    urls = job["result"]["reportUrls"]
    if storage_backend == "azure":
        container = services.settings.azure_container
        for url in urls.values():
            assert url.startswith("http://127.0.0.1:") and f"/{container}/reports/" in url
            assert "sp=r&" in url  # read-only
    else:
        assert all(url.startswith(f"{BASE_URL}/files/reports/") for url in urls.values())

    expected = await written_reports(services, batch_id)
    assert set(expected) == {"success", "duplicates", "failures"}
    downloads: dict[str, bytes] = {}
    for kind, url in urls.items():
        got = await fetch(anonymous, url)
        assert got.status_code == 200, got.text
        assert got.headers["content-type"] == CSV_TYPE
        name = download_name("entrances", batch_id, kind)
        assert f'filename="{name}"' in got.headers["content-disposition"]
        assert got.headers["content-disposition"].startswith("attachment")
        downloads[kind] = got.content
    assert downloads == expected

    # The same content whichever the backend (target ids aside, which the database gives).
    successes = read_csv_report(downloads["success"])
    assert [(r[0], r[1]) for r in successes[1:]] == [("2", "s1"), ("5", "s3"), ("7", "s5")]
    failures = read_csv_report(downloads["failures"])
    assert [(r[0], r[1]) for r in failures[1:]] == [
        ("3", "w3geo:latitude: 91 is above 90"),
        ("6", 'w3geo:latitude: "=1+1" is not a number'),
    ]
    assert failures[2][failures[0].index("w3geo:latitude")] == "'=1+1"
    duplicates = read_csv_report(downloads["duplicates"])
    assert [(r[0], r[1]) for r in duplicates[1:]] == [("4", "duplicate of line 2")]

    # The email carries the same links.
    (message_file,) = await outbox_messages(services, 1)
    message = email.message_from_bytes(message_file.read_bytes(), policy=policy.default)
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    for url in urls.values():
        assert url in text

    # The notification too, and the upload itself is kept in the same storage.
    notification = (await client.get("/api/v1/notifications")).json()["items"][0]
    assert notification["payload"]["reportUrls"] == urls
    kept = services.storage.link(
        f"uploads/{batch_id}/upload.json",
        download_name="upload.json",
        expires_at=datetime.now(UTC) + timedelta(minutes=5),
    )
    uploaded = await fetch(anonymous, kept)
    assert uploaded.status_code == 200
    assert json.loads(uploaded.content) == {"data": ROWS}


async def test_a_large_file_is_stored_in_blocks_and_served_whole(
    services: Services, anonymous: httpx.AsyncClient, tmp_path: Path, storage_backend: str
) -> None:
    """20 MiB: past the single-request size, so Azure gets it as streamed blocks."""
    source = tmp_path / "large.csv"
    source.write_bytes(os.urandom(20 << 20))
    path = f"reports/{uuid.uuid4()}/successes.csv"
    await services.storage.put_file(path, source, content_type=CSV_TYPE)
    await services.storage.put_file(path, source, content_type=CSV_TYPE)  # idempotent
    expires_at = datetime.now(UTC) + timedelta(minutes=5)
    url = services.storage.link(path, download_name="large.csv", expires_at=expires_at)
    got = await fetch(anonymous, url)
    assert got.status_code == 200
    assert got.content == source.read_bytes()

    if storage_backend == "azure":
        connection_string = services.settings.azure_storage_connection_string
        assert connection_string is not None
        async with BlobServiceClient.from_connection_string(connection_string) as service:
            blob = service.get_blob_client(services.settings.azure_container, path)
            committed, _ = await blob.get_block_list("committed")
        assert len(committed) == 5  # 4 MiB blocks

    await services.storage.delete_prefix(path.rsplit("/", 1)[0])
    assert (await fetch(anonymous, url)).status_code == 404
    await services.storage.delete_prefix("reports/nothing-here")  # no error


def _another_file_system(path: Path) -> Path | None:
    """/dev/shm when it is not on ``path``'s file system."""
    shm = Path("/dev/shm")
    if shm.is_dir() and shm.stat().st_dev != path.stat().st_dev:
        return shm
    return None


async def test_local_storage_names_a_file_or_a_spool_rather_than_copy_it_but_copies_across_devices(
    tmp_path: Path,
) -> None:
    storage = LocalStorage(tmp_path / "files", public_url=BASE_URL, signing_key=b"k" * 32)
    source = tmp_path / "report.csv"
    source.write_bytes(b"line,message\r\n2,x\r\n")
    await storage.put_file("reports/b/failures.csv", source, content_type=CSV_TYPE)
    stored = storage.resolve("reports/b/failures.csv")
    assert stored.stat().st_ino == source.stat().st_ino  # no byte copied
    source.unlink()
    assert stored.read_bytes() == b"line,message\r\n2,x\r\n"

    # An upload's spool, an open file with no name, is named too (with what its stream
    # still buffered); a stream over no file, or over another's bytes, is copied.
    if not hasattr(os, "O_TMPFILE"):
        pytest.skip("no O_TMPFILE here: spools are copied")
    with spool_file(tmp_path / "spool") as spool:
        spool.write(b"id,rdf:type\r\n")  # still in the stream's buffer
        await storage.put_file("uploads/b/upload.csv", spool, content_type=CSV_TYPE)
        kept = storage.resolve("uploads/b/upload.csv")
        assert kept.stat().st_ino == os.fstat(spool.fileno()).st_ino
        assert kept.read_bytes() == b"id,rdf:type\r\n"
    assert kept.read_bytes() == b"id,rdf:type\r\n"  # the spool closed, its name stays
    await storage.put_file("uploads/c/upload.csv", io.BytesIO(b"a,b"), content_type=CSV_TYPE)
    assert storage.resolve("uploads/c/upload.csv").read_bytes() == b"a,b"
    with tempfile.SpooledTemporaryFile(max_size=1024) as multipart:  # a multipart upload's
        multipart.write(b"c,d")
        await storage.put_file("uploads/d/upload.csv", multipart, content_type=CSV_TYPE)
        assert not multipart._rolled  # type: ignore[attr-defined]  # copied from memory, not written out to be named
    assert storage.resolve("uploads/d/upload.csv").read_bytes() == b"c,d"
    packed = tmp_path / "upload.csv.gz"
    with gzip.open(packed, "wb") as writing:
        writing.write(b"e,f")
    with gzip.open(packed, "rb") as unpacked:  # a file's descriptor, other bytes
        await storage.put_file(
            "uploads/e/upload.csv", cast(IO[bytes], unpacked), content_type=CSV_TYPE
        )
    assert storage.resolve("uploads/e/upload.csv").read_bytes() == b"e,f"

    shm = _another_file_system(tmp_path)
    if shm is None:
        pytest.skip("no second file system to store from")
    with tempfile.NamedTemporaryFile(dir=shm) as elsewhere:
        elsewhere.write(b"copied")
        elsewhere.flush()
        await storage.put_file(
            "reports/b/failures.csv", Path(elsewhere.name), content_type=CSV_TYPE
        )
    assert stored.read_bytes() == b"copied"


async def test_an_expired_link_is_refused_and_a_refreshed_one_works(
    client: httpx.AsyncClient,
    anonymous: httpx.AsyncClient,
    services: Services,
    worker: asyncio.Task[None],
) -> None:
    batch_id = (await post_rows(client, [entrance("x1"), entrance("x2", latitude="x")])).json()[
        "batchId"
    ]
    job = await wait_for_batch(client, batch_id)
    assert job["result"]["reportUrls"]["duplicates"] is None
    expected = await written_reports(services, batch_id)

    expired = services.storage.link(
        report_path(batch_id, "failures"),
        download_name=download_name("entrances", batch_id, "failures"),
        expires_at=datetime.now(UTC) - timedelta(minutes=5),
    )
    refused = await fetch(anonymous, expired)
    assert refused.status_code == 403
    assert b"w3geo" not in refused.content

    response = await client.post(f"/api/v1/jobs/{batch_id}/report-links")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["reportUrls"]["duplicates"] is None
    expires_at = datetime.fromisoformat(body["expiresAt"])
    assert expires_at > datetime.now(UTC) + timedelta(days=6)
    for kind in ("success", "failures"):
        got = await fetch(anonymous, body["reportUrls"][kind])
        assert got.status_code == 200, got.text
        assert got.content == expected[kind]


async def test_another_user_cannot_obtain_links(
    client: httpx.AsyncClient, services: Services, worker: asyncio.Task[None]
) -> None:
    batch_id = (await post_rows(client, [entrance("o1")])).json()["batchId"]
    await wait_for_batch(client, batch_id)
    _, token = await new_user(services, "bob")
    async with api_client(services, token) as bob:
        refused = await bob.post(f"/api/v1/jobs/{batch_id}/report-links")
        assert refused.status_code == 403
        assert refused.json()["code"] == "forbidden"
        assert (await bob.get(f"/api/v1/jobs/{batch_id}")).status_code == 403


async def test_health_reports_storage_as_its_own_component(
    anonymous: httpx.AsyncClient,
    admin: httpx.AsyncClient,
    services: Services,
    storage_backend: str,
    request: pytest.FixtureRequest,
) -> None:
    """An admin's call checks storage at once and says why it fails; anyone else's sees
    the last check's state, ``failing`` without the reason."""
    as_admin = {"Authorization": admin.headers["Authorization"]}  # on the same service
    response = await anonymous.get("/health", headers=as_admin)
    assert response.status_code == 200, response.text
    assert response.json()["components"]["storage"] == "ok"

    if storage_backend == "azure":
        server: Azurite = request.getfixturevalue("azurite")
        async with stopped(server):
            response = await anonymous.get("/health", headers=as_admin)
    else:
        files = services.settings.files_dir
        shutil.rmtree(files, ignore_errors=True)
        files.write_text("not a directory")
        try:
            response = await anonymous.get("/health", headers=as_admin)
        finally:
            files.unlink()
    # The service still takes uploads without storage: degraded, not unavailable.
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["components"]["storage"].startswith("error: ")
    assert body["components"]["database"] == "ok"
    seen = (await anonymous.get("/health")).json()
    assert (seen["status"], seen["components"]["storage"]) == ("degraded", "failing")

    response = await anonymous.get("/health", headers=as_admin)
    assert response.status_code == 200
    assert response.json()["components"]["storage"] == "ok"


# ------------------------------------------------------------------ Azure only


@pytest.mark.parametrize("storage_backend", ["azure"], indirect=True)
async def test_the_azure_blob_has_its_content_settings(
    client: httpx.AsyncClient, services: Services, worker: asyncio.Task[None], azurite: Azurite
) -> None:
    """Stored properties, not only the SAS response overrides: a download through any
    other route (portal, azcopy) gets CSV as UTF-8 too."""
    batch_id = (await post_rows(client, [entrance("b1")])).json()["batchId"]
    job = await wait_for_batch(client, batch_id)
    assert job["result"]["reportUrls"]["failures"] is None
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        blob = service.get_blob_client(
            services.settings.azure_container, report_path(batch_id, "success")
        )
        properties = await blob.get_blob_properties()
    assert properties.content_settings.content_type == CSV_TYPE
    name = f"entrances-{batch_id}-successes.csv"  # as its links name it
    assert properties.content_settings.content_disposition == f'attachment; filename="{name}"'
    assert properties.blob_type == "BlockBlob"


@pytest.mark.parametrize("storage_backend", ["azure"], indirect=True)
async def test_a_storage_outage_holds_the_batch_until_storage_is_back(
    client: httpx.AsyncClient,
    anonymous: httpx.AsyncClient,
    services: Services,
    azurite: Azurite,
    tmp_path: Path,
    admin: httpx.AsyncClient,
) -> None:
    """Azurite down while the batch aggregates: the batch waits in ``aggregating`` with the
    error visible; Azurite back (same port, same blobs): the batch completes once, with one
    notification and one email."""
    rows = [entrance("z1"), entrance("z2", latitude="200"), entrance("z1")]
    batch_id = (await post_rows(client, rows)).json()["batchId"]
    # Something stored before the outage, to show that the restart keeps the blobs.
    marker = tmp_path / "marker.csv"
    marker.write_bytes(b"kept,across\r\na,restart\r\n")
    await services.storage.put_file("reports/marker/m.csv", marker, content_type=CSV_TYPE)
    marker_url = services.storage.link(
        "reports/marker/m.csv",
        download_name="m.csv",
        expires_at=datetime.now(UTC) + timedelta(hours=1),
    )

    task = asyncio.create_task(run_worker(services, concurrency=4))
    try:
        async with stopped(azurite, keep_blobs=True):
            job = await _wait_for(client, batch_id, lambda job: bool(job["lastError"]), seconds=60)
            assert job["status"] == "aggregating"
            assert job["lastError"] == (
                "aggregation: the reports cannot be written to storage yet; this is retried"
            )
            health = await admin.get("/health")
            assert (health.status_code, health.json()["status"]) == (200, "degraded")
            assert health.json()["components"]["storage"].startswith("error: ")
            assert (await client.get("/api/v1/notifications")).json()["total"] == 0

        assert (await fetch(anonymous, marker_url)).content == marker.read_bytes()
        job = await wait_for_batch(client, batch_id, seconds=120)
        assert job["status"] == "completed"
        assert job["lastError"] is None
        assert job["result"]["summary"] == summary(1, 1, 1)
        expected = await written_reports(services, batch_id)
        for kind, url in job["result"]["reportUrls"].items():
            got = await fetch(anonymous, url)
            assert got.status_code == 200
            assert got.content == expected[kind]

        # Later passes of the recovery find nothing to redo.
        await reconcile(services)
        await outbox_messages(services, 1)
        await asyncio.sleep(2)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    assert len(await outbox_messages(services, 2, seconds=0)) == 1
    notifications = (await client.get("/api/v1/notifications")).json()
    assert notifications["total"] == 1
    assert notifications["items"][0]["batchId"] == batch_id
    async with services.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM notifications WHERE batch_id = %s", (uuid.UUID(batch_id),)
        )
        assert await cursor.fetchone() == (1,)


async def _wait_for(
    client: httpx.AsyncClient, batch_id: str, done: Any, *, seconds: float
) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        job: dict[str, Any] = (await client.get(f"/api/v1/jobs/{batch_id}")).json()
        if done(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch_id} never got there: {job}")
        await asyncio.sleep(0.1)


# ------------------------------------------------------------------ configuration
