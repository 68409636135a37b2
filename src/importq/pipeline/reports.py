"""The three CSV reports of a batch: successes, duplicates and failures.

SQL formats each row's CSV record. :func:`record_sql` gives the expressions, and the
chunk statement that settles the row uses them. So the aggregation only puts the
records, in line order, into the right file (:class:`ReportWriter`).

The files are UTF-8 with a BOM, with CRLF line ends and RFC 4180 quoting, so that Excel
opens them right. A text cell that a spreadsheet would run as a formula is prefixed with
``'``, in the header too. Cells of numeric columns stay numbers. The SQL function
``importq_report_cell`` formats the cells. ``migrations/0004_staged_tables.sql`` creates it, and
``migrations/0006_report_cell_first_character.sql`` replaces it; ``importq_report_extra``
(``migrations/0014_cancelled_chunks.sql``) formats a ragged row's cells past the header.

The columns:

- ``successes.csv``: ``line``, the key columns, ``targetId``, ``outcome`` (``inserted``,
  ``updated`` or ``unchanged``), ``changedColumns`` (an update's changed columns, by
  their uploaded header names, separated by ``; ``), then the report columns.
- ``duplicates.csv`` and ``failures.csv``: ``line``, ``message``, then every uploaded
  column under its uploaded header. The file can then be fixed and uploaded again.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from psycopg import sql

from importq.ingest.staged_table import cell, original, trimmed
from importq.rules.datasets import Column, Dataset

KINDS = ("success", "duplicates", "failures")
OUTCOME_KIND = {"success": "success", "duplicate": "duplicates", "failure": "failures"}
# The report query joins each outcome's records one block of this many lines at a time.
# A chunk stores its results in the same blocks. So an array of a chunk's results never
# holds more than one of the report query's texts, and a text is limited to 1 GB.
BLOCK_LINES = 4096
# The columns of the successes report between the key and the report columns.
SUCCESS_FIELDS = ("targetId", "outcome", "changedColumns")
# What ReportWriter.append copies at a time.
COPY_BYTES = 1024 * 1024
FILE_NAMES = {
    "success": "successes.csv",
    "duplicates": "duplicates.csv",
    "failures": "failures.csv",
}


@dataclass(frozen=True)
class ReportLayout:
    """Headers of a batch's reports, and the column each uploaded cell fills (None: no
    column), which says how its cells are written."""

    key_count: int
    success_header: list[str]
    rejected_header: list[str]
    rejected_columns: list[Column | None]

    @classmethod
    def for_batch(cls, dataset: Dataset, uploaded_header: Sequence[str]) -> ReportLayout:
        positions = dataset.match_header(list(uploaded_header)).positions
        at = {i: dataset.column(name) for name, i in positions.items()}
        return cls(
            key_count=len(dataset.dedup_key),
            success_header=[
                "line",
                *dataset.dedup_key,
                *SUCCESS_FIELDS,
                *dataset.report_columns,
            ],
            rejected_header=["line", "message", *uploaded_header],
            rejected_columns=[at.get(i) for i in range(len(uploaded_header))],
        )


# A decimal-comma number as uploaded (spaces around it, digits grouped by spaces): a
# number, never a formula, whose comma needs quotes.
_COMMA_NUMBER = sql.Literal(
    "^ *[+-]?([0-9][0-9 \u00a0\u202f]*([.,][0-9]*)?|[.,][0-9]+)([eE][+-]?[0-9]+)? *$"
)


# A plain negative number: printed as it is, as importq_report_cell would print it, with
# no trim and no second pattern (half of all coordinates are negative).
_PLAIN_NEGATIVE = sql.Literal("^-[0-9]+(\\.[0-9]+)?$")


def report_cell(expression: sql.Composable, column: Column | None) -> sql.Composed:
    """A report cell of ``column``'s value ``expression``, as uploaded: RFC 4180 quoting
    and the formula guard (``importq_report_cell``), which a number is spared: one with
    a dot as it is numeric, one with a decimal comma as it is quoted."""
    if column is not None and column.type.is_numeric and not column.reports_as_number:
        return sql.SQL(
            "CASE WHEN {v} ~ {number} THEN CASE WHEN strpos({v}, ',') > 0 "
            "THEN '\"' || {v} || '\"' ELSE {v} END ELSE importq_report_cell({v}, false) END"
        ).format(v=expression, number=_COMMA_NUMBER)
    if column is not None and column.reports_as_number:
        return sql.SQL(
            "CASE WHEN ascii({v}) = 45 AND {v} ~ {negative} THEN {v} "
            "ELSE importq_report_cell({v}, true) END"
        ).format(v=expression, negative=_PLAIN_NEGATIVE)
    return sql.SQL("importq_report_cell({}, false)").format(expression)


# A row whose text cells hold no quote, CR or LF (tested on the cells joined): each text
# cell then needs at most quotes around it, for a comma, unless it starts as a formula.
_PLAIN_TEXT = sql.Literal('["\r\n]')


def _plain_text_cell(expression: sql.Composable) -> sql.Composed:
    """A text cell of a row that passes ``_PLAIN_TEXT``, as ``importq_report_cell`` would
    print it: one that starts as a formula (= + - @ TAB CR) is left to the function, so
    that such a column (phone numbers, say) costs its own cells only."""
    return sql.SQL(
        "CASE WHEN ascii({v}) IN ({starts}) THEN importq_report_cell({v}, false) "
        "WHEN strpos({v}, ',') > 0 THEN '\"' || {v} || '\"' ELSE coalesce({v}, '') END"
    ).format(v=expression, starts=sql.SQL(", ").join(sql.Literal(ord(c)) for c in FORMULA_STARTS))


# Between a record's fields: || rather than concat_ws, as a function takes at most 100
# arguments.
_NEXT_FIELD = sql.SQL(" || ',' || ")


def _record(fields: Sequence[sql.Composable], tail: sql.Composable) -> sql.Composed:
    joined = _NEXT_FIELD.join(fields)
    return sql.SQL("({} || {} || {})").format(joined, tail, sql.Literal("\r\n"))


# Cells past the header (a ragged row) print after the others, as text.
_EXTRA_CELLS = sql.SQL("CASE WHEN extra IS NULL THEN '' ELSE importq_report_extra(extra) END")


def _rejected_record(
    layout: ReportLayout, uploaded: Callable[[int], sql.Composable]
) -> sql.Composed:
    """A duplicate's or a failure's record: ``line``, ``message``, then each uploaded cell
    (``uploaded(position)``) and ``extra``.

    Most rows are plain: their text cells are tested at once, with one pattern over
    them joined, and then printed with a formula and a comma test each. Any other row
    has each cell formatted in full. Both give the same record
    (tests/integration/test_report_cells.py): a cancelled half of a million rows is made
    in the aggregation, by these.
    """
    columns = layout.rejected_columns
    cells = [uploaded(position) for position in range(len(columns))]
    texts = {p for p, column in enumerate(columns) if column is None or not column.type.is_numeric}
    uploaded_cells: sql.Composable = _NEXT_FIELD.join(
        report_cell(cell, column) for cell, column in zip(cells, columns, strict=True)
    )
    if texts:
        plain = _NEXT_FIELD.join(
            _plain_text_cell(cell) if p in texts else report_cell(cell, column)
            for p, (cell, column) in enumerate(zip(cells, columns, strict=True))
        )
        uploaded_cells = sql.SQL(
            "CASE WHEN {joined} !~ {pattern} THEN {plain} ELSE {full} END"
        ).format(
            # || rather than concat(): a function takes at most 100 arguments.
            joined=sql.SQL(" || E'\\x01' || ").join(
                sql.SQL("coalesce({}, '')").format(cells[p]) for p in sorted(texts)
            ),
            pattern=_PLAIN_TEXT,
            plain=plain,
            full=uploaded_cells,
        )
    return _record(
        [sql.SQL("line::text"), report_cell(sql.Identifier("message"), None), uploaded_cells],
        _EXTRA_CELLS,
    )


def record_sql(
    dataset: Dataset, header: Sequence[str], only_inserts: bool = False
) -> tuple[sql.Composed, sql.Composed]:
    """The SQL expressions of a row's report record, CRLF included.

    Returns two: one for a success, and one for a duplicate or a failure. They read these
    columns of a chunk row: the cells as uploaded
    (:func:`importq.ingest.staged_table.original`), the trimmed cells (``t<n>``),
    ``line``, ``extra``, ``message``, ``target_id``, ``outcome`` and ``changed_columns``.
    With ``only_inserts`` (insert mode), a success's outcome and changed columns are
    known, and written as constants: a million rows spare a million formattings.
    """
    layout = ReportLayout.for_batch(dataset, header)
    positions = dataset.match_header(list(header)).positions

    def trimmed_cell(name: str) -> sql.Composable:
        return trimmed(positions[name]) if name in positions else sql.NULL

    def success_cell(column: Column) -> sql.Composable:
        # A success's numbers passed the row rules, and a valid number with a dot prints
        # as itself, so it needs no formatting. tests/integration/test_report_cells.py
        # pins this.
        if column.reports_as_number:
            return sql.SQL("coalesce({}, '')").format(trimmed_cell(column.name))
        return report_cell(trimmed_cell(column.name), column)

    def success_cells(names: Sequence[str]) -> list[sql.Composable]:
        return [success_cell(dataset.column(name)) for name in names]

    # No id in a dry run: nothing was stored. An outcome is a word of letters: never quoted.
    done = (
        [sql.SQL("coalesce(target_id::text, '') || ',inserted,'")]
        if only_inserts
        else [
            sql.SQL("coalesce(target_id::text, '')"),
            sql.SQL("outcome"),
            report_cell(sql.Identifier("changed_columns"), None),
        ]
    )
    success = [
        sql.SQL("line::text"),
        *success_cells(dataset.dedup_key),
        *done,
        *success_cells(dataset.report_columns),
    ]
    read = set(positions.values())
    return _record(success, sql.SQL("''")), _rejected_record(
        layout, lambda position: original(position, read)
    )


def staged_failure_record(dataset: Dataset, header: Sequence[str]) -> sql.Composed:
    """A failure's record over a staged row (its cells ``c<n>`` as uploaded, ``line``,
    ``extra``) and a ``message`` column: the same record a chunk makes of that row."""
    return _rejected_record(ReportLayout.for_batch(dataset, header), cell)


# The first characters that make a spreadsheet run a cell as a formula.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def formula_safe(text: str) -> str:
    """``text`` as a spreadsheet shows it, never runs it: prefixed with ``'`` when it
    starts as a formula would. For header cells, which come from the upload; data cells
    get the same from the SQL function ``importq_report_cell``."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


class ReportWriter:
    """Writes formatted records into up to three report files in ``directory``.

    A report with no rows is never created. Call :meth:`close` once, at the end. A
    writer that ``continues`` another writes the records alone, with no BOM and no
    header: the other takes its files in with :meth:`append`.
    """

    def __init__(self, directory: Path, layout: ReportLayout, *, continues: bool = False) -> None:
        self._directory = directory
        self._layout = layout
        self._continues = continues
        self._files: dict[str, TextIO] = {}
        self.counts = dict.fromkeys(KINDS, 0)

    def _file(self, kind: str) -> TextIO:
        handle = self._files.get(kind)
        if handle is None:
            handle = (self._directory / FILE_NAMES[kind]).open(
                "w", encoding="utf-8" if self._continues else "utf-8-sig", newline=""
            )
            if not self._continues:
                header = (
                    self._layout.success_header
                    if kind == "success"
                    else self._layout.rejected_header
                )
                csv.writer(handle, lineterminator="\r\n").writerow(map(formula_safe, header))
            self._files[kind] = handle
        return handle

    def append(self, files: dict[str, Path], counts: dict[str, int]) -> None:
        """Append the closed files of a writer that continued this one (``counts``: its
        records of each kind), after the records written so far."""
        for kind, path in files.items():
            handle = self._file(kind)
            handle.flush()
            with path.open("rb") as records:
                shutil.copyfileobj(records, handle.buffer, COPY_BYTES)
            self.counts[kind] += counts[kind]

    def add(self, blocks: Iterable[tuple[str, str, int]]) -> int:
        """Append blocks of ``(outcome, records, count)``, in line order.

        Returns how many records were written.
        """
        written = 0
        for outcome, records, count in blocks:
            kind = OUTCOME_KIND[outcome]
            self._file(kind).write(records)
            self.counts[kind] += count
            written += count
        return written

    def close(self) -> dict[str, Path]:
        """Close the files, and return the written reports by kind."""
        for handle in self._files.values():
            handle.close()
        return {kind: self._directory / FILE_NAMES[kind] for kind in self._files}
