"""Upload limits: how big an upload may be, and the refusals that name each limit.

Every limit refusal is a 413 that names the limit and carries its value. The readers
check cell lengths as they read. :func:`importq.ingest.parsed_upload.within_limits`
checks the header's width and the number of rows.
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

    def too_many_rows(self) -> Refusal:
        return Refusal(
            413,
            "too_many_rows",
            f"The upload has more than {self.max_rows} data rows, the limit.",
            limit=self.max_rows,
        )

    def cell_too_long(self, line: int) -> Refusal:
        return Refusal(
            413,
            "cell_too_long",
            f"Line {line} has a cell longer than {self.max_cell_chars} characters, the limit.",
            limit=self.max_cell_chars,
            line=line,
        )
