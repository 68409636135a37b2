"""Staging an upload: COPY its rows, cut the chunks, create the batch, defer the jobs.

``stage_batch`` owns its transaction, and everything happens inside it: the batch's
staged table is created (:mod:`importq.staged`), the rows are COPYed into it (by
PostgreSQL's own CSV reader when the file is clean enough, else as importq parses them),
its hash index is built, the chunk boundaries are read from one ordered scan of that
index, and the batch, its chunks and one ``process_chunk`` job per chunk are inserted.
When it returns, the batch is durable and every row of it will end in exactly one
report; when it raises, nothing of the upload remains (the table too: PostgreSQL's DDL
is transactional).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import AsyncConnection, errors

from importq.chunking import ChunkBound, ChunkCutter, effective_chunk_size
from importq.datasets import Dataset, HeaderMatch
from importq.errors import Refusal
from importq.row_rules import Value
from importq.sql import queries
from importq.staged import StagedTable
from importq.uploads import CsvSource, NotClean, ParsedUpload, empty_upload

log = logging.getLogger(__name__)

YIELD_EVERY = 5_000

# Defers the chunk jobs of a new batch on the staging connection (see worker.tasks).
DeferChunks = Callable[[AsyncConnection[Any], uuid.UUID, int], Coroutine[Any, Any, None]]


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
    #: With an idempotency key: what the request asked for (see ``api.imports``).
    request_digest: bytes | None = None


def check_header(dataset: Dataset, header: list[str]) -> HeaderMatch:
    """Match the header; refuse duplicates and missing mandatory columns.

    Unknown columns are ignored; :func:`header_warnings` lists them for the batch.
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
    """The batch an earlier request with the same Idempotency-Key created, if any; a
    different request reusing the key is refused (422)."""
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


def _unreadable(cells: Sequence[Value]) -> tuple[list[Value], str] | None:
    """Cells PostgreSQL cannot keep as text, cleaned, with the problem; None when fine."""
    if any(cell and "\x00" in cell for cell in cells):
        return [cell.replace("\x00", "") if cell else cell for cell in cells], (
            "a value contains a NUL character"
        )
    try:
        for cell in cells:
            if cell:
                cell.encode()
    except UnicodeEncodeError:  # a lone surrogate from a JSON body
        cleaned = [cell.encode("utf-8", "replace").decode() if cell else cell for cell in cells]
        return cleaned, "a value is not valid Unicode text"
    return None


async def _create_tables(conn: AsyncConnection[Any], table: StagedTable) -> None:
    """The batch's staged and results tables, in the caller's (sub)transaction: the one
    that COPYs the rows, as COPY … FREEZE requires."""
    for statement in table.create():
        await conn.execute(statement)


async def _copy_rows(conn: AsyncConnection[Any], table: StagedTable, upload: ParsedUpload) -> int:
    """Create the batch's tables and COPY the rows importq read into the staged table;
    how many there were."""
    await _create_tables(conn, table)
    width = table.width
    padding: list[Value] = [None] * width
    total = 0
    async with conn.cursor().copy(table.copy_rows()) as copy:
        copy.set_types(table.copy_types())
        for line, values, problem in upload.rows:
            cells = list(values[:width]) if len(values) >= width else [*values, *padding][:width]
            extra = list(values[width:]) or None
            unreadable = _unreadable([*cells, *(extra or ())])
            if unreadable is not None:
                cleaned, reason = unreadable
                cells, extra = cleaned[:width], cleaned[width:] or None
                problem = problem or reason
            await copy.write_row((line, problem, extra, *cells))
            total += 1
            if total % YIELD_EVERY == 0:
                # Parsing is CPU-bound: let the event loop run (worker heartbeats, other
                # requests) so a big upload never makes its process look dead.
                await asyncio.sleep(0)
    return total


async def _copy_clean_csv(
    conn: AsyncConnection[Any], table: StagedTable, source: CsvSource
) -> int | None:
    """COPY a CSV file's records straight into the staged table, parsed by PostgreSQL;
    how many there were, or None (nothing staged) when the file is not clean enough for
    PostgreSQL to read it as importq would (see :class:`CsvSource`)."""
    position = source.binary.tell()
    try:
        # The tables are created in the savepoint, for the COPY's FREEZE: a file that
        # is not clean after all leaves nothing behind.
        async with conn.transaction(), conn.cursor() as cursor:
            await _create_tables(conn, table)
            async with cursor.copy(table.copy_csv(source.delimiter)) as copy:
                for block in source.blocks():
                    await copy.write(block)
            total = cursor.rowcount
    except (NotClean, psycopg.DataError) as error:
        log.info("batch %s is read by importq: %s", table.batch_id, error)
        source.binary.seek(position)  # where the Python reader left it
        return None
    limits = source.limits
    if total > limits.max_rows:
        raise limits.too_many_rows()
    cursor = await conn.execute(table.first_long_cell(), {"limit": limits.max_cell_chars})
    long = await cursor.fetchone()
    if long is not None and long[0] is not None:
        raise limits.cell_too_long(long[0])
    return total


async def _cut_chunks(
    conn: AsyncConnection[Any], table: StagedTable, size: int
) -> list[ChunkBound]:
    """One ordered scan of the staged hashes, streamed through a server-side cursor."""
    cutter = ChunkCutter(size)
    async with conn.cursor(name=f"hashes_{table.batch_id.hex}") as cursor:
        await cursor.execute(table.hashes_in_order())
        while hashes := await cursor.fetchmany(20_000):
            for (value,) in hashes:
                cutter.add(value)
    return cutter.bounds()


async def stage_batch(
    conn: AsyncConnection[Any],
    request: BatchRequest,
    upload: ParsedUpload,
    *,
    chunk_size: int,
    max_chunks: int,
    defer_chunks: DeferChunks,
) -> StagedBatch:
    """Stage an upload as a new active batch (see the module docstring). Owns the transaction."""
    match = check_header(request.dataset, upload.header)
    existing = await _existing(conn, request)
    if existing is not None:
        return existing
    batch_id = uuid.uuid4()
    table = StagedTable(batch_id, len(upload.header), request.dataset, dict(match.positions))
    try:
        async with conn.transaction():
            total = None
            if upload.source is not None:
                total = await _copy_clean_csv(conn, table, upload.source)
            if total is None:
                total = await _copy_rows(conn, table, upload)
            if total == 0:
                raise empty_upload()
            await conn.execute(queries["sort_memory"])
            size = effective_chunk_size(total, chunk_size, max_chunks)
            await conn.execute(table.index())
            bounds = await _cut_chunks(conn, table, size)
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
            await defer_chunks(conn, batch_id, len(bounds))
    except errors.UniqueViolation:
        # Another request with the same Idempotency-Key committed first.
        existing = await _existing(conn, request)
        if existing is None:
            raise
        return existing
    return StagedBatch(batch_id, total, len(bounds))
