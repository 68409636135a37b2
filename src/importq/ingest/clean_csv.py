"""The clean-CSV path: a UTF-8 CSV's data records handed to PostgreSQL's own CSV reader.

``COPY … (FORMAT csv)`` reads a file far faster than Python does, but only a *clean* file
reads the same in both: :class:`CsvSource` checks each block it hands over and raises
:class:`NotClean` on the first record the two readers could disagree on, so staging can
fall back to importq's own reader.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from importq.ingest.limits import UploadLimits


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
