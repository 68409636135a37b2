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
* No XML part may declare a document type. Before the workbook is opened, the first
  ``PROLOG_BYTES`` of every member are read. A member that starts as XML and has a
  ``<!DOCTYPE`` (or any ``<!`` declaration other than a comment) before its root
  element is ``400 bad_xlsx``, and so is one whose prolog runs past ``PROLOG_BYTES``.
  So billion laughs and external entities are refused whichever part carries them.
  calamine's XML parser (quick-xml) does not expand entities either; the check keeps
  that from resting on one library.
* The workbook is read by calamine (python-calamine-plus, in its read-only openpyxl
  profile). Rows are decoded from the zip as they are iterated, and the sheet is never
  held whole. calamine opens the upload's file itself, through /proc/self/fd; a file
  object without a descriptor is copied into memory whole. A parsing error, while
  opening or while streaming, is ``400 bad_xlsx`` naming its cause, never the
  server's path, and the last row read (calamine parses one row ahead, so the fault
  may be in the row after it).
* The sheet is the first visible worksheet, or the one named by ``sheet``. The name
  must match exactly, or else match exactly one sheet's name ignoring case, as Excel
  compares names. An unknown name is ``400 unknown_sheet``, listing the worksheets
  (chartsheets have no rows and are neither chosen nor listed).
* A formula cell gives its cached value. A formula never computed is an empty cell.
* ``line`` is the sheet's row number, and lines strictly increase. The header is the
  first row with a non-empty cell. Rows whose cells are all empty (``None`` or ``""``)
  are skipped, and they keep their number, whether the sheet stores them or not. A
  row number beyond Excel's 1,048,576 is ``400 bad_xlsx``, found without reading past
  that row, however far the number is. A sheet whose rows are out of order is
  ``400 bad_xlsx``.
* Values are text as a person sees them:

  - A number has no exponent and no float noise. It is rounded to Excel's 15
    significant digits, and an integral value is written as an integer. An integer
    stored as an integer of up to 18 digits is kept exactly (Excel's own numbers are
    doubles, exact to 2**53).
  - A boolean is ``true`` or ``false``. An error is its code, such as ``#DIV/0!``.
    calamine knows the seven classic codes; a newer one (``#SPILL!``, ``#CALC!``…)
    makes the sheet unreadable, ``400 bad_xlsx``.
  - A date is ``YYYY-MM-DD``, and so is a date-formatted cell at midnight. Any other
    timestamp is ``YYYY-MM-DDTHH:MM:SS[.fff]``. Dates follow the workbook's epoch
    (1900, or 1904 for old Mac workbooks).
  - A time is ``HH:MM:SS[.fff]``. A duration is ``HH:MM:SS[.fff]``, and its hours may
    pass 24.
  - Text is kept as stored, rich text runs joined. An empty cell, or an empty text, is
    ``None``.

* Trailing empty cells are ignored, so a row narrower than the header is padded with
  ``None``. A row with a value beyond the header's width is kept whole, with the
  problem ``expected N fields, found M``, as
  :func:`importq.ingest.csv_reader.read_csv` does.
* A cell longer than :attr:`importq.ingest.limits.UploadLimits.max_cell_chars` is a
  413, in the header too, and so is a row with values in more columns than
  ``max_columns``.
"""

from __future__ import annotations

import codecs
import datetime as dt
import os
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import IO, TYPE_CHECKING, Any

import python_calamine_plus
from python_calamine_plus.styles.numbers import is_date_format

from importq.errors import Refusal
from importq.ingest.limits import UploadLimits
from importq.ingest.parsed_upload import ParsedUpload
from importq.rules.row_rules import StagedRow, Value

if TYPE_CHECKING:
    from python_calamine_plus._python_calamine import Workbook, Worksheet

XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
MAX_SHEET_ROWS = 1_048_576  # Excel's last row
# How much of each member the document type check reads. Writers put an XML
# declaration, at most a comment, before the root element: well under 100 bytes.
PROLOG_BYTES = 8192
_OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # .xls, and encrypted .xlsx
_EXACT_FLOAT_INTS = 2**53
_UPLOAD_LIMITS = UploadLimits()
_ENTITIES = (
    "The workbook contains an XML document type declaration with entities, which is "
    "refused (XLSX files never need one)."
)


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
    if not binary.seekable():
        raise ValueError("read_xlsx needs a seekable file")
    check_archive(binary, archive_limits)
    _check_prologs(binary)
    binary.seek(0)
    path = _path_of(binary)
    try:
        workbook = python_calamine_plus.load_workbook(
            binary if path is None else path,
            compatibility="openpyxl",
            read_only=True,
            data_only=True,
        )
    except MemoryError:
        raise
    except Exception as error:
        raise _unreadable(error, "The file is not a readable XLSX workbook", path) from None
    try:
        worksheet = _pick_sheet(workbook, sheet)
        # Read-only mode pads rows to the sheet's declared dimension, and some writers
        # get it wrong. Row widths come from the cells instead.
        worksheet.reset_dimensions()
        rows = _sheet_rows(worksheet, path)
        first = next(rows, None)
        if first is None:
            raise Refusal(
                400,
                "empty_data",
                f"The sheet {worksheet.title!r} is empty: no header and no rows.",
            )
        header_line, header_texts = first
        _check_lengths(header_texts, header_line, limits)
        header = [text or "" for text in header_texts]
    except BaseException:
        workbook.close()
        raise
    width = len(header)

    def staged() -> Iterator[StagedRow]:
        try:
            for line, texts in rows:
                if len(texts) > limits.max_columns:
                    raise limits.too_many_columns(line=line)
                _check_lengths(texts, line, limits)
                if len(texts) > width:
                    yield StagedRow(line, texts, f"expected {width} fields, found {len(texts)}")
                else:
                    if len(texts) < width:
                        texts.extend([None] * (width - len(texts)))
                    yield StagedRow(line, texts, None)
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


def _check_prologs(binary: IO[bytes]) -> None:
    """Refuse a member whose XML prolog declares a document type, or does not end within
    ``PROLOG_BYTES``. Every member is looked at, whatever its name: the workbook's
    relationships, not the names, say which parts are XML."""
    binary.seek(0)
    try:
        with zipfile.ZipFile(binary) as archive:
            for member in archive.infolist():
                if member.is_dir():
                    continue
                with archive.open(member) as part:
                    head = part.read(PROLOG_BYTES)
                verdict = _prolog_verdict(head)
                if verdict == "doctype":
                    raise _bad(_ENTITIES)
                if verdict == "long" and member.file_size > len(head):
                    raise _bad(
                        f"The workbook member {member.filename!r} has no root element in "
                        f"its first {PROLOG_BYTES} bytes, which is refused (XLSX parts "
                        "start with one)."
                    )
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError, zlib.error) as error:
        # RuntimeError: an encrypted member; NotImplementedError (a RuntimeError):
        # an unsupported compression method.
        raise _unreadable(error, "The file is not a readable XLSX workbook", None) from None


def _prolog_verdict(head: bytes) -> str | None:
    """``"doctype"`` when the XML document starting with ``head`` declares a document
    type before its root element, ``"long"`` when its prolog runs to the end of
    ``head``, else ``None`` (a clean prolog, or not XML at all)."""
    text = _markup_text(head)
    at = len(text) - len(text.lstrip())
    if not text.startswith("<", at):
        return None  # not XML: a picture, a binary part
    while at < len(text):
        if text.startswith("<?", at):
            end = text.find("?>", at + 2)
            at = -1 if end < 0 else end + 2
        elif text.startswith("<!--", at):
            end = text.find("-->", at + 4)
            at = -1 if end < 0 else end + 3
        elif text.startswith("<!", at):
            return "doctype"
        elif text.startswith("<", at):
            return None  # the root element
        else:
            # Stray text, which a lenient parser passes over: look on from the next tag.
            at = text.find("<", at)
        if at < 0:
            break
        at = len(text) - len(text[at:].lstrip())
    return "long"


def _markup_text(head: bytes) -> str:
    """The start of an XML document as text, enough to read its markup.

    UTF-16 is decoded. Any other encoding an XLSX part may have is ASCII-compatible, so
    Latin-1 keeps the markup characters where they are.
    """
    if head.startswith(codecs.BOM_UTF8):
        return head[len(codecs.BOM_UTF8) :].decode("latin-1")
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return head.decode("utf-16", "replace")
    if head.startswith(b"<\x00"):
        return head.decode("utf-16-le", "replace")
    if head.startswith(b"\x00<"):
        return head.decode("utf-16-be", "replace")
    return head.decode("latin-1")


def _path_of(binary: IO[bytes]) -> str | None:
    """A path that opens the file behind ``binary``, so that calamine reads the upload
    from disk instead of a copy of all of it in memory.

    A spool file has no name, but Linux names every open descriptor in /proc/self/fd,
    and opening that name opens the same file, unlinked or not.
    """
    try:
        descriptor = binary.fileno()
    except (OSError, ValueError):
        return None
    path = f"/proc/self/fd/{descriptor}"
    return path if os.path.exists(path) else None


def _bad(detail: str) -> Refusal:
    return Refusal(400, "bad_xlsx", detail)


def _unreadable(error: BaseException, what: str, path: str | None) -> Refusal:
    """A parsing failure as a refusal, named by its cause, without the server's path."""
    text = " ".join(str(error).split())
    if path is not None:
        text = text.replace(path, "the upload")
    if len(text) > 200:
        text = text[:200] + "…"
    reason = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return _bad(f"{what} ({reason}).")


def _pick_sheet(workbook: Workbook, name: str | None) -> Worksheet:
    worksheets = workbook.worksheets
    if not worksheets:
        raise _bad("The workbook has no worksheet.")
    if name is None:
        visible = [ws for ws in worksheets if ws.sheet_state == "visible"]
        return (visible or worksheets)[0]
    for ws in worksheets:
        if ws.title == name:
            return ws
    folded = [ws for ws in worksheets if ws.title.casefold() == name.casefold()]
    if len(folded) == 1:
        return folded[0]
    titles = [ws.title for ws in worksheets]
    raise Refusal(
        400,
        "unknown_sheet",
        f"The workbook has no sheet named {name!r}; its sheets are: {', '.join(titles)}.",
        sheets=titles,
    )


def _sheet_rows(worksheet: Worksheet, path: str | None) -> Iterator[tuple[int, list[Value]]]:
    """The sheet's non-empty rows: the row number, and the values as text without
    trailing empty ones.

    calamine yields one tuple per row from row 1 on, and an empty one for each row
    missing from the XML. So the count of tuples is the row number, and it always
    increases. It stops at the row after Excel's last: a row beyond is refused there,
    and calamine never fills the gap up to a row numbered in the billions.
    """
    cells_by_row = iter(worksheet.iter_rows(max_row=MAX_SHEET_ROWS + 1))
    line = 0
    while True:
        try:
            cells: Sequence[Any] | None = next(cells_by_row, None)
        except MemoryError:
            raise
        except Exception as error:
            where = f" after row {line}" if line else ""
            raise _unreadable(
                error, f"The sheet {worksheet.title!r} cannot be read{where}", path
            ) from None
        if cells is None:
            return
        line += 1
        if line > MAX_SHEET_ROWS:
            raise _bad(
                f"The sheet {worksheet.title!r} has a row numbered beyond {MAX_SHEET_ROWS}, "
                "the last row a sheet may have."
            )
        # Text, most cells, needs no conversion: an empty one is None like a blank cell.
        texts: list[Value] = [
            (value or None) if (value := cell.value).__class__ is str else _text(value, cell)
            for cell in cells
        ]
        while texts and texts[-1] is None:
            texts.pop()
        if texts:
            yield line, texts


def _check_lengths(texts: list[Value], line: int, limits: UploadLimits) -> None:
    if max(map(len, filter(None, texts)), default=0) > limits.max_cell_chars:
        raise limits.cell_too_long(line)


def _text(value: Any, cell: Any) -> str | None:
    kind = value.__class__
    if kind is float:
        return number_text(value)
    if value is None:
        return None
    # Only a timestamp needs its format, to tell a date from midnight. The format costs
    # a style lookup, so other cells skip it.
    return cell_text(value, cell.number_format if kind is dt.datetime else None)


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
        if value.time() == dt.time() and _is_date_only(number_format):
            return value.date().isoformat()
        return value.isoformat(timespec="milliseconds" if value.microsecond else "seconds")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dt.time):
        return value.isoformat(timespec="milliseconds" if value.microsecond else "seconds")
    if isinstance(value, dt.timedelta):
        return _duration_text(value)
    return str(value)


def _is_date_only(number_format: str | None) -> bool:
    """A date format without a time of day: openpyxl's ``is_datetime(...) == "date"``."""
    return (
        number_format is not None
        and is_date_format(number_format)
        and ("d" in number_format or "y" in number_format)
        and not ("h" in number_format or "s" in number_format)
    )


def number_text(value: float) -> str:
    """A float as Excel shows it with enough digits.

    It has at most 15 significant digits and no exponent: ``10000000``, ``0.3`` for
    ``0.1 + 0.2``, ``0.0000001``. Infinities and NaN, not Excel numbers, stay
    recognisable as Python writes them.
    """
    if value.is_integer() and abs(value) < _EXACT_FLOAT_INTS:
        return str(int(value))
    text = repr(value)
    # The shortest text that reads back as the float. Without an exponent and with at
    # most 15 digits, it is what the rounding below gives, without a Decimal's cost.
    if len(text) <= 16 and "e" not in text:
        return text
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
