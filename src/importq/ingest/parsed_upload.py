"""An upload once read: its header and a one-pass iterator over its rows.

Every reader (CSV, XLSX, JSON) returns a :class:`ParsedUpload`. ``line`` is the row
number a spreadsheet shows: the header is 1; each CSV record is one row however many
physical lines its quoted cells span; blank records are skipped but keep their number;
a JSON row's line is its index + 2.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

from importq.errors import Refusal
from importq.ingest.clean_csv import CsvSource
from importq.ingest.limits import UploadLimits
from importq.rules.row_rules import StagedRow


@dataclass
class ParsedUpload:
    """An upload's header and a one-pass iterator over its data rows."""

    header: list[str]
    rows: Iterator[StagedRow]
    #: For a CSV: the codec it was read with (e.g. ``utf-8``, ``utf-16-le``, ``cp1252``)
    #: and its delimiter, given or sniffed.
    encoding: str | None = None
    delimiter: str | None = None
    #: For a UTF-8 CSV whose header is its first line: its data records as bytes, for
    #: staging to try first (``rows`` reads them when that does not work out).
    source: CsvSource | None = None


def within_limits(upload: ParsedUpload, limits: UploadLimits) -> ParsedUpload:
    """Refuse a header wider than the limit now, and a row past the row limit when it
    comes (staging is one transaction, so nothing of a refused upload remains).
    Readers check cell lengths themselves, where it is cheapest."""
    if len(upload.header) > limits.max_columns:
        raise Refusal(
            413,
            "too_many_columns",
            f"The header has {len(upload.header)} columns; the limit is {limits.max_columns}.",
            limit=limits.max_columns,
        )

    def rows() -> Iterator[StagedRow]:
        for count, row in enumerate(upload.rows, start=1):
            if count > limits.max_rows:
                raise limits.too_many_rows()
            yield row

    return replace(upload, rows=rows())


def empty_upload() -> Refusal:
    return Refusal(400, "empty_data", "The upload has no data rows.")
