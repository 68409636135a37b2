"""Reading a CSV upload: its encoding and delimiter, its header and its rows.

Rows are produced as they are read, so a file is never held whole in memory. The file
is never closed here, because the caller keeps the upload afterwards.

The encoding is chosen by :func:`importq.ingest.text_encoding.choose_encoding`. The
delimiter is given, or sniffed from the head of the file by :func:`sniff_delimiter`.
Quoting is RFC 4180. A UTF-8 file whose header is its first line also gets a
:class:`~importq.ingest.clean_csv.CsvSource`, so that staging can try PostgreSQL's own
CSV reader first.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import re
from collections.abc import Iterator, Sequence
from typing import IO, Final

from importq.errors import Refusal
from importq.ingest.clean_csv import CsvSource
from importq.ingest.limits import UploadLimits
from importq.ingest.parsed_upload import ParsedUpload
from importq.ingest.text_encoding import choose_encoding
from importq.rules.row_rules import StagedRow

SNIFF_BYTES = 64 * 1024
SNIFF_RECORDS = 20
#: The delimiters importq reads, in the order sniffing prefers them on a tie.
DELIMITERS = (",", ";", "\t", "|")
DELIMITER_NAMES = {
    ",": ",",
    ";": ";",
    "\t": "\t",
    "|": "|",
    "\\t": "\t",
    "comma": ",",
    "semicolon": ";",
    "tab": "\t",
    "pipe": "|",
}


def resolve_delimiter(name: str) -> str:
    """The delimiter a client named, by its character or by its name.

    Any other name is refused with ``400 bad_delimiter``.
    """
    found = DELIMITER_NAMES.get(name) or DELIMITER_NAMES.get(name.strip().lower())
    if found is None:
        raise Refusal(
            400,
            "bad_delimiter",
            f"{name!r} is not a delimiter importq reads; use one of , ; TAB | "
            "(or comma, semicolon, tab, pipe).",
            accepted=["comma", "semicolon", "tab", "pipe"],
        )
    return found


def _ragged(values: Sequence[str], width: int) -> str | None:
    if len(values) == width:
        return None
    return f"expected {width} fields, found {len(values)}"


def _record_widths(text: str, delimiter: str, complete: bool) -> list[int]:
    """The field counts of the first non-blank records of ``text``, read with ``delimiter``.

    When ``text`` is only the head of the file, its last record may be cut, so that
    record is left out.
    """
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=False)
    widths: list[int] = []
    exhausted = True
    try:
        for record in reader:
            if len(record) > 1 or (record and record[0].strip()):
                widths.append(len(record))
                if len(widths) > SNIFF_RECORDS:
                    exhausted = False
                    break
    except csv.Error:
        pass  # A cut quoted field, or a cell past the limit: judge the records before it.
    if exhausted and not complete:
        widths = widths[:-1]
    return widths


def sniff_delimiter(text: str, *, complete: bool = True) -> str:
    """The delimiter of a CSV whose head is ``text``. ``complete`` says it is the whole file.

    Sniffing is deterministic, unlike ``csv.Sniffer``. Each of ``, ; TAB |`` reads the
    header and up to ``SNIFF_RECORDS`` records after it, with quotes understood. A
    candidate counts only if it splits the header into two fields or more. Among those,
    the winner is the one under which the most records have the header's width. A tie
    goes to the wider header, then to the earlier in ``, ; TAB |``. When no candidate
    counts, as in a file of a single column, the delimiter is ``,``.
    """
    best, best_score = ",", (-1, 0)
    for delimiter in DELIMITERS:
        widths = _record_widths(text, delimiter, complete)
        if not widths or widths[0] < 2:
            continue
        score = (sum(1 for width in widths[1:] if width == widths[0]), widths[0])
        if score > best_score:
            best, best_score = delimiter, score
    return best


# What the csv module says when a field passes its field size limit.
_FIELD_LIMIT_ERROR: Final = "field larger than field limit"


# The rest of a quoted section, to its closing quote: doubled quotes are text.
_CLOSING_QUOTE = re.compile(r'(?:[^"]++|"")*+"(?!")')


class _RecordGuard:
    """Feeds the csv reader its lines, and refuses a record past a limit while it is read.

    The csv module builds a record whole before it returns it. So the lines it reads are
    checked on their way in: a record longer than
    :attr:`~importq.ingest.limits.UploadLimits.max_record_chars` is refused as
    ``record_too_long``, and one with ``max_columns`` field-ending delimiters or more as
    ``too_many_columns``, both naming the record's row number (:attr:`line`). A line is
    read at most that many characters at a time, so a file without line ends is never
    held whole.

    Delimiters are counted as csv reads them (:meth:`_scan`): a quote opens a quoted
    section only at the start of a field. That costs a step of Python a field, so it is
    done only once the record's delimiters, quoted or not, reach the limit; until then
    the record's lines are only kept.

    :meth:`record_read` must be called after each record the reader returns.
    """

    def __init__(self, text: IO[str], delimiter: str, limits: UploadLimits) -> None:
        self._text = text
        self._delimiter = delimiter
        self._limits = limits
        self.line = 1  # the row number of the record being read: records so far, plus 1
        self._start_record()

    def _start_record(self) -> None:
        self._chars = 0
        self._any_delimiters = 0  # quoted ones too: an upper bound of the fields' ends
        self._unscanned: list[str] = []
        self._delimiters = 0  # the fields' ends in the lines scanned
        self._quoted = False
        self._field_start = True

    def record_read(self) -> None:
        self.line += 1
        self._start_record()

    def lines(self) -> Iterator[str]:
        longest = self._limits.max_record_chars
        widest = self._limits.max_columns
        while line := self._text.readline(longest - self._chars + 1):
            self._chars += len(line)
            if self._chars > longest:
                raise self._limits.record_too_long(self.line)
            self._unscanned.append(line)
            self._any_delimiters += line.count(self._delimiter)
            if self._any_delimiters >= widest:
                for held in self._unscanned:
                    self._scan(held)
                self._unscanned.clear()
                if self._delimiters >= widest:
                    raise self._limits.too_many_columns(line=self.line)
            yield line

    def _scan(self, line: str) -> None:
        """Count the delimiters that end a field in ``line``, up to the limit, as csv
        (``strict=False``) reads them."""
        position, end = 0, len(line)
        while position < end and self._delimiters < self._limits.max_columns:
            if self._quoted:
                closing = _CLOSING_QUOTE.match(line, position)
                if closing is None:
                    return  # the quoted section goes on to the next line
                self._quoted = self._field_start = False
                position = closing.end()
            elif self._field_start and line[position] == '"':
                self._quoted = True
                position += 1
            else:
                found = line.find(self._delimiter, position)
                if found == -1:
                    self._field_start = False
                    return
                self._delimiters += 1
                self._field_start = True
                position = found + 1


def read_csv(
    binary: IO[bytes],
    *,
    delimiter: str | None = None,
    encoding: str | None = None,
    limits: UploadLimits = UploadLimits(),
) -> ParsedUpload:
    """Parse a CSV upload. A bad encoding, delimiter or quoting is refused with a 400.

    The encoding is the first of these that applies:

    1. ``encoding``, when given: one of
       :data:`importq.ingest.text_encoding.ALLOWED_ENCODINGS` or an alias of one, such
       as utf-8, utf-16, windows-1252 or latin-1. Any other name is refused as
       ``unknown_encoding``. A BOM of the same Unicode family is skipped, and it tells
       the byte order. Without a BOM, utf-16 and utf-32 are read as little-endian.
    2. The encoding a BOM declares: UTF-8, UTF-16 LE or BE, or UTF-32 LE or BE.
    3. UTF-8, when the whole file is valid UTF-8. ASCII is valid UTF-8.
    4. Windows-1252, when :func:`importq.ingest.text_encoding.looks_like_cp1252` says
       so. The file must hold only bytes that Windows-1252 text uses, and more stray
       bytes than UTF-8 characters. Latin-1 decodes any byte, so it is never detected.
       A Latin-1 file needs ``encoding=latin-1``.
    5. Otherwise UTF-8, which the file is not, so the file is refused.

    A file that does not decode in the encoding in force is refused as
    ``bad_encoding``. The refusal names the byte ``offset`` and the physical ``line`` of
    the first bad byte.

    The delimiter is ``delimiter`` when given: ``,`` ``;`` TAB ``|``, or comma,
    semicolon, tab or pipe. Any other is refused as ``bad_delimiter``. Without one, it
    is sniffed from the first ``SNIFF_BYTES`` of text by :func:`sniff_delimiter`.

    Quoting is RFC 4180, and CR, LF and CRLF all end a line. Bad quoting is refused as
    ``bad_csv``, with its line. A file with no header is ``400 empty_data``, and a cell
    longer than the limit is a 413. Blank records are skipped but keep their number.
    Trailing empty lines count as blank records.
    """
    chosen = None if delimiter is None else resolve_delimiter(delimiter)
    codec, start = choose_encoding(binary, encoding)
    if chosen is None:
        head = binary.read(SNIFF_BYTES)
        binary.seek(start)
        sample = codecs.getincrementaldecoder(codec)(errors="replace").decode(head)
        chosen = sniff_delimiter(sample, complete=len(head) < SNIFF_BYTES)
    text = _TextView(binary, encoding=codec, newline="", errors="strict")
    # The csv module's cap on a field is process-wide, and every upload of a process
    # has the same limits. It makes the reader stop at the first character past the
    # limit, instead of building the cell whole.
    csv.field_size_limit(limits.max_cell_chars)
    guard = _RecordGuard(text, chosen, limits)
    reader = csv.reader(guard.lines(), delimiter=chosen, strict=False)

    def broken(error: csv.Error) -> Refusal:
        line = guard.line
        if str(error).startswith(_FIELD_LIMIT_ERROR):
            return limits.cell_too_long(line)
        return Refusal(400, "bad_csv", f"Line {line}: {error}", line=line)

    header: list[str] | None = None
    first_line = 0
    try:
        for record in reader:
            first_line = guard.line
            guard.record_read()
            if len(record) > limits.max_columns:
                raise limits.too_many_columns(line=first_line)
            if record:
                header = record
                break
    except csv.Error as error:
        raise broken(error) from None
    if header is None:
        raise Refusal(400, "empty_data", "The upload is empty: no header and no rows.")
    width = len(header)

    def rows() -> Iterator[StagedRow]:
        try:
            for record in reader:
                line = guard.line
                guard.record_read()
                if len(record) > limits.max_columns:
                    raise limits.too_many_columns(line=line)
                if len(record) == width:
                    yield StagedRow(line, record, None)
                elif record and (len(record) > 1 or record[0].strip() or width == 1):
                    yield StagedRow(line, record, _ragged(record, width))
                # Otherwise a blank record: skipped, but counted.
        except csv.Error as error:
            raise broken(error) from None
        finally:
            # Leave the file open: the caller keeps a copy of the upload afterwards.
            text.detach()

    return ParsedUpload(
        header,
        rows(),
        encoding=codec,
        delimiter=chosen,
        # Only when the header is the first line. After blank records, the source would
        # hold the header, and PostgreSQL would read it as data.
        source=_csv_source(binary, codec, start, chosen, width, limits)
        if first_line == 1
        else None,
    )


class _TextView(io.TextIOWrapper):
    """A text reader over an upload that leaves the file open when it goes.

    The caller keeps the upload afterwards, whether or not the rows were read through
    this reader.
    """

    def close(self) -> None:
        with contextlib.suppress(ValueError):  # detached already
            self.detach()


def _csv_source(
    binary: IO[bytes], codec: str, start: int, delimiter: str, width: int, limits: UploadLimits
) -> CsvSource | None:
    """The file's :class:`~importq.ingest.clean_csv.CsvSource`, or None when it may not
    have one. The file is left where it was.

    The file must be UTF-8, and its header must be its first line, with no quotes and
    no stray CR. The header needs two columns or more. In a file of one column, a blank
    line would be a row to PostgreSQL, while importq skips it.
    """
    if codec != "utf-8" or width < 2:
        return None
    position = binary.tell()
    binary.seek(start)
    first = binary.readline(SNIFF_BYTES)
    binary.seek(position)
    if not first.endswith(b"\n") or b'"' in first or b"\r" in first.rstrip(b"\r\n"):
        return None
    return CsvSource(binary, start + len(first), delimiter, limits)
