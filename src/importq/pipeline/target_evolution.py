"""A dataset's target table, altered to serve a new version of its definition, or the
reason it cannot be.

The table is the authority, not the previous definition: a column a version dropped
stays in the table with its values, and a later version that names it again meets it
as it is. Invariants:

- The table, its dedup key and the key's columns never change: the stored key hashes
  and the unique index are built on them.
- A column the table lacks is added (NULL in the stored rows); a mandatory one only if
  no row is stored.
- A column that becomes mandatory, new or not, needs a value in every stored row.
- A column changes type only when no batch of the dataset is running (their chunks
  write the old type) and every distinct stored value passes the new column's converter
  (:func:`importq.rules.row_rules.converter`) as an upload's cell would. It is then cast
  as an upload's cell is (:func:`importq.pipeline.target_tables.typed`), in UTC: the
  stored value is the one the rules read, never a guess of PostgreSQL's (a date
  style, NaN, "yesterday").
- Batches judged by a version whose types the table no longer has (:func:`type_changes`)
  are not run again: their statements would cast to the old types.

Everything runs in the caller's transaction, the one that publishes the version.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection, sql

from importq.pipeline.target_tables import column_ddl, typed
from importq.rules.datasets import Column, Dataset
from importq.rules.row_rules import converter
from importq.sql import queries

# format_type's names of the column types importq writes.
_FORMATTED = {
    "text": "text",
    "bigint": "bigint",
    "double precision": "double precision",
    "boolean": "boolean",
    "date": "date",
    "timestamptz": "timestamp with time zone",
}
# Distinct stored values checked a batch at a time.
_CHECKED_AT_ONCE = 10_000


class IncompatibleChange(ValueError):
    """A new version of a dataset that its target table cannot take; says why."""


async def stored_types(conn: AsyncConnection[Any], table: str) -> dict[str, str]:
    """The table's columns and their types, as ``format_type`` names them."""
    cursor = await conn.execute(queries["target_column_types"], {"table": table})
    return {str(name): str(kind) for name, kind in await cursor.fetchall()}


async def type_changes(conn: AsyncConnection[Any], dataset: Dataset) -> list[str]:
    """The columns of ``dataset`` (a version) whose type the table no longer has, in
    words: empty when the version's statements fit the table."""
    present = await stored_types(conn, dataset.table)
    return [
        f"{c.name} is {present[c.field]}, not {c.type.sql_type}"
        for c in dataset.columns
        if c.field in present and present[c.field] != _FORMATTED[c.type.sql_type]
    ]


async def evolve_target_table(
    conn: AsyncConnection[Any], old: Dataset, new: Dataset, *, running: int
) -> list[str]:
    """Alter the table of ``old`` so that it serves ``new`` (see the module's
    invariants); the changes made, in words, or :class:`IncompatibleChange`.
    ``running``: how many of the dataset's batches are still being processed."""
    if new.table != old.table:
        raise IncompatibleChange(f"the table cannot change (it is {old.table})")
    old_key = [(c.field, c.type.sql_type) for c in old.key_columns]
    if [(c.field, c.type.sql_type) for c in new.key_columns] != old_key:
        raise IncompatibleChange(
            "the dedup key cannot change: the table's unique index and the stored rows' "
            "key hashes are built on it"
        )
    present = await stored_types(conn, new.table)
    # Rows were checked for these when they became mandatory, and written so since.
    mandatory = {c.field for c in old.columns if c.required and c.field in present}
    table = sql.Identifier(new.table)
    changes: list[str] = []
    for column in new.columns:
        newly_mandatory = column.required and column.field not in mandatory
        if newly_mandatory and await _lacking(conn, table, column, column.field in present):
            raise IncompatibleChange(
                f"column {column.name} is mandatory and stored rows have no value for it: "
                "publish it optional"
            )
        if column.field not in present:
            ddl = column_ddl(column, set())
            await conn.execute(
                sql.SQL(queries["add_target_column"]).format(table=table, column=ddl)
            )
            changes.append(f"added column {column.field} ({column.type.sql_type})")
        elif present[column.field] != _FORMATTED[column.type.sql_type]:
            await _retype(conn, table, column, present[column.field], running)
            changes.append(f"column {column.field} is now {column.type.sql_type}")
    return changes


async def _lacking(
    conn: AsyncConnection[Any], table: sql.Identifier, column: Column, present: bool
) -> bool:
    """Whether a stored row has no value for ``column`` (any row, when the table lacks
    the column)."""
    query = (
        sql.SQL(queries["column_has_nulls"]).format(table=table, field=sql.Identifier(column.field))
        if present
        else sql.SQL(queries["target_has_rows"]).format(table=table)
    )
    cursor = await conn.execute(query)
    return bool((await cursor.fetchone() or (False,))[0])


async def _retype(
    conn: AsyncConnection[Any], table: sql.Identifier, column: Column, was: str, running: int
) -> None:
    if running:
        raise IncompatibleChange(
            f"column {column.name} changes type from {was} to {column.type.sql_type} while "
            f"{running} batches of the dataset are running: publish it once they have "
            "finished"
        )
    field = sql.Identifier(column.field)
    convert = converter(column)
    if convert is not None:
        stored = sql.SQL(queries["distinct_stored_values"]).format(table=table, field=field)
        async with conn.cursor(name="importq_stored_values") as cursor:
            await cursor.execute(stored)
            while values := await cursor.fetchmany(_CHECKED_AT_ONCE):
                for (text,) in values:
                    problem = convert(text)[1]
                    if problem is not None:
                        raise IncompatibleChange(
                            f"column {column.name} cannot become {column.type.sql_type}: a "
                            f"stored value does not fit ({problem})"
                        )
    await conn.execute(queries["evolution_settings"])
    await conn.execute(
        sql.SQL(queries["retype_target_column"]).format(
            table=table,
            field=field,
            type=sql.SQL(column.type.sql_type),
            value=typed(column, sql.SQL("{}::text").format(field)),
        )
    )
