"""Undoing a batch: ``POST /api/v1/jobs/{id}/undo`` and ``importq undo ID``.

An undo is a batch of its own (type ``undo``), with chunks, reports, a notification and
an email like any other. Its rows are the rows the batch undone inserted or updated; its
chunk *n* takes back what chunk *n* of that batch wrote, over the same hash range:

- a row the batch inserted is deleted (``deleted``), and a row it updated gets its
  values back from the batch's undo log (``restored``), if the row is still as the batch
  left it;
- a row another batch or a user changed since, or deleted, is left alone and listed in
  the undo's failures report.

Invariants:

- :func:`start_undo` runs in one transaction of its own: the undo batch, its chunks and
  their jobs exist, and the batch undone is ``undone``, together or not at all. The batch
  undone is locked meanwhile, so of two undos asked at once one is refused, and the purge
  never drops the tables an undo is about to read.
- A batch is undone once at most (a unique index on ``undo_of``).
- What an undo reads (the staged rows, the results, the undo log) is kept as long as the
  batch's staged rows: a batch past the retention period cannot be undone.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row

from importq.errors import Refusal
from importq.ingest.staged_table import (
    SCHEMA,
    StagedTable,
    results_name,
    results_table,
    table_name,
)
from importq.operations.traces import batch_origin
from importq.pipeline.job_queue import JobQueue
from importq.pipeline.target_evolution import type_changes
from importq.rules.datasets import Dataset
from importq.sql import queries


@dataclass(frozen=True)
class StartedUndo:
    batch_id: uuid.UUID
    total_rows: int
    total_chunks: int


def _refusal(batch: dict[str, Any]) -> Refusal | None:
    """Why the batch cannot be undone, if it cannot."""
    if batch["type"] == "undo":
        return Refusal(409, "not_undoable", "An undo cannot itself be undone.")
    if batch["dry_run"]:
        return Refusal(409, "dry_run", "A dry run wrote nothing: there is nothing to undo.")
    if batch["status"] == "undone":
        return Refusal(
            409,
            "already_undone",
            "The batch is undone already.",
            batchId=str(batch["undone_by"]),
        )
    if batch["status"] not in ("completed", "failed", "cancelled"):
        return Refusal(
            409, "not_finished", f"The batch is {batch['status']}: undo it once it has ended."
        )
    if batch["expired"]:
        return Refusal(
            409,
            "expired",
            "What undoing the batch needs was purged after the retention period.",
        )
    if not batch["written"]:
        return Refusal(409, "nothing_to_undo", "The batch wrote no row: there is nothing to undo.")
    return None


async def start_undo(
    conn: AsyncConnection[Any],
    queue: JobQueue,
    dataset: Dataset,
    batch_id: uuid.UUID,
    *,
    initiator_id: int,
    locale: str,
    retention_days: int,
) -> StartedUndo:
    """Create the undo of batch ``batch_id`` and defer its chunks, in one transaction of
    its own; the batch becomes ``undone``. Refused (409) when it cannot be undone."""
    async with conn.transaction():
        # Shared with staging: a type change is not published while the undo starts.
        await conn.execute(queries["share_dataset"], {"dataset": dataset.name})
        changed = await type_changes(conn, dataset)
        if changed:
            raise Refusal(
                409,
                "outdated",
                f"The table of {dataset.name} changed since this batch ({'; '.join(changed)}): "
                "it cannot be undone.",
            )
        async with conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(
                queries["batch_to_undo"],
                {
                    "batch_id": batch_id,
                    "cutoff": datetime.now(UTC) - timedelta(days=retention_days),
                    # Their names as to_regclass reads them: plain, so needing no quotes.
                    "staged": f"{SCHEMA}.{table_name(batch_id)}",
                    "results": f"{SCHEMA}.{results_name(batch_id)}",
                },
            )
            batch = await cursor.fetchone()
        assert batch is not None, "the caller read the batch"
        refusal = _refusal(batch)
        if refusal is not None:
            raise refusal
        counted = await conn.execute(
            sql.SQL(queries["written_per_chunk"]).format(results=results_table(batch_id))
        )
        written = dict(await counted.fetchall())
        if None in written:
            raise Refusal(409, "expired", "The batch was imported before imports could be undone.")
        undo_id = uuid.uuid4()
        total_rows = sum(written.values())
        await conn.execute(StagedTable.of(batch_id, dataset, []).create_undo_log())
        await conn.execute(StagedTable.of(undo_id, dataset, []).create_results())
        params = {
            "id": undo_id,
            "undo_of": batch_id,
            "initiator_id": initiator_id,
            "locale": locale,
            "total_rows": total_rows,
            "total_chunks": len(written),
            "chunk_nos": list(written),
            "row_counts": list(written.values()),
            **batch_origin(),
        }
        await conn.execute(queries["insert_undo_batch"], params)
        await conn.execute(queries["insert_undo_chunks"], params)
        await conn.execute(queries["mark_undone"], {"batch_id": batch_id, "undo_id": undo_id})
        await queue.defer_chunks(conn, undo_id, len(written), total_rows, chunk_nos=list(written))
    return StartedUndo(undo_id, total_rows, len(written))
