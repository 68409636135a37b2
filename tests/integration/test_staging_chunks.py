"""The chunks staging writes to PostgreSQL agree with the pure chunking rule.

``stage_batch`` COPYs the rows into the batch's staged table and has PostgreSQL cut the
chunks by walking the index of their SQL hash (``StagedTable.key_hash``); here the same
hashes, read back from that table, go through ``chunking`` in Python, and both results
must be equal.
The hash must group rows as ``row_rules`` keys them, so SQL's ``importq_trim`` must trim
exactly what Python's ``str.strip()`` trims.
"""

from __future__ import annotations

import json
import random
import uuid
from collections import defaultdict
from typing import Any

import httpx
from psycopg import sql

from conftest import new_user
from helpers import csv_text, entrance, json_upload
from importq.ingest.chunk_bounds import ChunkBound, ChunkSizing, chunk_bounds, chunk_of
from importq.ingest.staged_table import StagedTable, original, table_name
from importq.ingest.staging import BatchRequest, StagedBatch, stage_batch
from importq.pipeline.target_tables import chunk_statements
from importq.rules.datasets import load_datasets
from importq.services import Services
from rules_model import row_key

ENTRANCES = load_datasets()["entrances"]

CHUNK_SIZE = 7


# Keys that differ only in what trimming must (or must not) change: "e7" three ways, and
# two keys of their own ("E7": case is kept; a zero-width space is not whitespace).
FIXED_IDS = ["e7", "\u00a0e7\u3000", "\x1fe7\u2029", "E7", "e7\u200b"]


def upload_rows(count: int) -> list[dict[str, Any]]:
    """Entrances whose keys repeat (with padding), some keyless, some with a problem."""
    rnd = random.Random(20240611)
    rows: list[dict[str, Any]] = [entrance(ident) for ident in FIXED_IDS]
    for _ in range(count - len(rows)):
        ident = f"e{rnd.randrange(60)}"
        pad = rnd.choice(["", "", " ", "\t", "\u00a0", "\u3000 "])
        row: dict[str, Any] = entrance(pad + ident + pad, author=rnd.choice(["FFS", "Other"]))
        roll = rnd.random()
        if roll < 0.08:
            row["id"] = rnd.choice(["", "  "])  # no key: a group of one
        elif roll < 0.12:
            row["w3geo:latitude"] = None  # a reading problem: keyless too
        elif roll < 0.16:
            row["w3geo:latitude"] = "91"  # invalid, but keyed like its valid siblings
        rows.append(row)
    return rows


async def _stage_json(
    services: Services, user: str, rows: list[dict[str, Any]], chunk_size: int
) -> StagedBatch:
    """Entrance rows staged as a JSON upload by a new user, chunks of ``chunk_size``."""
    user_id = (await new_user(services, user))[0]
    request = BatchRequest(dataset=ENTRANCES, initiator_id=user_id, format="json")
    async with services.pool.connection() as conn:
        return await stage_batch(
            conn,
            request,
            json_upload(rows),
            sizing=ChunkSizing(chunk_size, services.settings.max_chunks),
            defer_chunks=services.queue.defer_chunks,
        )


async def test_staged_chunks_match_the_pure_chunking(services: Services) -> None:
    data = upload_rows(300)
    dataset = ENTRANCES
    staged = await _stage_json(services, "stager", data, CHUNK_SIZE)

    # The same rows, keyed by row_rules in Python.
    upload = json_upload(data)
    uploaded = {row.line: row for row in upload.rows}
    positions = dataset.match_header(upload.header).positions
    key_positions = [positions.get(name) for name in dataset.dedup_key]
    keys: dict[int, tuple[str, ...] | None] = {
        line: None if row.problem else row_key(row.values, key_positions)
        for line, row in uploaded.items()
    }
    assert len(keys) == 300
    assert any(k is None for k in keys.values())
    assert len({k for k in keys.values() if k is not None}) < 300 - 50, "keys repeat"
    table = StagedTable.of(staged.batch_id, dataset, upload.header)
    statements = chunk_statements(table, upload.header)

    async with services.pool.connection() as conn:
        # Every row's chunking hash, as SQL computes it over the staged table.
        cursor = await conn.execute(
            sql.SQL("SELECT line, {hash} FROM {table}").format(
                hash=table.key_hash, table=table.name
            )
        )
        hashes: dict[int, int] = dict(await cursor.fetchall())
        cursor = await conn.execute(
            sql.SQL("SELECT key_hash FROM {} ORDER BY key_hash").format(table.name)
        )
        in_order = [value for (value,) in await cursor.fetchall()]
        # The hash target tables store: of the key normalised as row_rules normalises
        # it, parts joined by U+001F; of "line N" for a row without a key.
        lines = sorted(keys)
        cursor = await conn.execute(
            "SELECT m.line, hashtextextended(m.material, 0)"
            " FROM unnest(%s::int[], %s::text[]) AS m(line, material)",
            (lines, [f"line {n}" if (key := keys[n]) is None else "\x1f".join(key) for n in lines]),
        )
        expected_hashes: dict[int, int] = dict(await cursor.fetchall())
        cursor = await conn.execute(
            "SELECT total_rows, total_chunks, status FROM batches WHERE id = %s",
            (staged.batch_id,),
        )
        batch = await cursor.fetchone()
        cursor = await conn.execute(
            "SELECT chunk_no, hash_from, hash_to, row_count FROM chunks"
            " WHERE batch_id = %s ORDER BY chunk_no",
            (staged.batch_id,),
        )
        chunks = await cursor.fetchall()
        # The worker's own statement gathers each chunk's rows by its hash range.
        read = sorted(set(positions.values()))
        chunk_rows = sql.SQL("SELECT line, problem, {} FROM importq_chunk ORDER BY line").format(
            sql.SQL(", ").join(original(p, read) for p in read)
        )
        rows_of_chunk: dict[int, list[tuple[Any, ...]]] = {}
        for chunk_no, hash_from, hash_to, _ in chunks:
            async with conn.transaction(force_rollback=True):
                await conn.execute(
                    statements.create_chunk, {"hash_from": hash_from, "hash_to": hash_to}
                )
                cursor = await conn.execute(chunk_rows)
                rows_of_chunk[chunk_no] = await cursor.fetchall()
        cursor = await conn.execute(
            "SELECT count(*) FROM procrastinate_jobs"
            " WHERE task_name = 'process_chunk' AND args->>'batch_id' = %s",
            (str(staged.batch_id),),
        )
        deferred = (await cursor.fetchone() or (0,))[0]

    assert sorted(hashes) == sorted(keys)
    assert hashes == expected_hashes
    assert in_order == sorted(hashes.values())
    # Rows of one normalised key share a hash; different keys, and keyless rows, do not.
    lines_of_hash: dict[int, set[int]] = defaultdict(set)
    for line, value in hashes.items():
        lines_of_hash[value].add(line)
    for line, key in keys.items():
        sharing = lines_of_hash[hashes[line]]
        if key is None:
            assert sharing == {line}, (line, sharing)
        else:
            assert {keys[other] for other in sharing} == {key}, (line, key, sharing)
    assert len({key for key in keys.values() if key is not None}) == len(
        {hashes[line] for line, key in keys.items() if key is not None}
    )
    fixed = [hashes[line] for line in range(2, 2 + len(FIXED_IDS))]
    assert fixed[0] == fixed[1] == fixed[2], "trimmed as str.strip() trims"
    assert len(set(fixed[2:])) == 3, "case and a zero-width space are kept"

    size = ChunkSizing(CHUNK_SIZE, services.settings.max_chunks).target(len(hashes))
    assert size == CHUNK_SIZE
    bounds = chunk_bounds(sorted(hashes.values()), size)
    expected_chunks = [
        (k, b.hash_from, bounds[k + 1].hash_from if k + 1 < len(bounds) else None, b.row_count)
        for k, b in enumerate(bounds)
    ]
    assert batch == (300, len(bounds), "active")
    assert (staged.total_rows, staged.total_chunks) == (300, len(bounds))
    assert chunks == expected_chunks
    assert deferred == len(bounds)

    # Each staged row falls in exactly one chunk's [hash_from, hash_to) range: the one
    # chunk_of() names, and the one the worker's query returns it in.
    chunk_of_line: dict[int, int] = {}
    for line, value in hashes.items():
        holding = [
            no for no, low, high, _ in chunks if low <= value and (high is None or value < high)
        ]
        assert holding == [chunk_of(value, bounds)], (line, value, holding)
        chunk_of_line[line] = holding[0]
    for chunk_no, rows in rows_of_chunk.items():
        lines_read = [row[0] for row in rows]
        assert lines_read == sorted(line for line, no in chunk_of_line.items() if no == chunk_no)
        assert len(rows) == chunks[chunk_no][3]
    assert sorted(row[0] for rows in rows_of_chunk.values() for row in rows) == sorted(hashes)

    # The worker reads each row's problem and, at read_positions, its cells as uploaded.
    for rows in rows_of_chunk.values():
        for line, problem, *cells in rows:
            row = uploaded[line]
            assert problem == row.problem, line
            for name, at in statements.read_positions.items():
                assert cells[at] == row.values[positions[name]], (line, name)

    # Rows of one key, padded or not, valid or not, are staged in one chunk.
    chunks_of_key: dict[tuple[str, ...], set[int]] = defaultdict(set)
    for line, key in keys.items():
        if key is not None:
            chunks_of_key[key].add(chunk_of_line[line])
    assert all(len(found) == 1 for found in chunks_of_key.values())


# Every character str.strip() trims, and characters next to them that it keeps.
WHITESPACE = [chr(c) for c in range(0x110000) if chr(c).isspace()]
KEPT = [
    "a",
    "é",
    "\u200b",  # zero-width space: not whitespace
    "\u200c",
    "\u200d",
    "\u2060",
    "\ufeff",
    "\u180e",  # whitespace in Unicode before 6.3, not for str.isspace()
    "\u00ad",
    "\x1b",
    "\x7f",
    "\x84",
    "\x86",
    "\u3001",
    "\U0001f600",
    ",",
    "'",
    "\\",
    "%",
    "_",
]


def strings_to_trim() -> list[str]:
    strings = [
        "",
        "\u00a0a\u3000",
        "\x1fa b\x1c",
        "a\u200b",
        "\u200b a \u200b",
        "".join(WHITESPACE),
        "".join(WHITESPACE) + "a" + "".join(reversed(WHITESPACE)),
    ]
    for space in WHITESPACE:
        strings += [space, space * 2, f"{space}a", f"a{space}", f"{space}a{space}b{space}"]
    for kept in KEPT:
        strings += [kept, f" {kept}\u3000", f"\u2028{kept}a{kept}\x85"]
    rnd = random.Random(4180)
    alphabet = WHITESPACE + KEPT
    for _ in range(2_000):
        strings.append("".join(rnd.choices(alphabet, k=rnd.randrange(9))))
    return strings


async def test_a_key_group_bigger_than_a_chunk_is_one_chunk_as_the_rule_cuts_it(
    services: Services,
) -> None:
    """PostgreSQL cuts the chunks (staged_chunk_bounds) as chunk_bounds() does, around
    groups several chunks long too."""
    rows = [entrance(f"g{n % 3}" if n < 60 else f"s{n}") for n in range(90)]
    staged = await _stage_json(services, "grouper", rows, CHUNK_SIZE)
    table = StagedTable.of(staged.batch_id, ENTRANCES, list(rows[0]))
    async with services.pool.connection() as conn:
        cursor = await conn.execute(
            sql.SQL("SELECT key_hash FROM {} ORDER BY key_hash").format(table.name)
        )
        hashes = [value for (value,) in await cursor.fetchall()]
        cursor = await conn.execute(
            "SELECT hash_from, row_count FROM chunks WHERE batch_id = %s ORDER BY chunk_no",
            (staged.batch_id,),
        )
        chunks = [ChunkBound(*row) for row in await cursor.fetchall()]
    assert chunks == chunk_bounds(hashes, CHUNK_SIZE)
    # Three groups of 20 rows, each whole in a chunk: at most 7 + 20 - 1 rows there.
    assert sum(20 <= chunk.row_count <= CHUNK_SIZE + 20 - 1 for chunk in chunks) == 3


async def test_importq_trim_trims_exactly_what_str_strip_trims(services: Services) -> None:
    assert len(WHITESPACE) > 20 and not any(c.isspace() for c in KEPT)
    strings = strings_to_trim()
    async with services.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT importq_trim(x) FROM unnest(%s::text[]) WITH ORDINALITY AS t(x, n) ORDER BY n",
            (strings,),
        )
        trimmed = [value for (value,) in await cursor.fetchall()]
        cursor = await conn.execute("SELECT importq_trim(NULL)")
        assert await cursor.fetchone() == (None,)
    assert len(trimmed) == len(strings)
    wrong = [
        (value, got, value.strip())
        for value, got in zip(strings, trimmed, strict=True)
        if got != value.strip()
    ]
    assert wrong == []
    assert sum(value.strip() != value for value in strings) > 1_000, "most strings get trimmed"


async def test_staged_rows_are_written_frozen_whichever_reader_staged_them(
    services: Services, client: httpx.AsyncClient
) -> None:
    """COPY … FREEZE on every path (PostgreSQL's CSV reader; importq's, for JSON and for
    a CSV PostgreSQL gave up on half-way): every page of the staged table is all-visible,
    so the chunks that read it never write a page back just to set hint bits."""
    rows = [entrance(f"f{n}") for n in range(400)]
    clean = csv_text(rows)
    ragged = clean + "f400,too,many" + ",x" * 20 + "\r\n"  # PostgreSQL's COPY refuses it
    uploads = [
        ("text/csv", clean.encode(), 400),
        ("text/csv", ragged.encode(), 401),
        ("application/json", json.dumps({"data": rows}).encode(), 400),
    ]
    for content_type, body, total in uploads:
        response = await client.post(
            "/api/v1/entrances/import-rows", content=body, headers={"Content-Type": content_type}
        )
        assert response.status_code == 202, response.text
        assert response.json()["totalRows"] == total
        batch_id = uuid.UUID(response.json()["batchId"])
        async with services.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT relpages, relallvisible FROM pg_class WHERE oid = %s::regclass",
                (f"importq_staging.{table_name(batch_id)}",),
            )
            pages, all_visible = await cursor.fetchone() or (0, -1)
        assert pages > 0
        assert all_visible == pages, f"{content_type} upload of {total} rows"


async def test_a_chunk_trims_its_cells_exactly_as_str_strip(services: Services) -> None:
    """The chunk's trimmed cells (t<p>) are str.strip() of each cell, and its cells as
    uploaded are the uploaded cells, whether its row is one the whole-row test finds
    padded or not: strings to trim sit in every column, among rows with nothing to trim
    and rows with one padded cell."""
    strings = strings_to_trim()
    dataset = ENTRANCES
    header = [column.name for column in dataset.columns]
    rnd = random.Random(20261127)
    rows: list[dict[str, Any]] = []
    for index, value in enumerate(strings):
        row = {name: f"v{index}-{n}" for n, name in enumerate(header)}
        row[rnd.choice(header)] = value
        if rnd.random() < 0.5:
            row[rnd.choice(header)] = rnd.choice(strings)
        rows.append(row)
    staged = await _stage_json(services, "trimmer", rows, 500)
    upload = json_upload(rows)
    table = StagedTable.of(staged.batch_id, dataset, upload.header)
    statements = chunk_statements(table, upload.header)
    read = sorted(set(table.positions.values()))
    columns = sql.SQL(", ").join(
        sql.SQL("{}, {}").format(original(p, read), sql.Identifier(f"t{p}")) for p in read
    )
    found: list[tuple[str | None, str | None]] = []
    padded: set[bool] = set()
    async with services.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT chunk_no, hash_from, hash_to FROM chunks WHERE batch_id = %s",
            (staged.batch_id,),
        )
        for _, hash_from, hash_to in await cursor.fetchall():
            async with conn.transaction(force_rollback=True):
                await conn.execute(
                    statements.create_chunk, {"hash_from": hash_from, "hash_to": hash_to}
                )
                cursor = await conn.execute(
                    sql.SQL("SELECT padded, {} FROM importq_chunk").format(columns)
                )
                for record in await cursor.fetchall():
                    padded.add(record[0])
                    found.extend(zip(record[1::2], record[2::2], strict=True))
    assert padded == {True, False}
    assert len(found) == len(rows) * len(read)
    # The cells as uploaded come back too (for the reports of rows that fail), padded
    # row or not.
    uploaded = [row.get(header[p]) for row in rows for p in read]
    assert sorted(raw or "" for raw, _ in found) == sorted(value or "" for value in uploaded)
    wrong = [(raw, got) for raw, got in found if got != (None if raw is None else raw.strip())]
    assert wrong == []
