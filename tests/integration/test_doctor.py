"""``importq doctor`` as an operator runs it: a process, with the environment of a service,
against a running ``importq serve``, a real SMTP server and Azurite."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from azurite import Azurite
from processes import free_port, serving


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
    return subprocess.run(
        [sys.executable, "-m", "importq.cli", "doctor"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


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
