"""Staging an upload: COPY its rows, cut the chunks, create the batch, defer the jobs.

``stage_batch`` owns its transaction. When it returns, the batch is durable, and every
row of it will end in exactly one report. When it raises, nothing of the upload remains.
That includes the staged table, because PostgreSQL's DDL is transactional.

Everything happens inside that transaction, in this order:

1. The batch's staged table is created (:mod:`importq.ingest.staged_table`).
2. The rows are COPYed into it. PostgreSQL's own CSV reader parses them when the file is
   clean enough (:mod:`importq.ingest.clean_csv`). Otherwise importq parses them, in a
   worker thread, or, for a big XLSX file, in a process of its own whose COPY data is
   passed on as it comes (:mod:`importq.ingest.xlsx_process`).
3. The table's hash index is built, and the chunk bounds are cut by walking that index.
4. The batch, its chunks and one ``process_chunk`` job per chunk are inserted.

There is one exception. A big clean CSV file's second half is COPYed at the same time by
a second connection, into a part committed on its own (:class:`SecondPart`). The batch's
transaction then takes the part in as a partition of the staged table. If that
transaction fails, the part is dropped. If the process dies first, the purge drops it,
because ``staging_parts`` lists the part until the batch takes it in.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import uuid
from collections.abc import Callable, Coroutine, Iterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, ClassVar

import psycopg
from psycopg import AsyncConnection, errors, sql
from psycopg.types.json import Jsonb
from psycopg_pool import PoolTimeout

from importq.errors import Refusal
from importq.ingest.chunk_bounds import ChunkBound, ChunkSizing
from importq.ingest.clean_csv import CsvSource, NotClean
from importq.ingest.off_loop import in_thread, off_loop
from importq.ingest.parsed_upload import CopyData, ParsedUpload, empty_upload
from importq.ingest.staged_records import staged_records, storable
from importq.ingest.staged_table import (
    FIRST_LINE,
    LineRange,
    StagedTable,
    drop_staged_table,
    part_name,
)
from importq.operations.traces import batch_origin
from importq.pipeline.dataset_versions import check_current
from importq.pipeline.on_error import OnError
from importq.rules.datasets import Dataset, HeaderMatch
from importq.sql import queries

log = logging.getLogger(__name__)

# Rows parsed by importq go to the COPY this many at a time, each slice parsed in a
# worker thread (:mod:`importq.ingest.off_loop`).
ROWS_PER_SLICE = 2_000
# A clean CSV file this big is COPYed in two halves at once. PostgreSQL runs a COPY on
# one core, and a second connection costs far less than half a core.
PARALLEL_COPY_BYTES = 32 << 20

# Defers the chunk jobs of a new batch on the staging connection
# (see ``importq.pipeline.job_queue.JobQueue.defer_chunks``).
# It takes the batch's id, its number of chunks and its number of rows.
DeferChunks = Callable[[AsyncConnection[Any], uuid.UUID, int, int], Coroutine[Any, Any, None]]
# The errors that show PostgreSQL's reading of a file differs from importq's, or breaks
# a limit. importq then reads the file itself, and refuses it with the line at fault if
# it must. A CHECK fails on a cell longer than the limit. It also fails on a part's lines
# when importq counted the records differently from PostgreSQL, which happens when the
# line ends are not line feeds.
UNCLEAN = (NotClean, psycopg.DataError, errors.CheckViolation)
# Lends a connection of its own, as a pool's connection() does. Given ``timeout``, it
# waits at most that many seconds, then raises PoolTimeout.
Connect = Callable[..., AbstractAsyncContextManager[AsyncConnection[Any]]]


@dataclass(frozen=True)
class StagedBatch:
    batch_id: uuid.UUID
    total_rows: int
    total_chunks: int
    created: bool = True  # False: an earlier request with the same Idempotency-Key made it


@dataclass(frozen=True)
class BatchRequest:
    """Who imports what, and how they want to hear about it."""

    dataset: Dataset
    initiator_id: int
    format: str
    file_name: str | None = None
    locale: str = "en"
    callback_url: str | None = None
    idempotency_key: str | None = None
    #: A digest of what the request asked for, sent with an idempotency key
    #: (see :mod:`importq.api.imports`).
    request_digest: bytes | None = None
    #: Run everything, write nothing to the target table.
    dry_run: bool = False
    #: What a row whose key is stored does (``importq.rules.datasets.MODES``).
    mode: str = "insert"
    #: What the batch does about failed rows.
    on_error: OnError = field(default_factory=OnError)
    #: How the upload is read beyond the definition (``Dataset.read_as``): its header
    #: mapping (upload header -> column), decimal mark and date format.
    mapping: dict[str, str] | None = None
    decimal: str | None = None
    date_format: str | None = None
    #: The batch whose kept upload this one runs again.
    rerun_of: uuid.UUID | None = None
    #: The encoding, delimiter and sheet the upload asked for (those given), so that a
    #: rerun reads the kept file as the upload was read.
    file_options: dict[str, str] | None = None

    @property
    def judged_by(self) -> Dataset:
        """The definition that judges the upload: the dataset, read as asked."""
        return self.dataset.read_as(self.mapping, self.decimal, self.date_format)


def check_header(dataset: Dataset, header: list[str]) -> HeaderMatch:
    """Match the header with the dataset's columns.

    A header that names a column twice is refused with ``400 duplicate_header``. A header
    without a mandatory column is refused with ``400 missing_columns``. Unknown columns
    are ignored, and :func:`header_warnings` lists them for the batch.
    """
    match = dataset.match_header(header)
    if match.duplicated:
        raise Refusal(
            400,
            "duplicate_header",
            f"The header names these columns more than once: {', '.join(match.duplicated)}.",
            columns=list(match.duplicated),
        )
    if match.missing:
        raise Refusal(
            400,
            "missing_columns",
            f"Mandatory columns are missing: {', '.join(match.missing)}.",
            columns=list(match.missing),
        )
    return match


def header_warnings(dataset: Dataset, match: HeaderMatch) -> list[str]:
    if not match.unknown:
        return []
    return [f"Columns not in dataset {dataset.name} were ignored: {', '.join(match.unknown)}."]


async def _existing(conn: AsyncConnection[Any], request: BatchRequest) -> StagedBatch | None:
    """The batch that an earlier request with the same Idempotency-Key created, if any.

    A different request that reuses the key is refused with
    ``422 idempotency_key_reused``.
    """
    if request.idempotency_key is None:
        return None
    cursor = await conn.execute(
        queries["find_batch_by_idempotency_key"],
        {"initiator_id": request.initiator_id, "idempotency_key": request.idempotency_key},
    )
    row = await cursor.fetchone()
    if row is None:
        return None
    batch_id, total_rows, total_chunks, digest = row
    if None not in (digest, request.request_digest) and bytes(digest) != request.request_digest:
        raise Refusal(
            422,
            "idempotency_key_reused",
            f"This Idempotency-Key already made batch {batch_id} from a different "
            "upload; send a new key for a new upload.",
            batchId=str(batch_id),
        )
    return StagedBatch(batch_id, total_rows, total_chunks, created=False)


async def _create_tables(
    conn: AsyncConnection[Any], table: StagedTable, longest: int | None = None
) -> None:
    """Create the batch's staged and results tables in the caller's transaction.

    That transaction, or savepoint, must be the one that COPYs the rows, because COPY …
    FREEZE requires it. ``longest`` is as in
    :meth:`importq.ingest.staged_table.StagedTable.create`.
    """
    for statement in table.create(longest):
        await conn.execute(statement)


async def _copy_rows(conn: AsyncConnection[Any], table: StagedTable, upload: ParsedUpload) -> int:
    """Create the batch's tables, and COPY the rows importq read into the staged table.

    The rows are read in a worker thread. Returns how many rows there were.
    """
    await _create_tables(conn, table)
    total = 0
    async with conn.cursor().copy(table.copy_rows()) as copy:
        copy.set_types(table.copy_types())
        async for records in in_thread(staged_records(upload.rows, table.width), ROWS_PER_SLICE):
            for record in records:
                await copy.write_row(record)
            total += len(records)
    return total


async def _copy_data(conn: AsyncConnection[Any], table: StagedTable, data: CopyData) -> int:
    """Create the batch's tables, and COPY the records another process read and formatted
    into the staged table. Returns how many rows there were."""
    await _create_tables(conn, table)
    async with conn.cursor().copy(table.copy_rows()) as copy:
        return await data.write_to(copy)


async def _copy_blocks(
    conn: AsyncConnection[Any], statement: sql.Composed, blocks: Iterator[bytes]
) -> int:
    """Run a COPY … FROM STDIN of ``blocks``, read and checked in a worker thread, and
    return how many rows it wrote."""
    async with conn.cursor() as cursor:
        async with cursor.copy(statement) as copy:
            async for (block,) in in_thread(blocks, 1):
                await copy.write(block)
        return cursor.rowcount


@dataclass
class SecondPart:
    """The second half of a big clean CSV file, in a part of the staged table.

    A connection of its own COPYs the half into the part. The part is committed before
    the batch is, and registered in ``staging_parts``. It is dropped again unless the
    batch's transaction takes it in.
    """

    connect: Connect
    table: StagedTable
    committed: bool = False

    NUMBER: ClassVar[int] = 1
    # How long to wait for the second connection. When none is free at once, the pool is
    # busy with other uploads, each holding one, and the file is COPYed in one piece
    # instead.
    LEND_SECONDS: ClassVar[float] = 0.05

    @property
    def name(self) -> str:
        return part_name(self.table.batch_id, self.NUMBER)

    async def lend(self, stack: AsyncExitStack) -> AsyncConnection[Any] | None:
        """A connection for the second half, held until ``stack`` closes.

        None when none is free now.
        """
        try:
            return await stack.enter_async_context(self.connect(timeout=self.LEND_SECONDS))
        except PoolTimeout:
            return None

    async def copy(
        self, conn: AsyncConnection[Any], source: CsvSource, start: int, lines: LineRange
    ) -> int:
        """COPY the file's records from offset ``start`` into the part, and commit it."""
        async with conn.transaction():
            await conn.execute(queries["register_staged_part"], {"name": self.name})
            longest = source.limits.max_cell_chars
            await conn.execute(self.table.create_part(self.NUMBER, lines, longest))
            statement = self.table.copy_csv(source.delimiter, part=self.NUMBER)
            copied = await _copy_blocks(conn, statement, source.blocks(start=start))
        self.committed = True
        return copied

    async def drop(self) -> None:
        """Drop the part, if it was committed. If this fails, the purge drops it later."""
        if not self.committed:
            return
        try:
            async with self.connect() as conn, conn.transaction():
                await conn.execute(drop_staged_table(self.name))
                await conn.execute(queries["forget_staged_part"], {"name": self.name})
            self.committed = False
        except psycopg.Error as error:
            log.warning("part of batch %s left to the purge: %s", self.table.batch_id, error)


async def _copy_in_halves(
    conn: AsyncConnection[Any],
    table: StagedTable,
    source: CsvSource,
    second: SecondPart,
    helper: AsyncConnection[Any],
    halves: tuple[int, int],
) -> int:
    """COPY the file's two halves at once, then make them the partitions of the staged table.

    The first half goes into part 0 on ``conn``, and the second into part 1 on
    ``helper``. The first half's records were counted beforehand
    (:meth:`importq.ingest.clean_csv.CsvSource.halves`), so the second half's lines are
    known when its COPY starts. PostgreSQL's count must agree. A file whose line ends
    are not line feeds breaks the CHECK of part 0's lines first, with CheckViolation.
    """
    cut, records = halves
    first_lines = LineRange(FIRST_LINE, FIRST_LINE + records)
    second_lines = LineRange(FIRST_LINE + records, None)
    await conn.execute(table.create_part(0, first_lines, source.limits.max_cell_chars))
    statement = table.copy_csv(source.delimiter, part=0)
    # Each half runs to its end even when the other fails. A COPY cancelled half-way
    # leaves its connection unusable, with a command still in progress, and the first
    # half's connection is the batch's own.
    first, rest = await asyncio.gather(
        _copy_blocks(conn, statement, source.blocks(stop=cut)),
        second.copy(helper, source, cut, second_lines),
        return_exceptions=True,
    )
    if isinstance(first, BaseException) or isinstance(rest, BaseException):
        failed = [r for r in (first, rest) if isinstance(r, BaseException)]
        raise ([e for e in failed if isinstance(e, UNCLEAN)] or failed)[0]
    if first != records:
        raise NotClean(f"PostgreSQL read {first} records where importq counted {records}")
    # Unlist the part before it is attached. The purge drops a listed part after an
    # hour. So either the purge finds the part unlisted, or it has taken the part
    # already and nothing comes back here.
    forgotten = await conn.execute(queries["forget_staged_part"], {"name": second.name})
    if await forgotten.fetchone() is None:
        raise NotClean("the second half was purged before it was taken in")
    await conn.execute(table.create_parent())
    for number, lines in ((0, first_lines), (SecondPart.NUMBER, second_lines)):
        await conn.execute(table.attach_part(number, lines))
    await conn.execute(table.create_results())
    return records + rest


async def _copy_clean_csv(
    conn: AsyncConnection[Any],
    table: StagedTable,
    source: CsvSource,
    second: SecondPart | None,
) -> int | None:
    """COPY a CSV file's records straight into the staged table, parsed by PostgreSQL.

    Returns how many records there were. A big file is COPYed in two halves at once,
    when ``second`` can take one. More rows than the limit are refused with a 413.

    Returns None, with nothing staged, when the file is not clean enough for PostgreSQL
    to read it as importq would (see :class:`importq.ingest.clean_csv.CsvSource`). It
    does so too when a cell is longer than the limit. importq's own reader then reads
    the file, and refuses it with the line at fault if it must.
    """
    position = source.binary.tell()
    async with AsyncExitStack() as stack:
        halves = helper = None
        if second is not None and source.binary.seek(0, io.SEEK_END) >= PARALLEL_COPY_BYTES:
            # A pass over half the file, so it runs off the event loop.
            halves = await off_loop(source.halves)
            helper = await second.lend(stack) if halves is not None else None
        try:
            # The tables are created in this savepoint, as the COPY's FREEZE requires.
            # A file that turns out not to be clean then leaves nothing behind.
            async with conn.transaction():
                if second is not None and helper is not None and halves is not None:
                    total = await _copy_in_halves(conn, table, source, second, helper, halves)
                else:
                    await _create_tables(conn, table, source.limits.max_cell_chars)
                    statement = table.copy_csv(source.delimiter)
                    total = await _copy_blocks(conn, statement, source.blocks())
        except UNCLEAN as error:
            log.info("batch %s is read by importq: %s", table.batch_id, error)
            total = None
    if total is None:
        if second is not None:
            await second.drop()  # with the second connection given back first
        source.binary.seek(position)  # where the Python reader left it
        return None
    if total > source.limits.max_rows:
        raise source.limits.too_many_rows()
    return total


async def _cut_chunks(
    conn: AsyncConnection[Any], table: StagedTable, size: int
) -> list[ChunkBound]:
    """The chunks that :func:`importq.ingest.chunk_bounds.chunk_bounds` cuts from the
    staged hashes, cut by PostgreSQL."""
    cursor = await conn.execute(table.chunk_bounds(), {"size": size})
    return [ChunkBound(hash_from, row_count) for hash_from, row_count in await cursor.fetchall()]


async def stage_batch(
    conn: AsyncConnection[Any],
    request: BatchRequest,
    upload: ParsedUpload,
    *,
    sizing: ChunkSizing,
    defer_chunks: DeferChunks,
    connect: Connect | None = None,
) -> StagedBatch:
    """Stage an upload as a new active batch, as the module docstring describes.

    It owns the transaction. A request whose Idempotency-Key already made a batch gets
    that batch back. ``connect`` lends a second connection, for a big file's second half.
    """
    # The header is kept with the batch (and names unknown columns in its warnings).
    upload = dataclasses.replace(upload, header=[storable(name) for name in upload.header])
    judged_by = request.judged_by
    match = check_header(judged_by, upload.header)
    existing = await _existing(conn, request)
    if existing is not None:
        return existing
    batch_id = uuid.uuid4()
    table = StagedTable(batch_id, len(upload.header), judged_by, dict(match.positions))
    second = SecondPart(connect, table) if connect is not None else None
    staged = False
    try:
        async with conn.transaction():
            # A dry run may be judged by an older version (a rerun's): it writes nothing.
            await check_current(conn, request.dataset, any_version=request.dry_run)
            total = None
            if upload.source is not None:
                total = await _copy_clean_csv(conn, table, upload.source, second)
            if upload.copy_data is not None:
                total = await _copy_data(conn, table, upload.copy_data)
            elif total is None:
                total = await _copy_rows(conn, table, upload)
            if total == 0:
                raise empty_upload()
            await conn.execute(queries["staging_settings"])
            size = sizing.target(total)
            await conn.execute(table.index())
            bounds = await _cut_chunks(conn, table, size)
            if request.mode != "insert" and not request.dry_run:
                await conn.execute(table.create_undo_log())
            await conn.execute(
                queries["insert_batch"],
                {
                    "id": batch_id,
                    "dataset": request.dataset.name,
                    "format": request.format,
                    "file_name": request.file_name,
                    "initiator_id": request.initiator_id,
                    "locale": request.locale,
                    "callback_url": request.callback_url,
                    "header": upload.header,
                    "total_rows": total,
                    "total_chunks": len(bounds),
                    "warnings": json.dumps(header_warnings(request.dataset, match)),
                    "idempotency_key": request.idempotency_key,
                    "request_digest": request.request_digest,
                    "dry_run": request.dry_run,
                    "mode": request.mode,
                    "on_error": request.on_error.kind,
                    "abort_percent": request.on_error.percent,
                    "dataset_version": request.dataset.version,
                    "mapping": None if request.mapping is None else Jsonb(request.mapping),
                    "decimal_mark": request.decimal,
                    "date_format": request.date_format,
                    "rerun_of": request.rerun_of,
                    "file_options": None
                    if request.file_options is None
                    else Jsonb(request.file_options),
                    **batch_origin(),
                },
            )
            await conn.execute(
                queries["insert_chunks"],
                {
                    "batch_id": batch_id,
                    "chunk_nos": list(range(len(bounds))),
                    "hash_froms": [b.hash_from for b in bounds],
                    "hash_tos": [b.hash_from for b in bounds[1:]] + [None],
                    "row_counts": [b.row_count for b in bounds],
                },
            )
            await defer_chunks(conn, batch_id, len(bounds), total)
        staged = True
    except errors.UniqueViolation:
        # Another request with the same Idempotency-Key committed first.
        existing = await _existing(conn, request)
        if existing is None:
            raise
        return existing
    finally:
        if second is not None and not staged:
            await second.drop()  # It was committed on its own, and the batch was not.
    return StagedBatch(batch_id, total, len(bounds))
