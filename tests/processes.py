"""importq's own processes, started as an operator would: ``importq serve`` on a free
loopback port, waited on until it answers, stopped or killed at the end."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_serve(
    env: dict[str, str], log: Path, port: int, *, public_url: bool = True
) -> subprocess.Popen[bytes]:
    """``importq serve`` in a session and process group of its own, so that the whole
    service (uvicorn, its worker, any child) can be signalled at once; output to ``log``
    (appended, so that a restart keeps the first run's lines). ``public_url``: set
    IMPORTQ_PUBLIC_URL to its address (else serve derives it)."""
    if public_url:
        env = {**env, "IMPORTQ_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    with log.open("ab") as out:  # the process writes to its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "importq.cli", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_healthy(
    process: subprocess.Popen[bytes], url: str, log: Path, seconds: float = 90
) -> dict[str, Any]:
    """The body of the service's first healthy ``/health``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            health = httpx.get(f"{url}/health", timeout=2)
            if health.status_code == 200:
                body: dict[str, Any] = health.json()
                return body
        except httpx.HTTPError:
            pass
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "importq serve did not become healthy"
        time.sleep(0.2)


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process's whole group, as a crash of the machine's service would."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)


@contextlib.contextmanager
def serving(env: dict[str, str], log: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``importq serve`` on a free port; yields its URL and its healthy /health body."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_serve(env, log, port)
    try:
        yield url, wait_healthy(process, url, log)
    finally:
        process.terminate()
        process.wait(timeout=30)
