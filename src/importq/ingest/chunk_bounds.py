"""Affinity chunking: split a batch's rows into chunks that never split a key's group.

Invariants:

- Rows with the same key have the same hash, and always share a chunk.
- A chunk holds at most ``size + largest group - 1`` rows.
- Chunk k holds exactly the rows with ``bounds[k].hash_from <= hash < bounds[k+1].hash_from``.
  The last chunk has no upper bound.
- The split depends only on the multiset of hashes, so it is deterministic.

They follow from one rule. Walk the hashes in ascending order, and close a chunk at the
first change of hash once it holds at least ``size`` rows.

A group is the rows that share the 64-bit hash of their normalised key. A keyless row is
a group of one, hashed by its line. These are pure functions, with no I/O.
:func:`chunk_bounds` states the rule. Staging cuts the same chunks in PostgreSQL, by
walking the index of the staged hashes (``staged_chunk_bounds`` in ``sql/staging.sql``),
so it needs no second pass over the rows. ``tests/integration/test_staging_chunks.py``
holds the chunks PostgreSQL cuts to those of :func:`chunk_bounds`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class ChunkBound:
    """A chunk: the lowest hash it holds and how many rows it has."""

    hash_from: int
    row_count: int


@dataclass(frozen=True)
class ChunkSizing:
    """How many rows a batch's chunks aim for.

    ``chunk_size`` rows, grown so that a batch has at most ``max_chunks`` chunks (each
    chunk has a cost of its own), but never past ``max_chunk_rows``, which wins: a chunk
    holds a worker slot while it runs, and a small batch posted meanwhile waits for a
    slot. A chunk still holds every row of a key, so one may be larger than the target.
    """

    chunk_size: int = 50
    max_chunks: int = 100
    max_chunk_rows: int = 20_000

    def target(self, total_rows: int) -> int:
        grown = max(self.chunk_size, math.ceil(total_rows / self.max_chunks))
        return min(grown, max(self.max_chunk_rows, self.chunk_size))


class ChunkCutter:
    """The streaming form of :func:`chunk_bounds`: it takes hashes one at a time, in order."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("chunk size must be at least 1")
        self._size = size
        self._bounds: list[ChunkBound] = []
        self._start: int | None = None
        self._count = 0
        self._previous: int | None = None

    def add(self, value: int) -> None:
        previous = self._previous
        if previous is not None and value < previous:
            raise ValueError("hashes must be sorted")
        if self._start is None:
            self._start = value
        elif self._count >= self._size and value != previous:
            self._bounds.append(ChunkBound(self._start, self._count))
            self._start, self._count = value, 0
        self._count += 1
        self._previous = value

    def bounds(self) -> list[ChunkBound]:
        """The chunks so far, the open one included."""
        if self._start is None:
            return list(self._bounds)
        return [*self._bounds, ChunkBound(self._start, self._count)]


def chunk_bounds(sorted_hashes: Iterable[int], size: int) -> list[ChunkBound]:
    """The chunk bounds over ``sorted_hashes``, one hash per row in ascending order."""
    cutter = ChunkCutter(size)
    for value in sorted_hashes:
        cutter.add(value)
    return cutter.bounds()


def chunk_of(hash_value: int, bounds: list[ChunkBound]) -> int:
    """The index of the chunk that holds ``hash_value``."""
    low, high = 0, len(bounds) - 1
    while low < high:
        middle = (low + high + 1) // 2
        if bounds[middle].hash_from <= hash_value:
            low = middle
        else:
            high = middle - 1
    return low
