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


def effective_chunk_size(total_rows: int, chunk_size: int, max_chunks: int) -> int:
    """The target chunk size: ``chunk_size``, grown so a batch has at most ``max_chunks``."""
    return max(chunk_size, math.ceil(total_rows / max_chunks))


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
