"""An upload once read: its header and a one-pass iterator over its rows.

Every reader returns a :class:`ParsedUpload`. The readers are
:func:`importq.ingest.csv_reader.read_csv`, :func:`importq.ingest.xlsx_reader.read_xlsx`
and :func:`importq.ingest.json_rows.read_json_rows`.

A row's ``line`` is the row number a spreadsheet shows, and the header is line 1. A CSV
record is one row, however many physical lines its quoted cells span. Blank records are
skipped, but they keep their number. A JSON row's line is its index plus 2.

A big XLSX upload is read by a process of its own
(:func:`importq.ingest.xlsx_process.read_xlsx_in_process`): its upload has the header
and, instead of rows, the staged table's COPY data (:class:`CopyData`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from importq.errors import Refusal
from importq.ingest.clean_csv import CsvSource
from importq.ingest.limits import UploadLimits
from importq.rules.row_rules import StagedRow

if TYPE_CHECKING:
    from psycopg import AsyncCopy


class CopyData(Protocol):
    """The staged records of an upload, read elsewhere, as binary COPY data."""

    async def write_to(self, copy: AsyncCopy) -> int:
        """Write all of the data to ``copy``, a COPY of ``copy_staged_rows`` without
        types set, and return how many rows it held.

        A refusal found while reading is raised here, after some data may have been
        written: the caller's transaction must then roll back.
        """
        ...


@dataclass
class ParsedUpload:
    """An upload's header and a one-pass iterator over its data rows."""

    header: list[str]
    rows: Iterator[StagedRow]
    #: The codec a CSV was read with, such as ``utf-8``, ``utf-16-le`` or ``cp1252``.
    encoding: str | None = None
    #: The delimiter a CSV was read with, given or sniffed.
    delimiter: str | None = None
    #: The data records as bytes, only for a UTF-8 CSV whose header is its first line.
    #: Staging tries them first. When that does not work out, ``rows`` reads them.
    source: CsvSource | None = None
    #: The staged records, read by another process. ``rows`` is then empty.
    copy_data: CopyData | None = None


def within_limits(upload: ParsedUpload, limits: UploadLimits) -> ParsedUpload:
    """Refuse an upload past the column limit or the row limit.

    A header wider than the limit is refused at once. A row past the row limit is
    refused when the iterator reaches it. Staging is one transaction, so nothing of a
    refused upload remains. The readers check cell lengths themselves, where it is
    cheapest.
    """
    if len(upload.header) > limits.max_columns:
        raise limits.too_many_columns(len(upload.header))

    def rows() -> Iterator[StagedRow]:
        for count, row in enumerate(upload.rows, start=1):
            if count > limits.max_rows:
                raise limits.too_many_rows()
            yield row

    return replace(upload, rows=rows())


def empty_upload() -> Refusal:
    return Refusal(400, "empty_data", "The upload has no data rows.")
