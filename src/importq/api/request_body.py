"""An upload's body, streamed into a spool file under the byte limit.

Invariants:

- Every byte of a body counts against ``IMPORTQ_MAX_UPLOAD_BYTES`` as it arrives, raw or
  multipart, with or without a Content-Length: the request is refused with ``413`` as
  soon as the limit is passed, and the spool is closed, which removes it.
- Only the upload itself is written to disk: a multipart body's field ``file``. Other
  fields are read and dropped.
- A spool has no name (see :func:`spool_file`) and disappears when closed, unless
  storage gives it one to keep the upload.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO
from urllib.parse import unquote

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from importq.errors import Refusal


def too_large(limit: int) -> Refusal:
    return Refusal(
        413, "too_large", f"The upload is larger than the limit of {limit} bytes.", limit=limit
    )


def spool_file(directory: Path) -> IO[bytes]:
    """A file with no name in ``directory``. It is gone when closed, unless storage gives
    it a name.

    It is opened with ``O_TMPFILE`` but without ``O_EXCL``. :class:`tempfile.TemporaryFile`
    adds ``O_EXCL``, so that its file can never get a name. Without it, local storage on
    the same file system keeps the upload by naming the file instead of copying it. The
    upload is then not written again while its chunks run. Where the system has no
    ``O_TMPFILE``, this is an ordinary temporary file, which storage copies.
    """
    directory.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600)
    except (AttributeError, OSError):
        return tempfile.TemporaryFile(dir=directory)
    return open(descriptor, "w+b")


async def _received(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body's parts as they arrive; past ``limit`` bytes in all, a 413."""
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise too_large(limit)
        yield part


async def spool_body(request: Request, limit: int, directory: Path) -> IO[bytes]:
    """The request's whole body in a spool file, at its start."""
    spool = spool_file(directory)
    try:
        async for part in _received(request, limit):
            spool.write(part)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return spool


class _FilePart:
    """Collects a multipart body's field ``file`` into a spool, from the parser's
    callbacks. The headers of each part are kept only until its data starts."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._field = b""
        self._value = b""
        self._headers: dict[bytes, bytes] = {}
        self._writing: IO[bytes] | None = None
        self.spool: IO[bytes] | None = None
        self.file_name = ""
        self.ended = False  # the closing boundary was read

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._headers.clear,
            "on_header_field": self._add_field,
            "on_header_value": self._add_value,
            "on_header_end": self._end_header,
            "on_headers_finished": self._start_data,
            "on_part_data": self._data,
            "on_part_end": self._end_part,
            "on_end": self._end,
        }

    def _add_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _add_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _end_header(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field = self._value = b""

    def _start_data(self) -> None:
        disposition = self._headers.get(b"content-disposition", b"")
        _, options = parse_options_header(disposition)
        if options.get(b"name") != b"file":
            return
        if self.spool is not None:
            raise Refusal(400, "too_many_files", "Send one file per upload, in the field 'file'.")
        self.file_name = _file_name(disposition, options)
        self.spool = self._writing = spool_file(self._directory)

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._writing is not None:
            self._writing.write(data[start:end])

    def _end_part(self) -> None:
        self._writing = None

    def _end(self) -> None:
        self.ended = True


def _malformed(reason: str) -> Refusal:
    return Refusal(400, "bad_multipart", f"The multipart body is malformed: {reason}.")


# RFC 6266's filename*=charset'language'percent-encoded-name, which browsers send for
# names outside ASCII.
_EXTENDED_FILE_NAME = re.compile(rb"filename\*\s*=\s*([^';]*)'[^']*'([^;\s]*)", re.IGNORECASE)


def _file_name(disposition: bytes, options: dict[bytes, bytes]) -> str:
    """The part's file name: ``filename*`` when given, else ``filename``."""
    extended = _EXTENDED_FILE_NAME.search(disposition)
    charset = extended.group(1).decode("ascii", "replace").lower() if extended else ""
    if extended is not None and charset in ("utf-8", "iso-8859-1"):  # RFC 8187's two
        try:
            return unquote(extended.group(2).decode("ascii"), encoding=charset, errors="replace")
        except UnicodeDecodeError:  # not the ASCII RFC 8187 percent-encodes into
            pass
    return options.get(b"filename", b"").decode("utf-8", "replace")


async def spool_form_file(request: Request, limit: int, directory: Path) -> tuple[IO[bytes], str]:
    """A multipart body's field ``file`` in a spool file, at its start, and its file name.

    A body without a non-empty ``file`` field is refused with ``400 missing_file``, one
    with two with ``400 too_many_files``, and a malformed one with ``400 bad_multipart``.
    """
    _, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if not boundary:
        raise _malformed("its Content-Type names no boundary")
    part = _FilePart(directory)
    try:
        try:
            parser = MultipartParser(boundary, part.callbacks())  # type: ignore[arg-type]
            async for received in _received(request, limit):
                parser.write(received)
        except FormParserError as error:
            raise _malformed(str(error)) from None
        if not part.ended:
            raise _malformed("it ends before its closing boundary")
        if part.spool is None or not part.file_name:
            raise Refusal(400, "missing_file", "Send the file in a multipart field named 'file'.")
        part.spool.seek(0)
    except BaseException:
        if part.spool is not None:
            part.spool.close()
        raise
    return part.spool, part.file_name
