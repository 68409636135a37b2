"""Comparing two runs of one upload (a batch and its rerun, or two reruns): which lines
moved from one outcome to another, counted by move, and a CSV of them with both runs'
messages.

Runs are compared line by line on their results tables, so both must be finished and
not purged. Outcomes are the results' own: ``inserted``, ``updated``, ``unchanged``,
``duplicate``, ``failure`` (and ``none`` for a line a run has no result for: its chunk
was cancelled before it ran). A line moves when its outcome differs: a failure whose
message alone changed has not moved (a rule change that frees a line moves it). The
CSV is stored beside the second batch's reports, as
``reports/<other>/compare-<batchId>.csv``, and a link to it expires as theirs do.
"""

from __future__ import annotations

import asyncio
import csv
import tempfile
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection, sql

from importq.ingest.staged_table import SCHEMA, results_name, results_table
from importq.sql import queries
from importq.storage import Storage

CSV_HEADER = ("line", "outcome", "message", "outcome after", "message after")


@dataclass(frozen=True)
class Comparison:
    #: ``"<outcome>-><outcome>"``: how many lines moved so.
    moved: dict[str, int]
    #: The stored CSV of the moved lines.
    path: str


def comparison_path(batch_id: uuid.UUID, other_id: uuid.UUID) -> str:
    return f"reports/{other_id}/compare-{batch_id}.csv"


async def results_kept(conn: AsyncConnection[Any], batch_id: uuid.UUID, other: uuid.UUID) -> bool:
    """Whether both batches' results are still kept (the purge drops them)."""
    cursor = await conn.execute(
        queries["results_exist"],
        {"a": f"{SCHEMA}.{results_name(batch_id)}", "b": f"{SCHEMA}.{results_name(other)}"},
    )
    row = await cursor.fetchone()
    return bool(row and row[0])


async def compare_runs(
    conn: AsyncConnection[Any],
    storage: Storage,
    scratch: Path,
    batch_id: uuid.UUID,
    other_id: uuid.UUID,
) -> Comparison:
    """Compare batch ``batch_id``'s results with ``other_id``'s, store the CSV of the
    lines that moved, and count the moves. Reads in the caller's transaction (one
    snapshot), streaming; the CSV is written in ``scratch`` first."""
    query = sql.SQL(queries["moved_lines"]).format(
        a=results_table(batch_id), b=results_table(other_id)
    )
    moved: Counter[str] = Counter()
    await asyncio.to_thread(scratch.mkdir, parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8-sig", newline="", dir=scratch, suffix=".csv"
    ) as out:
        csv.writer(out, lineterminator="\r\n").writerow(CSV_HEADER)
        async with conn.cursor(name=f"compare_{batch_id.hex}") as cursor:
            await cursor.execute(query)
            while rows := await cursor.fetchmany(4096):
                for before, after, record in rows:
                    moved[f"{before}->{after}"] += 1
                    out.write(record + "\r\n")
        out.flush()
        path = comparison_path(batch_id, other_id)
        await storage.put_file(
            path, Path(out.name), content_type="text/csv", download_name=Path(path).name
        )
    return Comparison(dict(sorted(moved.items())), path)
