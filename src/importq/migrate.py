"""``importq migrate``: importq's numbered migrations, procrastinate's schema, and the
datasets files' definitions, published as versions (with their target tables).

A migration runs in one transaction, under an advisory lock, so two processes migrating
at once apply each step once. Each applied step is recorded in ``importq_migrations``
under its name, which is unique. So running it again is a no-op.

procrastinate's own ``schema.sql`` is applied on first install. After a procrastinate
upgrade, its ``sql/migrations/*.sql`` files newer than the recorded version are applied
in order.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path
from typing import LiteralString

import psycopg
from procrastinate.schema import SchemaManager
from psycopg import AsyncConnection

from importq.pipeline.dataset_versions import ensure_target_tables, publish_files
from importq.resources import resource_dir
from importq.rules.datasets import Dataset
from importq.sql import queries

log = logging.getLogger(__name__)

PROCRASTINATE = "procrastinate"


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:3])


def _procrastinate_migrations(since: str, until: str) -> list[Path]:
    """procrastinate's migration files for versions in (since, until], in order."""
    low, high = _version_tuple(since), _version_tuple(until)
    found = []
    for path in sorted(Path(SchemaManager.get_migrations_path()).glob("*.sql")):
        file_version = _version_tuple(path.name.split("_", 1)[0])
        if low < file_version <= high:
            found.append(path)
    return found


def _sql_file(path: Path) -> LiteralString:
    # Migration files ship with the code and are as trusted as it.
    return path.read_text(encoding="utf-8")


async def migrate(
    conn: AsyncConnection[object], sources: Mapping[str, Mapping[str, Dataset]] | None = None
) -> list[str]:
    """Bring the database up to date and, given the datasets files' definitions by source
    (:func:`importq.rules.datasets.dataset_sources`), publish those that are new; return
    the names of the steps applied.

    Owns its transaction: everything is applied, or nothing.
    """
    applied_now: list[str] = []
    async with conn.transaction():
        await conn.execute(queries["lock_migrations"])
        await conn.execute(queries["create_ledger"])
        cursor = await conn.execute(queries["applied_migrations"])
        applied = {str(r[0]): r[1] for r in await cursor.fetchall()}  # type: ignore[index]

        installed = version(PROCRASTINATE)
        if PROCRASTINATE not in applied:
            cursor = await conn.execute(queries["procrastinate_installed"])
            row = await cursor.fetchone()
            if row is not None and row[0]:  # type: ignore[index]
                raise RuntimeError(
                    "procrastinate's schema exists but importq did not record it; "
                    "record its version in importq_migrations before migrating"
                )
            await conn.execute(SchemaManager.get_schema())
            await conn.execute(
                queries["record_migration"], {"name": PROCRASTINATE, "version": installed}
            )
            applied_now.append(f"{PROCRASTINATE} {installed}")
        elif applied[PROCRASTINATE] != installed:
            for path in _procrastinate_migrations(str(applied[PROCRASTINATE]), installed):
                await conn.execute(_sql_file(path))
                applied_now.append(f"{PROCRASTINATE} {path.name}")
            await conn.execute(
                queries["record_migration"], {"name": PROCRASTINATE, "version": installed}
            )

        for path in sorted(resource_dir("migrations").glob("[0-9]*.sql")):
            if path.name not in applied:
                await conn.execute(_sql_file(path))
                await conn.execute(
                    queries["record_migration"], {"name": path.name, "version": None}
                )
                applied_now.append(path.name)

        if sources is not None:
            applied_now += await publish_files(conn, sources)
            await ensure_target_tables(conn)
    for step in applied_now:
        log.info("applied %s", step)
    return applied_now


async def pending_migrations(conn: AsyncConnection[object]) -> list[str]:
    """The steps :func:`migrate` has yet to apply (the datasets' tables aside): ``[]``
    when the database is up to date. Reads only; an error leaves the caller's
    transaction aborted."""
    try:
        cursor = await conn.execute(queries["applied_migrations"])
    except psycopg.errors.UndefinedTable:
        return ["importq_migrations"]
    applied = {str(r[0]): r[1] for r in await cursor.fetchall()}  # type: ignore[index]
    pending = [
        path.name
        for path in sorted(resource_dir("migrations").glob("[0-9]*.sql"))
        if path.name not in applied
    ]
    recorded = applied.get(PROCRASTINATE)
    # A database migrated by a newer release is up to date for this one (a rolling
    # upgrade migrates before the old nodes stop).
    if recorded is None or _version_tuple(str(recorded)) < _version_tuple(version(PROCRASTINATE)):
        pending.insert(0, PROCRASTINATE)
    return pending
