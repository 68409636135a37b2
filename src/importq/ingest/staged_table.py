"""A batch's staged rows: one table per batch, ``importq_staging.b_<batch id hex>``.

Invariants:

- ``key_hash`` is the hash of the normalised dedup key (:meth:`StagedTable.key_hash`).
  Rows of one key share a hash, so they share a chunk. A row without a whole key hashes
  its line instead, and is a group of one.
- The target table stores the same hash, so the expression must never change.
- Every statement reads the batch's table alike, whether the rows were COPYed into it
  or into parts that became its partitions.

This module only composes statements: ``sql/staging.sql`` templates, completed with
``psycopg.sql``. Staging and processing run them, in transactions of their own.

The columns are:

- ``line``: the row number a spreadsheet shows. It is unique.
- ``problem``: why the row could not be read as a record. It becomes a failure.
- ``extra``: the cells past the header's width, kept for the failure report.
- ``c0 … c<n-1>``: the cells exactly as uploaded, aligned with the uploaded header.
- ``key_hash``: a generated column, computed as each row arrives.

Rows are COPYed straight into the batch's table, in file order, and frozen by ``COPY …
FREEZE``. Freezing is allowed because the table is created in the COPY's own
subtransaction. A big clean CSV file is COPYed in two halves at once. Each half goes
into a table of its own, a *part* named ``b_<hex>_<n>``, whose lines are known before
its COPY starts. The parts then become the partitions of the batch's table.
``key_hash`` is indexed once all rows are in. A chunk is a range of hashes, found
through that index.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from functools import cached_property

from psycopg import sql

from importq.ingest.staged_records import record_types
from importq.rules.datasets import Dataset
from importq.sql import queries

SCHEMA = "importq_staging"
# The line of the first data record: the header is line 1.
FIRST_LINE = 2
# Joins the key parts before hashing. The separator is U+001F, which a trimmed part
# never starts or ends with.
KEY_SEPARATOR = " || E'\\x1f' || "


def table_name(batch_id: uuid.UUID) -> str:
    return f"b_{batch_id.hex}"


def part_name(batch_id: uuid.UUID, number: int) -> str:
    """The table of part ``number`` of a batch's staged rows. It becomes a partition."""
    return f"{table_name(batch_id)}_{number}"


@dataclass(frozen=True)
class LineRange:
    """The lines of a staged part, from ``first`` up to ``next``, which is excluded.

    ``next`` is None for the part that runs to the end.
    """

    first: int
    next: int | None


def results_name(batch_id: uuid.UUID) -> str:
    """The name of a batch's results table, in the ``SCHEMA``."""
    return f"r_{batch_id.hex}"


def results_table(batch_id: uuid.UUID) -> sql.Identifier:
    return sql.Identifier(SCHEMA, results_name(batch_id))


def drop_staged_table(name: str) -> sql.Composed:
    return sql.SQL(queries["drop_staged_table"]).format(table=sql.Identifier(SCHEMA, name))


def cell(position: int) -> sql.Identifier:
    """The staged column of the uploaded header's column ``position``."""
    return sql.Identifier(f"c{position}")


def at_most_chars(text: sql.Composable, longest: int) -> sql.Composed:
    """The SQL test that ``text`` holds at most ``longest`` characters. It is true for NULL.

    The byte length is tested first. It is known without reading the text, and it is
    never less than the number of characters, so most texts pass on it alone.
    """
    return sql.SQL("(octet_length({t}) <= {n} OR char_length({t}) <= {n})").format(
        t=text, n=sql.Literal(longest)
    )


def original(position: int, read: Collection[int]) -> sql.Composable:
    """A chunk row's cell as uploaded (see ``create_chunk``).

    A cell the row rules do not read is ``c<position>``. A cell they read is kept apart
    as uploaded, in ``o<position>``, only in a row that was trimmed. In any other row
    the trimmed cell is the same text.
    """
    if position not in read:
        return cell(position)
    return sql.SQL("coalesce({}, {})").format(kept(position), trimmed(position))


def kept(position: int) -> sql.Identifier:
    """A cell the rules read, as uploaded. It is NULL unless the chunk row was trimmed."""
    return sql.Identifier(f"o{position}")


def trimmed(position: int, row: str | None = None) -> sql.Identifier:
    """That cell trimmed by ``importq_trim``, as the chunk statement names it.

    The name is qualified by the chunk row's alias ``row``, when one is given.
    """
    name = f"t{position}"
    return sql.Identifier(row, name) if row is not None else sql.Identifier(name)


@dataclass(frozen=True)
class StagedTable:
    """The staged table of one batch, and the statements over it.

    ``positions`` maps a dataset column's name to its index in the uploaded header.
    """

    batch_id: uuid.UUID
    width: int
    dataset: Dataset
    positions: dict[str, int]

    @classmethod
    def of(cls, batch_id: uuid.UUID, dataset: Dataset, header: list[str]) -> StagedTable:
        return cls(batch_id, len(header), dataset, dict(dataset.match_header(header).positions))

    @property
    def name(self) -> sql.Identifier:
        return sql.Identifier(SCHEMA, table_name(self.batch_id))

    @property
    def results(self) -> sql.Identifier:
        """The batch's row results: ``importq_staging.r_<batch id hex>``."""
        return results_table(self.batch_id)

    @property
    def undo_log(self) -> sql.Identifier:
        """An update mode's undo log: ``importq_staging.u_<batch id hex>``, the stored
        rows its chunks updated, as they were."""
        return sql.Identifier(SCHEMA, f"u_{self.batch_id.hex}")

    def create_undo_log(self) -> sql.Composed:
        """The undo log, unless it exists (a batch in insert mode has none: it updates no
        row, and its undo makes an empty one)."""
        return sql.SQL(queries["create_undo_log"]).format(
            undo_log=self.undo_log,
            index=sql.Identifier(f"u_{self.batch_id.hex}_chunk"),
            table=sql.Identifier(self.dataset.table),
        )

    @cached_property
    def key_hash(self) -> sql.Composed:
        """The chunking hash of a row, as an expression over the table's columns."""
        parts = [
            sql.SQL("nullif(importq_trim({}), '')").format(cell(self.positions[name]))
            for name in self.dataset.dedup_key
        ]
        return sql.SQL(queries["staged_key_hash"]).format(key=sql.SQL(KEY_SEPARATOR).join(parts))

    def create(self, longest: int | None = None) -> list[sql.Composed]:
        """The batch's staged table, and its empty results table.

        ``longest`` is the most characters a cell may hold, checked as each row arrives.
        It is for rows that PostgreSQL parses, because importq's readers check their own.
        """
        return [self._table(self.name, FIRST_LINE, longest=longest), self.create_results()]

    def create_results(self) -> sql.Composed:
        return sql.SQL(queries["create_results_table"]).format(results=self.results)

    def create_parent(self) -> sql.Composed:
        """The batch's staged table, made of parts (:meth:`create_part`)."""
        return sql.SQL(queries["create_staged_parent"]).format(
            table=self.name, cells=self._cell_columns(), hash=self.key_hash
        )

    def part(self, number: int) -> sql.Identifier:
        return sql.Identifier(SCHEMA, part_name(self.batch_id, number))

    def create_part(self, number: int, lines: LineRange, longest: int) -> sql.Composed:
        """A table for the rows of ``lines``, to be attached to the parent.

        ``longest`` is as in :meth:`create`.
        """
        return self._table(self.part(number), lines.first, lines, longest)

    def attach_part(self, number: int, lines: LineRange) -> sql.Composed:
        return sql.SQL(queries["attach_staged_part"]).format(
            table=self.name,
            part=self.part(number),
            first=sql.Literal(lines.first),
            next=sql.SQL("MAXVALUE") if lines.next is None else sql.Literal(lines.next),
        )

    def _table(
        self,
        name: sql.Identifier,
        first: int,
        lines: LineRange | None = None,
        longest: int | None = None,
    ) -> sql.Composed:
        checks: list[sql.Composable] = []
        if lines is not None:
            checks.append(sql.SQL("line >= {}").format(sql.Literal(lines.first)))
            if lines.next is not None:
                checks.append(sql.SQL("line < {}").format(sql.Literal(lines.next)))
        if longest is not None:
            checks += [at_most_chars(cell(p), longest) for p in range(self.width)]
        return sql.SQL(queries["create_staged_table"]).format(
            table=name,
            cells=self._cell_columns(),
            hash=self.key_hash,
            first=sql.Literal(first),
            checks=sql.SQL(", CHECK ({})").format(sql.SQL(" AND ").join(checks))
            if checks
            else sql.SQL(""),
        )

    def _cell_columns(self) -> sql.Composable:
        return sql.SQL(",\n    ").join(
            sql.SQL("{} text").format(cell(p)) for p in range(self.width)
        )

    def copy_rows(self) -> sql.Composed:
        """Binary COPY of ``(line, problem, extra, c0 … c<n-1>)`` rows."""
        return sql.SQL(queries["copy_staged_rows"]).format(table=self.name, cells=self._cells())

    def copy_types(self) -> list[str]:
        return record_types(self.width)

    def copy_csv(self, delimiter: str, part: int | None = None) -> sql.Composed:
        """A COPY of a CSV file's data records into the staged table, or into one of its
        parts. The header is read already."""
        return sql.SQL(queries["copy_staged_csv"]).format(
            table=self.name if part is None else self.part(part),
            cells=self._cells(),
            delimiter=sql.Literal(delimiter),
        )

    def index(self) -> sql.Composed:
        """The hash index the chunks find their rows by; built once every row is in."""
        return sql.SQL(queries["index_staged_table"]).format(table=self.name)

    def chunk_bounds(self) -> sql.Composed:
        """The chunks' first hashes and row counts, for ``%(size)s``-row chunks."""
        return sql.SQL(queries["staged_chunk_bounds"]).format(table=self.name)

    def _cells(self) -> sql.Composable:
        return sql.SQL(", ").join(cell(p) for p in range(self.width))
