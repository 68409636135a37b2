"""Aggregation: the one run per batch that writes the reports and announces the end.

Invariants:

- Only the winner of the completion guard (``active → aggregating``) runs it.
- A batch is finished only when its row results account for every line exactly once.
- The final transition and the messages it owes commit together, or not at all.
- Running it again is safe. Uploads replace what a failed run stored. The final
  transition is guarded, so a second run that loses it creates nothing.

The steps:

1. Stream the batch's row results, in line order, into the reports, and check that they
   account for every line.
2. Store the reports.
3. In one transaction, move the batch ``aggregating → completed | failed | cancelled`` with its
   result. Create the ``IMPORT_COMPLETE`` notification and the email delivery, and
   defer ``send_email``. When the batch has a callback URL, also create the webhook
   delivery and defer ``deliver_webhook``.
4. Once that has committed, count a checked batch's rows for the metrics, as the reports
   give them: its chunks counted none.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import tempfile
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from psycopg import AsyncConnection, sql
from psycopg_pool import PoolTimeout

from importq.delivery.mailer import message_id
from importq.delivery.webhooks import WEBHOOK, delivery_id
from importq.ingest.staged_table import StagedTable, results_table
from importq.job_json import Summary
from importq.operations.metrics import SettledRows, count_delivery, count_rows
from importq.pipeline import batches
from importq.pipeline.batches import ChunkTally
from importq.pipeline.chunk_processing import CANCELLED, write_checked_batch
from importq.pipeline.on_error import ABORTED, OnError
from importq.pipeline.reports import (
    BLOCK_LINES,
    FILE_NAMES,
    KINDS,
    OUTCOME_KIND,
    ReportLayout,
    ReportWriter,
    staged_failure_record,
)
from importq.rules.datasets import Dataset
from importq.services import Services
from importq.sql import queries

REPORT_CONTENT_TYPE = "text/csv; charset=utf-8"
# The prefix of the directory, in the data dir, where a run writes its reports. The
# purge sweeps away the ones left behind by a run that died.
REPORT_SCRATCH_PREFIX = "importq-reports-"
# A batch of this many rows or more has its reports read in up to REPORT_PARTS parts at
# once, when the pool lends the connections at once (waiting LEND_SECONDS at most; a
# worker's pool counts them for each completion slot). The parts' server processes then
# make the records, sort and join them, where one query's parallel workers left the
# sorted merge and the joining to its leader alone. A third part keeps both cores of a
# small server busy while the worker reads the other two's streams (docs/benchmarks.md,
# "Cancelling a 1,000,000-row batch half-way"). Below PARTS_FROM_ROWS there is little to
# gain (a 100,000-row batch's reports: 0.10 s in one query, 0.07-0.10 s in three parts).
PARTS_FROM_ROWS = 100_000
REPORT_PARTS = 3
LEND_SECONDS = 0.05


class AccountingError(RuntimeError):
    """The row results do not add up to the batch's rows. Such a batch is never finished."""


def report_path(batch_id: uuid.UUID | str, kind: str) -> str:
    return f"reports/{batch_id}/{FILE_NAMES[kind]}"


def download_name(dataset: str, batch_id: uuid.UUID | str, kind: str) -> str:
    return f"{dataset}-{batch_id}-{FILE_NAMES[kind]}"


def _held(batch: dict[str, Any]) -> bool:
    """Whether the batch was checked (``onError`` other than continue) and not written:
    the rows its chunks found valid were not imported, and are reported as failures."""
    return batch["on_error"] != "continue" and batch["written_at"] is None


@dataclass(frozen=True)
class Lines:
    """The lines of one part of a batch's reports: from ``first`` up to ``end`` (None:
    to the last). Both are at a block's start, so each block is in one part."""

    first: int
    end: int | None


def report_parts(total_rows: int, count: int) -> list[Lines]:
    """``count`` parts of a batch's lines, each about as many rows. The lines are the
    rows' numbers, 2 on, with gaps where blank rows were; the last part holds any past
    the estimate."""
    cuts = sorted(
        {round(total_rows * n / count / BLOCK_LINES) * BLOCK_LINES for n in range(1, count)}
    )
    bounds = [0, *(cut for cut in cuts if cut > 0), None]
    return [Lines(first, end) for first, end in itertools.pairwise(bounds) if first is not None]


async def _records(
    conn: AsyncConnection[Any], batch: dict[str, Any], dataset: Dataset, lines: Lines
) -> tuple[sql.Composed, dict[str, Any]]:
    """The query of the batch's report records of ``lines``, and its parameters: the
    records its chunks stored and, when a cancel or an abort kept chunks from running,
    the failures of those chunks' staged rows (whose hash ranges are read first, as one
    multirange). A held batch's successes are failures instead, made from their staged
    rows."""
    held = _held(batch)
    results = results_table(batch["id"])
    stored = sql.SQL(queries["result_records"]).format(
        results=results,
        which=sql.SQL("r.outcome IN ('duplicate', 'failure')" if held else "true"),
    )
    staged = StagedTable.of(batch["id"], dataset, batch["header"])
    record = staged_failure_record(dataset, batch["header"])
    params: dict[str, Any] = {
        "stopped": ABORTED if batch["aborted_at"] else CANCELLED,
        "from_line": lines.first,
        "to_line": lines.end,
    }
    parts = [stored]
    if held:
        parts.append(
            sql.SQL(queries["held_records"]).format(
                staged=staged.name, results=results, record=record
            )
        )
    if batch["cancelled_chunks"]:
        cursor = await conn.execute(queries["cancelled_ranges"], {"batch_id": batch["id"]})
        row = await cursor.fetchone()
        params["cancelled_ranges"] = None if row is None else row[0]
        parts.append(
            sql.SQL(queries["cancelled_records"]).format(staged=staged.name, record=record)
        )
    return sql.SQL(" UNION ALL ").join(parts), params


async def _settle_checked(services: Services, batch: dict[str, Any]) -> None:
    """Write a checked batch's chunks if its failures allow (a dry run's are final as
    checked), else hold it: aborted, unless a cancel stopped it. Either is done once: a
    rerun finds the batch written or held."""
    policy = OnError(batch["on_error"], batch["abort_percent"])
    total = batch["total_rows"]
    # A cancel stops a checked batch even when it came after its last chunk: nothing of
    # it is written yet.
    stopped = batch["aborted_at"] is not None or batch["cancelled_at"] is not None
    if not stopped and policy.passes(batch["failures"], total):
        async with services.pool.connection() as conn:
            if batch["dry_run"]:
                async with conn.transaction():
                    await batches.record_written_batch(conn, batch["id"], ChunkTally.of(batch))
                return
            if await write_checked_batch(
                conn,
                services.datasets,
                batch["id"],
                lambda failures: policy.passes(failures, total),
            ):
                return
    async with services.pool.connection() as conn, conn.transaction():
        await batches.hold_checked_batch(conn, batch["id"])


async def _lend_connections(
    services: Services, stack: contextlib.AsyncExitStack, wanted: int
) -> list[AsyncConnection[Any]]:
    """The connections the batch's reports are read on, held until ``stack`` closes: one,
    and up to ``wanted`` in all, those the pool lends at once. A busy pool lends none:
    waiting could hold connections that the jobs it waits for need."""
    connections = [await stack.enter_async_context(services.pool.connection())]
    while len(connections) < wanted:
        try:
            lent = services.pool.connection(timeout=LEND_SECONDS)
            connections.append(await stack.enter_async_context(lent))
        except PoolTimeout:
            break
    return connections


async def _write_part(
    conn: AsyncConnection[Any],
    writer: ReportWriter,
    batch: dict[str, Any],
    dataset: Dataset,
    lines: Lines,
    beside_others: bool,
) -> tuple[int, int]:
    """Write the records of ``lines`` with ``writer``, in the part's own read transaction
    (``beside_others``: other parts run at once). Returns how many records there were and
    how many distinct lines."""
    found = distinct_lines = 0
    async with conn.transaction():
        await conn.execute(queries["report_plan"])
        if beside_others:
            await conn.execute(queries["report_part_plan"])
        rows, params = await _records(conn, batch, dataset, lines)
        query = sql.SQL(queries["report_blocks"]).format(
            results=rows, block=sql.Literal(BLOCK_LINES)
        )
        # Streamed rather than read through a cursor, because PostgreSQL never runs a
        # cursor's query in parallel. The stream is closed on any error, since an
        # open stream keeps the connection locked.
        stream = cast(AsyncGenerator[tuple[Any, ...]], conn.cursor().stream(query, params))
        async with contextlib.aclosing(stream) as blocks:
            async for *records, distinct in blocks:
                # report_blocks gives the outcomes in OUTCOME_KIND's order.
                pairs = zip(OUTCOME_KIND, records[0::2], records[1::2], strict=True)
                found += writer.add((outcome, text, n) for outcome, text, n in pairs if n)
                distinct_lines += distinct
    return found, distinct_lines


async def _write_reports(
    services: Services, batch: dict[str, Any], dataset: Dataset, directory: Path
) -> dict[str, Path]:
    """Write the batch's reports into ``directory``.

    A big batch's lines are read in parts at once, each on its own connection and in
    its own process of the server, and the later parts' files are appended to the
    first's.

    Raises AccountingError unless the results account for every row exactly once. No
    report is then kept.
    """
    layout = ReportLayout.for_batch(dataset, batch["header"])
    total = batch["total_rows"]
    wanted = len(report_parts(total, REPORT_PARTS)) if total >= PARTS_FROM_ROWS else 1
    writers: list[ReportWriter] = []
    try:
        async with contextlib.AsyncExitStack() as stack:
            connections = await _lend_connections(services, stack, wanted)
            parts = report_parts(total, len(connections))
            writers.append(ReportWriter(directory, layout))
            for number in range(1, len(parts)):
                (directory / f"part-{number}").mkdir()
                writers.append(ReportWriter(directory / f"part-{number}", layout, continues=True))
            # Each part runs to its end even when another fails: a connection goes
            # back to the pool only once its stream is closed.
            tallies = await asyncio.gather(
                *(
                    _write_part(conn, writer, batch, dataset, lines, len(parts) > 1)
                    for conn, writer, lines in zip(connections, writers, parts, strict=False)
                ),
                return_exceptions=True,
            )
        counted = [tally for tally in tallies if not isinstance(tally, BaseException)]
        if len(counted) < len(tallies):
            raise next(tally for tally in tallies if isinstance(tally, BaseException))
        first, *rest = writers
        for writer in rest:
            # A copy of up to gigabytes: off the event loop, which serves other jobs.
            await asyncio.to_thread(first.append, writer.close(), writer.counts)
    except BaseException:
        for writer in writers:
            with contextlib.suppress(OSError):
                writer.close()
        raise
    written = first.close()
    found = sum(records for records, _ in counted)
    lines = sum(distinct for _, distinct in counted)
    if not found == lines == total == batch["processed_rows"]:
        raise AccountingError(
            f"batch {batch['id']}: {found} row results for {lines} lines, "
            f"{batch['processed_rows']} processed rows, {batch['total_rows']} rows"
        )
    return written


def report_links(
    services: Services, batch: dict[str, Any], paths: dict[str, str]
) -> tuple[dict[str, str | None], datetime]:
    """Fresh links to a batch's stored reports, and when they expire.

    The links are valid for ``IMPORTQ_REPORT_URL_TTL``. A report that was not written gets
    None.
    """
    expires_at = datetime.now(UTC) + timedelta(seconds=services.settings.report_url_ttl)
    links = {
        kind: services.storage.link(
            paths[kind],
            expires_at=expires_at,
            download_name=download_name(batch["dataset"], batch["id"], kind),
        )
        if kind in paths
        else None
        for kind in KINDS
    }
    return links, expires_at


async def aggregate(services: Services, batch_id: uuid.UUID) -> str | None:
    """Finish an aggregating batch.

    Returns its final status, or None when there was nothing to do.
    """
    async with services.pool.connection() as conn:
        batch = await batches.get_batch(conn, batch_id)
    if batch is None or batch["status"] != "aggregating":
        return None
    if _held(batch):
        await _settle_checked(services, batch)
        async with services.pool.connection() as conn:
            batch = await batches.get_batch(conn, batch_id)
        if batch is None or batch["status"] != "aggregating":
            return None
    async with services.pool.connection() as conn:
        dataset = await services.datasets.judging(conn, batch)
    # Written in the data dir, so local storage can take the files without copying them.
    services.settings.data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(
        prefix=REPORT_SCRATCH_PREFIX, dir=services.settings.data_dir
    ) as directory:
        written = await _write_reports(services, batch, dataset, Path(directory))
        paths = {kind: report_path(batch_id, kind) for kind in written}
        for kind, file in written.items():
            await services.storage.put_file(
                paths[kind],
                file,
                content_type=REPORT_CONTENT_TYPE,
                download_name=download_name(dataset.name, batch_id, kind),
            )

    links, expires_at = report_links(services, batch, paths)
    summary = Summary.of(batch).model_dump()
    result = {"reportUrls": links, "summary": summary}
    async with services.pool.connection() as conn, conn.transaction():
        status = await batches.finish_batch(
            conn, batch_id, result=result, report_paths=paths, reports_expire_at=expires_at
        )
        if status is None:
            return None
        await conn.execute(
            queries["insert_notification"],
            {
                "user_id": batch["initiator_id"],
                "type": "IMPORT_COMPLETE",
                "batch_id": batch_id,
                "payload": json.dumps(
                    {
                        "batchId": str(batch_id),
                        "type": "undo" if batch["type"] == "undo" else "csv-import",
                        "undoOf": batch["undo_of"] and str(batch["undo_of"]),
                        "dataset": batch["dataset"],
                        "mode": batch["mode"],
                        "status": status,
                        "aborted": batch["aborted_at"] is not None,
                        "dryRun": batch["dry_run"],
                        "fileName": batch["file_name"],
                        "summary": summary,
                        "statusUrl": f"/api/v1/jobs/{batch_id}",
                        "pageUrl": f"/jobs/{batch_id}",  # what people open
                        "reportUrls": result["reportUrls"],
                        "reportsExpireAt": expires_at.isoformat().replace("+00:00", "Z"),
                    }
                ),
            },
        )
        await conn.execute(
            queries["insert_delivery"],
            {"batch_id": batch_id, "channel": "email", "message_id": message_id(str(batch_id))},
        )
        await services.queue.defer_email(conn, batch_id)
        if batch["callback_url"]:
            await conn.execute(
                queries["insert_delivery"],
                {"batch_id": batch_id, "channel": WEBHOOK, "message_id": delivery_id(batch_id)},
            )
            await services.queue.defer_webhook(conn, batch_id)
    count_delivery("notification", "created")
    if batch["on_error"] != "continue":
        # A checked batch's rows, counted once, as written or held: its chunks counted none.
        count_rows(SettledRows(batch["dataset"], batch["dry_run"], ChunkTally.of(batch)))
    return status
