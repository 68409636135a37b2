"""Upload limits: how big an upload may be, and the refusals that name each limit.

Every limit refusal is a 413 that names the limit and carries its value. The readers
check cell lengths, record widths and record lengths as they read, before a record is
built whole. :func:`importq.ingest.parsed_upload.within_limits` checks the header's
width and the number of rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from importq.errors import Refusal


@dataclass(frozen=True)
class UploadLimits:
    """How big an upload may be. Each refusal is a 413 that names the limit and its value."""

    max_rows: int = 20_000_000
    max_columns: int = 500
    max_cell_chars: int = 32_767  # Excel's own limit for a cell

    @property
    def max_record_chars(self) -> int:
        """The most characters a CSV record within the limits can take.

        Each of ``max_columns`` cells may hold ``max_cell_chars`` quotes, each doubled,
        between its own two quotes, and a delimiter; the line end adds two.
        """
        return self.max_columns * (2 * self.max_cell_chars + 3) + 2

    def too_many_rows(self) -> Refusal:
        return Refusal(
            413,
            "too_many_rows",
            f"The upload has more than {self.max_rows} data rows, the limit.",
            limit=self.max_rows,
        )

    def too_many_columns(self, width: int | None = None, line: int | None = None) -> Refusal:
        """The header (``width`` columns) or record ``line`` is wider than the limit."""
        if line is None:
            detail = f"The header has {width} columns; the limit is {self.max_columns}."
            return Refusal(413, "too_many_columns", detail, limit=self.max_columns)
        return Refusal(
            413,
            "too_many_columns",
            f"Line {line} has more than {self.max_columns} fields, the limit.",
            limit=self.max_columns,
            line=line,
        )

    def cell_too_long(self, line: int) -> Refusal:
        return Refusal(
            413,
            "cell_too_long",
            f"Line {line} has a cell longer than {self.max_cell_chars} characters, the limit.",
            limit=self.max_cell_chars,
            line=line,
        )

    def record_too_long(self, line: int) -> Refusal:
        """A record past :attr:`max_record_chars`: it cannot be within the limits."""
        return Refusal(
            413,
            "record_too_long",
            f"Line {line} starts a record longer than {self.max_record_chars} characters, "
            f"which cannot fit {self.max_columns} cells of {self.max_cell_chars} characters.",
            limit=self.max_record_chars,
            line=line,
        )
