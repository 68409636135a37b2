"""``importq doctor``: every part a running importq needs, checked from this machine with
this configuration, one line each, printed as soon as it is known: ``database: ok``,
``email: failing — connection refused to 127.0.0.1:9``. The command exits 0 when every
part is ok, 1 otherwise. Each part takes 10 s at most.

The parts, in this order: the configuration (which database, storage and mail it
names), the database (it answers, and is migrated), the queue (a worker whose heartbeat
is recent), the clock (the database's and this machine's agree, which report links and
stall detection rely on), storage (for Azure Blob, the container's properties, read with
the account's key; for local files, the folder is writable, or can be created) and email
(the SMTP server greets, does TLS and takes the sign-in, exactly as for a message, then
is left; or the outbox folder is writable, or can be created), and, only
when ``PROMETHEUS_MULTIPROC_DIR`` is set, metrics (this user may write in its folder).
Nothing is changed: no migration, no message; no container, folder or key file is
created. (With the embedded PostgreSQL, the doctor starts or joins its server, as every
importq command does.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import smtplib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import psycopg

from importq.config import Settings
from importq.db import database_url
from importq.delivery.mailer import MailError, check_smtp, smtp_address
from importq.migrate import pending_migrations
from importq.operations.metrics import MULTIPROCESS_DIR, multiprocess_dir_problem
from importq.services import open_storage
from importq.sql import queries
from importq.storage import Storage, StorageError
from importq.storage.local import LocalStorage, folder_exists

# Each check gives up after this long: a part that does not answer is failing.
CHECK_SECONDS = 10.0
# The SMTP conversation's own deadline, within the part's, so that its timeout is named.
SMTP_SECONDS = CHECK_SECONDS - 1
# How far the database's clock may be from this machine's.
CLOCK_SKEW_SECONDS = 2.0


@dataclass(frozen=True)
class Finding:
    """One part's state: ``problem`` None when it is ok; ``detail`` says more."""

    part: str
    problem: str | None
    detail: str = ""

    def line(self) -> str:
        if self.problem is not None:
            return f"{self.part}: failing — {self.problem}"
        return f"{self.part}: ok" + (f" ({self.detail})" if self.detail else "")


def _configuration(settings: Settings) -> Finding:
    database = "external PostgreSQL" if settings.database_url else "embedded PostgreSQL"
    storage = "Azure Blob" if settings.azure_storage_connection_string else "local files"
    email = "SMTP" if settings.smtp_url else "outbox folder"
    return Finding("configuration", None, f"{database}, {storage}, {email}")


async def _database(conn: psycopg.AsyncConnection[object]) -> Finding:
    pending = await pending_migrations(conn)
    if pending:
        return Finding("database", f"migrations not applied: {', '.join(pending)}")
    return Finding("database", None)


async def _queue(conn: psycopg.AsyncConnection[object], settings: Settings) -> Finding:
    try:
        cursor = await conn.execute(queries["live_workers"], {"seconds": settings.stalled_seconds})
    except psycopg.errors.UndefinedTable:
        return Finding("queue", "the queue's tables are missing: run importq migrate")
    row = await cursor.fetchone()
    workers = int(row[0]) if row else 0  # type: ignore[index]
    if workers == 0:
        return Finding(
            "queue",
            f"no worker has sent a heartbeat in the last {settings.stalled_seconds:g} s: "
            "start importq serve or importq worker",
        )
    # A process runs a procrastinate worker per lane (importq.worker.tasks), each with
    # a heartbeat of its own.
    return Finding("queue", None, f"{workers} live worker lane{'s' if workers > 1 else ''}")


async def _clock(conn: psycopg.AsyncConnection[object]) -> Finding:
    before = time.time()
    cursor = await conn.execute(queries["database_clock"])
    row = await cursor.fetchone()
    after = time.time()
    skew = float(row[0]) - (before + after) / 2  # type: ignore[index]
    if abs(skew) > CLOCK_SKEW_SECONDS:
        side = "ahead of" if skew > 0 else "behind"
        return Finding("clock", f"the database's clock is {abs(skew):.1f} s {side} this machine's")
    return Finding("clock", None)


def _storage_to_probe(settings: Settings) -> Storage:
    if settings.azure_storage_connection_string:
        return open_storage(settings)
    # Without its signing key, which probing does not use: reading the key would create
    # the key file when IMPORTQ_SECRET_KEY is unset.
    return LocalStorage(settings.files_dir, public_url=settings.base_url, signing_key=b"")


async def _storage(settings: Settings) -> Finding:
    storage = _storage_to_probe(settings)
    try:
        where = await storage.probe()
    except StorageError as error:
        return Finding("storage", str(error))
    finally:
        await storage.close()
    return Finding("storage", None, where)


async def _in_daemon_thread(call: Callable[[], None]) -> None:
    """Run ``call`` in a thread of its own. Unlike asyncio's executor threads, which
    ``asyncio.run`` and the interpreter wait for at exit, one that never ends (a name
    lookup that hangs) does not keep the command from ending once its part gives up."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(error: Exception | None) -> None:
        if done.done():  # given up on meanwhile
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    def run() -> None:
        error = None
        try:
            call()
        except Exception as raised:
            error = raised
        # RuntimeError: the loop is closed, and nobody waits for this any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=run, name="importq-doctor", daemon=True).start()
    await done


async def _email(settings: Settings) -> Finding:
    if not settings.smtp_url:
        outbox = settings.outbox_dir
        try:
            exists = folder_exists(outbox)
        except StorageError as error:
            return Finding("email", f"the outbox folder cannot be written: {error}")
        created = "" if exists else ", created by the first message"
        where = f"no SMTP server configured: outbox folder {outbox}{created}"
        return Finding("email", None, where)
    try:
        host, port, _ = smtp_address(settings.smtp_url)
        url, ca_file = settings.smtp_url, settings.smtp_ca_file
        await _in_daemon_thread(lambda: check_smtp(url, ca_file=ca_file, timeout=SMTP_SECONDS))
    except MailError as error:
        return Finding("email", str(error))
    except TimeoutError:
        return Finding(
            "email",
            f"{host}:{port} did not complete the greeting, TLS and sign-in in {SMTP_SECONDS:g} s",
        )
    except ConnectionRefusedError:
        return Finding("email", f"connection refused to {host}:{port}")
    except smtplib.SMTPAuthenticationError as error:
        return Finding("email", f"{host}:{port} refused the sign-in ({error.smtp_code})")
    except (OSError, smtplib.SMTPException) as error:
        return Finding("email", f"{host}:{port}: {error!r}")
    return Finding("email", None, f"{host}:{port}")


def _metrics() -> Finding | None:
    """The folder processes share their metrics in, when one is set."""
    if not os.environ.get(MULTIPROCESS_DIR):
        return None
    problem = multiprocess_dir_problem()
    return Finding("metrics", problem, f"{MULTIPROCESS_DIR}={os.environ[MULTIPROCESS_DIR]}")


async def _timed(part: str, check: Callable[[], Awaitable[Finding]]) -> Finding:
    try:
        async with asyncio.timeout(CHECK_SECONDS):
            return await check()
    except TimeoutError:
        return Finding(part, f"no answer in {CHECK_SECONDS:g} s")
    except psycopg.Error as error:  # a database that answers, wrongly (no schema yet)
        return Finding(part, str(error).strip().splitlines()[0])


async def examine(settings: Settings) -> AsyncIterator[Finding]:
    """Every part's finding as soon as it is known, in the order the module's docstring
    names them."""
    yield _configuration(settings)
    try:
        async with asyncio.timeout(CHECK_SECONDS):
            conn = await psycopg.AsyncConnection.connect(database_url(settings), autocommit=True)
    except (OSError, psycopg.Error, TimeoutError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        for part in ("database", "queue", "clock"):
            yield Finding(part, f"cannot connect: {reason}")
    else:
        async with conn:
            yield await _timed("database", lambda: _database(conn))
            yield await _timed("queue", lambda: _queue(conn, settings))
            yield await _timed("clock", lambda: _clock(conn))
    yield await _timed("storage", lambda: _storage(settings))
    yield await _timed("email", lambda: _email(settings))
    metrics = _metrics()
    if metrics is not None:
        yield metrics
