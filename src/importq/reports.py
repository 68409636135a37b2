"""The three CSV reports of a batch: successes, duplicates, failures.

Formatting is pure; :class:`ReportWriter` streams rows into files as they come (rows
arrive in line order, each goes to exactly one report). Files are UTF-8 with BOM, CRLF,
RFC 4180 quoting, so Excel opens them right; text cells that a spreadsheet would run as
a formula are prefixed with ``'``; cells of numeric columns stay numbers.

- ``successes.csv``: ``line``, the key columns, ``targetId``, the report columns;
- ``duplicates.csv`` / ``failures.csv``: ``line``, ``message``, every uploaded column
  under its uploaded header, so the file can be fixed and uploaded again.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain, repeat
from pathlib import Path
from typing import TextIO

from importq.datasets import Dataset
from importq.row_rules import NUMBER

KINDS = ("success", "duplicates", "failures")
OUTCOME_KIND = {"success": "success", "duplicate": "duplicates", "failure": "failures"}
FILE_NAMES = {
    "success": "successes.csv",
    "duplicates": "duplicates.csv",
    "failures": "failures.csv",
}
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: str | None, numeric: bool) -> str:
    """A cell as written: numbers of numeric columns as they are, formulas neutralised."""
    if not value:
        return ""
    if not value.startswith(_FORMULA_START):
        return value  # the common case, decided by one C call
    if numeric and NUMBER.fullmatch(value.strip()):
        return value
    return "'" + value


@dataclass(frozen=True)
class ReportLayout:
    """Headers and numeric-column flags of a batch's reports."""

    key_count: int
    success_header: list[str]
    success_numeric: list[bool]
    rejected_header: list[str]
    rejected_numeric: list[bool]

    @classmethod
    def for_batch(cls, dataset: Dataset, uploaded_header: Sequence[str]) -> ReportLayout:
        positions = dataset.match_header(list(uploaded_header)).positions
        numeric_at = {i for name, i in positions.items() if dataset.column(name).type.is_numeric}
        return cls(
            key_count=len(dataset.dedup_key),
            success_header=["line", *dataset.dedup_key, "targetId", *dataset.report_columns],
            success_numeric=[True]
            + [dataset.column(n).type.is_numeric for n in dataset.dedup_key]
            + [True]
            + [dataset.column(n).type.is_numeric for n in dataset.report_columns],
            rejected_header=["line", "message", *uploaded_header],
            rejected_numeric=[True, False] + [i in numeric_at for i in range(len(uploaded_header))],
        )


class _LastWrite:
    """A file-like sink that keeps the last string written (csv writes a row at once)."""

    last = ""

    def write(self, text: str) -> int:
        self.last = text
        return len(text)


class RecordFormatter:
    """Formats a row result as the CSV record its report prints, CRLF included.

    Chunk jobs format their rows as they finish them, so the aggregation only has to
    put records in line order into the right file.
    """

    def __init__(self, layout: ReportLayout) -> None:
        self._layout = layout
        self._sink = _LastWrite()
        self._writer = csv.writer(self._sink, lineterminator="\r\n")

    def record(
        self,
        line: int,
        outcome: str,
        message: str | None,
        target_id: str | None,
        values: Sequence[str | None],
    ) -> str:
        """``values``: for a success the key then the report columns; else every
        uploaded column."""
        if outcome == "success":
            key_count = self._layout.key_count
            cells = [str(line), *values[:key_count], target_id, *values[key_count:]]
            numeric = self._layout.success_numeric
        else:
            cells = [str(line), message, *values]
            numeric = self._layout.rejected_numeric
        # Most cells need no change: test that in C before calling safe_cell. zip stops
        # at the shorter: cells past the header (a ragged row) are text.
        flags = chain(numeric, repeat(False))
        self._writer.writerow(
            [
                safe_cell(c, n) if c is None or c.startswith(_FORMULA_START) else c
                for c, n in zip(cells, flags, strict=False)
            ]
        )
        return self._sink.last


class ReportWriter:
    """Writes formatted records into up to three report files in ``directory``.

    A report with no rows is never created. Call :meth:`close` once, at the end.
    """

    def __init__(self, directory: Path, layout: ReportLayout) -> None:
        self._directory = directory
        self._layout = layout
        self._files: dict[str, TextIO] = {}
        self.counts = dict.fromkeys(KINDS, 0)

    def _file(self, kind: str) -> TextIO:
        handle = self._files.get(kind)
        if handle is None:
            handle = (self._directory / FILE_NAMES[kind]).open(
                "w", encoding="utf-8-sig", newline=""
            )
            header = (
                self._layout.success_header if kind == "success" else self._layout.rejected_header
            )
            csv.writer(handle, lineterminator="\r\n").writerow(header)
            self._files[kind] = handle
        return handle

    def add(self, records: Iterable[tuple[str, str]]) -> int:
        """Append ``(outcome, record)`` pairs, in line order; how many were written."""
        written = 0
        for outcome, record in records:
            kind = OUTCOME_KIND[outcome]
            self._file(kind).write(record)
            self.counts[kind] += 1
            written += 1
        return written

    def close(self) -> dict[str, Path]:
        """Close the files; return the written reports by kind."""
        for handle in self._files.values():
            handle.close()
        return {kind: self._directory / FILE_NAMES[kind] for kind in self._files}
