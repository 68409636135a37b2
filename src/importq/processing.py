"""Processing one chunk: validate, de-duplicate, insert, record every row's outcome.

:func:`process_chunk` owns one transaction that does all of a chunk's work: lock the
chunk (a second delivery of the job waits, then sees it done and does nothing), read its
rows in line order, apply the row rules, insert the winners in dedup-index order with
``ON CONFLICT DO NOTHING`` (a key already stored makes the row a duplicate), COPY one
row result per row, mark the chunk done and add its tally to the batch. A crash anywhere
rolls all of it back, so a retry starts from a clean chunk.

A database error on the fast path (a value the column type refuses…) falls back to one
savepoint per row, so the bad row fails alone. :func:`fail_chunk` is the end of a chunk
that kept failing: every row of it is recorded as a failure with the reason.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import AsyncConnection

from importq.batches import ChunkTally, count_finished_chunk
from importq.datasets import Dataset
from importq.queue import JobQueue
from importq.reports import RecordFormatter, ReportLayout
from importq.row_rules import Decider, Rejected, StagedRow, Winner, normalise
from importq.sql import queries
from importq.targets import target_statements

log = logging.getLogger(__name__)

ALREADY_EXISTS = "already exists"
# Rows of a chunk held in memory at once; a chunk of any size streams through.
SLICE_ROWS = 5_000
ResultRow = tuple[int, str, str | None, str | None, Sequence[str | None]]


async def _claim_chunk(
    conn: AsyncConnection[Any], batch_id: uuid.UUID, chunk_no: int
) -> dict[str, Any] | None:
    """Lock the chunk for this transaction; None when it has nothing left to do (already
    finished by an earlier delivery of its job, or its batch is no longer active)."""
    cursor = await conn.execute(queries["lock_chunk"], {"batch_id": batch_id, "chunk_no": chunk_no})
    row = await cursor.fetchone()
    if row is None:
        return None
    names = [d.name for d in cursor.description or ()]
    chunk = dict(zip(names, row, strict=True))
    if chunk["status"] != "todo" or chunk["batch_status"] != "active":
        return None
    return chunk


async def _chunk_slices(
    conn: AsyncConnection[Any],
    batch_id: uuid.UUID,
    chunk: Mapping[str, Any],
    slice_rows: int = SLICE_ROWS,
) -> AsyncIterator[tuple[list[StagedRow], dict[int, int]]]:
    """A chunk's staged rows in line order, a slice at a time, with their key hashes.

    Streamed through a server-side cursor, so a big chunk never sits whole in memory.
    """
    name = f"chunk_{batch_id.hex}_{chunk['chunk_no']}"
    async with conn.cursor(name=name) as cursor:
        await cursor.execute(
            queries["chunk_rows"],
            {"batch_id": batch_id, "hash_from": chunk["hash_from"], "hash_to": chunk["hash_to"]},
        )
        while fetched := await cursor.fetchmany(slice_rows):
            rows: list[StagedRow] = []
            hashes: dict[int, int] = {}
            for line, hashed, values, problem in fetched:
                rows.append(StagedRow(line, values, problem))
                hashes[line] = hashed
            yield rows, hashes


async def _insert_winners(
    conn: AsyncConnection[Any],
    dataset: Dataset,
    batch_id: uuid.UUID,
    winners: Sequence[Winner],
    hashes: Mapping[int, int],
) -> tuple[dict[int, str], dict[int, str]]:
    """Insert the winners; return target ids by line, and database failures by line.

    The winners are COPYed into a temporary table, then moved with one INSERT … SELECT
    in dedup-index order. If that INSERT hits a database error, each row is moved in a
    savepoint of its own so the bad one fails alone.
    """
    if not winners:
        return {}, {}
    statements = target_statements(dataset)
    await conn.execute(statements.create_incoming)
    await conn.execute(statements.clear_incoming)
    async with conn.cursor().copy(statements.copy_incoming) as copy:
        copy.set_types(list(statements.copy_types))
        for winner in winners:
            await copy.write_row((hashes[winner.line], winner.line, *winner.record))
    try:
        async with conn.transaction():
            cursor = await conn.execute(statements.insert, {"batch_id": batch_id, "line": None})
            return {line: str(target) for line, target in await cursor.fetchall()}, {}
    except (psycopg.DataError, psycopg.IntegrityError) as error:
        log.info("chunk insert of batch %s fell back to row by row: %s", batch_id, error)
    inserted: dict[int, str] = {}
    failed: dict[int, str] = {}
    for winner in winners:
        try:
            async with conn.transaction():
                cursor = await conn.execute(
                    statements.insert, {"batch_id": batch_id, "line": winner.line}
                )
                row = await cursor.fetchone()
        except (psycopg.DataError, psycopg.IntegrityError) as error:
            detail = error.diag.message_primary or str(error)
            failed[winner.line] = f"database refused the row: {detail}"
            continue
        if row is not None:
            inserted[winner.line] = str(row[1])
    return inserted, failed


async def _write_results(
    conn: AsyncConnection[Any],
    batch_id: uuid.UUID,
    formatter: RecordFormatter,
    results: Sequence[ResultRow],
) -> None:
    """COPY one row result per row, each with the CSV record its report will print."""
    record = formatter.record
    async with conn.cursor().copy(queries["copy_row_results"]) as copy:
        copy.set_types(["uuid", "int4", "text", "text", "text", "text"])
        for line, outcome, message, target_id, values in results:
            await copy.write_row(
                (
                    batch_id,
                    line,
                    outcome,
                    message,
                    target_id,
                    record(line, outcome, message, target_id, values),
                )
            )


async def _finish(
    conn: AsyncConnection[Any],
    queue: JobQueue,
    batch_id: uuid.UUID,
    chunk_no: int,
    tally: ChunkTally,
    error: str | None = None,
) -> None:
    await conn.execute(
        queries["finish_chunk"],
        {
            "batch_id": batch_id,
            "chunk_no": chunk_no,
            "status": "failed" if tally.failed else "done",
            "error": error,
        },
    )
    if await count_finished_chunk(conn, batch_id, tally):
        await queue.defer_completion_check(conn, batch_id)


def _results(
    dataset: Dataset,
    positions: Mapping[str, int],
    rows: Sequence[StagedRow],
    winners: Sequence[Winner],
    rejected: Sequence[Rejected],
    inserted: Mapping[int, str],
    refused: Mapping[int, str],
) -> list[ResultRow]:
    """One result per row of a slice, in line order."""
    values_by_line = {row.line: row.values for row in rows}
    report_positions = [positions.get(name) for name in dataset.report_columns]
    results: list[ResultRow] = []
    for winner in winners:
        uploaded = values_by_line[winner.line]
        if winner.line in inserted:
            report = [normalise(uploaded[p]) if p is not None else None for p in report_positions]
            results.append(
                (winner.line, "success", None, inserted[winner.line], [*winner.key, *report])
            )
        elif winner.line in refused:
            results.append((winner.line, "failure", refused[winner.line], None, list(uploaded)))
        else:
            results.append((winner.line, "duplicate", ALREADY_EXISTS, None, list(uploaded)))
    results.extend(
        (r.line, r.outcome, r.message, None, list(values_by_line[r.line])) for r in rejected
    )
    results.sort(key=lambda result: result[0])
    return results


async def process_chunk(
    conn: AsyncConnection[Any],
    queue: JobQueue,
    datasets: Mapping[str, Dataset],
    batch_id: uuid.UUID,
    chunk_no: int,
    *,
    slice_rows: int = SLICE_ROWS,
) -> bool:
    """Do a chunk's work in one transaction; False when there was nothing to do."""
    async with conn.transaction():
        chunk = await _claim_chunk(conn, batch_id, chunk_no)
        if chunk is None:
            return False
        dataset = datasets[chunk["dataset"]]
        positions = dataset.match_header(chunk["header"]).positions
        formatter = RecordFormatter(ReportLayout.for_batch(dataset, chunk["header"]))
        decider = Decider(dataset, positions)
        outcomes: Counter[str] = Counter()
        async for rows, hashes in _chunk_slices(conn, batch_id, chunk, slice_rows):
            winners, rejected = decider.decide(rows)
            inserted, refused = await _insert_winners(conn, dataset, batch_id, winners, hashes)
            results = _results(dataset, positions, rows, winners, rejected, inserted, refused)
            await _write_results(conn, batch_id, formatter, results)
            outcomes.update(result[1] for result in results)
        tally = ChunkTally(
            successes=outcomes["success"],
            duplicates=outcomes["duplicate"],
            failures=outcomes["failure"],
        )
        await _finish(conn, queue, batch_id, chunk_no, tally)
    return True


async def record_attempt(
    conn: AsyncConnection[Any], batch_id: uuid.UUID, chunk_no: int, error: str
) -> int:
    """Count a failed or lost attempt in its own transaction; the attempts so far, or 0
    when nothing was counted (the chunk is finished, or another transaction holds it)."""
    async with conn.transaction():
        cursor = await conn.execute(
            queries["count_chunk_attempt"],
            {"batch_id": batch_id, "chunk_no": chunk_no, "error": error},
        )
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def fail_chunk(
    conn: AsyncConnection[Any],
    queue: JobQueue,
    datasets: Mapping[str, Dataset],
    batch_id: uuid.UUID,
    chunk_no: int,
    reason: str,
) -> bool:
    """Give up on a chunk: every row becomes a failure with ``reason``. Owns the transaction."""
    async with conn.transaction():
        chunk = await _claim_chunk(conn, batch_id, chunk_no)
        if chunk is None:
            return False
        message = f"the chunk could not be processed: {reason}"
        layout = ReportLayout.for_batch(datasets[chunk["dataset"]], chunk["header"])
        formatter = RecordFormatter(layout)
        failures = 0
        async for rows, _ in _chunk_slices(conn, batch_id, chunk):
            await _write_results(
                conn,
                batch_id,
                formatter,
                [(r.line, "failure", message, None, list(r.values)) for r in rows],
            )
            failures += len(rows)
        tally = ChunkTally(failures=failures, failed=True)
        await _finish(conn, queue, batch_id, chunk_no, tally, error=reason)
    return True
