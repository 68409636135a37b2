"""Reading uploads into rows: a header and, per record, its line and values.

Pure parsing over file objects and decoded JSON: no database. The staging step consumes
the rows as they are produced, so a file is never held whole in memory.

``line`` is the row number a spreadsheet shows: the header is 1; each CSV record is
one row however many physical lines its quoted cells span; blank records are skipped
but keep their number; a JSON row's line is its index + 2.

A CSV's encoding is given, declared by a BOM or detected (UTF-8, else Windows-1252 when
the bytes read as such text), and its delimiter given or sniffed: :func:`read_csv`
states the rules. A file that does not decode is refused naming the byte offset and
the line of the first bad byte.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import IO, Any

from importq.errors import Refusal
from importq.row_rules import StagedRow, Value

# The csv module's own hard cap (process-wide, 128 KiB by default) sits far above any
# sensible cell limit; the configured limit is checked per record, with its line.
csv.field_size_limit(64 * 1024 * 1024)


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


class NotClean(Exception):
    """PostgreSQL's CSV reading of the file could differ from importq's."""


@dataclass(frozen=True)
class CsvSource:
    """The data records of a UTF-8 CSV file whose header is its first line, as bytes for
    PostgreSQL's own CSV parser (``COPY … (FORMAT csv)``), which is far faster than
    reading them in Python.

    The two parsers agree on RFC 4180 records; they differ on stray quotes (PostgreSQL
    opens a quoted section at any quote, Python's csv module only at a field's start),
    on blank lines (PostgreSQL reads a row of one empty field, importq skips them), on
    ``\\.`` alone on a line (the end of the data for PostgreSQL before 18) and on mixed
    line ends. :meth:`blocks` raises :class:`NotClean` on the first two kinds it can see
    and PostgreSQL refuses the others, so such a file is read by Python instead.
    """

    binary: IO[bytes]
    start: int  # the offset of the first data record (on line 2)
    delimiter: str
    limits: UploadLimits

    @property
    def max_record_bytes(self) -> int:
        """A record without a line end for this long is not clean (no cell can be longer
        than the limit's characters of 4 bytes, quoted, with its quotes doubled)."""
        return self.limits.max_columns * (self.limits.max_cell_chars * 8 + 3)

    def blocks(
        self, block_size: int = 1 << 20, start: int | None = None, stop: int | None = None
    ) -> Iterator[bytes]:
        """The data from ``start`` (a record's start; default: the first record's) up to
        ``stop`` (a record's start; default: the end), in blocks of whole records, each
        checked by :func:`clean_records`. Two of these may read one file by turns: each
        seeks to where it left off before it reads."""
        position = self.start if start is None else start
        pending = b""
        final = False
        first = True
        while not final:
            self.binary.seek(position)
            wanted = block_size if stop is None else min(block_size, stop - position)
            block = self.binary.read(wanted) if wanted > 0 else b""
            position += len(block)
            final = not block
            pending += block
            end = len(pending) if final else _last_record_end(pending)
            if end == 0:
                if len(pending) > self.max_record_bytes:
                    raise NotClean("a record is longer than the longest one allowed")
                continue
            clean_records(pending[:end], self.delimiter, at_start=first)
            yield pending[:end]
            pending = pending[end:]
            first = False

    def halves(self, block_size: int = 1 << 20) -> tuple[int, int] | None:
        """Where to cut the data in two for two COPYs at once: the offset of the first
        record starting past the middle of the data, and how many records come before
        it; None when no record starts past the middle. A record ends at a line feed
        outside quoted cells, as PostgreSQL reads a clean file (:meth:`blocks` checks
        that it is), so they are counted without parsing: one pass of byte counts."""
        end = self.binary.seek(0, io.SEEK_END)
        middle = self.start + (end - self.start) // 2
        position, records, quoted = self.start, 0, False
        while position < end:
            self.binary.seek(position)
            block = self.binary.read(block_size)
            cut = _record_end_after(block, max(middle - position, 0), quoted)
            if cut is not None:
                if position + cut >= end:
                    return None
                return position + cut, records + _line_feeds_outside_quotes(block[:cut], quoted)
            records += _line_feeds_outside_quotes(block, quoted)
            quoted ^= block.count(b'"') % 2 == 1
            position += len(block)
        return None


def _line_feeds_outside_quotes(data: bytes, quoted: bool) -> int:
    """Line feeds of ``data`` outside quoted cells (``quoted``: it starts inside one);
    the pieces between quotes alternate outside and inside, a doubled quote included."""
    return b"".join(data.split(b'"')[int(quoted) :: 2]).count(b"\n")


def _record_end_after(data: bytes, offset: int, quoted: bool) -> int | None:
    """Just past the first line feed at or after ``offset`` outside quoted cells, if any."""
    end = data.find(b"\n", offset)
    while end != -1 and (data.count(b'"', 0, end) + quoted) % 2:
        end = data.find(b"\n", end + 1)
    return None if end == -1 else end + 1


def _last_record_end(data: bytes) -> int:
    """The end of the last record in ``data`` (just past a line feed outside quotes, the
    data starting outside quotes); 0 when no record ends in it."""
    end = data.rfind(b"\n")
    while end != -1 and data.count(b'"', 0, end) % 2:
        end = data.rfind(b"\n", 0, end)  # that line feed is inside a quoted cell
    return end + 1


_CLEAN_PATTERNS: dict[str, re.Pattern[bytes]] = {}


def clean_records(data: bytes, delimiter: str, *, at_start: bool = False) -> None:
    """Raise :class:`NotClean` unless ``data`` (whole records) has only RFC 4180 quoting
    (a quoted cell opens right after a delimiter or line start, closes right before one,
    and doubles the quotes it holds) and no line that is just ``\\.``."""
    pattern = _CLEAN_PATTERNS.get(delimiter)
    if pattern is None:
        edge = re.escape(delimiter.encode()) + rb"\r\n"
        pattern = re.compile(
            rb'(?:[^"]++|(?<![^' + edge + rb'])"(?:[^"]++|"")*+"(?![^' + edge + rb"]))*+"
        )
        _CLEAN_PATTERNS[delimiter] = pattern
    if pattern.fullmatch(data) is None:
        raise NotClean("quotes that are not RFC 4180 quoting")
    if b"\\" not in data:
        # No backslash, no \. line: one memchr, where the framed searches below cost a
        # pass each over a block full of line feeds and dots.
        return
    # Framed by line ends: a block starts and ends at a record's edge, so its first and
    # last lines are whole lines too.
    framed = b"\n" + data + (b"" if data.endswith(b"\n") else b"\n")
    if b"\n\\.\n" in framed or b"\n\\.\r\n" in framed or (at_start and data.startswith(b"\\.")):
        raise NotClean("a line holding only \\.")


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


def _ragged(values: Sequence[str], width: int) -> str | None:
    if len(values) == width:
        return None
    return f"expected {width} fields, found {len(values)}"


# ----------------------------------------------------------------------------- CSV

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
# Longest first: the UTF-32 LE BOM starts with the UTF-16 LE one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_FAMILIES = {
    "utf-8": "utf-8",
    "utf-8-sig": "utf-8",
    "utf-16": "utf-16",
    "utf-16-le": "utf-16",
    "utf-16-be": "utf-16",
    "utf-32": "utf-32",
    "utf-32-le": "utf-32",
    "utf-32-be": "utf-32",
}
# A family name without byte order, when the file has no BOM: little-endian, as Windows
# writes it (and as Python reads it on the usual machines).
_WITHOUT_BOM = {"utf-8-sig": "utf-8", "utf-16": "utf-16-le", "utf-32": "utf-32-le"}
_LABELS = {
    "utf-8": "UTF-8",
    "utf-16-le": "UTF-16LE",
    "utf-16-be": "UTF-16BE",
    "utf-32-le": "UTF-32LE",
    "utf-32-be": "UTF-32BE",
    "cp1252": "Windows-1252",
    "iso8859-1": "Latin-1",
}
# Bytes that Windows-1252 text does not contain: the five undefined ones, the controls
# other than TAB, LF and CR, and the rarely typed characters that stray bytes decode to
# (ƒ ˆ ˜ ¤ ¦ ¨ ¬ soft hyphen ¯ ¸ Ð Þ ð þ ÿ; 0xFE and 0xFF never occur in UTF-8, so they
# are what binary junk and UTF-16 fragments are made of). A file holding one of them is
# not detected as Windows-1252; ``encoding=windows-1252`` still reads it.
_NOT_CP1252 = re.compile(
    b"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\x81\x83\x88\x8d\x8f\x90\x98\x9d"
    b"\xa4\xa6\xa8\xac\xad\xaf\xb8\xd0\xde\xf0\xfe\xff]"
)


@dataclass(frozen=True)
class BadByte:
    """Where a file stops decoding: the byte's offset in the file, its physical line
    (1-based; CR, LF and CRLF each end a line), and the bytes that do not decode
    (none: the file ends inside a character)."""

    offset: int
    line: int
    bad: bytes


def _line_at(binary: IO[bytes], codec: str, start: int, offset: int, block_size: int) -> int:
    """The physical line (1-based) of byte ``offset``: CR, LF and CRLF each end one.

    Counted on the decoded text, so an encoded newline counts whatever its bytes (two in
    UTF-16, four in UTF-32) and a 0x0A byte inside a character never does. Only a
    refusal needs it, so the pass that finds the bad byte does not count lines."""
    binary.seek(start)
    decoder = codecs.getincrementaldecoder(codec)(errors="replace")
    line = 1
    after_cr = False
    left = offset - start
    while left > 0 and (block := binary.read(min(block_size, left))):
        left -= len(block)
        text = decoder.decode(block)
        line += text.count("\n") + text.count("\r") - text.count("\r\n")
        if after_cr and text.startswith("\n"):
            line -= 1  # the LF of a CRLF cut between two blocks
        after_cr = text.endswith("\r") if text else after_cr
    return line


def find_bad_byte(
    binary: IO[bytes], codec: str, *, start: int = 0, block_size: int = 1 << 20
) -> BadByte | None:
    """The first place where the file, from byte ``start``, does not decode in ``codec``
    (None when all of it does). One streaming pass (a second, up to the bad byte, to
    name its line); the caller rewinds."""
    binary.seek(start)
    decoder = codecs.getincrementaldecoder(codec)(errors="strict")
    offset = start
    while block := binary.read(block_size):
        try:
            decoder.decode(block)
        except UnicodeDecodeError as error:
            # error.object is the bytes held back from the last block (an unfinished
            # character) followed by this block.
            bad = offset - max(len(error.object) - len(block), 0) + error.start
            return BadByte(
                bad,
                _line_at(binary, codec, start, bad, block_size),
                error.object[error.start : max(error.end, error.start + 1)],
            )
        except UnicodeError:
            # Codecs such as punycode fail without saying where: blame the block.
            return BadByte(offset, _line_at(binary, codec, start, offset, block_size), block[:1])
        offset += len(block)
    try:
        decoder.decode(b"", final=True)
    except UnicodeError:
        return BadByte(offset, _line_at(binary, codec, start, offset, block_size), b"")
    return None


def _bad_encoding(label: str, bad: BadByte, hint: str = "") -> Refusal:
    if not bad.bad:
        detail = f"The file is not valid {label}: it ends inside a character (offset {bad.offset})."
    else:
        shown = " ".join(f"0x{byte:02x}" for byte in bad.bad)
        detail = (
            f"The file is not valid {label}: {'byte' if len(bad.bad) == 1 else 'bytes'} "
            f"{shown} at offset {bad.offset} (line {bad.line}) cannot be decoded."
        )
    return Refusal(400, "bad_encoding", detail + hint, line=bad.line, offset=bad.offset)


def check_encoding(
    binary: IO[bytes], codec: str = "utf-8", *, start: int = 0, block_size: int = 1 << 20
) -> None:
    """Refuse a file that does not decode in ``codec``, naming the byte offset and the
    line; then rewind to ``start``. Decoding is C-fast, so this pass is cheap next to
    parsing, and the refusal can say exactly where the bad byte is."""
    bad = find_bad_byte(binary, codec, start=start, block_size=block_size)
    if bad is not None:
        raise _bad_encoding(_LABELS.get(codec, codec), bad)
    binary.seek(start)


def looks_like_cp1252(binary: IO[bytes], *, block_size: int = 1 << 20) -> bool:
    """Whether a file that is not UTF-8 reads as Windows-1252 text (see :func:`read_csv`).

    True when no byte is one that such text does not contain (``_NOT_CP1252``) and more
    of its non-ASCII bytes are invalid as UTF-8 than form UTF-8 characters, so that a
    UTF-8 file with a stray byte stays UTF-8 (and is refused at that byte).
    """
    binary.seek(0)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    invalid = valid = 0
    final = False
    while not final:
        block = binary.read(block_size)
        final = not block
        if _NOT_CP1252.search(block):
            return False
        text = decoder.decode(block, final=final)
        escaped = len(text.encode("utf-8", "surrogateescape")) - len(text.encode("utf-8", "ignore"))
        invalid += escaped
        valid += len(text) - len(text.encode("ascii", "ignore")) - escaped
    return invalid > valid


def _bom(head: bytes, family: str | None = None) -> tuple[str, int] | None:
    """The codec a BOM at the start of ``head`` declares, and the BOM's length; only a
    BOM of ``family`` when one is named."""
    for bom, codec in _BOMS:
        if head.startswith(bom) and family in (None, _FAMILIES[codec]):
            return codec, len(bom)
    return None


def resolve_encoding(name: str) -> str:
    """The Python codec name for an encoding a client named; 400 ``unknown_encoding``."""
    try:
        info = codecs.lookup(name.strip())
        # Bytes-to-bytes codecs (base64, zlib…) are not text encodings; "undefined"
        # refuses to decode anything.
        usable = getattr(info, "_is_text_encoding", True) and info.decode(b"")[0] == ""
    except (LookupError, ValueError, UnicodeError):
        usable = False
    if not usable:
        raise Refusal(
            400,
            "unknown_encoding",
            f"{name!r} is not a text encoding importq knows; "
            "use for example utf-8, utf-16, windows-1252 or latin-1.",
        )
    return codecs.lookup(name.strip()).name


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


def _choose_encoding(binary: IO[bytes], encoding: str | None) -> tuple[str, int]:
    """The codec to read the file with and the bytes (a BOM) to skip; refuses a file
    that does not decode in it. Leaves the file at the first byte to read."""
    binary.seek(0)
    head = binary.read(4)
    if encoding is not None:
        codec = resolve_encoding(encoding)
        family = _FAMILIES.get(codec)
        bom = _bom(head, family) if family else None
        if bom is not None and codec in (family, "utf-8-sig", bom[0]):
            codec, start = bom  # the BOM tells the byte order; it is not text
        else:
            # No BOM, or one of the other byte order than the client named.
            codec, start = _WITHOUT_BOM.get(codec, codec), 0
        check_encoding(binary, codec, start=start)
        return codec, start
    bom = _bom(head)
    if bom is not None:
        codec, start = bom
        if (
            codec == "utf-32-le"
            and find_bad_byte(binary, codec, start=start) is not None
            and find_bad_byte(binary, "utf-16-le", start=2) is None
        ):
            # FF FE 00 00 is UTF-32LE's BOM, or UTF-16LE's and a NUL: this one decodes.
            codec, start = "utf-16-le", 2
        check_encoding(binary, codec, start=start)
        return codec, start
    bad = find_bad_byte(binary, "utf-8")
    if bad is not None and not looks_like_cp1252(binary):
        raise _bad_encoding(
            "UTF-8",
            bad,
            " If the file is in another encoding, name it (for example encoding=windows-1252).",
        )
    binary.seek(0)
    return ("utf-8" if bad is None else "cp1252"), 0


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
    codec, start = _choose_encoding(binary, encoding)
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
