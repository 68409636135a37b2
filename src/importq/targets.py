"""Dataset target tables: their DDL and the statements that insert into them.

The statements are templates in ``sql/schema.sql``, completed here with the dataset's
identifiers through ``psycopg.sql`` (identifiers quoted, never interpolated as text).
Key columns use the "C" collation so the insert's sort order is the index's order.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from psycopg import AsyncConnection, sql

from importq.datasets import Column, Dataset
from importq.sql import queries


class TargetTableError(RuntimeError):
    """A dataset's target table exists but lacks columns the dataset needs."""


def _column_ddl(column: Column, key_fields: set[str]) -> sql.Composable:
    textual = column.type.sql_type == "text"
    collate = sql.SQL(' COLLATE "C"') if column.field in key_fields and textual else sql.SQL("")
    not_null = sql.SQL(" NOT NULL") if column.field in key_fields else sql.SQL("")
    return sql.SQL("{} {}{}{}").format(
        sql.Identifier(column.field), sql.SQL(column.type.sql_type), collate, not_null
    )


def _key(dataset: Dataset) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(c.field) for c in dataset.key_columns)


def _fields(dataset: Dataset) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(c.field) for c in dataset.columns)


async def ensure_target_table(conn: AsyncConnection[object], dataset: Dataset) -> None:
    """Create the target table if missing, else check it has the dataset's columns."""
    key_fields = {c.field for c in dataset.key_columns}
    ddl = sql.SQL(queries["create_target_table"]).format(
        table=sql.Identifier(dataset.table),
        columns=sql.SQL(",\n    ").join(_column_ddl(c, key_fields) for c in dataset.columns),
        index=sql.Identifier(f"{dataset.table}_dedup_key"),
        key=_key(dataset),
    )
    await conn.execute(ddl)
    cursor = await conn.execute(queries["table_columns"], {"table": dataset.table})
    present = {str(row[0]) for row in await cursor.fetchall()}  # type: ignore[index]
    needed = {"target_id", "key_hash", "imported_batch", "imported_line"}
    needed |= {c.field for c in dataset.columns}
    absent = sorted(needed - present)
    if absent:
        raise TargetTableError(
            f"table {dataset.table!r} of dataset {dataset.name!r} lacks columns {absent}"
        )


def _incoming(dataset: Dataset) -> sql.Identifier:
    return sql.Identifier(f"incoming_{dataset.table}")


@dataclass(frozen=True)
class TargetStatements:
    """The statements that move a chunk's winners into a dataset's target table."""

    create_incoming: sql.Composed
    clear_incoming: sql.Composed
    copy_incoming: sql.Composed
    insert: sql.Composed
    copy_types: tuple[str, ...]


@lru_cache(maxsize=64)
def target_statements(dataset: Dataset) -> TargetStatements:
    key_fields = {c.field for c in dataset.key_columns}
    incoming = _incoming(dataset)
    return TargetStatements(
        create_incoming=sql.SQL(queries["create_incoming"]).format(
            incoming=incoming,
            columns=sql.SQL(",\n    ").join(_column_ddl(c, key_fields) for c in dataset.columns),
        ),
        clear_incoming=sql.SQL(queries["clear_incoming"]).format(incoming=incoming),
        copy_incoming=sql.SQL(queries["copy_incoming"]).format(
            incoming=incoming, fields=_fields(dataset)
        ),
        insert=sql.SQL(queries["insert_targets"]).format(
            table=sql.Identifier(dataset.table),
            incoming=incoming,
            fields=_fields(dataset),
            key=_key(dataset),
        ),
        copy_types=("int8", "int4", *(c.type.copy_type for c in dataset.columns)),
    )
