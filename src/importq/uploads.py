"""Reading uploads into rows: a header and, per record, its line and values.

Pure parsing over file objects and decoded JSON: no database. The staging step consumes
the rows as they are produced, so a file is never held whole in memory.

``line`` is the row number a spreadsheet shows: the header is 1; each CSV record is
one row however many physical lines its quoted cells span; blank records are skipped
but keep their number; a JSON row's line is its index + 2.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from importq.errors import Refusal
from importq.row_rules import StagedRow, Value


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


@dataclass
class ParsedUpload:
    """An upload's header and a one-pass iterator over its data rows."""

    header: list[str]
    rows: Iterator[StagedRow]


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

    return ParsedUpload(upload.header, rows())


def empty_upload() -> Refusal:
    return Refusal(400, "empty_data", "The upload has no data rows.")


def _ragged(values: Sequence[str], width: int) -> str | None:
    if len(values) == width:
        return None
    return f"expected {width} fields, found {len(values)}"


def check_utf8(binary: IO[bytes], *, block_size: int = 1 << 20) -> None:
    """Refuse a file that is not valid UTF-8, naming the byte offset and the line.

    One streaming pass before parsing (decoding is C-fast), so the error can say exactly
    where the bad byte is; the file is rewound afterwards.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    offset = 0
    newlines = 0
    while block := binary.read(block_size):
        try:
            decoder.decode(block)
        except UnicodeDecodeError as error:
            # error.object is the bytes held back from the last block (an unfinished
            # multi-byte sequence, never a newline) followed by this block.
            bad = offset - (len(error.object) - len(block)) + error.start
            line = newlines + error.object[: error.start].count(b"\n") + 1
            raise Refusal(
                400,
                "bad_encoding",
                f"The file is not valid UTF-8: byte 0x{error.object[error.start]:02x} at "
                f"offset {bad} (line {line}) cannot be decoded.",
                line=line,
                offset=bad,
            ) from None
        offset += len(block)
        newlines += block.count(b"\n")
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise Refusal(
            400,
            "bad_encoding",
            f"The file is not valid UTF-8: it ends inside a character (offset {offset}).",
            line=newlines + 1,
            offset=offset,
        ) from None
    binary.seek(0)


def read_csv(
    binary: IO[bytes], *, delimiter: str = ",", limits: UploadLimits = UploadLimits()
) -> ParsedUpload:
    """Parse a UTF-8 CSV (a leading BOM is dropped); refuse bad encoding or broken quoting."""
    check_utf8(binary)
    # The csv module enforces the cell limit in C (the setting is process-wide, and
    # every upload of a process shares the same limits).
    csv.field_size_limit(limits.max_cell_chars)
    text = io.TextIOWrapper(binary, encoding="utf-8-sig", newline="", errors="strict")
    reader = csv.reader(text, delimiter=delimiter, strict=False)

    def broken(error: csv.Error, line: int) -> Refusal:
        if "field larger than field limit" in str(error):
            return limits.cell_too_long(line)
        return Refusal(400, "bad_csv", f"Line {line}: {error}", line=line)

    header: list[str] | None = None
    first_line = 0
    try:
        for record in reader:
            first_line += 1
            if record:
                header = record
                break
    except csv.Error as error:
        raise broken(error, first_line + 1) from None
    if header is None:
        raise Refusal(400, "empty_data", "The upload is empty: no header and no rows.")
    width = len(header)

    def rows() -> Iterator[StagedRow]:
        line = first_line
        try:
            for record in reader:
                line += 1
                if len(record) == width:
                    yield StagedRow(line, record, None)
                elif record and (len(record) > 1 or record[0].strip() or width == 1):
                    yield StagedRow(line, record, _ragged(record, width))
                # else: a blank record, skipped but counted
        except csv.Error as error:
            raise broken(error, line + 1) from None

    return ParsedUpload(header, rows())


def _json_cell(column: str, value: Any) -> tuple[Value, str | None]:
    if value is None:
        return None, f"{column}: null is not a value"
    if isinstance(value, dict | list):
        return None, f"{column}: nested values are not accepted"
    if isinstance(value, bool):
        return ("true" if value else "false"), None
    if isinstance(value, str):
        return value, None
    return json.dumps(value), None


def read_json_rows(data: Sequence[Any], *, limits: UploadLimits = UploadLimits()) -> ParsedUpload:
    """Rows of a ``{"data": [...]}`` body: the first row's keys are the header."""
    if not data:
        raise empty_upload()
    first = data[0]
    if not isinstance(first, Mapping) or not first:
        raise Refusal(400, "bad_json", "data[0] must be an object with at least one column.")
    header = [str(k) for k in first]
    known = set(header)

    def rows() -> Iterator[StagedRow]:
        for index, item in enumerate(data):
            line = index + 2
            if not isinstance(item, Mapping):
                yield StagedRow(line, [], "the row is not an object")
                continue
            values: list[Value] = []
            problems: list[str] = []
            for column in header:
                if column not in item:
                    values.append(None)
                    continue
                value, problem = _json_cell(column, item[column])
                if value is not None and len(value) > limits.max_cell_chars:
                    raise limits.cell_too_long(line)
                values.append(value)
                if problem:
                    problems.append(problem)
            extra = [str(k) for k in item if k not in known]
            if extra:
                problems.append(f"columns not in the first row: {', '.join(extra)}")
            yield StagedRow(line, values, "; ".join(problems) or None)

    return ParsedUpload(header, rows())
