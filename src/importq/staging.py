"""Staging an upload: COPY its rows, cut the chunks, create the batch, defer the jobs.

``stage_batch`` owns its transaction, and everything happens inside it: the rows are
COPYed into ``staged_rows`` as they are parsed (each with the hash of its normalised
dedup key), the chunk boundaries are read from one ordered scan of those hashes, and the
batch, its chunks and one ``process_chunk`` job per chunk are inserted. When it returns,
the batch is durable and every row of it will end in exactly one report; when it raises,
nothing of the upload remains.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from psycopg import AsyncConnection, errors

from importq.chunking import ChunkBound, ChunkCutter, effective_chunk_size
from importq.datasets import Dataset, HeaderMatch
from importq.errors import Refusal
from importq.row_rules import Value, key_hash, row_key
from importq.sql import queries
from importq.uploads import ParsedUpload, empty_upload

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
    if request.idempotency_key is None:
        return None
    cursor = await conn.execute(
        queries["find_batch_by_idempotency_key"],
        {"initiator_id": request.initiator_id, "idempotency_key": request.idempotency_key},
    )
    row = await cursor.fetchone()
    return None if row is None else StagedBatch(row[0], row[1], row[2], created=False)


def encode_values(values: Sequence[Value]) -> str:
    """A row's values as staged_rows stores them: a JSON array. COPY sends it as text
    (the binary wire format of ``json`` is its text); orjson is ~10x the stdlib here."""
    return orjson.dumps(values).decode()


def _encoded(values: Sequence[Value]) -> tuple[str, str | None]:
    """A row's values as stored, and a problem when PostgreSQL could not keep them as text."""
    try:
        encoded = encode_values(values)
    except orjson.JSONEncodeError:  # a lone surrogate from a JSON body
        cleaned = [v.encode("utf-8", "replace").decode() if v else v for v in values]
        return encode_values(cleaned), "a value is not valid Unicode text"
    # orjson writes NUL as \u0000; confirm on the values (the escape may be literal text).
    if "\\u0000" in encoded and any("\x00" in v for v in values if v):
        cleaned = [v.replace("\x00", "") if v else v for v in values]
        return encode_values(cleaned), "a value contains a NUL character"
    return encoded, None


async def _copy_rows(
    conn: AsyncConnection[Any],
    batch_id: uuid.UUID,
    upload: ParsedUpload,
    key_positions: list[int | None],
) -> int:
    total = 0
    async with conn.cursor().copy(queries["copy_staged_rows"]) as copy:
        copy.set_types(["uuid", "int4", "int8", "text", "text"])
        for line, values, problem in upload.rows:
            encoded, unreadable = _encoded(values)
            problem = problem or unreadable
            key = None if problem else row_key(values, key_positions)
            await copy.write_row((batch_id, line, key_hash(key, line), problem, encoded))
            total += 1
            if total % YIELD_EVERY == 0:
                # Parsing is CPU-bound: let the event loop run (worker heartbeats, other
                # requests) so a big upload never makes its process look dead.
                await asyncio.sleep(0)
    return total


async def _cut_chunks(
    conn: AsyncConnection[Any], batch_id: uuid.UUID, size: int
) -> list[ChunkBound]:
    """One ordered scan of the staged hashes, streamed through a server-side cursor."""
    cutter = ChunkCutter(size)
    async with conn.cursor(name=f"hashes_{batch_id.hex}") as cursor:
        await cursor.execute(queries["staged_hashes_in_order"], {"batch_id": batch_id})
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
    positions = match.positions
    existing = await _existing(conn, request)
    if existing is not None:
        return existing
    key_positions = [positions.get(name) for name in request.dataset.dedup_key]
    batch_id = uuid.uuid4()
    try:
        async with conn.transaction():
            total = await _copy_rows(conn, batch_id, upload, key_positions)
            if total == 0:
                raise empty_upload()
            size = effective_chunk_size(total, chunk_size, max_chunks)
            bounds = await _cut_chunks(conn, batch_id, size)
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
