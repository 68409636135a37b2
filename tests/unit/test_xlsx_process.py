"""The XLSX reading process: what it sends is what staging in process would COPY, its
refusals are the reader's, it never outlives its upload nor leaves anything open, no more
than ``MAX_CHILDREN`` run at once, and neither a signal to the API's process group nor
the working directory's files reach it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import logging
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import IO, Any

import pytest
from psycopg import adapters
from psycopg._copy_base import BinaryFormatter
from psycopg.adapt import Transformer
from psycopg.pq import Format

from helpers import xlsx_bytes
from importq.errors import Refusal
from importq.ingest import xlsx_process
from importq.ingest.limits import UploadLimits
from importq.ingest.parsed_upload import ParsedUpload, within_limits
from importq.ingest.staged_records import record_types, staged_records
from importq.ingest.xlsx_process import read_xlsx_in_process, worth_a_process
from importq.ingest.xlsx_reader import read_xlsx

LIMITS = UploadLimits()


class _Copy:
    """Stands for psycopg's AsyncCopy: keeps what is written, slowly if asked."""

    def __init__(self, pause: float = 0) -> None:
        self.data = bytearray()
        self.pause = pause

    async def write(self, block: bytes) -> None:
        self.data += block
        if self.pause:
            await asyncio.sleep(self.pause)


def _workbook(path: Path, rows: list[list[Any]], **sheets: list[list[Any]]) -> Path:
    path.write_bytes(xlsx_bytes({"data": rows, **sheets}))
    return path


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workbook of 20,000 rows, whose COPY data (~1.8 MB) is far more than a pipe and
    asyncio's buffer of it (``4 * BLOCK_BYTES``) hold together."""
    rows: list[list[Any]] = [["id", "name", "depth"]]
    rows += [[f"e{n}", f"entrance number {n}, in the long survey", n * 0.5] for n in range(20_000)]
    return _workbook(tmp_path_factory.mktemp("many") / "many.xlsx", rows)


async def _child(
    binary: IO[bytes], closed: contextlib.AsyncExitStack, limits: UploadLimits = LIMITS
) -> xlsx_process.XlsxProcess:
    """A child reading ``binary``, ended by ``closed``; its header is read."""
    upload = await read_xlsx_in_process(binary, sheet=None, limits=limits, closed=closed)
    assert upload is not None and isinstance(upload.copy_data, xlsx_process.XlsxProcess)
    return upload.copy_data


async def _in_child(path: Path, limits: UploadLimits = LIMITS, **options: Any) -> Any:
    """The child's header, COPY data and row count, or its refusal raised."""
    async with contextlib.AsyncExitStack() as closed:
        binary = closed.enter_context(path.open("rb"))
        upload = await read_xlsx_in_process(
            binary, sheet=options.get("sheet"), limits=limits, closed=closed
        )
        assert upload is not None and upload.copy_data is not None and list(upload.rows) == []
        copy = _Copy()
        rows = await upload.copy_data.write_to(copy)  # type: ignore[arg-type]
        return upload.header, bytes(copy.data), rows


def _in_process(path: Path, limits: UploadLimits = LIMITS, **options: Any) -> Any:
    """What staging COPYs in process for the same file, formatted by psycopg."""
    with path.open("rb") as binary:
        upload: ParsedUpload = within_limits(read_xlsx(binary, limits=limits, **options), limits)
        width = len(upload.header)
        transformer = Transformer()
        oids = [adapters.types.get_oid(name) for name in record_types(width)]
        transformer.set_dumper_types(oids, Format.BINARY)
        formatter = BinaryFormatter(transformer)
        data = bytearray()
        records = list(staged_records(upload.rows, width))
        for record in records:
            data += formatter.write_row(record)
        data += formatter.end()
        return upload.header, bytes(data), len(records)


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie no one reaped yet has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


async def _until_gone(pid: int) -> None:
    for _ in range(200):
        if _gone(pid):
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"process {pid} is still running")


# --- the same rows, the same refusals ---------------------------------------------------


async def test_the_child_sends_what_staging_would_copy(tmp_path: Path) -> None:
    rows: list[list[Any]] = [
        ["id", "name", "depth"],
        ["e1", "Gouffre", 12.5],
        [],
        ["e2", None, 10000000.0],
        ["e3", "ragged", 1, "beyond"],
        ["e4"],
    ]
    path = _workbook(tmp_path / "book.xlsx", rows)
    assert await _in_child(path) == _in_process(path)


async def test_many_rows_arrive_in_blocks(many: Path) -> None:
    path = many
    header, data, count = await _in_child(path)
    assert (header, data, count) == _in_process(path)
    assert len(data) > 2 * xlsx_process.BLOCK_BYTES and count == 20_000


def _not_a_zip(path: Path) -> Path:
    path.write_bytes(b"not a zip")
    return path


@pytest.mark.parametrize(
    ("rows", "limits", "options"),
    [
        ([["a", "b"], ["1", "2"], ["3", "x" * 40]], UploadLimits(max_cell_chars=30), {}),
        ([["a"], ["1"], ["2"], ["3"]], UploadLimits(max_rows=2), {}),
        ([["a"], ["1", "2", "3"]], UploadLimits(max_columns=2), {}),
        ([["a", "b", "c"]], UploadLimits(max_columns=2), {}),
        ([["a"], ["1"]], LIMITS, {"sheet": "nowhere"}),
        ([], LIMITS, {}),
        (None, LIMITS, {}),
    ],
    ids=["cell", "rows", "row width", "header width", "sheet", "empty", "not a zip"],
)
async def test_a_refusal_in_the_child_is_the_readers_refusal(
    tmp_path: Path, rows: list[list[Any]] | None, limits: UploadLimits, options: dict[str, Any]
) -> None:
    path = tmp_path / "book.xlsx"
    path = _not_a_zip(path) if rows is None else _workbook(path, rows)
    with pytest.raises(Refusal) as in_process:
        _in_process(path, limits, **options)
    with pytest.raises(Refusal) as in_child:
        await _in_child(path, limits, **options)
    expected, got = in_process.value, in_child.value
    assert (got.status, got.code, got.detail, got.extra) == (
        expected.status,
        expected.code,
        expected.detail,
        expected.extra,
    )


# --- the child's life --------------------------------------------------------------------


async def test_the_child_is_killed_when_its_upload_closes(many: Path) -> None:
    path = many
    with path.open("rb") as binary:
        async with contextlib.AsyncExitStack() as closed:
            child = await _child(binary, closed)
        assert child.process.returncode == -signal.SIGKILL
    await _until_gone(child.process.pid)


async def test_a_cancelled_copy_kills_the_child(many: Path) -> None:
    path = many
    started = asyncio.Event()
    children: list[xlsx_process.XlsxProcess] = []

    async def stage() -> None:
        async with contextlib.AsyncExitStack() as closed:
            child = await _child(closed.enter_context(path.open("rb")), closed)
            children.append(child)
            started.set()
            await child.write_to(_Copy(pause=0.05))  # type: ignore[arg-type]

    task = asyncio.create_task(stage())
    await asyncio.wait_for(started.wait(), 10)
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.wait_for(children[0].process.wait(), 10) == -signal.SIGKILL


async def test_a_child_that_dies_is_a_500_and_logged(
    many: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = many
    async with contextlib.AsyncExitStack() as closed:
        child = await _child(closed.enter_context(path.open("rb")), closed)
        # The pipe is full long before the rows are sent: the child is still at work.
        child.process.send_signal(signal.SIGKILL)
        with caplog.at_level(logging.ERROR), pytest.raises(Refusal) as failed:
            await child.write_to(_Copy())  # type: ignore[arg-type]
    assert (failed.value.status, failed.value.code) == (500, "xlsx_reading_failed")
    assert "exit code -9" in caplog.text


def _parent_code(workbook: Path, *, then: str, before: str = "") -> str:
    """A Python program standing for the API's process: it runs ``before``, starts the
    child on ``workbook``, prints the child's pid, then runs ``then`` (with ``upload``,
    and ``Copy``, a COPY that takes the data and keeps none)."""
    return textwrap.dedent(
        f"""
        import asyncio, contextlib, signal, sys
        from importq.ingest.limits import UploadLimits
        from importq.ingest.xlsx_process import read_xlsx_in_process

        {before}

        class Copy:
            async def write(self, block):
                pass

        async def main():
            async with contextlib.AsyncExitStack() as closed:
                binary = closed.enter_context(open({str(workbook)!r}, "rb"))
                upload = await read_xlsx_in_process(
                    binary, sheet=None, limits=UploadLimits(), closed=closed
                )
                print(upload.copy_data.process.pid, flush=True)
                {{then}}

        asyncio.run(main())
        """
    ).replace("{then}", textwrap.indent(then, " " * 8).lstrip())


def test_the_child_dies_with_the_process_that_started_it(many: Path) -> None:
    # A parent that starts the child, prints its pid, then waits to be killed.
    parent_code = _parent_code(many, then="await asyncio.sleep(60)")
    with subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE) as parent:
        try:
            assert parent.stdout is not None
            child_pid = int(parent.stdout.readline())
            assert not _gone(child_pid)
        finally:
            parent.kill()
    asyncio.run(_until_gone(child_pid))


def _descriptors() -> int:
    """How many descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


def _written(pid: int) -> int:
    """The bytes process ``pid`` has written so far."""
    io_lines = Path(f"/proc/{pid}/io").read_text().splitlines()
    return int(next(line for line in io_lines if line.startswith("wchar:")).split()[1])


async def _until_stopped_by_its_reader(pid: int) -> None:
    """Wait until the child has sent more than asyncio buffers for a reader
    (``4 * BLOCK_BYTES``) and writes no more: asyncio has stopped reading its pipe."""
    before = -1
    for _ in range(200):
        written = _written(pid)
        if written == before and written > 4 * xlsx_process.BLOCK_BYTES:
            return
        before = written
        await asyncio.sleep(0.1)
    raise AssertionError(f"process {pid} is still writing, or wrote too little")


async def test_a_child_no_one_reads_leaves_nothing_open(many: Path) -> None:
    # As an upload that ends after the header (an Idempotency-Key's retry, a refusal):
    # no one reads the child's COPY data, so asyncio pauses its pipe, full.
    gc.collect()  # what earlier tests left, out of the count
    opened = _descriptors()
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        with many.open("rb") as binary:
            async with contextlib.AsyncExitStack() as closed:
                child = await _child(binary, closed)
                await _until_stopped_by_its_reader(child.process.pid)
                assert _descriptors() > opened
        # Without a garbage collection: the clean-up closed it all.
        assert _descriptors() == opened
        gc.collect()
    assert [str(w.message) for w in warned if issubclass(w.category, ResourceWarning)] == []


async def test_no_more_than_max_children_read_at_once(
    many: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(xlsx_process, "MAX_CHILDREN", 1)
    with many.open("rb") as binary:
        async with contextlib.AsyncExitStack() as first:
            await _child(binary, first)
            async with contextlib.AsyncExitStack() as second:
                # At once, with no child started: the caller reads the file itself.
                assert (
                    await read_xlsx_in_process(binary, sheet=None, limits=LIMITS, closed=second)
                    is None
                )
        # Its place is free again once the first child is reaped.
        async with contextlib.AsyncExitStack() as third:
            await _child(binary, third)


def test_a_signal_to_the_api_process_group_leaves_the_child_at_work(many: Path) -> None:
    # A parent in a group of its own, standing for `importq serve`: it lives through a
    # SIGINT (serve drains), starts the child, prints its pid, and once told, reads all
    # the child sends and prints the row count.
    parent_code = _parent_code(
        many,
        # A handler, not SIG_IGN, which the child would inherit.
        before="signal.signal(signal.SIGINT, lambda number, frame: None)",
        then="await asyncio.to_thread(sys.stdin.readline)\n"
        "print(await upload.copy_data.write_to(Copy()), flush=True)",
    )
    with subprocess.Popen(
        [sys.executable, "-c", parent_code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
        text=True,
    ) as parent:
        try:
            assert parent.stdin is not None and parent.stdout is not None
            child_pid = int(parent.stdout.readline())
            assert os.getsid(child_pid) == child_pid != os.getsid(parent.pid)
            # A terminal's Ctrl-C, or a supervisor signalling the group.
            os.killpg(parent.pid, signal.SIGINT)
            parent.stdin.write("go\n")
            parent.stdin.flush()
            assert parent.stdout.readline() == "20000\n"
        finally:
            parent.kill()


async def test_a_module_in_the_working_directory_is_not_the_childs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _workbook(tmp_path / "book.xlsx", [["id", "name"], ["e1", "Gouffre"]])
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    # A module the child imports (through importq's reader), under the same name.
    (cwd / "calendar.py").write_text("raise SystemExit('not the standard calendar')\n")
    monkeypatch.chdir(cwd)
    assert await _in_child(path) == _in_process(path)


def test_only_a_big_file_with_a_descriptor_is_worth_a_process(tmp_path: Path) -> None:
    small = _workbook(tmp_path / "small.xlsx", [["a"], ["1"]])
    with small.open("rb") as binary:
        assert not worth_a_process(binary)
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * xlsx_process.PROCESS_BYTES)
    with big.open("rb") as binary:
        assert worth_a_process(binary)
    assert not worth_a_process(io.BytesIO(big.read_bytes()))
