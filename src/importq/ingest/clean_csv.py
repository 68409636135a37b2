"""The clean-CSV path: a UTF-8 CSV's data records handed to PostgreSQL's own CSV reader.

Invariant: a block is handed over only once it is checked clean. A *clean* file is one
that ``COPY … (FORMAT csv)`` and importq's own reader read alike. :class:`CsvSource`
checks each block before it hands it over. It raises :class:`NotClean` at the first
record the two readers could disagree on, and staging then falls back to importq's
reader.

The path exists because PostgreSQL reads a file far faster than Python does.
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from importq.ingest.limits import UploadLimits


class NotClean(Exception):
    """PostgreSQL's CSV reading of the file could differ from importq's."""


@dataclass(frozen=True)
class CsvSource:
    """The data records of a UTF-8 CSV file whose header is its first line, as bytes.

    The bytes are for PostgreSQL's own CSV parser, ``COPY … (FORMAT csv)``. The two
    parsers agree on RFC 4180 records. They differ in four cases:

    - Stray quotes. PostgreSQL opens a quoted section at any quote, but Python's csv
      module does so only at the start of a field.
    - Blank lines. PostgreSQL reads a row of one empty field, and importq skips them.
    - ``\\.`` alone on a line. Before PostgreSQL 18, it ends the data.
    - Mixed line ends.

    :meth:`blocks` raises :class:`NotClean` on stray quotes and on ``\\.`` lines.
    PostgreSQL refuses blank lines and mixed line ends itself. Either way, such a file
    is read by Python instead.
    """

    binary: IO[bytes]
    start: int  # the offset of the first data record (on line 2)
    delimiter: str
    limits: UploadLimits
    # Held from a seek to the read after it: two readers of the file may run in two
    # threads at once (see :meth:`blocks`).
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def read_at(self, position: int, size: int) -> bytes:
        """``size`` bytes of the file from offset ``position`` (fewer at its end)."""
        with self.lock:
            self.binary.seek(position)
            return self.binary.read(size)

    @property
    def max_record_bytes(self) -> int:
        """The most bytes a clean record can take. A longer run without a line end is not
        clean.

        The bound gives each cell the limit's characters at 8 bytes each: 4 bytes of
        UTF-8, doubled as if each were a quote. It adds the cell's two quotes and a
        delimiter.
        """
        return self.limits.max_columns * (self.limits.max_cell_chars * 8 + 3)

    def blocks(
        self, block_size: int = 1 << 20, start: int | None = None, stop: int | None = None
    ) -> Iterator[bytes]:
        """The data from ``start`` up to ``stop``, in blocks of whole records.

        Each block is checked by :func:`clean_records` before it is yielded. ``start``
        and ``stop`` are offsets where a record starts. By default they are the first
        record and the end of the file. Two of these generators may read one file by
        turns, because each seeks to where it left off before it reads.
        """
        position = self.start if start is None else start
        pending = b""
        # How much of ``pending`` holds no record end, and whether it ends inside quotes.
        # Only what came after is searched, so a long record is scanned once.
        scanned, quoted = 0, False
        final = False
        first = True
        while not final:
            wanted = block_size if stop is None else min(block_size, stop - position)
            block = self.read_at(position, wanted) if wanted > 0 else b""
            position += len(block)
            final = not block
            pending += block
            if final:
                end = len(pending)
            else:
                found = _last_record_end(pending[scanned:], quoted)
                end = scanned + found if found else 0
            if end == 0:
                if len(pending) > self.max_record_bytes:
                    raise NotClean("a record is longer than the longest one allowed")
                quoted ^= pending.count(b'"', scanned) % 2 == 1
                scanned = len(pending)
                continue
            clean_records(pending[:end], self.delimiter, at_start=first)
            yield pending[:end]
            pending = pending[end:]
            scanned, quoted = 0, False
            first = False

    def halves(self, block_size: int = 1 << 20) -> tuple[int, int] | None:
        """Where to cut the data in two, for two COPYs at once.

        It returns the offset of the first record that starts past the middle of the
        data, and how many records come before it. It returns None when no record
        starts past the middle.

        The records are counted in one pass of byte counts, without parsing. That is
        sound because PostgreSQL ends a record of a clean file at a line feed outside
        quoted cells, and :meth:`blocks` checks that the file is clean.
        """
        end = self.binary.seek(0, io.SEEK_END)
        middle = self.start + (end - self.start) // 2
        position, records, quoted = self.start, 0, False
        while position < end:
            block = self.read_at(position, block_size)
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
    """The number of line feeds in ``data`` outside quoted cells.

    ``quoted`` says that ``data`` starts inside a quoted cell. The pieces between quotes
    alternate outside and inside. A doubled quote only adds an empty piece, which holds
    no line feed, so the count stays right.
    """
    return b"".join(data.split(b'"')[int(quoted) :: 2]).count(b"\n")


def _record_end_after(data: bytes, offset: int, quoted: bool) -> int | None:
    """The offset just past the first line feed outside quoted cells, at or after
    ``offset``. None when there is none.

    One pass: the pieces between quotes alternate outside and inside (``quoted``: the
    first is inside), so no quote is counted twice however many line feeds a quoted
    cell holds.
    """
    position = 0
    for index, piece in enumerate(data.split(b'"')):
        if (index + quoted) % 2 == 0:
            end = piece.find(b"\n", max(offset - position, 0))
            if end != -1:
                return position + end + 1
        position += len(piece) + 1  # the piece and the quote after it
    return None


def _last_record_end(data: bytes, quoted: bool = False) -> int:
    """The end of the last whole record in ``data``, or 0 when no record ends in it.

    A record ends just past a line feed outside quoted cells. ``quoted`` says that
    ``data`` starts inside a quoted cell. One pass from the end, piece by piece between
    quotes, as above.
    """
    pieces = data.split(b'"')
    position = len(data)
    for index in range(len(pieces) - 1, -1, -1):
        position -= len(pieces[index])
        if (index + quoted) % 2 == 0:
            end = pieces[index].rfind(b"\n")
            if end != -1:
                return position + end + 1
        position -= 1  # the quote before the piece
    return 0


_CLEAN_PATTERNS: dict[str, re.Pattern[bytes]] = {}


def clean_records(data: bytes, delimiter: str, *, at_start: bool = False) -> None:
    """Raise :class:`NotClean` unless PostgreSQL and importq read ``data`` alike.

    ``data`` is whole records. It is clean when its quoting is RFC 4180 and no line of
    it is just ``\\.``. In RFC 4180 quoting, a quoted cell opens right after a delimiter
    or a line start, and closes right before one. It doubles the quotes it holds.
    ``at_start`` says that ``data`` is the first block, where a first line that starts
    with ``\\.`` is not clean either.
    """
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
        # Without a backslash there is no \. line. This test is one memchr, while each
        # framed search below is a pass over a block full of line feeds and dots.
        return
    # A block starts and ends at a record's edge, so its first and last lines are whole
    # lines too. Framed by line ends, every line can be found the same way.
    framed = b"\n" + data + (b"" if data.endswith(b"\n") else b"\n")
    if b"\n\\.\n" in framed or b"\n\\.\r\n" in framed or (at_start and data.startswith(b"\\.")):
        raise NotClean("a line holding only \\.")
