"""A batch's staged rows: one table per batch, ``importq_staging.b_<batch id hex>``.

Columns: ``line`` (the row number a spreadsheet shows, unique), ``problem`` (why the row
could not be read as a record; it becomes a failure), ``extra`` (cells past the header's
width, kept for the failure report), ``c0 … c<n-1>`` (the cells exactly as uploaded,
aligned with the uploaded header), then ``key_hash``.

Rows are COPYed straight into the batch's table, in file order, frozen (``COPY …
FREEZE``: the table is created in the COPY's own subtransaction). A big clean CSV file
is COPYed in two halves at once, each into a table of its own (a *part*,
``b_<hex>_<n>``, its lines known before its COPY starts), which become the partitions
of the batch's table: every statement reads the batch's table alike. ``key_hash`` is a
generated column, computed as each row arrives, and indexed once all are in: a chunk is
a hash range, found through that index. The hash is of the normalised dedup key
(:meth:`StagedTable.key_hash`): rows of one key share a hash, so they share a chunk; a
row without a whole key hashes its line and is a group of one. The target table stores
the same hash, so the expression must never change.

This module only composes statements (``sql/staging.sql`` templates completed with
``psycopg.sql``); staging and processing run them in their own transactions.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from functools import cached_property

from psycopg import sql

from importq.rules.datasets import Dataset
from importq.sql import queries

SCHEMA = "importq_staging"
# The line of the first data record: the header is line 1.
FIRST_LINE = 2
# Joins key parts before hashing: U+001F, which a trimmed part never starts or ends with.
KEY_SEPARATOR = " || E'\\x1f' || "


def table_name(batch_id: uuid.UUID) -> str:
    return f"b_{batch_id.hex}"


def part_name(batch_id: uuid.UUID, number: int) -> str:
    """The table of part ``number`` of a batch's staged rows (a partition, once taken in)."""
    return f"{table_name(batch_id)}_{number}"


@dataclass(frozen=True)
class LineRange:
    """The lines ``first`` up to ``next`` (excluded; None: to the end) of a staged part."""

    first: int
    next: int | None


def results_table(batch_id: uuid.UUID) -> sql.Identifier:
    return sql.Identifier(SCHEMA, f"r_{batch_id.hex}")


def drop_staged_table(name: str) -> sql.Composed:
    return sql.SQL(queries["drop_staged_table"]).format(table=sql.Identifier(SCHEMA, name))


def cell(position: int) -> sql.Identifier:
    """The staged column of the uploaded header's column ``position``."""
    return sql.Identifier(f"c{position}")


def at_most_chars(text: sql.Composable, longest: int) -> sql.Composed:
    """``text`` holds at most ``longest`` characters (true for NULL). The byte length is
    known without reading the text, and is never less than the length: most texts pass
    on it alone."""
    return sql.SQL("(octet_length({t}) <= {n} OR char_length({t}) <= {n})").format(
        t=text, n=sql.Literal(longest)
    )


def original(position: int, read: Collection[int]) -> sql.Composable:
    """A chunk row's cell as uploaded (see ``create_chunk``): ``c<position>`` when the
    row rules do not read it; else kept apart only in a row that was trimmed
    (``o<position>``), and in any other the trimmed cell is the same text."""
    if position not in read:
        return cell(position)
    return sql.SQL("coalesce({}, {})").format(kept(position), trimmed(position))


def kept(position: int) -> sql.Identifier:
    """A cell the rules read, as uploaded, in a chunk row that was trimmed (else NULL)."""
    return sql.Identifier(f"o{position}")


def trimmed(position: int, row: str | None = None) -> sql.Identifier:
    """That cell trimmed (``importq_trim``), as the chunk statement names it; qualified
    by the chunk row's alias ``row``, if given."""
    name = f"t{position}"
    return sql.Identifier(row, name) if row is not None else sql.Identifier(name)


@dataclass(frozen=True)
class StagedTable:
    """The staged table of one batch, and the statements over it.

    ``positions``: dataset column name → index in the uploaded header.
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

    @cached_property
    def key_hash(self) -> sql.Composed:
        """The chunking hash of a row (an expression over the table's columns)."""
        parts = [
            sql.SQL("nullif(importq_trim({}), '')").format(cell(self.positions[name]))
            for name in self.dataset.dedup_key
        ]
        return sql.SQL(queries["staged_key_hash"]).format(key=sql.SQL(KEY_SEPARATOR).join(parts))

    def create(self, longest: int | None = None) -> list[sql.Composed]:
        """The batch's staged table, and its empty results table. ``longest``: the most
        characters a cell may hold, checked as each row arrives (for rows PostgreSQL
        parses; importq's readers check their own)."""
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
        """A table for the rows of ``lines``, to be attached to the parent (``longest``:
        as in :meth:`create`)."""
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
        return ["int4", "text", "text[]", *["text"] * self.width]

    def copy_csv(self, delimiter: str, part: int | None = None) -> sql.Composed:
        """COPY of a CSV file's data records (the header already read) straight in, or
        into one of its parts."""
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
