"""Azurite, the Azure Blob emulator from npm, for the tests that need a real Blob service:
a server on a loopback port (or another address), and a module-scoped fixture that
starts one."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from azurite_account import ACCOUNT, ACCOUNT_KEY
from processes import free_port

ROOT = Path(__file__).resolve().parents[1]
AZURITE_VERSION = "3.37.0"  # the version scripts/test installs
AZURITE = ROOT / ".cache" / "node" / "node_modules" / ".bin" / "azurite-blob"


def _answers(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


class Azurite:
    """``azurite-blob`` on a free port of ``host``, its blobs kept in ``location`` so that
    a restart (same port, same location) finds them again."""

    def __init__(self, location: Path, host: str = "127.0.0.1") -> None:
        self.location = location
        self.host = host
        self.port = free_port(host)
        self.log = location.parent / f"{location.name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.endpoint};"
        )

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 60) -> None:
        assert not self.running, "Azurite is already running"
        command = [
            str(AZURITE),
            "--skipApiVersionCheck",
            "--blobHost",
            self.host,
            "--blobPort",
            str(self.port),
            "--location",
            str(self.location),
            "--silent",
        ]
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while not _answers(self.host, self.port):
            if self._process.poll() is not None:
                raise RuntimeError(f"Azurite exited: {self.log.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Azurite did not answer on port {self.port} in {timeout} s")
            time.sleep(0.1)

    def stop(self, *, keep_blobs: bool = False) -> None:
        """Down for good when this returns.

        ``keep_blobs``: SIGTERM first, and SIGKILL only after a grace period longer than
        Azurite's metadata autosave (5 s; it saves to a temporary file and renames it), so
        whatever was stored before is found again by the next start on this location.
        Otherwise SIGKILL at once: a crash, and the last seconds of metadata may be lost.
        """
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        # Its own session: the signal reaches node and anything it started, nothing else.
        if keep_blobs:
            os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=7)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def require_azurite() -> None:
    """Skip where npm could not install Azurite; fail where it should have."""
    if not AZURITE.is_file():
        if shutil.which("npm") is None:
            pytest.skip("npm is not installed, so scripts/test could not install Azurite")
        pytest.fail(
            f"Azurite is not installed in {AZURITE.parents[2]}: run scripts/test, or "
            f"npm install --prefix .cache/node azurite@{AZURITE_VERSION}"
        )


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    require_azurite()
    server = Azurite(tmp_path_factory.mktemp("azurite") / "blobs")
    server.start()
    yield server
    server.stop()
