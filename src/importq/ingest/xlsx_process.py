"""Reading a big XLSX upload in a process of its own, which writes the COPY data.

Reading a sheet is Python work: calamine's cells, then importq's text of each. In the
API's process it shares the GIL with the event loop that feeds the COPY, so the two run
one after the other, and every other request of the process waits with them. A child
process reads the sheet instead (``python -P -m importq.ingest.xlsx_process``). It builds
the staged records (:func:`importq.ingest.staged_records.staged_records`) and formats
them as PostgreSQL's binary COPY with psycopg's own formatter. The API's process only
hands the bytes on to the staged table's COPY, so reading and COPY overlap.

Invariants:

* The child reads by the rules of :func:`importq.ingest.xlsx_reader.read_xlsx` and
  :func:`importq.ingest.parsed_upload.within_limits`, with the request's limits: it runs
  them. Its records are those staging builds in process from the same rows, so both
  paths stage the same rows.
* The child speaks in frames on its stdout, each a kind byte, a 4-byte length and the
  payload: the header (or a refusal) first, then COPY data, then the end with the
  number of rows, or a refusal, or a failure. The header is known before staging
  starts, so the header check runs before the COPY, as for any upload.
* A refusal found by the child (400 ``bad_xlsx``, ``unknown_sheet``, ``empty_data``,
  a 413 …) is raised in the API's process as the same :class:`~importq.errors.Refusal`:
  same status, code, message and extra keys. Raised while the COPY runs, it rolls back
  the staging transaction, as a reader's refusal does in process.
* A child that fails, or ends without its last frame, is logged and answered ``500
  xlsx_reading_failed``: nothing is staged.
* The child lives no longer than its upload. The caller's exit stack kills it whatever
  ends the request (an answer, a refusal, a cancel), reads its pipe to the end and
  reaps it, so that no descriptor or asyncio transport of it is left for the garbage
  collector; and the kernel kills it when the API's process dies (``PR_SET_PDEATHSIG``).
* Nothing else ends it early: it runs in a session of its own, so a signal to the API's
  process group (a terminal's Ctrl-C, a supervisor signalling the group) leaves it to
  finish the upload that the API's drain lets finish.
* At most ``MAX_CHILDREN`` children run at once in one API process, each taking a core.
  An upload that finds them all at work is read in a worker thread of the API's
  process, as a smaller one is (:func:`read_xlsx_in_process` returns None), rather than
  waiting for one.
* The child's module path is the installed one: it runs with ``-P``, so a file in the
  working directory named like a module it imports is never imported.
* Memory stays bounded: the pipe's back pressure stops the child while the COPY is
  behind, and the child holds at most one block of COPY data.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import signal
import struct
import sys
import traceback
from typing import IO, Any

from psycopg import AsyncCopy, adapters

# The formatter of psycopg's own binary COPY (AsyncCopy.write_row), used without a
# connection: it has no public name.
from psycopg._copy_base import BinaryFormatter
from psycopg.adapt import Transformer
from psycopg.pq import Format

from importq.errors import Refusal
from importq.ingest.limits import UploadLimits
from importq.ingest.parsed_upload import ParsedUpload, within_limits
from importq.ingest.staged_records import record_types, staged_records
from importq.ingest.xlsx_reader import read_xlsx

log = logging.getLogger(__name__)

# An upload at least this big is read by a child process. Below it, the child's start
# (Python, calamine and psycopg imported) costs more than it saves the event loop
# (docs/benchmarks.md, "The XLSX reader").
PROCESS_BYTES = 4 << 20
# The child sends COPY data in blocks of this many bytes: few frames, little memory.
BLOCK_BYTES = 256 << 10
# Children reading at once in one API process: each keeps a core busy, so more would only
# share the cores more thinly, and each holds ~40 MB.
MAX_CHILDREN = max(1, os.cpu_count() or 1)

_FRAME = struct.Struct(">cI")
HEADER, DATA, END, REFUSAL, FAILURE = b"H", b"D", b"E", b"R", b"F"
_PR_SET_PDEATHSIG = 1


class XlsxProcessFailed(Exception):
    """The child failed or died; its output, if any, says why."""


@dataclasses.dataclass
class XlsxProcess:
    """A child reading one XLSX upload, seen from the API's process.

    Its COPY data is read once, by :meth:`write_to`
    (:class:`importq.ingest.parsed_upload.CopyData`).
    """

    process: asyncio.subprocess.Process

    async def header(self) -> list[str]:
        """The sheet's header, or the child's refusal raised."""
        kind, payload = await self._frame()
        if kind != HEADER:
            raise self._unexpected(kind, payload)
        header: list[str] = json.loads(payload)
        return header

    async def write_to(self, copy: AsyncCopy) -> int:
        """Hand the child's COPY data to ``copy`` as it arrives; the number of rows."""
        while True:
            kind, payload = await self._frame()
            if kind == DATA:
                await copy.write(payload)
            elif kind == END:
                rows: int = json.loads(payload)
                return rows
            else:
                raise self._unexpected(kind, payload)

    async def close(self) -> None:
        """Kill the child, unless it has exited, read its stdout to the end, and wait
        for it.

        Reading to the end matters when the caller stopped reading: asyncio has paused
        the pipe, holding up to ``4 * BLOCK_BYTES``, and would never see its end (nor
        would ``wait``, which waits for the pipe too). Once the pipe ends and the child
        is reaped, asyncio closes the transport, so no descriptor of the child is left
        open.
        """
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        assert self.process.stdout is not None
        while await self.process.stdout.read(BLOCK_BYTES):
            pass
        await self.process.wait()

    async def _frame(self) -> tuple[bytes, bytes]:
        assert self.process.stdout is not None
        try:
            kind, length = _FRAME.unpack(await self.process.stdout.readexactly(_FRAME.size))
            return kind, await self.process.stdout.readexactly(length)
        except asyncio.IncompleteReadError:
            code = await self.process.wait()
            raise self._failed(f"it ended without a last message, exit code {code}") from None

    def _unexpected(self, kind: bytes, payload: bytes) -> Exception:
        if kind == REFUSAL:
            said = json.loads(payload)
            return Refusal(said["status"], said["code"], said["detail"], **said["extra"])
        if kind == FAILURE:
            return self._failed(payload.decode(errors="replace"))
        return self._failed(f"it sent a {kind!r} message out of turn")

    def _failed(self, why: str) -> Refusal:
        log.error("the XLSX reading process %s failed: %s", self.process.pid, why)
        return Refusal(
            500,
            "xlsx_reading_failed",
            "The workbook's reading failed on the server's side; nothing was staged.",
        )


@dataclasses.dataclass
class _Children:
    """The children of this process reading an upload, counted from before their start
    until they are reaped."""

    running: int = 0

    def release(self) -> None:
        self.running -= 1


_children = _Children()


async def read_xlsx_in_process(
    binary: IO[bytes],
    *,
    sheet: str | None,
    limits: UploadLimits,
    closed: contextlib.AsyncExitStack,
) -> ParsedUpload | None:
    """Start a child that reads ``binary`` as :func:`~importq.ingest.xlsx_reader.read_xlsx`
    would, and return the upload once its header is known; None, at once, when
    ``MAX_CHILDREN`` children are at work already.

    ``binary`` must be a file a child can open (:func:`worth_a_process`). The upload's ``copy_data``
    is the child's COPY data, and its rows are empty. ``closed`` kills and reaps the child
    when it closes (:meth:`XlsxProcess.close`), so the caller's exit stack bounds the
    child's life, and only then gives its place to another.
    """
    if _children.running >= MAX_CHILDREN:
        return None
    # Counted before the first await, so that uploads arriving together count each other.
    _children.running += 1
    closed.callback(_children.release)
    descriptor = binary.fileno()
    options = {"sheet": sheet, "limits": dataclasses.asdict(limits), "parent": os.getpid()}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-P",  # the working directory is not put on the child's module path
        "-m",
        __name__,
        str(descriptor),
        json.dumps(options),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        pass_fds=(descriptor,),
        limit=2 * BLOCK_BYTES,
        # Out of the API's process group: a Ctrl-C or a signal to the group leaves it be.
        start_new_session=True,
    )
    child = XlsxProcess(process)
    closed.push_async_callback(child.close)
    return ParsedUpload(await child.header(), iter(()), copy_data=child)


def worth_a_process(binary: IO[bytes]) -> bool:
    """Whether ``binary`` is read faster by a child than in a thread: a file of at least
    ``PROCESS_BYTES`` that a child can open (a spool file is one)."""
    try:
        descriptor = binary.fileno()
        return os.fstat(descriptor).st_size >= PROCESS_BYTES and os.path.exists(
            f"/proc/self/fd/{descriptor}"
        )
    except (OSError, ValueError):
        return False


# --- the child ------------------------------------------------------------------------


def _send(out: IO[bytes], kind: bytes, payload: bytes | bytearray) -> None:
    out.write(_FRAME.pack(kind, len(payload)))
    out.write(payload)
    out.flush()


def _send_copy_data(out: IO[bytes], upload: ParsedUpload) -> int:
    """Send the upload's staged records as binary COPY data, in blocks of about
    ``BLOCK_BYTES``, the last ending with the COPY's trailer; the number of rows."""
    width = len(upload.header)
    transformer = Transformer()
    transformer.set_dumper_types(
        [adapters.types.get_oid(name) for name in record_types(width)], Format.BINARY
    )
    formatter = BinaryFormatter(transformer)
    block = bytearray()
    rows = 0
    for record in staged_records(upload.rows, width):
        rows += 1
        block += formatter.write_row(record)
        if len(block) >= BLOCK_BYTES:
            _send(out, DATA, block)
            block.clear()
    block += formatter.end()
    _send(out, DATA, block)
    return rows


def _die_with_parent() -> None:
    """Have the kernel kill this process when its parent dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def main(argv: list[str]) -> int:
    """The child: read the upload open at descriptor ``argv[0]`` with the options of
    ``argv[1]`` (JSON), and write frames to stdout."""
    _die_with_parent()
    options: dict[str, Any] = json.loads(argv[1])
    if os.getppid() != options["parent"]:
        return 1  # the parent died before the kernel was told to kill this process with it
    out = sys.stdout.buffer
    limits = UploadLimits(**options["limits"])
    try:
        # A file of its own, so that the parent's offset in the upload never moves.
        with open(f"/proc/self/fd/{argv[0]}", "rb") as binary:
            upload = within_limits(read_xlsx(binary, sheet=options["sheet"], limits=limits), limits)
            _send(out, HEADER, json.dumps(upload.header).encode())
            rows = _send_copy_data(out, upload)
    except Refusal as refused:
        refusal = {
            "status": refused.status,
            "code": refused.code,
            "detail": refused.detail,
            "extra": refused.extra,
        }
        _send(out, REFUSAL, json.dumps(refusal).encode())
        return 0
    except BrokenPipeError:
        return 1  # the parent went away
    except BaseException:
        _send(out, FAILURE, traceback.format_exc().encode())
        return 1
    _send(out, END, json.dumps(rows).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
