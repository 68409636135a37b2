"""Property tests of the affinity-chunking rule (pure functions, no database).

Rows are (line, key-or-None) with unique lines and keys from a small alphabet, so keys
collide often. Each row is hashed with :func:`key_hash`, a stable signed 64-bit hash
standing in for the SQL one staging uses (``StagedTable.key_hash``: the chunking
functions only see ints), the sorted hashes are cut with ``chunking.chunk_bounds`` and
each row is placed with ``chunking.chunk_of``. ``test_staging_chunks.py`` checks the
SQL hash and the chunks staging writes.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter, defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from importq.ingest.chunk_bounds import (
    ChunkBound,
    ChunkCutter,
    ChunkSizing,
    chunk_bounds,
    chunk_of,
)

Key = tuple[str, ...]
Row = tuple[int, Key | None]

PROPERTIES = settings(max_examples=200, deadline=None)

# (id, author) pairs from small alphabets: the same key comes back often.
keys = st.tuples(st.sampled_from("abcdefg"), st.sampled_from(["FFS", "Other"]))
maybe_key = st.one_of(st.none(), keys)
sizes = st.integers(min_value=1, max_value=25)


@st.composite
def row_lists(draw: st.DrawFn) -> list[Row]:
    """Rows with unique lines (in no particular order), about a third of them keyless."""
    lines = draw(st.lists(st.integers(min_value=2, max_value=1_000_000), unique=True, max_size=150))
    return [(line, draw(maybe_key)) for line in lines]


def key_hash(key: Key | None, line: int) -> int:
    """A stable signed 64-bit hash of a key; a keyless row hashes its line (a group of one)."""
    material = b"\x00line:%d" % line if key is None else "\x1f".join(key).encode()
    return int.from_bytes(hashlib.blake2b(material, digest_size=8).digest(), "big", signed=True)


def hashes_of(rows: list[Row]) -> list[int]:
    return [key_hash(key, line) for line, key in rows]


def cut(rows: list[Row], size: int) -> tuple[list[ChunkBound], dict[int, int]]:
    """The bounds, and each row's chunk (by line)."""
    bounds = chunk_bounds(sorted(hashes_of(rows)), size)
    return bounds, {line: chunk_of(key_hash(key, line), bounds) for line, key in rows}


def largest_group(rows: list[Row]) -> int:
    """The largest number of rows sharing one hash (a group, or a hash collision)."""
    return max(Counter(hashes_of(rows)).values(), default=0)


@PROPERTIES
@given(row_lists(), sizes)
def test_every_row_is_in_exactly_one_chunk(rows: list[Row], size: int) -> None:
    bounds, chunk = cut(rows, size)
    assert sum(b.row_count for b in bounds) == len(rows)
    per_chunk = Counter(chunk.values())
    assert [per_chunk[k] for k in range(len(bounds))] == [b.row_count for b in bounds]
    assert all(0 <= k < len(bounds) for k in chunk.values())
    assert all(b.row_count >= 1 for b in bounds)


@PROPERTIES
@given(row_lists(), sizes)
def test_chunks_are_the_hash_ranges_between_bounds(rows: list[Row], size: int) -> None:
    bounds, _ = cut(rows, size)
    starts = [b.hash_from for b in bounds]
    assert starts == sorted(set(starts)), "bounds strictly increase"
    for line, key in rows:
        value = key_hash(key, line)
        k = chunk_of(value, bounds)
        assert starts[k] <= value
        assert k == len(bounds) - 1 or value < starts[k + 1]
    if rows:
        assert starts[0] == min(hashes_of(rows))


@PROPERTIES
@given(row_lists(), sizes)
def test_rows_of_one_key_share_a_chunk(rows: list[Row], size: int) -> None:
    _, chunk = cut(rows, size)
    chunks_of_key: dict[Key, set[int]] = defaultdict(set)
    for line, key in rows:
        if key is not None:
            chunks_of_key[key].add(chunk[line])
    assert all(len(found) == 1 for found in chunks_of_key.values()), chunks_of_key


@PROPERTIES
@given(row_lists())
def test_keyless_rows_are_groups_of_one(rows: list[Row]) -> None:
    counts = Counter(hashes_of(rows))
    for line, key in rows:
        if key is None:
            assert counts[key_hash(None, line)] == 1
    # Keyed rows of one key hash alike, whatever their line.
    for line, key in rows:
        if key is not None:
            assert key_hash(key, line) == key_hash(key, line + 1)


@PROPERTIES
@given(row_lists(), sizes)
def test_a_chunk_overshoots_by_at_most_its_last_group(rows: list[Row], size: int) -> None:
    bounds, _ = cut(rows, size)
    limit = size + largest_group(rows) - 1
    assert all(b.row_count <= limit for b in bounds), (limit, bounds)


@PROPERTIES
@given(row_lists(), sizes)
def test_only_the_last_chunk_may_be_small(rows: list[Row], size: int) -> None:
    bounds, _ = cut(rows, size)
    assert all(b.row_count >= size for b in bounds[:-1]), bounds


@PROPERTIES
@given(row_lists(), sizes)
def test_a_chunk_closes_at_the_first_hash_change_once_full(rows: list[Row], size: int) -> None:
    """Minimality: without its last group, every chunk but the last is below the size."""
    bounds, _ = cut(rows, size)
    counts = Counter(hashes_of(rows))
    ordered = sorted(counts)
    for k, bound in enumerate(bounds[:-1]):
        next_start = bounds[k + 1].hash_from
        last_hash = ordered[ordered.index(next_start) - 1]
        assert bound.row_count - counts[last_hash] < size


@PROPERTIES
@given(row_lists(), sizes, st.randoms(use_true_random=False))
def test_the_split_is_deterministic(rows: list[Row], size: int, rnd: random.Random) -> None:
    shuffled = list(rows)
    rnd.shuffle(shuffled)
    assert cut(shuffled, size) == cut(rows, size)


@PROPERTIES
@given(
    st.integers(min_value=1, max_value=20_000),
    st.integers(min_value=1, max_value=100),
    st.integers(min_value=1, max_value=300),
    st.integers(min_value=1, max_value=1_000),
)
def test_the_target_size_caps_the_chunk_count_then_the_chunk_rows(
    total: int, chunk_size: int, max_chunks: int, max_chunk_rows: int
) -> None:
    size = ChunkSizing(chunk_size, max_chunks, max_chunk_rows).target(total)
    assert size >= chunk_size
    assert size <= max(chunk_size, max_chunk_rows)
    # Groups of one (distinct hashes): every chunk but the last holds exactly `size`.
    bounds = chunk_bounds(range(total), size)
    assert len(bounds) == math.ceil(total / size)
    if total <= max_chunks * max(chunk_size, max_chunk_rows):
        assert size == max(chunk_size, math.ceil(total / max_chunks))
        assert len(bounds) <= max_chunks


@PROPERTIES
@given(row_lists(), sizes, st.integers(min_value=1, max_value=40))
def test_the_chunk_count_cap_holds_for_any_groups(
    rows: list[Row], chunk_size: int, max_chunks: int
) -> None:
    """Every chunk but the last holds >= size rows, so big groups only mean fewer chunks."""
    size = ChunkSizing(chunk_size, max_chunks, max_chunk_rows=len(rows) + 1).target(len(rows))
    bounds = chunk_bounds(sorted(hashes_of(rows)), size)
    assert len(bounds) <= max(1, math.ceil(len(rows) / size)) <= max(1, max_chunks)
    assert bool(bounds) == bool(rows)


@PROPERTIES
@given(st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1)), sizes)
def test_the_cutter_fed_one_by_one_equals_chunk_bounds(values: list[int], size: int) -> None:
    values.sort()
    cutter = ChunkCutter(size)
    for n, value in enumerate(values, start=1):
        cutter.add(value)
        assert cutter.bounds() == chunk_bounds(values[:n], size)
    assert cutter.bounds() == chunk_bounds(values, size)
    assert cutter.bounds() == chunk_bounds(iter(values), size)


def test_unsorted_hashes_are_refused() -> None:
    with pytest.raises(ValueError, match="sorted"):
        chunk_bounds([1, 3, 2], 1)
    cutter = ChunkCutter(5)
    cutter.add(10)
    with pytest.raises(ValueError, match="sorted"):
        cutter.add(9)


@pytest.mark.parametrize("size", [0, -1])
def test_a_size_below_one_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ChunkCutter(size)
    with pytest.raises(ValueError, match="at least 1"):
        chunk_bounds([1, 2, 3], size)


def test_no_rows_make_no_chunks() -> None:
    assert chunk_bounds([], 5) == []
    assert ChunkCutter(5).bounds() == []


def test_a_worked_example() -> None:
    # size 2: [1 1 1] closes at the change to 2; [2 3] at the change to 4; [4] is open.
    assert chunk_bounds([1, 1, 1, 2, 3, 4], 2) == [
        ChunkBound(1, 3),
        ChunkBound(2, 2),
        ChunkBound(4, 1),
    ]
    bounds = chunk_bounds([1, 1, 1, 2, 3, 4], 2)
    assert [chunk_of(h, bounds) for h in (1, 2, 3, 4, 99)] == [0, 1, 1, 2, 2]


def test_equal_hashes_are_never_split() -> None:
    assert chunk_bounds([7] * 10, 3) == [ChunkBound(7, 10)]
