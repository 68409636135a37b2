"""Reading uploads off the event loop.

Parsing is CPU work in Python: decoding, splitting records, checking quotes, building
rows. Done on the event loop, one big or crafted upload would hold every other request
and every worker heartbeat of the process. So the readers' iterators are advanced in a
worker thread, a slice at a time, while the loop only hands the slices to PostgreSQL.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from typing import TypeVar

T = TypeVar("T")


async def in_thread(items: Iterator[T], size: int) -> AsyncIterator[list[T]]:
    """The items of ``items``, ``size`` at a time, each slice taken in a worker thread.

    Only one slice is taken at a time, so the iterator is never advanced by two threads
    at once. An exception raised by the iterator is raised here.
    """
    while batch := await asyncio.to_thread(lambda: list(itertools.islice(items, size))):
        yield batch
