"""Affinity chunking: split a batch's rows into chunks that never split a key's group.

Pure functions, no I/O. Groups are ordered by the 64-bit hash of their normalised key
(a keyless row is a group of one, hashed by its line), so staging needs no second pass:
the boundaries come from one ordered scan of the staged hashes.

Rule: walk the hashes in ascending order; a chunk closes at the first change of hash
once it holds at least ``size`` rows. Hence:
- rows with the same key (same hash) always share a chunk;
- a chunk holds at most ``size + largest group - 1`` rows;
- chunk k holds exactly the rows with ``bounds[k].hash_from <= hash < bounds[k+1].hash_from``
  (the last chunk is unbounded above);
- the split depends only on the multiset of hashes: it is deterministic.
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


def chunk_bounds(sorted_hashes: Iterable[int], size: int) -> list[ChunkBound]:
    """Chunk boundaries over hashes given in ascending order (one per row)."""
    if size < 1:
        raise ValueError("chunk size must be at least 1")
    bounds: list[ChunkBound] = []
    start: int | None = None
    count = 0
    previous: int | None = None
    for value in sorted_hashes:
        if previous is not None and value < previous:
            raise ValueError("hashes must be sorted")
        if start is None:
            start = value
        elif count >= size and value != previous:
            bounds.append(ChunkBound(start, count))
            start, count = value, 0
        count += 1
        previous = value
    if start is not None:
        bounds.append(ChunkBound(start, count))
    return bounds


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
