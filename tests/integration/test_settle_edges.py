"""Where the row rules and PostgreSQL meet, end to end: a dataset wider than a SQL
function's 100 arguments, a value the rules accept but PostgreSQL refuses on a row that
is a duplicate anyway, and the date and time forms both read alike."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import AsyncConnection, sql

from conftest import new_user
from helpers import entrance, json_upload, published, row_results
from importq.ingest.chunk_bounds import ChunkSizing
from importq.ingest.staged_table import results_table
from importq.ingest.staging import BatchRequest, StagedBatch, stage_batch
from importq.pipeline.chunk_processing import process_chunk
from importq.pipeline.reports import BLOCK_LINES
from importq.rules.datasets import Dataset, load_datasets, parse_datasets
from importq.rules.row_rules import _bool, _date, _timestamp
from importq.services import Services

WIDTH = 120
WIDE = parse_datasets(
    '[datasets.wide]\ntable = "wide_rows"\ndedup_key = ["c0"]\n'
    + "".join(
        f'[[datasets.wide.columns]]\nname = "c{n}"\nfield = "c{n}"\n'
        + ("required = true\n" if n == 0 else "")
        for n in range(WIDTH)
    )
)["wide"]


async def _process(
    services: Services,
    dataset: Dataset,
    rows: list[dict[str, Any]],
    chunk_size: int = 50,
    mode: str = "insert",
) -> StagedBatch:
    """Stage ``rows`` and process every chunk."""
    user_id = (await new_user(services, f"edge-{uuid.uuid4().hex[:8]}"))[0]
    dataset = await published(services, dataset)
    async with services.pool.connection() as conn:
        staged = await stage_batch(
            conn,
            BatchRequest(dataset=dataset, initiator_id=user_id, format="json", mode=mode),
            json_upload(rows),
            sizing=ChunkSizing(chunk_size, services.settings.max_chunks),
            defer_chunks=services.queue.defer_chunks,
        )
        for chunk_no in range(staged.total_chunks):
            assert await process_chunk(
                conn, services.queue, services.datasets, staged.batch_id, chunk_no
            )
    return staged


async def _import(
    services: Services, dataset: Dataset, rows: list[dict[str, Any]]
) -> list[tuple[Any, ...]]:
    """Stage ``rows``, process every chunk; each line's outcome and message."""
    staged = await _process(services, dataset, rows)
    async with services.pool.connection() as conn:
        return await row_results(conn, staged.batch_id)


async def test_a_wide_upsert_tells_equal_rows_from_changed_ones(services: Services) -> None:
    """Past 99 columns the changed columns are compared in groups: a group with no
    change adds nothing to the list."""
    rows = [{f"c{n}": f"r{line}-{n}" for n in range(WIDTH)} for line in range(2)]
    await _process(services, WIDE, rows)
    staged = await _process(services, WIDE, [rows[0], {**rows[1], "c110": "new"}], mode="upsert")
    async with services.pool.connection() as conn:
        assert await row_results(conn, staged.batch_id) == [
            (2, "unchanged", None),
            (3, "updated", None),
        ]
        cursor = await conn.execute(
            sql.SQL("SELECT records[1] FROM {} WHERE outcome = 'updated'").format(
                results_table(staged.batch_id)
            )
        )
        record = (await cursor.fetchone() or [""])[0]
    assert record.endswith(",updated,c110\r\n"), record


async def test_a_dataset_wider_than_a_functions_arguments_is_imported(
    services: Services,
) -> None:
    rows = [
        {f"c{n}": f"r{line}-{n}" for n in range(WIDTH)} | {"c110": " padded\u00a0"}
        for line in range(3)
    ]
    rows[2]["c0"] = "r0-0"  # the key of the first row: a duplicate
    assert await _import(services, WIDE, rows) == [
        (2, "inserted", None),
        (3, "inserted", None),
        (4, "duplicate", "duplicate of line 2"),
    ]
    async with services.pool.connection() as conn:
        cursor = await conn.execute("SELECT DISTINCT c110, c119 FROM wide_rows ORDER BY 2")
        assert await cursor.fetchall() == [("padded", "r0-119"), ("padded", "r1-119")]


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(
            st.datetimes(min_value=datetime(1000, 1, 2), max_value=datetime(9999, 12, 30)),
            st.sampled_from(
                ["%Y-%m-%dT%H:%M:%S.%f", "%Y%m%dT%H%M%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"]
            ),
            st.one_of(
                st.sampled_from(["", "Z", "+01", "7Z", "123"]),  # digits: more fraction
                st.builds(
                    "{}{:02d}{}{:02d}{}".format,
                    st.sampled_from("+-"),
                    st.integers(0, 23),
                    st.sampled_from(["", ":"]),
                    st.integers(0, 99),
                    st.sampled_from(["", ":00", ":59", ":60"]),
                ),
            ),
        ),
        min_size=1,
        max_size=20,
    )
)
async def test_the_dates_and_times_the_rules_accept_postgresql_reads_alike(
    services: Services, moments: list[tuple[datetime, str, str]]
) -> None:
    """The stored value is PostgreSQL's reading of the text: every form the rules
    accept must be one it reads as the same instant (an offset-less one as UTC)."""
    written = [
        moment.strftime(form) + ("" if form == "%Y-%m-%d" else offset)
        for moment, form, offset in moments
    ]
    accepted = [
        (text, value) for text in written for value, problem in [_timestamp(text)] if not problem
    ]
    texts = [text for text, _ in accepted]
    async with services.pool.connection() as conn, conn.transaction():
        await conn.execute("SET LOCAL TIME ZONE 'UTC'")
        cursor = await conn.execute(
            "SELECT t::timestamptz FROM unnest(%s::text[]) WITH ORDINALITY AS u(t, n) ORDER BY n",
            (texts,),
        )
        read = [value for (value,) in await cursor.fetchall()]
    assert read == [value for _, value in accepted], texts


def test_forms_postgresql_reads_otherwise_are_refused_by_the_rules() -> None:
    for text in ("2024-W01-1", "2024W011", "2024-W01"):
        assert _date(text)[1] is not None, text
    for text in (
        "2024-01-01T10",
        "2024-01-01T10:00:00,5",
        "2024-W01-1T10:00",
        "2024-01-01T10:00+05:60",
        "2024-10-25 123931+0260",
        "2024-12-31T23:59:59.9999999Z",  # PostgreSQL would round it into 2025
        "20240101T100000-01:00",
    ):
        assert _timestamp(text)[1] is not None, text
    for text in ("2024-01-01T10:00:00+0100", "2024-01-01 10:00:00.123-0530"):  # strftime's %z
        assert _timestamp(text)[1] is None, text
    assert _timestamp("2024-01-01T10:00+16:00")[1] == (
        '"2024-01-01T10:00+16:00" has a UTC offset beyond 15:59:59'
    )
    assert _date("20240102")[1] is None and _timestamp("20240101T100000")[1] is None
    assert _timestamp("2024-01-01T10:00-15:59")[1] is None
    assert _bool("yeſ")[1] is not None and _bool("YES") == (True, None)


async def test_a_chunks_results_are_stored_a_report_block_at_a_time(services: Services) -> None:
    """One chunk of 9,000 rows (as the many rows of one key in a big file make one
    chunk): its results are rows of arrays, none of which spans two of the report
    query's blocks of lines, and together they hold every line once with its outcome."""
    rows = [
        {f"c{n}": f"r{line}-{n}" for n in range(WIDTH)} | {"c0": f"k{line % 7_000}"}
        for line in range(9_000)
    ]
    staged = await _process(services, WIDE, rows, chunk_size=20_000)
    assert staged.total_chunks == 1
    async with services.pool.connection() as conn:
        cursor = await conn.execute(
            sql.SQL(
                "SELECT outcome, min(line) / {block}, max(line) / {block}, count(*) "
                "FROM {results}, unnest(lines) AS line GROUP BY ctid, outcome"
            ).format(results=results_table(staged.batch_id), block=sql.Literal(BLOCK_LINES))
        )
        stored = await cursor.fetchall()
        results = await row_results(conn, staged.batch_id)
    assert all(first == last for _, first, last, _ in stored)
    assert len(stored) > 2  # 9,000 lines span three blocks
    assert [line for line, _, _ in results] == list(range(2, 9_002))
    assert [outcome for _, outcome, _ in results] == ["inserted"] * 7_000 + ["duplicate"] * 2_000


async def _chunk_bounds(conn: AsyncConnection[Any], batch_id: uuid.UUID) -> list[tuple[Any, ...]]:
    """A batch's chunks' hash ranges (hash_from, hash_to), in chunk order."""
    cursor = await conn.execute(
        "SELECT hash_from, hash_to FROM chunks WHERE batch_id = %s ORDER BY chunk_no", [batch_id]
    )
    return await cursor.fetchall()


async def test_a_chunk_finds_stored_keys_at_the_edges_of_its_hash_range(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    """A chunk looks its rows' keys up in the target only when the target holds some row
    of the chunk's hash range (settle_chunk): a stored key whose hash is a chunk's first
    or last one (the last chunk's range has no upper bound) is found all the same, and a
    key not stored in a range that holds others is inserted."""
    entrances = load_datasets()["entrances"]
    rows = [entrance(f"edge-{n}") for n in range(40)]
    first = await _process(services, entrances, rows, chunk_size=10)
    async with services.pool.connection() as conn:
        bounds = await _chunk_bounds(conn, first.batch_id)
        cursor = await conn.execute(
            "SELECT key_hash, imported_line FROM entrances WHERE imported_batch = %s",
            [first.batch_id],
        )
        stored: dict[int, int] = dict(await cursor.fetchall())
        edges: set[int] = set()
        for number, (low, high) in enumerate(bounds):
            inside = [h for h in stored if h >= low and (high is None or h < high)]
            edges.add(max(inside) if number % 2 else min(inside))
        # Only one row a chunk stays stored: the first of its range in chunks 0 and 2,
        # the last in chunks 1 and 3 (the last chunk's, whose range has no upper bound).
        await conn.execute(
            "DELETE FROM entrances WHERE imported_batch = %s AND NOT key_hash = ANY(%s)",
            [first.batch_id, list(edges)],
        )
        await conn.commit()
    with caplog.at_level(logging.INFO, logger="importq.pipeline.chunk_processing"):
        second = await _process(services, entrances, rows, chunk_size=10)
    # Found by the lookups, not by the unique index: no chunk needed ON CONFLICT.
    assert "ON CONFLICT" not in caplog.text
    kept = {stored[h] for h in edges}
    async with services.pool.connection() as conn:
        assert await _chunk_bounds(conn, second.batch_id) == bounds  # same rows, same chunks
        assert len(bounds) == 4 and len(kept) == 4
        assert await row_results(conn, second.batch_id) == [
            (line, "duplicate", "already exists") if line in kept else (line, "inserted", None)
            for line in range(2, 42)
        ]


NUMBERED = parse_datasets(
    '[datasets.numbered]\ntable = "numbered_rows"\ndedup_key = ["n"]\n'
    '[[datasets.numbered.columns]]\nname = "n"\nfield = "n"\ntype = "int"\nrequired = true\n'
    '[[datasets.numbered.columns]]\nname = "label"\nfield = "label"\n'
)["numbered"]


async def test_a_failed_rows_key_that_does_not_cast_never_reaches_a_statement_that_casts_it(
    services: Services,
) -> None:
    """Keys are cast to the key column's type to be looked up, inserted and compared; a
    row whose key does not cast is a failure and must never reach those casts, wherever
    the planner puts the lookups (here every chunk's range holds stored rows)."""
    stored = [{"n": str(n), "label": "first"} for n in range(40)]
    await _process(services, NUMBERED, stored, chunk_size=10)
    rows = [{"n": str(n), "label": "again"} for n in range(40)]
    for position, bad in ((0, "abc"), (13, "4x"), (27, "1e3"), (40, " 12 b")):
        rows.insert(position, {"n": bad, "label": "bad"})
    results = await _import(services, NUMBERED, rows)
    assert [outcome for _, outcome, _ in results] == [
        "failure" if row["label"] == "bad" else "duplicate" for row in rows
    ]
    assert {message for _, outcome, message in results if outcome == "duplicate"} == {
        "already exists"
    }
