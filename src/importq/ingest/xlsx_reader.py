"""Reading XLSX uploads: one sheet of a workbook as a header and rows, streamed.

The reader is pure over a seekable binary file object, with no database and no SQL.
Invariants:

* The archive is checked from its zip directory before anything is decompressed. A
  body that is not an XLSX zip is ``400 bad_xlsx``. A workbook is
  ``413 xlsx_too_large``, naming the limit, when its members would expand beyond
  ``ArchiveLimits.max_uncompressed_bytes`` in total. So is a workbook with a large
  member compressed more than ``ArchiveLimits.max_ratio`` to 1, as in a zip bomb.
  Python's zipfile never yields more bytes for a member than the directory declares,
  so the declared sizes are a real bound.
* Every XML part is parsed by defusedxml. openpyxl uses it when it is installed, and
  this module refuses to run otherwise. So a document type declaration with entities,
  as in billion laughs or external entities, is ``400 bad_xlsx``. That holds whether
  it is met while opening the workbook or while streaming its rows.
* The sheet is the first visible worksheet, or the one named by ``sheet``. The name
  must match exactly, or else match exactly one sheet's name ignoring case, as Excel
  compares names. An unknown name is ``400 unknown_sheet``, listing the worksheets.
* A formula cell gives its cached value (``data_only``). A formula never computed is
  an empty cell.
* ``line`` is the sheet's row number, and lines strictly increase. The header is the
  first row with a non-empty cell. Rows whose cells are all empty (``None`` or ``""``)
  are skipped, and they keep their number. A row number beyond Excel's 1,048,576 is
  ``400 bad_xlsx``.
* Values are text as a person sees them:

  - A number has no exponent and no float noise. It is rounded to Excel's 15
    significant digits, and an integral value is written as an integer. An integer
    stored as an integer is kept exactly.
  - A boolean is ``true`` or ``false``.
  - A date is ``YYYY-MM-DD``, and so is a date-formatted cell at midnight. Any other
    timestamp is ``YYYY-MM-DDTHH:MM:SS[.fff]``.
  - A time is ``HH:MM:SS[.fff]``. A duration is ``HH:MM:SS[.fff]``, and its hours may
    pass 24.
  - Text is kept as stored. An empty cell is ``None``.

* Trailing empty cells are ignored, so a row narrower than the header is padded with
  ``None``. A row with a value beyond the header's width is kept whole, with the
  problem ``expected N fields, found M``, as
  :func:`importq.ingest.csv_reader.read_csv` does.
* A cell longer than :attr:`importq.ingest.limits.UploadLimits.max_cell_chars` is a
  413, in the header too, and so is a row with values in more columns than
  ``max_columns``.
"""

from __future__ import annotations

import datetime as dt
import math
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import IO, Any

import openpyxl  # type: ignore[import-untyped]
from defusedxml import DefusedXmlException  # type: ignore[import-untyped]
from openpyxl.styles.numbers import is_datetime  # type: ignore[import-untyped]

from importq.errors import Refusal
from importq.ingest.limits import UploadLimits
from importq.ingest.parsed_upload import ParsedUpload
from importq.rules.row_rules import StagedRow, Value

XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
MAX_SHEET_ROWS = 1_048_576  # Excel's last row
_OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # .xls, and encrypted .xlsx
_EXACT_FLOAT_INTS = 2**53
_UPLOAD_LIMITS = UploadLimits()


@dataclass(frozen=True)
class ArchiveLimits:
    """How far an XLSX zip may expand. Beyond that, a 413 refusal names the limit."""

    max_uncompressed_bytes: int = 2 * 1024**3
    max_ratio: int = 200
    # The ratio applies only above this size. A small member may compress far better,
    # such as a sheet of one repeated value.
    ratio_applies_above: int = 8 * 1024**2


def read_xlsx(
    binary: IO[bytes],
    *,
    sheet: str | None = None,
    limits: UploadLimits = _UPLOAD_LIMITS,
    archive_limits: ArchiveLimits = ArchiveLimits(),
) -> ParsedUpload:
    """Parse one sheet of an XLSX workbook; see the module docstring for the rules."""
    if not openpyxl.DEFUSEDXML:
        raise RuntimeError(
            "openpyxl is not parsing with defusedxml (is defusedxml installed, and "
            "OPENPYXL_DEFUSEDXML unset?); refusing to read XLSX uploads"
        )
    if not binary.seekable():
        raise ValueError("read_xlsx needs a seekable file")
    check_archive(binary, archive_limits)
    binary.seek(0)
    try:
        workbook = openpyxl.load_workbook(binary, read_only=True, data_only=True)
    except MemoryError:
        raise
    except Exception as error:
        raise _unreadable(error, "The file is not a readable XLSX workbook") from None
    try:
        worksheet = _pick_sheet(workbook, sheet)
        # Read-only mode trusts the sheet's declared dimension, and some writers get it
        # wrong, so rows beyond it would be lost. Row widths come from the cells instead.
        worksheet.reset_dimensions()
        rows = _sheet_rows(worksheet)
        first = next(rows, None)
        if first is None:
            raise Refusal(
                400,
                "empty_data",
                f"The sheet {worksheet.title!r} is empty: no header and no rows.",
            )
        header_line, header_cells = first
        header = [_checked(cell, header_line, limits) or "" for cell in header_cells]
    except BaseException:
        workbook.close()
        raise
    width = len(header)

    def staged() -> Iterator[StagedRow]:
        try:
            for line, cells in rows:
                if len(cells) > limits.max_columns:
                    raise limits.too_many_columns(line=line)
                values: list[Value] = [_checked(cell, line, limits) for cell in cells]
                if len(values) > width:
                    yield StagedRow(line, values, f"expected {width} fields, found {len(values)}")
                else:
                    values.extend([None] * (width - len(values)))
                    yield StagedRow(line, values, None)
        finally:
            workbook.close()

    return ParsedUpload(header, staged())


def check_archive(binary: IO[bytes], limits: ArchiveLimits = ArchiveLimits()) -> None:
    """Refuse a body that is not an XLSX zip, or one that would expand too far.

    Only the zip directory is read, and nothing is decompressed.
    """
    binary.seek(0)
    if binary.read(len(_OLE2_MAGIC)) == _OLE2_MAGIC:
        raise _bad(
            "The file is not an XLSX workbook: it is an OLE2 file (a legacy .xls, or a "
            "password-protected workbook); save it as an unprotected .xlsx."
        )
    binary.seek(0)
    try:
        with zipfile.ZipFile(binary) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError):
        raise _bad("The file is not an XLSX workbook: it is not a zip archive.") from None
    if not any(member.filename == "[Content_Types].xml" for member in members):
        raise _bad("The file is not an XLSX workbook: the zip archive has no [Content_Types].xml.")
    total = sum(member.file_size for member in members)
    if total > limits.max_uncompressed_bytes:
        raise Refusal(
            413,
            "xlsx_too_large",
            f"The workbook expands to {total} bytes uncompressed; the limit is "
            f"{limits.max_uncompressed_bytes} bytes.",
            limit=limits.max_uncompressed_bytes,
        )
    for member in members:
        if member.file_size <= limits.ratio_applies_above:
            continue
        ratio = member.file_size / max(member.compress_size, 1)
        if ratio > limits.max_ratio:
            raise Refusal(
                413,
                "xlsx_too_large",
                f"The workbook member {member.filename!r} expands {ratio:.0f} to 1 "
                f"({member.compress_size} bytes to {member.file_size}); the limit is "
                f"{limits.max_ratio} to 1 for members over {limits.ratio_applies_above} bytes.",
                limit=limits.max_ratio,
            )


def _bad(detail: str) -> Refusal:
    return Refusal(400, "bad_xlsx", detail)


def _unreadable(error: BaseException, what: str) -> Refusal:
    """A parsing failure as a refusal, named by its root cause.

    openpyxl wraps errors in messages that carry the server's file name, which the
    client should not see.
    """
    root = error
    seen = {id(root)}
    while not isinstance(root, DefusedXmlException):
        cause = root.__cause__ or root.__context__
        if cause is None or id(cause) in seen:
            break
        seen.add(id(cause))
        root = cause
    if isinstance(root, DefusedXmlException):
        return _bad(
            "The workbook contains an XML document type declaration with entities, "
            "which is refused (XLSX files never need one)."
        )
    text = " ".join(str(root).split())
    if len(text) > 200:
        text = text[:200] + "…"
    reason = f"{type(root).__name__}: {text}" if text else type(root).__name__
    return _bad(f"{what} ({reason}).")


def _pick_sheet(workbook: Any, name: str | None) -> Any:
    worksheets: list[Any] = list(workbook.worksheets)
    if not worksheets:
        raise _bad("The workbook has no worksheet.")
    if name is None:
        visible = [ws for ws in worksheets if ws.sheet_state == "visible"]
        return (visible or worksheets)[0]
    for ws in worksheets:
        if ws.title == name:
            return ws
    folded = [ws for ws in worksheets if str(ws.title).casefold() == name.casefold()]
    if len(folded) == 1:
        return folded[0]
    titles = [str(ws.title) for ws in worksheets]
    raise Refusal(
        400,
        "unknown_sheet",
        f"The workbook has no sheet named {name!r}; its sheets are: {', '.join(titles)}.",
        sheets=titles,
    )


def _sheet_rows(worksheet: Any) -> Iterator[tuple[int, Sequence[Any]]]:
    """The sheet's non-empty rows with their row numbers, without trailing empty cells.

    openpyxl yields one tuple per row from row 1 on, and an empty one for each row
    missing from the XML. So the count of tuples is the row number, and it always
    increases.
    """
    cells_by_row = iter(worksheet.iter_rows())
    line = 0
    while True:
        try:
            cells: Sequence[Any] | None = next(cells_by_row, None)
        except MemoryError:
            raise
        except Exception as error:
            raise _unreadable(
                error, f"The sheet {worksheet.title!r} cannot be read after row {line}"
            ) from None
        if cells is None:
            return
        line += 1
        if line > MAX_SHEET_ROWS:
            raise _bad(
                f"The sheet {worksheet.title!r} has a row numbered beyond {MAX_SHEET_ROWS}, "
                "the last row a sheet may have."
            )
        end = len(cells)
        while end and _is_empty(cells[end - 1].value):
            end -= 1
        if end:
            yield line, cells[:end]


def _is_empty(value: Any) -> bool:
    return value is None or value == ""


def _checked(cell: Any, line: int, limits: UploadLimits) -> str | None:
    value = cell.value
    # Only a timestamp needs its format, to tell a date from midnight. The format costs
    # a style lookup, so other cells skip it.
    text = cell_text(value, cell.number_format if isinstance(value, dt.datetime) else None)
    if text is not None and len(text) > limits.max_cell_chars:
        raise limits.cell_too_long(line)
    return text


def cell_text(value: Any, number_format: str | None = None) -> str | None:
    """A cell's value as text (``number_format`` tells a date from a midnight timestamp)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return number_text(value)
    if isinstance(value, dt.datetime):
        if value.time() == dt.time() and is_datetime(number_format) == "date":
            return value.date().isoformat()
        return value.isoformat(timespec="milliseconds" if value.microsecond else "seconds")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dt.time):
        return value.isoformat(timespec="milliseconds" if value.microsecond else "seconds")
    if isinstance(value, dt.timedelta):
        return _duration_text(value)
    return str(value)


def number_text(value: float) -> str:
    """A float as Excel shows it with enough digits.

    It has at most 15 significant digits and no exponent: ``10000000``, ``0.3`` for
    ``0.1 + 0.2``, ``0.0000001``.
    """
    if not math.isfinite(value):
        return repr(value)  # not an Excel number; kept recognisable
    if value.is_integer() and abs(value) < _EXACT_FLOAT_INTS:
        return str(int(value))
    return format(Decimal(format(value, ".15g")), "f")


def _duration_text(value: dt.timedelta) -> str:
    sign = "-" if value < dt.timedelta(0) else ""
    value = abs(value)
    hours, rest = divmod(value.days * 86_400 + value.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    text = f"{sign}{hours:02d}:{minutes:02d}:{seconds:02d}"
    if value.microseconds:
        text += f".{value.microseconds // 1000:03d}"
    return text
