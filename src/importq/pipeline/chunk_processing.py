"""Processing one chunk: validate its rows, de-duplicate them, insert them, and record
every row's outcome.

Invariants:

- The functions here own their transactions. Each opens one on the connection it is
  given, so the caller has nothing to commit.
- A chunk's work is all or nothing. :func:`process_chunk` does all of it in one
  transaction. A crash anywhere rolls all of it back, so a retry starts from a clean
  chunk.
- A chunk is finished once. It is locked first. A second delivery of its job waits on
  that lock, then finds the chunk done and does nothing.
- Every row of the chunk gets exactly one outcome: success, duplicate or failure.
- The chunk is marked done, and its tally added to the batch, in that same transaction.
- Its rows are counted for the metrics (:mod:`importq.operations.metrics`) only once
  that transaction has committed, by the outcomes it recorded, which are final: a dry
  run's under its own run. A checked batch's chunks count nothing: what they found may
  yet be written again or held, and the batch's rows are counted when it finishes
  (:mod:`importq.pipeline.aggregation`). The rows a cancel settles are counted as
  failures by the cancel's transaction, on the same terms.

The steps:

1. Screen the chunk's rows in SQL (:mod:`importq.rules.sql_screen`).
2. Read the rows the screen does not pass, with only the cells the row rules need.
   Check them in Python, and write the failures down in ``importq_failures``.
3. Run ``settle_chunk``, one statement that does every write. The first valid line of
   each key is inserted. When its key is stored already, that line is a duplicate
   instead, with the message "already exists". Every other valid row is a duplicate of
   that first line. Every row's result is recorded with its report record, as one row
   of arrays per outcome.
4. Mark the chunk done and add its tally to the batch.

Another batch may store one of the chunk's keys at the same moment. The plain insert
then fails, and the statement runs again with ``ON CONFLICT DO NOTHING``.

A database error in ``settle_chunk``, such as a value the column type refuses, is
tracked down to its rows. The rows the statement would insert are inserted in groups,
in savepoints that are always rolled back. A refused group is halved until single rows
remain. The rows refused alone become failures, and the statement runs again. The next
row of a refused row's key is then the one inserted, and it may be refused in turn.

:func:`fail_chunk` ends a chunk that kept failing. The same statement then records
every row as a failure.

:func:`cancel_chunks` ends the chunks a cancel kept from running, all in one statement
that reads none of their rows: the aggregation reports those rows, from the staged table.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import AsyncConnection, sql

from importq.ingest.staged_table import StagedTable, results_table
from importq.operations.metrics import SettledRows, count_chunk, count_rows
from importq.pipeline.batches import ChunkTally, count_finished_chunk, record_written_batch
from importq.pipeline.dataset_versions import DatasetCatalog
from importq.pipeline.job_queue import JobQueue
from importq.pipeline.row_refusals import for_the_log, refusal_message
from importq.pipeline.target_tables import ChunkStatements, chunk_statements
from importq.rules.datasets import Dataset
from importq.rules.row_rules import RowChecker, StagedRow
from importq.sql import queries

log = logging.getLogger(__name__)

# How many of a chunk's rows are held in memory at once. A chunk of any size streams
# through in slices of this many rows.
SLICE_ROWS = 5_000
# The failure of every row of a chunk that had not started when its batch was cancelled.
CANCELLED = "not imported: the import was cancelled"
# How many times in a row a chunk settles again because other batches stored its keys.
MAX_KEY_RACES = 100
# The failure of an update-only row whose key is not stored.
NOT_FOUND = "not found"
# The failures of an undo's row that is no longer as the batch undone left it.
GONE = "not undone: the row is no longer in the table"
CHANGED = "not undone: the row was changed after this import"
# The failure of every row of a chunk given up on (after its attempts, or its worker
# lost each time). What went wrong is for the operator: the log and the chunk's error.
NOT_PROCESSED = (
    "not imported: importq could not process this part of the upload (the service's log "
    "says why); send these rows again"
)
# The same for a row of an undo: it was left as it was.
NOT_UNDONE = (
    "not undone: importq could not process this part of the undo (the service's log says "
    "why); the row was left as it was"
)


async def _claim_chunk(
    conn: AsyncConnection[Any], batch_id: uuid.UUID, chunk_no: int
) -> dict[str, Any] | None:
    """Lock the chunk for this transaction.

    Returns None when the chunk has nothing left to do. That happens when an earlier
    delivery of its job finished it, or when its batch is no longer active.
    """
    cursor = await conn.execute(queries["lock_chunk"], {"batch_id": batch_id, "chunk_no": chunk_no})
    row = await cursor.fetchone()
    if row is None:
        return None
    names = [d.name for d in cursor.description or ()]
    chunk = dict(zip(names, row, strict=True))
    if chunk["status"] != "todo" or chunk["batch_status"] != "active":
        return None
    # Read now, not with the lock: a cancel may have committed while this waited.
    cursor = await conn.execute(queries["batch_stopped"], {"batch_id": batch_id})
    stopped = await cursor.fetchone()
    chunk["batch_stopped"] = bool(stopped and stopped[0])
    return chunk


def _statements(
    dataset: Dataset,
    batch_id: uuid.UUID,
    chunk: Mapping[str, Any],
    *,
    write: bool = False,
) -> ChunkStatements:
    """A chunk's statements. A checked batch's (``onError`` other than continue) write
    nothing, as a dry run's, unless ``write``: its chunks are written all at once, once
    every one is checked. ``dataset`` judges the chunk's batch
    (:meth:`~importq.pipeline.dataset_versions.DatasetCatalog.judging`)."""
    checked = chunk["on_error"] != "continue" and not write
    return _batch_statements(
        batch_id,
        dataset,
        tuple(chunk["header"]),
        chunk["dry_run"] or checked,
        chunk["mode"],
        chunk["undo_of"],
        # A dry run rerunning an insert does not see what the runs of its upload inserted.
        chunk["rerun_of"] if chunk["dry_run"] and chunk["mode"] == "insert" else None,
    )


@functools.lru_cache(maxsize=32)
def _batch_statements(
    batch_id: uuid.UUID,
    dataset: Dataset,
    header: tuple[str, ...],
    dry_run: bool,
    mode: str,
    undo_of: uuid.UUID | None,
    unseen_upload: uuid.UUID | None,
) -> ChunkStatements:
    """The statements of a batch's chunks. They are composed once per batch, because a
    worker runs many chunks of the same batch in a row. An undo's read the staged rows
    of the batch it undoes."""
    if undo_of is not None:
        staged = StagedTable.of(undo_of, dataset, list(header))
        return chunk_statements(staged, list(header), undo_results=results_table(batch_id))
    staged = StagedTable.of(batch_id, dataset, list(header))
    return chunk_statements(staged, list(header), dry_run, mode, unseen_upload=unseen_upload)


async def _bad_values(
    conn: AsyncConnection[Any], statements: ChunkStatements
) -> dict[str, list[str]]:
    """The values of the chunk's columns judged by value that their converter refuses."""
    if statements.judged_values is None:
        return {}
    cursor = await conn.execute(statements.judged_values)
    return statements.screen.bad_values(await cursor.fetchall())


async def _suspect_slices(
    conn: AsyncConnection[Any],
    statements: ChunkStatements,
    chunk: Mapping[str, Any],
    bad_values: Mapping[str, list[str]],
    slice_rows: int,
) -> AsyncIterator[list[StagedRow]]:
    """Yield the chunk's rows that the screen does not pass, a slice at a time.

    The rows come in line order, with the cells the rules read. They are streamed through
    a server-side cursor, so a chunk of any size never sits whole in memory.
    """
    name = f"chunk_{chunk['chunk_no']}"
    async with conn.cursor(name=name) as cursor:
        await cursor.execute(statements.suspect_rows, bad_values)
        while fetched := await cursor.fetchmany(slice_rows):
            yield [StagedRow(row[0], row[2:], row[1]) for row in fetched]


async def _write_failures(conn: AsyncConnection[Any], failures: Sequence[tuple[int, str]]) -> None:
    if not failures:
        return
    async with conn.cursor().copy(queries["copy_failures"]) as copy:
        copy.set_types(["int4", "text"])
        for row in failures:
            await copy.write_row(row)


def _bounds(chunk: Mapping[str, Any]) -> dict[str, Any]:
    """The chunk's hash range, as the statements over its rows take it."""
    return {"hash_from": chunk["hash_from"], "hash_to": chunk["hash_to"]}


async def _settle(
    conn: AsyncConnection[Any],
    statements: ChunkStatements,
    batch_id: uuid.UUID,
    chunk: Mapping[str, Any],
    give_up: str | None = None,
) -> ChunkTally:
    """Settle the chunk's rows and return its tally.

    Each try runs in a savepoint, so a database error leaves the chunk's transaction
    usable. When another batch stores one of the chunk's keys meanwhile, insert mode runs
    its guarded statement instead; an update mode runs again from the start, locking the
    stored rows anew (that key's among them), so that it updates that key's row.
    """
    params = {
        "batch_id": batch_id,
        "chunk_no": chunk["chunk_no"],
        "give_up": give_up,
        "insert_new": chunk["mode"] == "upsert",
        "not_found": NOT_FOUND,
        "undone": chunk["undo_of"],
        "gone": GONE,
        "changed": CHANGED,
        **_bounds(chunk),
    }
    updates = None if give_up is not None else statements.updates
    undo = None if give_up is not None else statements.undo

    async def run(*steps: sql.Composed) -> dict[str, int]:
        async with conn.transaction():
            for step in steps[:-1]:
                await conn.execute(step, params)
            cursor = await conn.execute(steps[-1], params)
            return dict(await cursor.fetchall())

    for attempt in range(MAX_KEY_RACES + 1):
        try:
            if undo is not None:
                counts = await run(undo.lock, undo.settle)
            elif updates is not None:
                counts = await run(updates.lock_stored, updates.settle)
            else:
                counts = await run(statements.settle)
            break
        except psycopg.errors.UniqueViolation as error:
            if error.diag.constraint_name != statements.dedup_index or attempt == MAX_KEY_RACES:
                # Another unique index of the table refuses a value: the caller finds the
                # row (_refuse_bad_rows). Or races without end: the job tries again later.
                raise
            log.info(
                "chunk %s of batch %s: a key was stored meanwhile (%s); settling again",
                chunk["chunk_no"],
                batch_id,
                error.diag.message_detail,
            )
            if updates is None:
                counts = await run(statements.settle_guarded)
                break
    return ChunkTally.of_outcomes(counts)


async def _refuse_bad_rows(
    conn: AsyncConnection[Any],
    statements: ChunkStatements,
    dataset: Dataset,
    batch_id: uuid.UUID,
    chunk: Mapping[str, Any],
) -> int:
    """Record as failures the rows of settle_chunk's insert that the target table
    refuses. Returns how many were found.

    The rows are inserted in groups, always rolled back. A group the table refuses is
    halved until each row it refuses stands alone. Each of those becomes a failure that
    says why in the dataset's terms (:mod:`importq.pipeline.row_refusals`). A few refused
    rows cost a few dozen inserts, not one per row.
    """
    cursor = await conn.execute(statements.lines_to_insert, _bounds(chunk))
    pending = [[line for (line,) in await cursor.fetchall()]]
    found = 0
    while pending:
        lines = pending.pop()
        try:
            async with conn.transaction(force_rollback=True):
                params = {"batch_id": batch_id, "lines": lines, "chunk_no": chunk["chunk_no"]}
                if chunk["mode"] != "update-only":  # whose new keys are not found, not inserted
                    await conn.execute(statements.probe, params)
                if statements.updates is not None:
                    await conn.execute(statements.updates.probe, params)
        except (psycopg.DataError, psycopg.IntegrityError) as error:
            if len(lines) > 1:
                middle = len(lines) // 2
                pending += [lines[middle:], lines[:middle]]
                continue
            # One line a refused row: its failure record says it; not for the default level.
            log.debug("batch %s line %s refused: %s", batch_id, lines[0], for_the_log(error))
            await conn.execute(
                queries["add_failure"],
                {"line": lines[0], "message": refusal_message(error, dataset)},
            )
            found += 1
    return found


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
    counted = await count_finished_chunk(conn, batch_id, tally)
    if counted.is_last:
        await queue.defer_completion_check(conn, batch_id)
    elif counted.aborted:
        # Too many failures: the chunks that have not started are not run. Only a checked
        # batch aborts, and its rows are counted when it finishes.
        await cancel_chunks(conn, queue, batch_id)


def _settled_rows(
    dataset: str, on_error: str, dry_run: bool, tally: ChunkTally
) -> SettledRows | None:
    """Rows of a batch a transaction settled, to count once it commits; None for a
    checked batch's (``on_error`` other than continue), counted when the batch finishes."""
    if on_error != "continue":
        return None
    return SettledRows(dataset, dry_run, tally)


async def cancel_chunks(
    conn: AsyncConnection[Any], queue: JobQueue, batch_id: uuid.UUID, chunk_no: int | None = None
) -> SettledRows | None:
    """Settle a cancelled batch's chunks that have not started, in the caller's
    transaction, without running them: ``todo → cancelled``, every row a failure,
    :data:`CANCELLED`. The aggregation reports those rows from the staged table.

    With ``chunk_no``, only that chunk, which the caller holds. Without, every chunk of
    the batch that no transaction holds: a running one finishes. When that leaves no
    chunk to run, the completion check is deferred.

    Returns the rows settled, for the caller to count once its transaction has
    committed; None when there are none, or they are a checked batch's.
    """
    cursor = await conn.execute(
        queries["cancel_chunks"], {"batch_id": batch_id, "chunk_no": chunk_no}
    )
    row = await cursor.fetchone()
    if row is None:
        return None
    is_last, rows, dataset, on_error, dry_run = row
    if is_last:
        await queue.defer_completion_check(conn, batch_id)
    return _settled_rows(dataset, on_error, dry_run, ChunkTally(failures=rows))


async def _prepare(
    conn: AsyncConnection[Any], statements: ChunkStatements, chunk: Mapping[str, Any]
) -> None:
    """The chunk's rows and its failures, in temporary tables of this transaction."""
    await conn.execute(queries["chunk_settings"])
    await conn.execute(queries["drop_chunk_tables"])
    await conn.execute(statements.create_chunk, _bounds(chunk))
    await conn.execute(queries["create_failures"])
    if statements.create_dry_run is not None:
        await conn.execute(statements.create_dry_run)
    if statements.updates is not None:
        await conn.execute(statements.updates.create_stored)
    if statements.undo is not None:
        params = {"chunk_no": chunk["chunk_no"]}
        await conn.execute(statements.undo.plan, params)
        await conn.execute(statements.undo.keep_planned)
        await conn.execute(statements.undo.create_rows)


async def process_chunk(
    conn: AsyncConnection[Any],
    queue: JobQueue,
    datasets: DatasetCatalog,
    batch_id: uuid.UUID,
    chunk_no: int,
    *,
    slice_rows: int = SLICE_ROWS,
) -> bool:
    """Do a chunk's work in one transaction of its own.

    A chunk whose batch was cancelled before it started writes nothing to the target:
    each of its rows becomes a failure, :data:`CANCELLED`. One that started finishes.
    Returns False when there was nothing to do.
    """
    started = time.monotonic()
    async with conn.transaction():
        chunk = await _claim_chunk(conn, batch_id, chunk_no)
        if chunk is None:
            return False
        if chunk["batch_stopped"]:
            # Not started when the batch was cancelled or aborted (its job came first, or
            # the cancel found it held by a failing attempt): its rows are reported, not run.
            settled = await cancel_chunks(conn, queue, batch_id, chunk_no)
            worked = None
        else:
            dataset = await datasets.judging(conn, chunk)
            statements = _statements(dataset, batch_id, chunk)
            tally = await _work(conn, statements, dataset, batch_id, chunk, slice_rows)
            await _finish(conn, queue, batch_id, chunk_no, tally)
            settled = _settled_rows(dataset.name, chunk["on_error"], chunk["dry_run"], tally)
            worked = dataset.name
    if worked is not None:
        count_chunk(worked, time.monotonic() - started)
    count_rows(settled)
    return True


async def _work(
    conn: AsyncConnection[Any],
    statements: ChunkStatements,
    dataset: Dataset,
    batch_id: uuid.UUID,
    chunk: Mapping[str, Any],
    slice_rows: int = SLICE_ROWS,
) -> ChunkTally:
    """Judge and settle a chunk's rows, in the caller's transaction; its tally. An undo's
    rows were judged when they were imported, and what they wrote is taken back as it is."""
    await _prepare(conn, statements, chunk)
    if statements.undo is not None:
        return await _settle(conn, statements, batch_id, chunk)
    checker = RowChecker(dataset, statements.read_positions)
    bad_values = await _bad_values(conn, statements)
    async for rows in _suspect_slices(conn, statements, chunk, bad_values, slice_rows):
        await _write_failures(conn, checker.failures(rows))
    while True:
        try:
            return await _settle(conn, statements, batch_id, chunk)
        except (psycopg.DataError, psycopg.IntegrityError) as error:
            log.info(
                "chunk %s of batch %s: finding the rows refused: %s",
                chunk["chunk_no"],
                batch_id,
                for_the_log(error),
            )
            # A refused row makes the next row of its key the one to insert, and that row
            # may be refused too. So repeat until the statement goes through, or until no
            # row alone is refused.
            if not await _refuse_bad_rows(conn, statements, dataset, batch_id, chunk):
                raise


async def _give_up(
    conn: AsyncConnection[Any],
    statements: ChunkStatements,
    batch_id: uuid.UUID,
    chunk: Mapping[str, Any],
) -> ChunkTally:
    """Settle every row of the chunk as a failure, :data:`NOT_PROCESSED` (an undo's,
    :data:`NOT_UNDONE`), in the caller's transaction; its tally."""
    await _prepare(conn, statements, chunk)
    message = NOT_PROCESSED if chunk["undo_of"] is None else NOT_UNDONE
    return await _settle(conn, statements, batch_id, chunk, give_up=message)


class _TooManyFailures(Exception):
    """Rolls back a checked batch's writes: they failed more rows than it allows."""


async def write_checked_batch(
    conn: AsyncConnection[Any],
    datasets: DatasetCatalog,
    batch_id: uuid.UUID,
    passes: Callable[[int], bool],
) -> bool:
    """Write every chunk of a checked batch, in one transaction of its own, in chunk order
    (which is the dedup index's order, as each chunk locks and inserts in it). The
    checking run's row results are replaced, and the counters set, by the writes'.

    ``passes(failures)`` says whether the batch may be written with that many failed
    rows: a row can still fail here (a key another batch deleted meanwhile, a value the
    table's trigger refuses). If it may not, everything is rolled back and this returns
    False. A chunk given up on while checked is given up on again, as it was. True too
    when another run of the aggregation wrote or held the batch first (the batch row,
    locked first, says so).

    In an update mode, every stored row of the batch's keys is locked first, in the dedup
    index's order: the chunks' inserts then wait on nothing but other inserts.
    """
    try:
        async with conn.transaction():
            cursor = await conn.execute(queries["checked_batch_to_write"], {"batch_id": batch_id})
            if await cursor.fetchone() is None:
                return True
            clear = sql.SQL(queries["clear_results"]).format(results=results_table(batch_id))
            await conn.execute(clear)
            cursor = await conn.execute(queries["chunks_to_write"], {"batch_id": batch_id})
            names = [d.name for d in cursor.description or ()]
            chunks = [dict(zip(names, row, strict=True)) for row in await cursor.fetchall()]
            if chunks:
                dataset = await datasets.judging(conn, chunks[0])
                updates = _statements(dataset, batch_id, chunks[0], write=True).updates
                if updates is not None:
                    await conn.execute(updates.lock_batch_keys)
            total = ChunkTally()
            for chunk in chunks:
                statements = _statements(dataset, batch_id, chunk, write=True)
                if chunk["status"] == "failed":
                    total += await _give_up(conn, statements, batch_id, chunk)
                else:
                    total += await _work(conn, statements, dataset, batch_id, chunk)
            if not passes(total.failures):
                raise _TooManyFailures
            await record_written_batch(conn, batch_id, total)
    except _TooManyFailures:
        return False
    return True


async def record_attempt(
    conn: AsyncConnection[Any], batch_id: uuid.UUID, chunk_no: int, error: str
) -> int:
    """Count a failed or lost attempt, in a transaction of its own.

    Returns the attempts so far. Returns 0 when nothing was counted, because the chunk is
    finished or another transaction holds it.
    """
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
    datasets: DatasetCatalog,
    batch_id: uuid.UUID,
    chunk_no: int,
    reason: str,
) -> bool:
    """Give up on a chunk, in a transaction of its own.

    Every row becomes a failure with :data:`NOT_PROCESSED` (an undo's, :data:`NOT_UNDONE`);
    ``reason``, for the operator, is kept with the chunk. When its batch was cancelled
    meanwhile, the rows are :data:`CANCELLED` instead, as for a chunk that never started.
    Returns False when there was nothing to do.
    """
    async with conn.transaction():
        chunk = await _claim_chunk(conn, batch_id, chunk_no)
        if chunk is None:
            return False
        if chunk["batch_stopped"]:
            # Its attempts were all undone, and the batch is cancelled meanwhile: its rows
            # were never imported, as for a chunk that never started.
            settled = await cancel_chunks(conn, queue, batch_id, chunk_no)
        else:
            dataset = await datasets.judging(conn, chunk)
            statements = _statements(dataset, batch_id, chunk)
            tally = await _give_up(conn, statements, batch_id, chunk)
            failed = dataclasses.replace(tally, failed=True)
            await _finish(conn, queue, batch_id, chunk_no, failed, error=reason)
            settled = _settled_rows(dataset.name, chunk["on_error"], chunk["dry_run"], tally)
    count_rows(settled)
    return True
