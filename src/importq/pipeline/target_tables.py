"""Dataset target tables: their DDL, and the statements that settle a chunk into them.

A target table's dedup key is unique: its unique index is on ``key_hash`` and the key
columns. A chunk never inserts a key that is stored already. When another batch stores
the same key at the same moment, the insert collides, and the chunk settles again with
``ON CONFLICT DO NOTHING`` (see :mod:`importq.pipeline.chunk_processing`).

The statements are templates in ``sql/target_tables.sql`` and ``sql/chunks.sql``. They
are completed here with the dataset's identifiers through ``psycopg.sql``, so
identifiers are quoted and never interpolated as text. Key columns use the "C"
collation, so that the insert's sort order is the index's order.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from psycopg import AsyncConnection, sql

from importq.ingest.staged_table import StagedTable, cell, kept, original, trimmed
from importq.pipeline.reports import BLOCK_LINES, record_sql
from importq.rules.datasets import Column, ColumnType, Dataset
from importq.rules.row_rules import DIGIT_GROUP_SEPARATORS, date_format_regex
from importq.rules.sql_screen import Screen
from importq.sql import queries


class TargetTableError(RuntimeError):
    """A dataset's target table exists but lacks columns the dataset needs."""


def column_ddl(column: Column, key_fields: set[str]) -> sql.Composable:
    textual = column.type.sql_type == "text"
    collate = sql.SQL(' COLLATE "C"') if column.field in key_fields and textual else sql.SQL("")
    not_null = sql.SQL(" NOT NULL") if column.field in key_fields else sql.SQL("")
    return sql.SQL("{} {}{}{}").format(
        sql.Identifier(column.field), sql.SQL(column.type.sql_type), collate, not_null
    )


def dedup_index(dataset: Dataset) -> str:
    """The name of the unique index on the target's ``key_hash`` and key columns."""
    return f"{dataset.table}_dedup_key"


def _key(dataset: Dataset) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(c.field) for c in dataset.key_columns)


def _fields(dataset: Dataset) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(c.field) for c in dataset.columns)


async def ensure_target_table(conn: AsyncConnection[object], dataset: Dataset) -> None:
    """Create the target table if missing, else check it has the dataset's columns (and
    so is a target table: any other table lacks importq's own), before anything is
    created in it."""
    cursor = await conn.execute(queries["table_columns"], {"table": dataset.table})
    present = {str(row[0]) for row in await cursor.fetchall()}  # type: ignore[index]
    needed = {"target_id", "key_hash", "imported_batch", "imported_line"}
    needed |= {c.field for c in dataset.columns}
    absent = sorted(needed - present)
    if present and absent:
        raise TargetTableError(
            f"table {dataset.table!r} of dataset {dataset.name!r} lacks columns {absent}"
        )
    key_fields = {c.field for c in dataset.key_columns}
    ddl = sql.SQL(queries["create_target_table"]).format(
        table=sql.Identifier(dataset.table),
        columns=sql.SQL(",\n    ").join(column_ddl(c, key_fields) for c in dataset.columns),
        index=sql.Identifier(dedup_index(dataset)),
        key=_key(dataset),
    )
    await conn.execute(ddl)


def _value(column: Column, positions: Mapping[str, int], row: str | None = None) -> sql.Composable:
    """A column's value, from a staged row's trimmed cell.

    An empty cell is NULL. Any other value is cast to the column's type; the row rules
    have checked that it casts. The value is the one the column's converter gives
    (:func:`importq.rules.row_rules.converter`), local formats included. ``row`` is the
    chunk row's alias, for statements where another table's columns could hide the
    cell's name.
    """
    if column.name not in positions:
        return sql.NULL
    return typed(column, sql.SQL("NULLIF({}, '')").format(trimmed(positions[column.name], row)))


def typed(column: Column, text: sql.Composable) -> sql.Composable:
    """``text``, a value of ``column`` its converter passed (or NULL), as the column's
    type: the value the converter gives, local formats included."""
    if column.type.sql_type == "text":
        return text
    if column.type is ColumnType.FLOAT and column.decimal == "comma":
        text = _with_decimal_dot(text)
    elif column.type is ColumnType.DATE and column.formats:
        return _local_date(text, column.formats)
    return sql.SQL("{}::{}").format(text, sql.SQL(column.type.sql_type))


def _with_decimal_dot(value: sql.Composable) -> sql.Composed:
    """A valid decimal-comma float's text as the converter reads it: without its digit
    group separators, its comma (if any) a dot."""
    dropped = sql.Literal("," + DIGIT_GROUP_SEPARATORS)
    return sql.SQL("translate({}, {}, '.')").format(value, dropped)


def _local_date(value: sql.Composable, formats: Sequence[str]) -> sql.Composed:
    """A valid date's text read as the converter reads it: by the first format whose
    regex matches it, else as YYYY-MM-DD. A format's tokens (DD, MM, YYYY) and
    separators mean the same to ``to_date``, and the regex lets only its digits by."""
    cases = [
        sql.SQL("WHEN {} ~ {} THEN to_date({}, {})").format(
            value, sql.Literal(date_format_regex(form)), value, sql.Literal(form)
        )
        for form in formats
    ]
    return sql.SQL("CASE {} ELSE {}::date END").format(sql.SQL(" ").join(cases), value)


def _joined(cells: Sequence[sql.Composable], separator: str = "\x01") -> sql.Composable:
    """The cells joined by ``separator``, leaving NULL cells out.

    They are joined in groups of 99, because a function takes at most 100 arguments; a
    group with nothing to join is NULL, so that it is left out too.
    """

    def concat(parts: Sequence[sql.Composable]) -> sql.Composable:
        return sql.SQL("concat_ws({}, {})").format(
            sql.Literal(separator), sql.SQL(", ").join(parts)
        )

    groups = [concat(cells[start : start + 99]) for start in range(0, len(cells), 99)]
    if len(groups) == 1:
        return groups[0]
    return concat([sql.SQL("NULLIF({}, '')").format(group) for group in groups])


def _winner_key(index: int) -> sql.Identifier:
    """The name under which the chunk statement returns a key column of a row it
    inserted. The name keeps it apart from the chunk's own columns."""
    return sql.Identifier(f"winner_k{index}")


@dataclass(frozen=True)
class UpdateStatements:
    """The statements of an update mode's chunk (upsert, update-only), besides the
    insert mode's, which still give a chunk up."""

    create_stored: sql.Composed
    lock_stored: sql.Composed
    #: A checked batch's stored rows, all locked before it writes any chunk.
    lock_batch_keys: sql.Composed
    settle: sql.Composed
    #: Whether the target takes given lines' values over their stored rows.
    probe: sql.Composed


@dataclass(frozen=True)
class UndoStatements:
    """The statements of an undo's chunk: what a chunk of the batch undone wrote, taken
    back."""

    #: The chunk's planned rows (importq_planned), and only those kept in importq_chunk.
    plan: sql.Composed
    keep_planned: sql.Composed
    create_rows: sql.Composed
    lock: sql.Composed
    settle: sql.Composed


@dataclass(frozen=True)
class ChunkStatements:
    """The statements that settle a batch's chunks (``sql/chunks.sql`` templates)."""

    screen: Screen
    create_chunk: sql.Composed
    #: None when no column is judged by value.
    judged_values: sql.Composed | None
    suspect_rows: sql.Composed
    #: Insert mode's settle; in every mode, what gives a chunk up.
    settle: sql.Composed
    #: settle passing over stored keys (ON CONFLICT on the dedup key DO NOTHING), for when
    #: another batch stored a key meanwhile.
    settle_guarded: sql.Composed
    #: The lines the settle statement writes (update modes: every key's first line).
    lines_to_insert: sql.Composed
    probe: sql.Composed
    #: Dataset column name → index in a suspect_rows row's values (after line, problem).
    read_positions: dict[str, int]
    #: The target's unique index on the key: a violation of it is a key stored meanwhile.
    dedup_index: str
    #: A dry run's table to write into, created in each chunk's transaction; else None.
    create_dry_run: sql.Composed | None = None
    #: The update modes' statements; None in insert mode.
    updates: UpdateStatements | None = None
    #: An undo's statements; None for an import.
    undo: UndoStatements | None = None


def _written_columns(dataset: Dataset, positions: Mapping[str, int]) -> list[Column]:
    """The columns an update writes: those the file has, but the key's (it matched)."""
    keys = {c.name for c in dataset.key_columns}
    return [c for c in dataset.columns if c.name in positions and c.name not in keys]


def _stored_key(dataset: Dataset, positions: Mapping[str, int], stored: str) -> sql.Composable:
    """The test that the stored row ``stored`` has the chunk row ``c``'s key."""
    return sql.SQL(" AND ").join(
        sql.SQL("{}.{} = {}").format(
            sql.Identifier(stored), sql.Identifier(c.field), _value(c, positions, "c")
        )
        for c in dataset.key_columns
    )


def _stored_order(dataset: Dataset) -> sql.Composable:
    """The dedup index's order of stored rows ``t``: the order rows are locked in."""
    return sql.SQL(", ").join(
        [sql.SQL("t.key_hash")]
        + [sql.SQL("t.{}").format(sql.Identifier(c.field)) for c in dataset.key_columns]
    )


def _changed_names(
    header: Sequence[str],
    positions: Mapping[str, int],
    columns: Sequence[Column],
    differs: Callable[[Column], sql.Composable],
) -> sql.Composable:
    """The uploaded header names of ``columns`` where ``differs(column)`` holds, joined by
    "; " (an empty text when none does)."""
    return _joined(
        [
            sql.SQL("CASE WHEN {} THEN {} END").format(
                differs(c), sql.Literal(header[positions[c.name]].strip())
            )
            for c in columns
        ]
        or [sql.NULL],
        "; ",
    )


def _undo_statements(
    staged: StagedTable, header: Sequence[str], parts: Mapping[str, sql.Composable]
) -> UndoStatements:
    """An undo's statements over the staged rows, results and undo log of the batch
    undone (``staged``)."""
    dataset, positions = staged.dataset, staged.positions

    def of(row: str) -> Callable[[Column], sql.Composable]:
        return lambda c: sql.SQL("{}.{}").format(sql.Identifier(row), sql.Identifier(c.field))

    current, logged = of("u"), of("l")

    def listed(value: Callable[[Column], sql.Composable]) -> sql.Composable:
        return sql.SQL(", ").join(value(c) for c in dataset.columns)

    return UndoStatements(
        plan=sql.SQL(queries["plan_undo"]).format(undone_results=staged.results),
        keep_planned=sql.SQL(queries["keep_planned"]).format(),
        create_rows=sql.SQL(queries["create_undo_rows"]).format(table=parts["table"]),
        lock=sql.SQL(queries["lock_undo"]).format(
            table=parts["table"],
            stored_key=parts["stored_key"],
            stored_order=_stored_order(dataset),
            undo_log=staged.undo_log,
        ),
        settle=sql.SQL(queries["undo_chunk"]).format(
            table=parts["table"],
            undo_log=staged.undo_log,
            fields=parts["fields"],
            current=listed(current),
            inserted=listed(lambda c: _value(c, positions, "c")),
            after=listed(lambda c: _value(c, positions, "c") if c.name in positions else logged(c)),
            before=listed(logged),
            restored_columns=_changed_names(
                header,
                positions,
                _written_columns(dataset, positions),
                lambda c: sql.SQL("{} IS DISTINCT FROM {}").format(logged(c), current(c)),
            ),
            results_of_outcomes=parts["results_of_outcomes"],
        ),
    )


def _update_statements(
    staged: StagedTable,
    header: Sequence[str],
    parts: Mapping[str, sql.Composable],
    first_valid: sql.Composable,
    dry_run: bool,
) -> UpdateStatements:
    """An update mode's statements. A winner's columns that the file has and that are not
    key columns are compared with the stored row's, and written when they differ."""
    dataset, positions = staged.dataset, staged.positions
    written = _written_columns(dataset, positions)
    kept_columns = [c for c in dataset.columns if c.name not in positions]

    def stored(column: Column) -> sql.Identifier:
        return sql.Identifier(f"s.{column.field}")

    stored_fields: list[sql.Composable] = [sql.SQL("s.target_id AS stored_id")]
    if dry_run:
        stored_fields += [
            sql.SQL("s.{} AS {}").format(sql.Identifier(c.field), stored(c)) for c in kept_columns
        ]
    changed = _changed_names(
        header,
        positions,
        written,
        lambda c: sql.SQL("s.{} IS DISTINCT FROM {}").format(
            sql.Identifier(c.field), _value(c, positions, "c")
        ),
    )
    update: sql.Composable
    if dry_run:
        update = sql.SQL(queries["check_updates"]).format(
            fields=parts["fields"],
            merged=sql.SQL(", ").join(
                sql.SQL("w.{}").format(stored(c))
                if c in kept_columns
                else _value(c, positions, "w")
                for c in dataset.columns
            ),
        )
    elif written:
        update = sql.SQL(queries["update_stored"]).format(
            table=parts["table"],
            undo_log=staged.undo_log,
            fields=parts["fields"],
            stored_fields=sql.SQL(", ").join(sql.Identifier("s", c.field) for c in dataset.columns),
            columns=sql.SQL(", ").join(sql.Identifier(c.field) for c in written),
            values=sql.SQL(", ").join(_value(c, positions, "w") for c in written),
        )
    else:
        update = sql.SQL("updated AS (SELECT)")  # the file has only the key's columns
    shared = {
        "stored_fields": sql.SQL(", ").join(stored_fields),
        "update": update,
    }
    return UpdateStatements(
        create_stored=sql.SQL(queries["create_stored"]).format(table=parts["table"]),
        lock_batch_keys=sql.SQL(queries["lock_batch_keys"]).format(
            table=parts["table"], staged=staged.name, stored_order=_stored_order(dataset)
        ),
        lock_stored=sql.SQL(queries["lock_stored"]).format(
            first_valid=first_valid,
            table=parts["table"],
            stored_key=parts["stored_key"],
            stored_order=_stored_order(dataset),
            lock=sql.SQL("" if dry_run else "FOR UPDATE OF t"),
        ),
        settle=sql.SQL(queries["settle_update"]).format(
            **parts,
            **shared,
            first_valid=first_valid,
            changed=changed,
            stored_ref=sql.SQL("NULL::bigint" if dry_run else "w.stored_id"),
        ),
        probe=sql.SQL(queries["probe_updates"]).format(
            **shared, table=parts["table"], stored_key_s=_stored_key(dataset, positions, "s")
        ),
    )


# The outcomes a batch's settle statements give, by mode (and an undo's).
OUTCOMES = {
    "insert": ("inserted", "duplicate", "failure"),
    "upsert": ("inserted", "updated", "unchanged", "duplicate", "failure"),
    "update-only": ("updated", "unchanged", "duplicate", "failure"),
    "undo": ("deleted", "restored", "failure"),
}


def _results_of_outcomes(
    outcomes: Sequence[str],
    success_record: sql.Composable,
    rejected_record: sql.Composable,
    results: sql.Identifier,
) -> sql.Composed:
    """The end of the settle statements, gathering the arrays of ``outcomes`` alone."""
    arrays: list[sql.Composable] = []
    rows: list[sql.Composable] = []
    for outcome in outcomes:
        # A success has no message.
        rejected = outcome in ("duplicate", "failure")
        values = ("line", "message", "record") if rejected else ("line", "record")
        names = {value: sql.Identifier(f"{outcome}_{value}s") for value in values}
        arrays += [
            sql.SQL(queries["outcome_array"]).format(
                value=sql.Identifier(value), outcome=sql.Literal(outcome), name=name
            )
            for value, name in names.items()
        ]
        rows.append(
            sql.SQL("({}, {}, {}, {})").format(
                sql.Literal(outcome), names["line"], names.get("message", sql.NULL), names["record"]
            )
        )
    return sql.SQL(queries["results_of_outcomes"]).format(
        arrays=sql.SQL(",\n           ").join(arrays),
        outcomes=sql.SQL(", ").join(rows),
        success_record=success_record,
        rejected_record=rejected_record,
        block=sql.Literal(BLOCK_LINES),
        results=results,
    )


def chunk_statements(
    staged: StagedTable,
    header: Sequence[str],
    dry_run: bool = False,
    mode: str = "insert",
    *,
    undo_results: sql.Identifier | None = None,
    unseen_upload: uuid.UUID | None = None,
) -> ChunkStatements:
    """The statements of a batch's chunks in ``mode`` (:data:`importq.rules.datasets.MODES`).

    A dry run's write into ``importq_dry_run`` (``create_dry_run``), a copy of the
    target's columns and constraints, and keep no target id; what is already stored is
    still looked up in the target, and never locked. With ``undo_results`` (an undo's
    results table), they are an undo's of the batch ``staged`` holds. The rows any run of
    batch ``unseen_upload``'s upload inserted (it, or a rerun of it) are not looked up as
    stored: a dry run rerunning that upload judges it as though it came in their place.
    """
    dataset = staged.dataset
    positions = staged.positions
    read = sorted(set(positions.values()))
    values = [_value(c, positions) for c in dataset.columns]
    key_values = [values[dataset.columns.index(c)] for c in dataset.key_columns]
    order = sql.SQL(", ").join(
        [sql.SQL("key_hash")]
        + [
            sql.SQL('{} COLLATE "C"').format(value) if c.type.sql_type == "text" else value
            for c, value in zip(dataset.key_columns, key_values, strict=True)
        ]
    )
    success_record, rejected_record = record_sql(
        dataset, header, only_inserts=mode == "insert" and undo_results is None
    )
    screen = Screen.of(dataset, positions)
    parts: dict[str, sql.Composable] = {
        "staged": staged.name,
        "results": staged.results,
        "trimmed": sql.SQL(", ").join(
            sql.SQL("CASE WHEN padded THEN importq_trim({c}) ELSE {c} END AS {t}").format(
                c=cell(p), t=trimmed(p)
            )
            for p in read
        ),
        "table": sql.Identifier(dataset.table),
        "write_to": sql.Identifier("importq_dry_run" if dry_run else dataset.table),
        "stored_id": sql.SQL("NULL::bigint" if dry_run else "target_id"),
        "fields": _fields(dataset),
        # A key stored meanwhile is passed over; a value another unique index refuses is not.
        # (A dry run's table has no index at all.)
        "on_stored_key": sql.SQL("ON CONFLICT DO NOTHING")
        if dry_run
        else sql.SQL("ON CONFLICT (key_hash, {}) DO NOTHING").format(_key(dataset)),
        "values": sql.SQL(", ").join(values),
        "order": order,
        "key_values": sql.SQL(", ").join(key_values),
        "stored_key": _stored_key(dataset, positions, "t")
        if unseen_upload is None
        else sql.SQL(queries["not_a_run_of"]).format(
            stored_key=_stored_key(dataset, positions, "t"),
            upload=sql.Literal(str(unseen_upload)),
        ),
        "results_of_outcomes": _results_of_outcomes(
            OUTCOMES["undo" if undo_results is not None else mode],
            success_record,
            rejected_record,
            undo_results or staged.results,
        ),
    }
    judged = sql.SQL(" UNION ALL ").join(
        sql.SQL(queries["judged_values"]).format(position=sql.Literal(p), value=trimmed(p))
        for p in screen.judged
    )

    def first_valid(condition: sql.Composable) -> sql.Composed:
        return sql.SQL(queries["first_valid_rows"]).format(order=order, condition=condition)

    to_insert = first_valid(
        sql.SQL(queries["new_keys"]).format(table=parts["table"], stored_key=parts["stored_key"])
    )
    settle = sql.SQL(queries["settle_chunk"])
    settle_parts = {
        **parts,
        "to_insert": to_insert,
        "winner_keys": sql.SQL(", ").join(
            sql.SQL("{} AS {}").format(sql.Identifier(c.field), _winner_key(i))
            for i, c in enumerate(dataset.key_columns)
        ),
        "same_key": sql.SQL(" AND ").join(
            sql.SQL("w.{} = {}").format(_winner_key(i), value) for i, value in enumerate(key_values)
        ),
    }
    every_key = first_valid(sql.SQL("true"))
    updates = (
        None if mode == "insert" else _update_statements(staged, header, parts, every_key, dry_run)
    )
    return ChunkStatements(
        screen=screen,
        create_chunk=sql.SQL(queries["create_chunk"]).format(
            **parts,
            joined=_joined([cell(p) for p in read]),
            originals=sql.SQL(", ").join(
                sql.SQL("CASE WHEN padded THEN {} END AS {}").format(cell(p), kept(p))
                if p in read
                else cell(p)
                for p in range(staged.width)
            ),
        ),
        judged_values=judged if screen.judged else None,
        suspect_rows=sql.SQL(queries["suspect_rows"]).format(
            **parts,
            cells=sql.SQL(", ").join(original(p, read) for p in read),
            passes=screen.passes,
        ),
        settle=settle.format(**settle_parts, on_conflict=sql.SQL("")),
        settle_guarded=settle.format(**settle_parts, on_conflict=parts["on_stored_key"]),
        lines_to_insert=sql.SQL(queries["lines_to_insert"]).format(
            to_insert=to_insert if updates is None else every_key
        ),
        probe=sql.SQL(queries["probe_rows"]).format(**parts),
        create_dry_run=(
            sql.SQL(queries["create_dry_run_table"]).format(table=parts["table"])
            if dry_run
            else None
        ),
        read_positions={name: read.index(p) for name, p in positions.items()},
        dedup_index=dedup_index(dataset),
        updates=updates,
        undo=None if undo_results is None else _undo_statements(staged, header, parts),
    )
