"""The chunks staging writes to PostgreSQL agree with the pure chunking rule.

``stage_batch`` hashes rows while COPYing them and cuts the chunks from an ordered scan
of ``staged_rows``; here the same rows go through ``row_rules`` and ``chunking`` in
Python, and both results must be equal.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from conftest import new_user
from helpers import entrance
from importq.chunking import chunk_bounds, chunk_of, effective_chunk_size
from importq.row_rules import key_hash, row_key
from importq.services import Services
from importq.sql import queries
from importq.staging import BatchRequest, stage_batch
from importq.uploads import read_json_rows

CHUNK_SIZE = 7


def upload_rows(count: int) -> list[dict[str, Any]]:
    """Entrances whose keys repeat (with padding), some keyless, some with a problem."""
    rnd = random.Random(20240611)
    rows: list[dict[str, Any]] = []
    for _ in range(count):
        ident = f"e{rnd.randrange(60)}"
        pad = rnd.choice(["", "", " ", "\t"])
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


async def test_staged_chunks_match_the_pure_chunking(services: Services) -> None:
    data = upload_rows(300)
    dataset = services.datasets["entrances"]
    user_id = (await new_user(services, "stager"))[0]
    request = BatchRequest(dataset=dataset, initiator_id=user_id, format="json")
    async with services.pool.connection() as conn:
        staged = await stage_batch(
            conn,
            request,
            read_json_rows(data),
            chunk_size=CHUNK_SIZE,
            max_chunks=services.settings.max_chunks,
            defer_chunks=services.queue.defer_chunks,
        )

    # The same rows, by the pure functions.
    upload = read_json_rows(data)
    positions = dataset.match_header(upload.header).positions
    key_positions = [positions.get(name) for name in dataset.dedup_key]
    keys: dict[int, tuple[str, ...] | None] = {}
    hashes: dict[int, int] = {}
    for row in upload.rows:
        keys[row.line] = None if row.problem else row_key(row.values, key_positions)
        hashes[row.line] = key_hash(keys[row.line], row.line)
    assert len(hashes) == 300
    assert any(k is None for k in keys.values())
    assert len({k for k in keys.values() if k is not None}) < 300 - 50, "keys repeat"
    size = effective_chunk_size(len(hashes), CHUNK_SIZE, services.settings.max_chunks)
    assert size == CHUNK_SIZE
    bounds = chunk_bounds(sorted(hashes.values()), size)
    expected_chunks = [
        (k, b.hash_from, bounds[k + 1].hash_from if k + 1 < len(bounds) else None, b.row_count)
        for k, b in enumerate(bounds)
    ]

    async with services.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT total_rows, total_chunks, status FROM batches WHERE id = %s",
            (staged.batch_id,),
        )
        assert await cursor.fetchone() == (300, len(bounds), "active")
        cursor = await conn.execute(
            "SELECT chunk_no, hash_from, hash_to, row_count FROM chunks"
            " WHERE batch_id = %s ORDER BY chunk_no",
            (staged.batch_id,),
        )
        chunks = await cursor.fetchall()
        cursor = await conn.execute(
            "SELECT line, key_hash FROM staged_rows WHERE batch_id = %s", (staged.batch_id,)
        )
        staged_hashes: dict[int, int] = dict(await cursor.fetchall())
        # The worker's own query reads each chunk's rows by its hash range.
        lines_of_chunk: dict[int, list[int]] = {}
        for chunk_no, hash_from, hash_to, _ in chunks:
            cursor = await conn.execute(
                queries["chunk_rows"],
                {"batch_id": staged.batch_id, "hash_from": hash_from, "hash_to": hash_to},
            )
            lines_of_chunk[chunk_no] = [row[0] for row in await cursor.fetchall()]
        cursor = await conn.execute(
            "SELECT count(*) FROM procrastinate_jobs"
            " WHERE task_name = 'process_chunk' AND args->>'batch_id' = %s",
            (str(staged.batch_id),),
        )
        deferred = (await cursor.fetchone() or (0,))[0]

    assert (staged.total_rows, staged.total_chunks) == (300, len(bounds))
    assert chunks == expected_chunks
    assert staged_hashes == hashes
    assert deferred == len(bounds)

    # Each staged row falls in exactly one chunk's [hash_from, hash_to) range: the one
    # chunk_of() names, and the one the worker's query returns it in.
    chunk_of_line: dict[int, int] = {}
    for line, value in staged_hashes.items():
        holding = [
            no for no, low, high, _ in chunks if low <= value and (high is None or value < high)
        ]
        assert holding == [chunk_of(value, bounds)], (line, value, holding)
        chunk_of_line[line] = holding[0]
    for chunk_no, lines in lines_of_chunk.items():
        assert lines == sorted(line for line, no in chunk_of_line.items() if no == chunk_no)
        assert len(lines) == chunks[chunk_no][3]
    assert sorted(line for lines in lines_of_chunk.values() for line in lines) == sorted(hashes)

    # Rows of one key, padded or not, valid or not, are staged in one chunk.
    chunks_of_key: dict[tuple[str, ...], set[int]] = defaultdict(set)
    for line, key in keys.items():
        if key is not None:
            chunks_of_key[key].add(chunk_of_line[line])
    assert all(len(found) == 1 for found in chunks_of_key.values())
