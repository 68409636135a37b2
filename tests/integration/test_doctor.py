"""``importq doctor`` as an operator runs it: a process, with the environment of a service,
against a running ``importq serve``, a real SMTP server and Azurite; and, in this process,
a check whose thread never ends."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from azure.storage.blob import BlobServiceClient

from azurite import Azurite
from importq.config import Settings
from importq.operations import doctor
from processes import free_port, run_importq, serving


class _Accepting:
    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        return "250 OK"


@pytest.fixture
def smtp_port() -> Iterator[int]:
    """A plain SMTP server on loopback."""
    port = free_port()
    controller = Controller(_Accepting(), hostname="127.0.0.1", port=port)
    controller.start()
    yield port
    controller.stop()


@pytest.fixture
def env(database_url: str, tmp_path: Path, smtp_port: int) -> dict[str, str]:
    return {
        **os.environ,
        "IMPORTQ_DATABASE_URL": database_url,
        "IMPORTQ_DATA_DIR": str(tmp_path / "data"),
        "IMPORTQ_SMTP_URL": f"smtp+plain://127.0.0.1:{smtp_port}",
    }


def _doctor(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_importq(env, "doctor")


def test_every_part_is_ok_beside_a_running_service(env: dict[str, str], tmp_path: Path) -> None:
    with serving(env, tmp_path / "serve.log"):
        seen = _doctor(env)
    assert seen.returncode == 0, seen.stdout + seen.stderr
    lines = seen.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "configuration",
        "database",
        "queue",
        "clock",
        "storage",
        "email",
    ]
    assert lines[0] == "configuration: ok (external PostgreSQL, local files, SMTP)"
    assert lines[2] == "queue: ok (5 live worker lanes)"  # one process, five lanes
    assert lines[5].startswith("email: ok (127.0.0.1:")


def test_a_stopped_mail_server_a_wrong_storage_key_and_no_worker_are_named(
    env: dict[str, str], azurite: Azurite
) -> None:
    dead = free_port()  # nothing listens there
    wrong_key = azurite.connection_string.replace("AccountKey=", "AccountKey=" + "A" * 8, 1)
    seen = _doctor(
        {
            **env,
            "IMPORTQ_SMTP_URL": f"smtp+plain://127.0.0.1:{dead}",
            "AZURE_STORAGE_CONNECTION_STRING": wrong_key,
        }
    )
    assert seen.returncode == 1
    found = dict(line.split(": ", 1) for line in seen.stdout.splitlines())
    assert found["email"] == f"failing — connection refused to 127.0.0.1:{dead}"
    assert found["storage"].startswith("failing — ")
    assert "AuthorizationFailure" in found["storage"] or "authenticate" in found["storage"]
    assert found["queue"].startswith("failing — no worker has sent a heartbeat")
    assert found["database"] == "ok" and found["clock"] == "ok"


def test_an_outbox_and_a_storage_not_yet_created_are_named_and_left_uncreated(
    env: dict[str, str], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    without_smtp = {
        k: v for k, v in env.items() if k not in ("IMPORTQ_SMTP_URL", "IMPORTQ_SECRET_KEY")
    }
    seen = _doctor(without_smtp)
    found = dict(line.split(": ", 1) for line in seen.stdout.splitlines())
    assert (
        found["storage"]
        == f"ok (folder {data / 'files'} not created yet: the first file creates it)"
    )
    assert found["email"] == (
        f"ok (no SMTP server configured: outbox folder {data / 'outbox'}, "
        "created by the first message)"
    )
    assert not data.exists()  # no folder, no key file


def test_a_missing_container_is_named_not_created(env: dict[str, str], azurite: Azurite) -> None:
    seen = _doctor(
        {
            **env,
            "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
            "IMPORTQ_AZURE_CONTAINER": "not-created-by-doctor",
        }
    )
    found = dict(line.split(": ", 1) for line in seen.stdout.splitlines())
    assert found["storage"] == (
        "ok (container 'not-created-by-doctor' not created yet: the first upload creates it)"
    )
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    with service:
        assert not service.get_container_client("not-created-by-doctor").exists()


async def test_a_mail_server_that_drips_its_greeting_fails_within_the_bound(
    env: dict[str, str],
) -> None:
    """A tarpit (OpenBSD's spamd) sends a byte every few seconds: each read is quick, the
    conversation never ends."""

    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            for byte in b"220 slow.example ESMTP a greeting that takes a while\r\n" * 10:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(3)

    server = await asyncio.start_server(drip, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "importq.cli",
        "doctor",
        env={**env, "IMPORTQ_SMTP_URL": f"smtp+plain://127.0.0.1:{port}"},
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        async with server, asyncio.timeout(15):
            # Each finding is printed as soon as it is known, before the mail server's.
            first = await process.stdout.readline()
            assert first.startswith(b"configuration: ok"), first
            rest = await process.stdout.read()
            assert await process.wait() == 1
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert time.monotonic() - started < 15
    email = rest.decode().splitlines()[-1]
    assert email == (
        f"email: failing — 127.0.0.1:{port} did not complete the greeting, TLS and sign-in in 9 s"
    )


def test_a_check_stuck_in_its_thread_does_not_hold_the_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A name lookup that never ends, say: the part gives up, and the command ends."""
    monkeypatch.setattr(doctor, "CHECK_SECONDS", 1.0)
    monkeypatch.setattr(doctor, "check_smtp", lambda *args, **kwargs: threading.Event().wait())
    settings = Settings(
        database_url="postgresql://nobody@127.0.0.1:1/none",
        data_dir=tmp_path,
        smtp_url="smtp+plain://mail.example:25",
    )

    async def findings() -> list[doctor.Finding]:
        return [finding async for finding in doctor.examine(settings)]

    started = time.monotonic()
    found = asyncio.run(findings())  # waits for no thread at its end
    assert time.monotonic() - started < 5
    assert found[-1].line() == "email: failing — no answer in 1 s"


def test_a_multiprocess_dir_gets_a_line_only_when_set(env: dict[str, str], tmp_path: Path) -> None:
    """No worker runs here: the queue fails, and the metrics line is read alone."""
    assert not [line for line in _doctor(env).stdout.splitlines() if line.startswith("metrics")]
    shared = tmp_path / "prometheus"
    shared.mkdir()
    seen = _doctor({**env, "PROMETHEUS_MULTIPROC_DIR": str(shared)})
    assert seen.stdout.splitlines()[-1] == f"metrics: ok (PROMETHEUS_MULTIPROC_DIR={shared})"
    missing = tmp_path / "gone"
    seen = _doctor({**env, "PROMETHEUS_MULTIPROC_DIR": str(missing)})
    assert seen.stdout.splitlines()[-1] == (
        f"metrics: failing — PROMETHEUS_MULTIPROC_DIR={missing} is not a folder"
    )
    assert seen.returncode == 1
