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

import csv
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection, sql

from importq.ingest.staged_table import SCHEMA, results_name, results_table
from importq.sql import queries

CSV_HEADER = ("line", "outcome", "message", "outcome after", "message after")


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


async def write_moved_lines(
    conn: AsyncConnection[Any], batch_id: uuid.UUID, other_id: uuid.UUID, out: Path
) -> dict[str, int]:
    """Write the CSV of the lines that moved from batch ``batch_id``'s outcomes to
    ``other_id``'s into ``out``, streaming, and count the moves (``"<outcome>->
    <outcome>"``). Reads in the caller's transaction: one snapshot."""
    query = sql.SQL(queries["moved_lines"]).format(
        a=results_table(batch_id), b=results_table(other_id)
    )
    moved: Counter[str] = Counter()
    with out.open("w", encoding="utf-8-sig", newline="") as csv_file:
        csv.writer(csv_file, lineterminator="\r\n").writerow(CSV_HEADER)
        async with conn.cursor(name=f"compare_{batch_id.hex}") as cursor:
            await cursor.execute(query)
            while rows := await cursor.fetchmany(4096):
                for before, after, record in rows:
                    moved[f"{before}->{after}"] += 1
                    csv_file.write(record + "\r\n")
    return dict(sorted(moved.items()))
