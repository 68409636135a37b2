"""The XLSX reading process: what it sends is what staging in process would COPY, its
refusals are the reader's, and it never outlives its upload."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

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
    """A workbook of 20,000 rows, whose COPY data is far more than a pipe holds."""
    rows: list[list[Any]] = [["id", "name", "depth"]]
    rows += [[f"e{n}", f"entrance number {n}", n * 0.5] for n in range(20_000)]
    return _workbook(tmp_path_factory.mktemp("many") / "many.xlsx", rows)


async def _in_child(path: Path, limits: UploadLimits = LIMITS, **options: Any) -> Any:
    """The child's header, COPY data and row count, or its refusal raised."""
    with contextlib.ExitStack() as closed, path.open("rb") as binary:
        upload = await read_xlsx_in_process(
            binary, sheet=options.get("sheet"), limits=limits, closed=closed
        )
        assert upload.copy_data is not None and list(upload.rows) == []
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
        with contextlib.ExitStack() as closed:
            upload = await read_xlsx_in_process(binary, sheet=None, limits=LIMITS, closed=closed)
            child = upload.copy_data
            assert isinstance(child, xlsx_process.XlsxProcess)
        assert await asyncio.wait_for(child.process.wait(), 10) == -signal.SIGKILL
    await _until_gone(child.process.pid)


async def test_a_cancelled_copy_kills_the_child(many: Path) -> None:
    path = many
    started = asyncio.Event()
    children: list[xlsx_process.XlsxProcess] = []

    async def stage() -> None:
        with contextlib.ExitStack() as closed, path.open("rb") as binary:
            upload = await read_xlsx_in_process(binary, sheet=None, limits=LIMITS, closed=closed)
            assert isinstance(upload.copy_data, xlsx_process.XlsxProcess)
            children.append(upload.copy_data)
            started.set()
            await upload.copy_data.write_to(_Copy(pause=0.05))  # type: ignore[arg-type]

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
    with contextlib.ExitStack() as closed, path.open("rb") as binary:
        upload = await read_xlsx_in_process(binary, sheet=None, limits=LIMITS, closed=closed)
        assert isinstance(upload.copy_data, xlsx_process.XlsxProcess)
        # The pipe is full long before the rows are sent: the child is still at work.
        upload.copy_data.process.send_signal(signal.SIGKILL)
        with caplog.at_level(logging.ERROR), pytest.raises(Refusal) as failed:
            await upload.copy_data.write_to(_Copy())  # type: ignore[arg-type]
    assert (failed.value.status, failed.value.code) == (500, "xlsx_reading_failed")
    assert "exit code -9" in caplog.text


def test_the_child_dies_with_the_process_that_started_it(many: Path) -> None:
    path = many
    # A parent that starts the child, prints its pid, then waits to be killed.
    parent_code = textwrap.dedent(
        f"""
        import asyncio, contextlib, sys
        from importq.ingest.limits import UploadLimits
        from importq.ingest.xlsx_process import read_xlsx_in_process

        async def main():
            with contextlib.ExitStack() as closed, open({str(path)!r}, "rb") as binary:
                upload = await read_xlsx_in_process(
                    binary, sheet=None, limits=UploadLimits(), closed=closed
                )
                print(upload.copy_data.process.pid, flush=True)
                await asyncio.sleep(60)

        asyncio.run(main())
        """
    )
    with subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE) as parent:
        try:
            assert parent.stdout is not None
            child_pid = int(parent.stdout.readline())
            assert not _gone(child_pid)
        finally:
            parent.kill()
    asyncio.run(_until_gone(child_pid))


def test_only_a_big_file_with_a_descriptor_is_worth_a_process(tmp_path: Path) -> None:
    small = _workbook(tmp_path / "small.xlsx", [["a"], ["1"]])
    with small.open("rb") as binary:
        assert not worth_a_process(binary)
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * xlsx_process.PROCESS_BYTES)
    with big.open("rb") as binary:
        assert worth_a_process(binary)
    assert not worth_a_process(io.BytesIO(big.read_bytes()))
