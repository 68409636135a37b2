"""Reading a CSV upload: its encoding and delimiter, its header and its rows.

The delimiter is given or sniffed from the head of the file (:func:`sniff_delimiter`);
quoting is RFC 4180. Rows are produced as they are read, so a file is never held whole
in memory. A UTF-8 file whose header is its first line also gets a :class:`CsvSource`,
for staging to try PostgreSQL's own CSV reader first.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
from collections.abc import Iterator, Sequence
from typing import IO

from importq.errors import Refusal
from importq.ingest.clean_csv import CsvSource
from importq.ingest.limits import UploadLimits
from importq.ingest.parsed_upload import ParsedUpload
from importq.ingest.text_encoding import choose_encoding
from importq.rules.row_rules import StagedRow

# The csv module's own hard cap (process-wide, 128 KiB by default) sits far above any
# sensible cell limit; the configured limit is checked per record, with its line.
csv.field_size_limit(64 * 1024 * 1024)

SNIFF_BYTES = 64 * 1024
SNIFF_RECORDS = 20
#: The delimiters importq reads, in the order sniffing prefers them on a tie.
DELIMITERS = (",", ";", "\t", "|")
_DELIMITER_NAMES = {
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
    """The delimiter a client named (the character or its name); 400 ``bad_delimiter``."""
    found = _DELIMITER_NAMES.get(name) or _DELIMITER_NAMES.get(name.strip().lower())
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
    """Field counts of the first non-blank records of ``text`` read with ``delimiter``;
    without the last one when ``text`` is only the head of the file (it may be cut)."""
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
        pass  # a cut quoted field, or a cell past the limit: judge on what came before
    if exhausted and not complete:
        widths = widths[:-1]
    return widths


def sniff_delimiter(text: str, *, complete: bool = True) -> str:
    """The delimiter of a CSV whose head is ``text`` (``complete``: the whole file).

    Each of ``, ; TAB |`` reads the header and up to ``SNIFF_RECORDS`` records after it,
    quotes understood. A candidate counts only if it splits the header into two fields
    or more; among those wins the one under which the most records have the header's
    width, then the one giving the wider header, then the earlier in ``, ; TAB |``.
    No candidate (a single column) gives ``,``. Deterministic, unlike ``csv.Sniffer``.
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


def read_csv(
    binary: IO[bytes],
    *,
    delimiter: str | None = None,
    encoding: str | None = None,
    limits: UploadLimits = UploadLimits(),
) -> ParsedUpload:
    """Parse a CSV upload; refuse a bad encoding, delimiter or quoting (400).

    Encoding, first rule that applies:
    1. ``encoding`` given (any Python codec name: utf-8, utf-16, windows-1252, latin-1…);
       ``unknown_encoding`` when it is not one. A BOM of the same Unicode family is
       skipped and tells the byte order (utf-16 or utf-32 without a BOM: little-endian).
    2. a BOM: UTF-8, UTF-16 LE/BE, UTF-32 LE/BE.
    3. UTF-8, when the whole file is valid UTF-8 (ASCII included).
    4. Windows-1252, when :func:`looks_like_cp1252`: the file holds only bytes that
       Windows-1252 text uses, and more stray bytes than UTF-8 characters. Latin-1
       decodes any byte, so it is never detected; send ``encoding=latin-1``.
    5. otherwise UTF-8, which the file is not: refused.
    A file that does not decode in the encoding in force is refused (``bad_encoding``)
    with the byte ``offset`` and the physical ``line`` of the first bad byte.

    Delimiter: ``delimiter`` given (``,`` ``;`` TAB ``|`` or comma, semicolon, tab,
    pipe; else ``bad_delimiter``), or sniffed from the first ``SNIFF_BYTES`` of text
    (:func:`sniff_delimiter`). RFC 4180 quoting; CR, LF and CRLF line ends; blank
    records (trailing empty lines too) are skipped but keep their number.
    """
    chosen = None if delimiter is None else resolve_delimiter(delimiter)
    codec, start = choose_encoding(binary, encoding)
    if chosen is None:
        head = binary.read(SNIFF_BYTES)
        binary.seek(start)
        sample = codecs.getincrementaldecoder(codec)(errors="replace").decode(head)
        chosen = sniff_delimiter(sample, complete=len(head) < SNIFF_BYTES)
    text = _TextView(binary, encoding=codec, newline="", errors="strict")
    reader = csv.reader(text, delimiter=chosen, strict=False)

    def broken(error: csv.Error, line: int) -> Refusal:
        return Refusal(400, "bad_csv", f"Line {line}: {error}", line=line)

    longest = limits.max_cell_chars

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
    if max(map(len, header)) > longest:
        raise limits.cell_too_long(first_line)
    width = len(header)

    def rows() -> Iterator[StagedRow]:
        line = first_line
        try:
            for record in reader:
                line += 1
                if record and max(map(len, record)) > longest:
                    raise limits.cell_too_long(line)
                if len(record) == width:
                    yield StagedRow(line, record, None)
                elif record and (len(record) > 1 or record[0].strip() or width == 1):
                    yield StagedRow(line, record, _ragged(record, width))
                # else: a blank record, skipped but counted
        except csv.Error as error:
            raise broken(error, line + 1) from None
        finally:
            # Leave the file open: the caller keeps a copy of the upload afterwards.
            text.detach()

    return ParsedUpload(
        header,
        rows(),
        encoding=codec,
        delimiter=chosen,
        # Blank records before the header: PostgreSQL would read the header as data.
        source=_csv_source(binary, codec, start, chosen, width, limits)
        if first_line == 1
        else None,
    )


class _TextView(io.TextIOWrapper):
    """A text reader over an upload that leaves the file open when it goes (the caller
    keeps the upload afterwards, whether or not the rows were read through it)."""

    def close(self) -> None:
        with contextlib.suppress(ValueError):  # detached already
            self.detach()


def _csv_source(
    binary: IO[bytes], codec: str, start: int, delimiter: str, width: int, limits: UploadLimits
) -> CsvSource | None:
    """The file's :class:`CsvSource` when its header is its first line, without quotes,
    and has two columns or more (one column: a blank line would be a row); else None.
    Leaves the file where it was."""
    if codec != "utf-8" or width < 2:
        return None
    position = binary.tell()
    binary.seek(start)
    first = binary.readline(SNIFF_BYTES)
    binary.seek(position)
    if not first.endswith(b"\n") or b'"' in first or b"\r" in first.rstrip(b"\r\n"):
        return None
    return CsvSource(binary, start + len(first), delimiter, limits)
