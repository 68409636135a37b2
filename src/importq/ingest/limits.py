"""Upload limits: how big an upload may be, and the refusals that name each limit."""

from __future__ import annotations

from dataclasses import dataclass

from importq.errors import Refusal


@dataclass(frozen=True)
class UploadLimits:
    """How big an upload may be; each refusal names the limit and its value (413)."""

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
