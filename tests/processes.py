"""importq's own processes, started as an operator would: ``importq serve`` on a free
loopback port (or any address), ``importq worker``, waited on until they answer, stopped
or killed at the end. ``inside`` is a command prefix that runs one elsewhere, such as
``["ip", "netns", "exec", name]``."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def start_serve(
    env: dict[str, str],
    log: Path,
    port: int,
    *arguments: str,
    public_url: bool = True,
    host: str = "127.0.0.1",
    inside: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """``importq serve [arguments]`` in a session and process group of its own, so that
    the whole service (uvicorn, its worker, any child) can be signalled at once; output
    to ``log`` (appended, so that a restart keeps the first run's lines). ``public_url``:
    set IMPORTQ_PUBLIC_URL to its address (else serve derives it)."""
    if public_url:
        env = {**env, "IMPORTQ_PUBLIC_URL": f"http://{host}:{port}"}
    command = _importq("serve", "--host", host, "--port", str(port), *arguments)
    return _start([*inside, *command], env, log)


def start_worker(
    env: dict[str, str], log: Path, *, concurrency: int = 2, inside: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """``importq worker`` in a session and process group of its own, output to ``log``."""
    command = _importq("worker", "--concurrency", str(concurrency))
    return _start([*inside, *command], env, log)


def run_importq(
    env: dict[str, str], *arguments: str, stdin: str | None = None, seconds: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``importq arguments`` to its end; its exit code, stdout and stderr."""
    return subprocess.run(
        _importq(*arguments),
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=seconds,
        check=False,
    )


def _importq(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "importq.cli", *arguments]


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:  # the process writes to its own copy of the descriptor
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
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


def stop_group(process: subprocess.Popen[bytes], seconds: float = 30) -> None:
    """SIGTERM the process, as a supervisor stops it; its whole group is killed if it
    has not exited after ``seconds``."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            kill_group(process)


@contextlib.contextmanager
def serving(
    env: dict[str, str], log: Path, *arguments: str
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``importq serve [arguments]`` on a free port; yields its URL and its healthy
    /health body."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_serve(env, log, port, *arguments)
    try:
        yield url, wait_healthy(process, url, log)
    finally:
        process.terminate()
        process.wait(timeout=30)
